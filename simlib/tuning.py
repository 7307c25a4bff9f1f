"""Tuning studies: the measurements behind choosing the PCA size, the HNSW parameters, the match threshold, the
rating weight and the duplicate threshold, and what grouping duplicates costs as a collection grows. Functions on
arrays (and a few on a `Collection`) returning arrays or DataFrames; notebooks plot them.
"""

from __future__ import annotations

import itertools
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import faiss
import numpy as np
import pandas as pd
from PIL import Image

from .copydetect import Queries, search_answers, summary
from .duplicates import DuplicateCache, DuplicateReport, keepers_by_rating, neighbour_edges
from .evaluate import ann_recall_at_k, evaluate_configuration, load_groups, pair_counts, pair_precision_recall
from .images import load_image
from .index import IndexParams, bytes_per_vector, check_vectors, exact_search
from .reduce import PCA, normalize_rows
from .search_core import SearchConfig, SearchCore
from .threshold import EDITS, edited_copy

if TYPE_CHECKING:
    from .collection import Collection, SearchResult

# ------------------------------------------------------------------ PCA size


def sweep_pca(
    db_features: np.ndarray,
    db_labels: np.ndarray,
    query_features: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    *,
    dims: Sequence[int] = (8, 16, 32, 64, 128),
    whiten: Sequence[bool] = (False, True),
    fit_features: np.ndarray | None = None,
    k: int = 10,
) -> pd.DataFrame:
    """Retrieval quality against the number of PCA dimensions kept, with and without whitening, and the raw
    features as the reference (row with `pca` == 'raw'), one `evaluate_configuration` row each.

    Search is exact, so only the reduction varies. PCA is fitted once, on `fit_features` (default: the database),
    and truncated to each size; sizes above what that fit supports (samples - 1) are measured once, at the most it
    supports. Without query features every database item is a query against the others.
    """
    fit = db_features if fit_features is None else fit_features
    full = PCA(max(int(d) for d in dims)).fit(fit)
    kept = sorted({min(int(d), full.n_components_) for d in dims if int(d) >= 1})
    exact = IndexParams("exact")
    rows = [
        evaluate_configuration(
            db_features, db_labels, query_features, query_labels, k=k, pca=full.truncated(d, w),
            config=SearchConfig(pca_dim=d, whiten=w, index=exact),
        ).assign(whiten=w)
        for d, w in itertools.product(kept, whiten)
    ]
    raw = evaluate_configuration(db_features, db_labels, query_features, query_labels, k=k,
                                 config=SearchConfig(pca_dim=None, index=exact))
    table = pd.concat(rows + [raw.assign(whiten=False)], ignore_index=True)
    return table.assign(fitted_on=len(fit))


