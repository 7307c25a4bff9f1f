"""Evaluation: retrieval and decision metrics as pure functions on arrays, ground truth for labelled image sets,
and `evaluate_configuration`, which scores one search configuration on precomputed features through the search
core, exactly as a collection searches.

Conventions: `ranked_ids` is (n_queries, m) int with -1 for "no result"; labels are ints, equal labels mean
"same picture"; `relevance` is the (n_queries, m) bool matrix of ranked results that share the query's label.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from faiss.contrib.evaluation import knn_intersection_measure
from sklearn import metrics

from .index import IndexParams, bytes_per_vector
from .reduce import PCA
from .search_core import SearchConfig, SearchCore

# ------------------------------------------------------------------ ranking metrics


def relevance(ranked_ids: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """(nq, m) bool: ranked result j of query i has the query's label (-1 ids are never relevant)."""
    ranked_ids = np.asarray(ranked_ids)
    if ranked_ids.ndim != 2 or len(ranked_ids) != len(query_labels):
        raise ValueError(f"ranked_ids must be (n_queries, m) with n_queries={len(query_labels)}, got {ranked_ids.shape}")
    db_labels = np.asarray(db_labels)
    found = db_labels[np.clip(ranked_ids, 0, None)]
    return (found == np.asarray(query_labels)[:, None]) & (ranked_ids >= 0)


def n_relevant(query_labels: np.ndarray, db_labels: np.ndarray, query_in_db: bool = False) -> np.ndarray:
    """How many database items share each query's label; minus one when the query itself is in the database."""
    values, counts = np.unique(np.asarray(db_labels), return_counts=True)
    lookup = dict(zip(values.tolist(), counts.tolist()))
    total = np.array([lookup.get(label, 0) for label in np.asarray(query_labels).tolist()])
    return total - int(query_in_db)


def average_precision(relevant: np.ndarray, total_relevant: int) -> float:
    """AP of one ranked list: mean over the relevant items of the precision at their rank; 0 when none exist.

    Relevant items missing from a truncated list count as retrieved at no rank (precision 0). This is why it is not
    `sklearn.metrics.average_precision_score`, which needs a score for every item of the database; on a full
    ranking the two agree (tests/test_evaluate.py).
    """
    relevant = np.asarray(relevant, dtype=bool)
    if total_relevant <= 0:
        return 0.0
    hits = np.cumsum(relevant)
    precision_at_hits = hits[relevant] / (np.flatnonzero(relevant) + 1)
    return float(precision_at_hits.sum() / total_relevant)


def mean_average_precision(relevance_matrix: np.ndarray, total_relevant: np.ndarray) -> float:
    """mAP over queries that have at least one relevant item."""
    total_relevant = np.asarray(total_relevant)
    scored = [average_precision(row, n) for row, n in zip(relevance_matrix, total_relevant) if n > 0]
    return float(np.mean(scored)) if scored else 0.0


def precision_at_k(relevance_matrix: np.ndarray, k: int, total_relevant: np.ndarray | None = None) -> float:
    """Mean fraction of the top k that is relevant; with `total_relevant`, over the queries that have at least one
    relevant item (as mAP and recall@k count them: a query with nothing to find is no miss)."""
    relevance_matrix = np.asarray(relevance_matrix)
    if total_relevant is not None:
        relevance_matrix = relevance_matrix[np.asarray(total_relevant) > 0]
    return float(relevance_matrix[:, :k].sum(axis=1).mean() / k) if len(relevance_matrix) else 0.0


def recall_at_k(relevance_matrix: np.ndarray, total_relevant: np.ndarray, k: int) -> float:
    """Mean fraction of each query's relevant items found in its top k (queries without any are skipped)."""
    total_relevant = np.asarray(total_relevant)
    keep = total_relevant > 0
    found = np.asarray(relevance_matrix)[keep, :k].sum(axis=1)
    return float(np.mean(found / total_relevant[keep])) if keep.any() else 0.0


def ukbench_score(relevance_matrix: np.ndarray) -> float:
    """UKBench N-S score: mean number of relevant images in the top 4 (query included), i.e. 4 x precision@4."""
    return 4.0 * precision_at_k(relevance_matrix, 4)