def sweep_pca_copy_detection(
    references: np.ndarray,
    query_features: np.ndarray,
    queries: Queries,
    *,
    fit_on: dict[str, np.ndarray],
    dims: Sequence[int] = (8, 16, 32, 64, 128, 256),
    whiten: Sequence[bool] = (False, True),
) -> pd.DataFrame:
    """Copy-detection scores (`simlib.copydetect.summary`: muAP, R@P90, top-1, mAP, AUROC) against the number of
    PCA dimensions, with and without whitening, for a PCA fitted on each array of `fit_on` (name -> features, e.g.
    the references as a collection fits itself, a separate background set), and the raw features as the reference
    (`pca` == 'raw'). Exact search and the product's match score, so only the reduction varies; sizes above what a
    fit supports are measured once, at the most it supports."""
    exact = IndexParams("exact")
    rows = []
    for name, fit in fit_on.items():
        full = PCA(max(int(d) for d in dims)).fit(fit)
        for d, w in itertools.product(sorted({min(int(d), full.n_components_) for d in dims}), whiten):
            core = SearchCore(SearchConfig(pca_dim=d, whiten=w, index=exact, threshold=0.0)).fit(
                references, pca=full.truncated(d, w))
            scores = summary(queries, search_answers(core, query_features))
            rows.append({"fitted on": name, "pca": f"PCA-{d}", "dims": d, "whiten": w, **scores})
    raw = SearchCore(SearchConfig(pca_dim=None, index=exact, threshold=0.0)).fit(references)
    rows.append({"fitted on": "-", "pca": "raw", "dims": references.shape[1], "whiten": False,
                 **summary(queries, search_answers(raw, query_features))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ HNSW parameters


def timed_core(vectors: np.ndarray, params: IndexParams) -> tuple[SearchCore, float]:
    """A search core over `vectors` (already reduced and normalised: no PCA) with index `params`, and the seconds
    its build took."""
    started = time.perf_counter()
    core = SearchCore.from_state(SearchConfig(pca_dim=None, index=params), None, vectors)
    return core, time.perf_counter() - started


@dataclass
class QueryRun:
    """One pass of queries over an index: quality, speed, cost and what was found."""

    recall: float  # recall@k against the exact neighbours
    qps: float  # queries per second, one query at a time
    distances_per_query: float  # vectors compared per query: the cost of a search on any machine
    ids: np.ndarray  # (n_queries, k) ids found, -1 where none


def measure_queries(
    core: SearchCore, queries: np.ndarray, exact_ids: np.ndarray, k: int, ef_search: int, repeats: int = 3
) -> QueryRun:
    """Search `queries` one at a time through `SearchCore.search_vectors` (the visual rule), as an app searches,
    and measure the run against `exact_ids`.

    The pass runs `repeats` times and the fastest counts, so a cold first pass or a busy moment on a shared machine
    does not set the speed. Distances are counted by FAISS's global HNSW statistics during the first pass (the
    full database size for an exact index), which searches running at the same time in this process would inflate;
    for an IVF-PQ index, its statistics of codes compared plus the nlist centroids and the shortlist re-ranked.
    """
    queries = check_vectors(queries, core.dim, "queries")
    found = np.empty((len(queries), k), dtype=np.int64)
    fastest, distances = np.inf, float(len(core))
    for repeat in range(max(1, int(repeats))):
        faiss.cvar.hnsw_stats.reset()
        faiss.cvar.indexIVF_stats.reset()
        started = time.perf_counter()
        for i, query in enumerate(queries):
            found[i] = core.search_vectors(query[None], k, threshold=-np.inf, ef_search=ef_search).ids[0]
        fastest = min(fastest, time.perf_counter() - started)
        if repeat == 0 and isinstance(core.index_, faiss.IndexHNSW):
            distances = faiss.cvar.hnsw_stats.ndis / max(len(queries), 1)
        if repeat == 0 and isinstance(core.index_, faiss.IndexIVF):
            distances = (faiss.cvar.indexIVF_stats.ndis / max(len(queries), 1) + core.index_.nlist
                         + k * core.config.index.refine)
    return QueryRun(ann_recall_at_k(found, exact_ids, k), len(queries) / max(fastest, 1e-9), distances, found)


def sweep_hnsw(
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    M: Sequence[int] = (8, 16, 32, 64),
    ef_construction: Sequence[int] = (40, 200),
    ef_search: Sequence[int] = (16, 32, 64, 128, 256),
    k: int = 10,
    repeats: int = 3,
) -> pd.DataFrame:
    """One row per (M, ef_construction, ef_search): recall@k against exact search on the same vectors, queries
    per second and distance computations per query (`measure_queries`), build seconds and index bytes per vector.
    Each (M, ef_construction) index is built once.

    An efSearch below k is searched at k (`search_index` never returns fewer than k), so recall is reported for
    the efSearch actually used, in column `ef_search`.
    """
    vectors = check_vectors(vectors)
    queries = check_vectors(queries, vectors.shape[1], "queries")
    k = min(int(k), len(vectors))
    _, exact_ids = exact_search(vectors, queries, k)
    rows = []
    for m, ef_c in itertools.product(M, ef_construction):
        core, build_s = timed_core(vectors, IndexParams(M=int(m), ef_construction=int(ef_c)))
        size = bytes_per_vector(core.index_)
        for ef_s in sorted({max(int(e), k) for e in ef_search}):
            run = measure_queries(core, queries, exact_ids, k, ef_s, repeats)
            rows.append(dict(M=int(m), ef_construction=int(ef_c), ef_search=ef_s, k=k, recall=run.recall,
                             qps=run.qps, distances_per_query=run.distances_per_query, build_s=build_s,
                             bytes_per_vector=size))
    return pd.DataFrame(rows)


def sweep_ivf_pq(
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    nlist: Sequence[int] = (16, 64),
    nprobe: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    pq_m: int = 8,
    refine: int = 20,
    k: int = 10,
    repeats: int = 3,
) -> pd.DataFrame:
    """One row per (nlist, nprobe) of an IVF-PQ index (simlib's 'ivf-pq' kind, its shortlist of `refine` x k
    re-ranked exactly): recall@k against exact search, queries per second, vectors compared per query
    (`measure_queries`), build seconds and index bytes per vector. Codes take the largest number of bytes up to
    `pq_m` that divides the width; nprobe values above nlist are left out. Needs at least
    `IndexParams(kind='ivf-pq', nlist=...).ivf_min_vectors` vectors, else the core is exact."""
    vectors = check_vectors(vectors)
    queries = check_vectors(queries, vectors.shape[1], "queries")
    k = min(int(k), len(vectors))
    code = max(m for m in range(1, int(pq_m) + 1) if vectors.shape[1] % m == 0)
    _, exact_ids = exact_search(vectors, queries, k)
    rows = []
    for lists in nlist:
        params = IndexParams("ivf-pq", nlist=int(lists), pq_m=code, refine=int(refine))
        core, build_s = timed_core(vectors, params)
        size = bytes_per_vector(core.index_)
        for probes in sorted({int(p) for p in nprobe if int(p) <= int(lists)}):
            run = measure_queries(core, queries, exact_ids, k, probes, repeats)
            rows.append(dict(nlist=int(lists), nprobe=probes, pq_m=code, refine=int(refine), k=k, kind=core.index_kind,
                             recall=run.recall, qps=run.qps, distances_per_query=run.distances_per_query,
                             build_s=build_s, bytes_per_vector=size))
    return pd.DataFrame(rows)


def cheapest_settings(sweep: pd.DataFrame, min_recall: float = 0.95) -> pd.DataFrame:
    """For each (M, ef_construction) of a `sweep_hnsw` table, the smallest efSearch reaching `min_recall`
    (pairs that never reach it are left out), cheapest first: fewest distance computations per query."""
    reached = sweep[sweep["recall"] >= min_recall]
    first = reached.sort_values("ef_search").groupby(["M", "ef_construction"], as_index=False).head(1)
    return first.sort_values(["distances_per_query", "bytes_per_vector"], ignore_index=True)


def recommend_hnsw(sweep: pd.DataFrame, min_recall: float = 0.95, cost_tolerance: float = 0.1) -> pd.Series:
    """The setting to recommend from a `sweep_hnsw` table: among settings reaching `min_recall`, those costing at
    most `cost_tolerance` more distance computations per query than the cheapest, then the least memory per
    vector. The cost is counted, not timed, so the choice does not move with the load of the machine. When no
    setting reaches `min_recall`, the one with the highest recall (then the cheapest)."""
    candidates = cheapest_settings(sweep, min_recall)
    if candidates.empty:
        return sweep.sort_values(["recall", "distances_per_query"], ascending=[False, True]).iloc[0]
    cheapest = candidates["distances_per_query"].min()
    near = candidates[candidates["distances_per_query"] <= (1 + cost_tolerance) * cheapest]
    return near.sort_values(["bytes_per_vector", "distances_per_query"]).iloc[0]


def synthetic_like(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` unit vectors drawn from a Gaussian with the mean and covariance of `vectors`' rows, then L2-normalised
    like real ones: a stand-in for a larger collection when too few real images are at hand to fill an index."""
    vectors = check_vectors(vectors)
    if len(vectors) < 2:
        raise ValueError(f"need at least 2 vectors to estimate a covariance, got {len(vectors)}")
    rng = np.random.default_rng(seed)
    mean = vectors.mean(axis=0, dtype=np.float64)
    cov = np.cov(vectors, rowvar=False)
    return normalize_rows(rng.multivariate_normal(mean, cov, size=int(n), method="eigh"))


# ------------------------------------------------------------------ match threshold and rating fallback


def fallback_rate(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, the fraction of queries whose match score is below it, i.e. whose search falls back to
    ratings."""
    best = np.asarray(scores, dtype=np.float64)
    return (best[None, :] < np.asarray(thresholds, dtype=np.float64)[:, None]).mean(axis=1)


def leave_one_out_search(
    collection: "Collection",
    query: Image.Image,
    original_id: int,
    k: int,
    rule: Literal["visual", "rating-fallback"],
    query_rating: float | None = None,
) -> list["SearchResult"]:
    """The `k` results `collection.search` gives `query` under `rule` with image `original_id` left out of the
    search (`exclude`), as if it were not in the collection. The rule is forced by the threshold (-inf: visual,
    +inf: fallback)."""
    if rule not in ("visual", "rating-fallback"):
        raise ValueError(f"rule must be 'visual' or 'rating-fallback', got {rule!r}")
    threshold = -np.inf if rule == "visual" else np.inf
    return collection.search(query, k, threshold=threshold, query_rating=query_rating, exclude=[original_id]).results


# ------------------------------------------------------------------ duplicate groups


def write_edited_copies(sources: Sequence[str | os.PathLike],
                        folder: str | os.PathLike) -> tuple[list[Path], np.ndarray]:
    """Every `simlib.threshold` edit of each source image as a JPEG file (quality 90) in `folder`, named
    `<stem>--<edit>.jpg`: copies with a known original. Returns their paths and, for each, its source's position."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, origin = [], []
    for i, source in enumerate(sources):
        image = load_image(source, min_side=0)
        for variant, edit in enumerate(EDITS):
            paths.append(folder / f"{Path(source).stem}--{edit}.jpg")
            edited_copy(image, variant).save(paths[-1], quality=90)
            origin.append(i)
    return paths, np.array(origin, dtype=np.int64)


@dataclass
class DuplicateTruth:
    """The files of a duplicate-grouping evaluation folder and their ground truth, per file: `copies`, equal labels
    for copies of one picture (-1: a copy of nothing else); `scenes`, equal labels for different shots of one scene
    (similar but not copies; -1: of no scene); `kind`, where the file comes from."""

    paths: list[Path]
    copies: np.ndarray
    scenes: np.ndarray
    kind: list[str]

    def by_id(self, collection: "Collection") -> tuple[np.ndarray, np.ndarray]:
        """`copies` and `scenes` per id of a collection built from the folder (-1 for ids of other files)."""
        where = {os.fspath(p): i for i, p in enumerate(self.paths)}
        copies = np.full(len(collection.core), -1, dtype=np.int64)
        scenes = np.full(len(collection.core), -1, dtype=np.int64)
        for i, record in zip(np.flatnonzero(collection.core.live_), collection.images):
            if record.path in where:
                copies[i], scenes[i] = self.copies[where[record.path]], self.scenes[where[record.path]]
        return copies, scenes


def duplicate_truth(
    folder: str | os.PathLike,
    *,
    photos: Sequence[str | os.PathLike] = (),
    distractors: Sequence[str | os.PathLike] = (),
    wallpapers: str | os.PathLike | None = None,
    scenes: str | os.PathLike | None = None,
) -> DuplicateTruth:
    """An evaluation folder for duplicate grouping: `photos` linked into `folder`/photos with every
    `simlib.threshold` edit of each written into `folder`/edits (copies of their photo); `distractors` linked
    there too (copies of nothing); the shared `wallpapers`
    set linked into `folder`/wallpapers (a `groups.csv` group: one picture at several sizes, or its light and dark
    variants: copies); the multi-shot `scenes` set linked into `folder`/scenes (a group: several shots of one
    scene: not copies, counted apart as hard negatives)."""
    folder = Path(folder)
    paths: list[Path] = []
    copies: list[int] = []
    scene_of: list[int] = []
    kind: list[str] = []

    def add(path: Path, copy_label: int, scene: int, what: str) -> None:
        paths.append(path)
        copies.append(copy_label)
        scene_of.append(scene)
        kind.append(what)

    for i, photo in enumerate(photos):
        add(_link(Path(photo), folder / "photos"), i, -1, "photo")
    edited, origin = write_edited_copies(photos, folder / "edits")
    for path, i in zip(edited, origin.tolist()):
        add(path, i, -1, "edited copy")
    for photo in distractors:
        add(_link(Path(photo), folder / "photos"), -1, -1, "distractor")
    if wallpapers is not None:
        labelled = load_groups(wallpapers, "wallpapers")
        for path, label in zip(labelled.paths, labelled.labels.tolist()):
            add(_link(path, folder / "wallpapers"), len(photos) + label, -1, "wallpaper")
    if scenes is not None:
        labelled = load_groups(scenes, "scenes")
        for path, label in zip(labelled.paths, labelled.labels.tolist()):
            add(_link(path, folder / "scenes"), -1, label, "scene shot")
    return DuplicateTruth(paths, np.array(copies, dtype=np.int64), np.array(scene_of, dtype=np.int64), kind)


def _link(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / source.name
    link.symlink_to(source.resolve())
    return link


def duplicate_labels(report: DuplicateReport, n: int) -> np.ndarray:
    """Per id (n,), the picture a duplicate report puts it with: the members of an exact group and those of the
    near group of its keeper share a label (the smallest id among them); -1 for ids in no group."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in report.groups:
        first = root(group.members[0].id)
        for member in group.members[1:]:
            other = root(member.id)
            parent[max(first, other)] = first = min(first, other)
    labels = np.full(n, -1, dtype=np.int64)
    for i in list(parent):
        labels[i] = root(i)
    return labels


def sweep_duplicate_threshold(
    collection: "Collection", truth: np.ndarray, thresholds: Sequence[float], hard_negatives: np.ndarray | None = None
) -> pd.DataFrame:
    """Pair precision and recall of `collection.duplicate_groups` against `truth` (per id: equal labels are copies
    of one picture, -1 none) at each threshold, regrouped from one `DuplicateCache`. `hard_negatives` (per id):
    labels of pictures that are similar but not copies (several shots of one scene): the share of their pairs
    grouped is reported too."""
    cache, rows = DuplicateCache(), []
    for threshold in sorted(thresholds):  # the lowest first: its neighbour search serves every other threshold
        report = collection.duplicate_groups(threshold, cache=cache)
        predicted = duplicate_labels(report, len(collection.core))
        row = {"threshold": threshold, **pair_precision_recall(predicted, truth),
               "exact groups": len(report.of_kind("exact")), "near groups": len(report.of_kind("near"))}
        if hard_negatives is not None:
            _, scene_pairs, both = pair_counts(predicted, hard_negatives)
            row["scene pairs grouped"] = both / scene_pairs if scene_pairs else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def plant_copies(vectors: np.ndarray, share: float, seed: int = 0,
                 similarity: tuple[float, float] = (0.9, 0.99)) -> tuple[np.ndarray, np.ndarray]:
    """A copy of unit `vectors` in which a `share` of them are replaced by copies of others (an original may get
    several), each at a cosine drawn uniformly from `similarity` to its original, and the ground truth: per id, the
    id of the picture it shows (its own for every vector that is not a copy)."""
    vectors = check_vectors(vectors)
    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    copies = rng.choice(n, size=int(round(share * n)), replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), size=len(copies))
    cosine = rng.uniform(*similarity, size=len(copies)).astype(np.float32)[:, None]
    source = vectors[originals]
    away = rng.standard_normal((len(copies), dim)).astype(np.float32)
    away -= np.einsum("ij,ij->i", away, source)[:, None] * source  # orthogonal to the original: the cosine is exact
    away = normalize_rows(away)
    planted = vectors.copy()
    planted[copies] = cosine * source + np.sqrt(1 - cosine**2) * away
    truth = np.arange(n, dtype=np.int64)
    truth[copies] = originals
    return planted, truth


@dataclass
class GroupingCost:
    """One grouping of a core's vectors (`duplicates.group_vectors`, in its two steps): seconds, pairs found (and
    the bytes they take), groups, and the process's resident memory before and at its peak during the grouping,
    in bytes (`peak_reset`: the kernel's peak was reset just before, so the peak is the grouping's own)."""

    search_seconds: float  # the neighbour search over every vector
    grouping_seconds: float  # the star rule over the pairs found
    pairs: int
    pairs_bytes: int
    groups: int
    grouped: int  # vectors in a group
    rss_before: int
    peak_rss: int
    peak_reset: bool
    keeper: np.ndarray  # (n,) the keeper id of every id, -1 for ids in no group


def grouping_cost(core: SearchCore, threshold: float, *, ef_search: int | None = None) -> GroupingCost:
    """Group `core`'s vectors at `threshold` and measure it (Linux: resident memory from /proc/self/status)."""
    reset = _reset_peak_memory()
    before = _memory("VmRSS")
    started = time.perf_counter()
    edges = neighbour_edges(core, threshold, ef_search=ef_search)
    searched = time.perf_counter()
    keeper = keepers_by_rating(core.stars_, edges)
    grouped = keeper >= 0
    return GroupingCost(searched - started, time.perf_counter() - searched, len(edges.first), edges.nbytes,
                        int(np.count_nonzero(keeper[grouped] == np.flatnonzero(grouped))),
                        int(np.count_nonzero(grouped)), before, _memory("VmHWM"), reset, keeper)


def _reset_peak_memory() -> bool:
    """Reset the kernel's record of this process's peak resident memory (Linux 4.0+); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _memory(field: str) -> int:
    """A memory figure of this process in bytes from /proc/self/status (VmRSS: now, VmHWM: peak); the peak from
    getrusage where /proc is absent."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