def ann_recall_at_k(approximate_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean |approximate top-k  ∩  exact top-k| / k: how much of the true k nearest neighbours an ANN index finds
    (FAISS's `knn_intersection_measure`)."""
    approximate_ids, exact_ids = np.asarray(approximate_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    if approximate_ids.shape != exact_ids.shape:
        raise ValueError(f"shapes differ: {approximate_ids.shape} vs {exact_ids.shape}")
    if (exact_ids < 0).any():
        raise ValueError("the exact neighbours hold -1: ask for at most as many neighbours as there are vectors")
    return float(knn_intersection_measure(approximate_ids, exact_ids))


# ------------------------------------------------------------------ copy detection: pooled predictions (DISC2021)


def precision_recall(
    scores: np.ndarray, correct: np.ndarray, n_positives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and score after each prediction, predictions pooled over all queries and sorted by score,
    highest first. `correct[i]`: prediction i names a true (query, reference) pair; `n_positives`: true pairs in
    the ground truth, found or not. Equal scores put the wrong predictions first (the worst order, as DISC2021
    scores them, so that giving every prediction the same score gains nothing)."""
    scores, correct = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(correct, dtype=bool).ravel()
    if scores.shape != correct.shape:
        raise ValueError(f"{len(scores)} scores for {len(correct)} correctness flags")
    if n_positives < 1:
        raise ValueError(f"n_positives must be >= 1, got {n_positives}")
    if correct.sum() > n_positives:
        raise ValueError(f"{correct.sum()} correct predictions but only {n_positives} true pairs")
    order = np.lexsort((correct, -scores))  # by score descending, then wrong (False) before right
    hits = np.cumsum(correct[order])
    return hits / np.arange(1, len(order) + 1), hits / n_positives, scores[order]


def micro_average_precision(scores: np.ndarray, correct: np.ndarray, n_positives: int) -> float:
    """muAP (DISC2021): the area under the precision-recall curve of all queries' predictions pooled and ranked by
    score, i.e. the sum over correct predictions of the precision at their rank, divided by `n_positives`."""
    precision, recall, _ = precision_recall(scores, correct, n_positives)
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * precision).sum())


def recall_at_precision(scores: np.ndarray, correct: np.ndarray, n_positives: int, precision: float = 0.9) -> float:
    """The highest recall of the pooled ranking at which precision is still at least `precision` (DISC2021's
    recall at 90% precision); 0 when no prefix of the ranking is that precise."""
    precisions, recalls, _ = precision_recall(scores, correct, n_positives)
    reached = precisions >= precision
    return float(recalls[reached].max()) if reached.any() else 0.0


# ------------------------------------------------------------------ match / no-match decisions


def match_scores(
    query_vectors: np.ndarray, query_labels: np.ndarray, db_vectors: np.ndarray, db_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the best cosine similarity to a database item sharing its label (its match score, -inf if none
    does) and to an item with another label (its non-match score, -inf if none). Rows L2-normalised; the queries
    must not be in the database."""
    query_vectors, db_vectors = np.asarray(query_vectors, np.float32), np.asarray(db_vectors, np.float32)
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    if query_vectors.shape[1:] != db_vectors.shape[1:] or len(query_vectors) != len(query_labels):
        raise ValueError(f"queries {query_vectors.shape}, {len(query_labels)} labels; database {db_vectors.shape}")
    match = np.empty(len(query_vectors), np.float32)
    nonmatch = np.empty(len(query_vectors), np.float32)
    for start in range(0, len(query_vectors), 1024):  # bounded memory: 1024 rows of similarities at a time
        sims = query_vectors[start : start + 1024] @ db_vectors.T
        same = query_labels[start : start + 1024, None] == db_labels[None, :]
        match[start : start + 1024] = np.where(same, sims, -np.inf).max(axis=1, initial=-np.inf)
        nonmatch[start : start + 1024] = np.where(same, -np.inf, sims).max(axis=1, initial=-np.inf)
    return match, nonmatch


def roc_curve(scores: np.ndarray, is_match: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-match rate, hit rate and thresholds for "score >= threshold means match", thresholds descending
    (`sklearn.metrics.roc_curve`, every threshold kept). The curve starts at (0, 0) with threshold +inf and ends at
    (1, 1)."""
    scores, is_match = np.asarray(scores, dtype=np.float64), np.asarray(is_match, dtype=bool)
    if is_match.all() or not is_match.any():
        raise ValueError("the ROC needs both matches and non-matches")
    return metrics.roc_curve(is_match, scores, drop_intermediate=False)


def roc_auc(scores: np.ndarray, is_match: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a match scores above a non-match (ties count half)."""
    scores, is_match = np.asarray(scores, dtype=np.float64), np.asarray(is_match, dtype=bool)
    if is_match.all() or not is_match.any():
        raise ValueError("the ROC needs both matches and non-matches")
    return float(metrics.roc_auc_score(is_match, scores))


def error_rates(scores: np.ndarray, is_match: np.ndarray, threshold: float) -> dict[str, float]:
    """At `threshold` (score >= threshold means match): the miss rate and the false-match rate."""
    scores, is_match = np.asarray(scores, dtype=np.float64), np.asarray(is_match, dtype=bool)
    accepted = scores >= threshold
    return {
        "miss_rate": float((~accepted[is_match]).mean()) if is_match.any() else 0.0,
        "false_match_rate": float(accepted[~is_match].mean()) if (~is_match).any() else 0.0,
    }


# ------------------------------------------------------------------ grouping (duplicates)


def pair_counts(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(pairs grouped together, pairs that belong together, pairs both), counting unordered pairs of items: items
    share a group when their `predicted` labels are equal and not -1 (-1: in no group), belong together when their
    `truth` labels are equal and not -1. Counted from the label table, never a matrix of pairs."""
    predicted, truth = np.asarray(predicted, np.int64), np.asarray(truth, np.int64)
    if predicted.shape != truth.shape:
        raise ValueError(f"label shapes differ: {predicted.shape} vs {truth.shape}")

    def pairs(counts: np.ndarray) -> int:
        return int((counts * (counts - 1) // 2).sum())

    both = (predicted >= 0) & (truth >= 0)
    cells = np.unique(np.stack([predicted[both], truth[both]]), axis=1, return_counts=True)[1] if both.any() else []
    return (pairs(np.unique(predicted[predicted >= 0], return_counts=True)[1]),
            pairs(np.unique(truth[truth >= 0], return_counts=True)[1]), pairs(np.asarray(cells, np.int64)))


def pair_precision_recall(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pair precision (share of the pairs grouped together that belong together; 1 when none are grouped) and pair
    recall (share of the pairs that belong together that are grouped together), with the counts (`pair_counts`)."""
    grouped, belong, both = pair_counts(predicted, truth)
    return {"precision": both / grouped if grouped else 1.0, "recall": both / belong if belong else 1.0,
            "pairs_grouped": grouped, "pairs_true": belong, "pairs_both": both}


def pair_errors(predicted: np.ndarray, truth: np.ndarray, limit: int = 10) -> tuple[list, list]:
    """Up to `limit` example pairs (i, j) of each error: grouped together but not belonging together (false pairs),
    and belonging together but not grouped together (missed pairs). Pairs are enumerated within groups only."""
    predicted, truth = np.asarray(predicted, np.int64), np.asarray(truth, np.int64)

    def within(labels: np.ndarray, wrong) -> list[tuple[int, int]]:
        found = []
        for label in np.unique(labels[labels >= 0]):
            members = np.flatnonzero(labels == label).tolist()
            found += [(i, j) for n, i in enumerate(members) for j in members[n + 1 :] if wrong(i, j)]
            if len(found) >= limit:
                break
        return found[:limit]

    false_pairs = within(predicted, lambda i, j: truth[i] < 0 or truth[i] != truth[j])
    missed_pairs = within(truth, lambda i, j: predicted[i] < 0 or predicted[i] != predicted[j])
    return false_pairs, missed_pairs


# ------------------------------------------------------------------ ground truth


@dataclass
class LabelledImages:
    """Image files with group labels: files sharing a label show the same picture."""

    name: str
    paths: list[Path]
    labels: np.ndarray  # (n,) int
    groups: list[str]  # label -> group name

    def __len__(self) -> int:
        return len(self.paths)


def load_wallpaper_groups(folder: str | Path) -> LabelledImages:
    """The shared `wallpapers/` set: `groups.csv` (file, group, source) gives the near-duplicate ground truth."""
    return load_groups(folder, "wallpapers")


def load_groups(folder: str | Path, name: str) -> LabelledImages:
    """A labelled image set: `groups.csv` in `folder` (columns file, group, ...) names each file's group."""
    folder = Path(folder)
    with open(folder / "groups.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "group"} <= set(rows[0]):
        raise ValueError(f"{folder / 'groups.csv'}: expected columns file, group")
    groups = sorted({row["group"] for row in rows})
    label_of = {group: i for i, group in enumerate(groups)}
    return LabelledImages(
        name,
        [folder / row["file"] for row in rows],
        np.array([label_of[row["group"]] for row in rows], dtype=np.int64),
        groups,
    )


# ------------------------------------------------------------------ one configuration, one row


def evaluate_configuration(
    db_features: np.ndarray,
    db_labels: np.ndarray,
    query_features: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    *,
    config: SearchConfig = SearchConfig(),
    pca: PCA | None = None,
    db_stars: np.ndarray | None = None,
    query_stars: np.ndarray | None = None,
    k: int = 10,
    ranking_depth: int = 100,
) -> pd.DataFrame:
    """Score one configuration on precomputed backbone features; returns a one-row DataFrame.

    A `SearchCore` is fitted on the database (`config`; `pca`, a PCA fitted elsewhere, is used instead of fitting
    one) and every query searches it one at a time through `SearchCore.search`, the visual rule forced (threshold
    -inf), exactly as `Collection.search` does. Without query features every database item is a query against the
    others (leave-one-out: it searches one more result and drops itself). Columns: mAP (over the top
    `ranking_depth`), P@1, P@k, R@k, N-S, ANN recall@k against the same core with an exact index, build seconds
    (PCA fit and index), queries per second (one at a time), bytes per vector of the index, the dimensions kept.
    """
    leave_one_out = query_features is None
    if leave_one_out:
        query_features, query_labels, query_stars = db_features, db_labels, db_stars
    db_labels, query_labels = np.asarray(db_labels), np.asarray(query_labels)
    q_stars = np.full(len(query_features), np.nan) if query_stars is None else np.asarray(query_stars, np.float64)

    started = time.perf_counter()
    core = SearchCore(config).fit(db_features, db_stars, pca=pca)
    build_seconds = time.perf_counter() - started
    depth = min(ranking_depth + int(leave_one_out), len(core))
    started = time.perf_counter()
    ranked = np.vstack([
        core.search(f[None], depth, threshold=-np.inf, query_stars=s).ids for f, s in zip(query_features, q_stars)
    ])
    qps = len(ranked) / (time.perf_counter() - started)
    exact = core.with_index(IndexParams("exact")).search(query_features, depth, threshold=-np.inf,
                                                         query_stars=q_stars).ids
    if leave_one_out:
        ranked, exact = _drop_self(ranked), _drop_self(exact)
    rel = relevance(ranked, query_labels, db_labels)
    totals = n_relevant(query_labels, db_labels, query_in_db=leave_one_out)
    index = config.index
    fitted = core.pca_
    return pd.DataFrame(
        [
            {
                "dims": core.dim,
                "pca": "raw" if fitted is None else f"PCA-{fitted.n_components_}" + (" whitened" if fitted.whiten else ""),
                "index": _describe(index, core.index_kind),
                "rating_weight": config.rating_weight,
                "mAP": mean_average_precision(rel, totals),
                "P@1": precision_at_k(rel, 1, totals),
                f"P@{k}": precision_at_k(rel, k, totals),
                f"R@{k}": recall_at_k(rel, totals, k),
                "N-S": ukbench_score(np.hstack([np.ones((len(rel), 1), bool), rel]) if leave_one_out else rel),
                f"ANN recall@{k}": ann_recall_at_k(ranked, exact, min(k, exact.shape[1])),
                "build_s": build_seconds,
                "qps": qps,
                "bytes_per_vector": bytes_per_vector(core.index_),
            }
        ]
    )


def _drop_self(ranked: np.ndarray) -> np.ndarray:
    """Remove each query's own id (query i is database item i) from its ranked list, keeping the order."""
    rows = [row[row != i][: ranked.shape[1] - 1] for i, row in enumerate(ranked)]
    return np.vstack([np.pad(r, (0, ranked.shape[1] - 1 - len(r)), constant_values=-1) for r in rows])


def _describe(index: IndexParams, kind: str) -> str:
    if kind == "ivf-pq":
        return f"IVF-PQ nlist={index.nlist} m={index.pq_m} nprobe={index.nprobe} refine={index.refine}"
    return index.kind if index.kind == "exact" else f"HNSW M={index.M} efC={index.ef_construction} efS={index.ef_search}"
