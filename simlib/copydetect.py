"""Copy detection in the manner of DISC2021 and Copydays: which photos are the references, which queries copy them,
and how one search configuration scores on those queries.

The references are a collection: part of a photo folder, plus one shot of each scene group. The queries are
edited copies of some references (the positives, one per strength each) and negatives, at least as many: photos
outside the references as they are and edited once per strength, and *hard negatives*, the other shots of each
scene whose first shot is a reference (a similar photo is in the collection, but no copy of the query). Every
query's top match is a prediction scored by its decision score; DISC2021's muAP and recall at 90% precision pool
all queries' predictions (a negative's top match is always a wrong prediction, a positive's is right when it
names the copied reference); top-1 accuracy and Copydays' mAP are per edit and per strength; the fallback decision
(visual match or not) is scored by ROC over positives vs negatives and by its miss and false-match rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .edits import EDITS, STRENGTHS, apply_edit, edits_of
from .evaluate import mean_average_precision, micro_average_precision, recall_at_precision, relevance, roc_auc
from .images import load_image
from .search_core import SearchCore

UNEDITED = "none"
KINDS = ("copy", "distractor", "scene")  # positive; photo outside the references; other shot of a reference scene
FULL_DECODE = 1 << 20  # min_side for load_image: decode every pixel (the photos are at most 1024 px)
RANKING_DEPTH = 100  # results per query for the rankings (Copydays mAP, top-1)
DECISION_K = 10  # results per query when the fallback decision is taken: Collection.search's default k


@dataclass(frozen=True)
class PhotoSplit:
    """Disjoint parts of a photo folder: references (the collection), distractors (the sources of negative queries
    and the canvases the overlay edit pastes onto) and a background (for whitening and score normalisation)."""

    references: list[Path]
    distractors: list[Path]
    background: list[Path]


def split_photos(
    photos: Sequence[Path], n_references: int, n_distractors: int, n_background: int, seed: int = 0
) -> PhotoSplit:
    """A seeded split of `photos` into `n_references`, `n_distractors` and `n_background` photos (any left over
    are not used)."""
    photos = sorted(Path(p) for p in photos)
    if min(n_references, n_distractors, n_background) < 1 or n_references + n_distractors + n_background > len(photos):
        raise ValueError(f"{len(photos)} photos cannot give {n_references} references, {n_distractors} distractors "
                         f"and {n_background} background images (at least one of each)")
    order = np.random.default_rng(seed).permutation(len(photos))
    pick = [photos[i] for i in order]
    cut = np.cumsum([n_references, n_distractors, n_background])
    return PhotoSplit(sorted(pick[: cut[0]]), sorted(pick[cut[0] : cut[1]]), sorted(pick[cut[1] : cut[2]]))


@dataclass(frozen=True)
class Queries:
    """The query set: one entry per query, made from a source photo by an edit (`UNEDITED` for none)."""

    sources: list[Path]
    edits: np.ndarray  # (nq,) str: edit name or UNEDITED
    strengths: np.ndarray  # (nq,) str: the edit's strength or UNEDITED
    kinds: np.ndarray  # (nq,) str: one of KINDS
    reference: np.ndarray  # (nq,) int64: the reference this query copies, -1 for a negative
    seeds: np.ndarray  # (nq,) int64: the edit's seed
    canvases: list[Path | None]  # the photo the overlay edit pastes onto

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def is_copy(self) -> np.ndarray:
        return self.reference >= 0


def plan_queries(
    references: Sequence[Path],
    distractors: Sequence[Path],
    scene_queries: Sequence[Path] = (),
    *,
    n_copied: int | None = None,
    seed: int = 0,
) -> Queries:
    """The queries of one run. `n_copied` references (seeded choice; default: as many as keeps the positives no
    more numerous than the negatives) get one edited copy per strength; every distractor is a query as it is and
    once edited per strength; `scene_queries` are negatives as they are. Edits are dealt in turn within each
    strength, so every edit is used about equally; each query has its own seed."""
    references, distractors = list(references), list(distractors)
    if len(distractors) < 2:
        raise ValueError("need at least 2 distractors (the overlay edit pastes onto another one)")
    rng = np.random.default_rng(seed)
    negatives = len(distractors) * (1 + len(STRENGTHS)) + len(scene_queries)
    n_copied = min(len(references), negatives // len(STRENGTHS)) if n_copied is None else int(n_copied)
    copied = np.sort(rng.choice(len(references), size=n_copied, replace=False))
    rows: list[tuple] = []
    for strength in STRENGTHS:
        dealt = _deal(edits_of(strength), n_copied + len(distractors), rng)
        rows += [(references[r], e, strength, "copy", int(r)) for r, e in zip(copied, dealt[:n_copied])]
        rows += [(d, e, strength, "distractor", -1) for d, e in zip(distractors, dealt[n_copied:])]
    rows += [(d, UNEDITED, UNEDITED, "distractor", -1) for d in distractors]
    rows += [(Path(s), UNEDITED, UNEDITED, "scene", -1) for s in scene_queries]
    canvases = [_canvas(source, edit, distractors, rng) for source, edit, *_ in rows]
    seeds = np.random.SeedSequence(seed).generate_state(len(rows), dtype=np.uint32).astype(np.int64)
    return Queries(
        sources=[Path(r[0]) for r in rows],
        edits=np.array([r[1] for r in rows]),
        strengths=np.array([r[2] for r in rows]),
        kinds=np.array([r[3] for r in rows]),
        reference=np.array([r[4] for r in rows], dtype=np.int64),
        seeds=seeds,
        canvases=canvases,
    )


def _deal(names: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """`n` edit names, each used n / len(names) times (rounded), in a seeded order."""
    dealt = [names[i % len(names)] for i in range(n)]
    return [dealt[i] for i in rng.permutation(n)]


def _canvas(source: Path, edit: str, distractors: list[Path], rng: np.random.Generator) -> Path | None:
    if edit == UNEDITED or not EDITS[edit].needs_canvas:
        return None
    others = [d for d in distractors if d != source]
    return others[int(rng.integers(len(others)))]


def render_query(queries: Queries, i: int) -> Image.Image:
    """Query `i` as an RGB image: its source, decoded in full, with its edit applied."""
    image = load_image(queries.sources[i], min_side=FULL_DECODE)
    edit = str(queries.edits[i])
    if edit == UNEDITED:
        return image
    canvas = queries.canvases[i]
    return apply_edit(image, edit, int(queries.seeds[i]),
                      None if canvas is None else load_image(canvas, min_side=FULL_DECODE))


def scene_split(groups: dict[str, Sequence[Path]]) -> tuple[list[Path], list[Path], list[str]]:
    """Scene groups -> (one reference per group: its first shot by file name; the other shots, hard-negative
    queries; each query's group)."""
    references, queries, of_group = [], [], []
    for group, shots in sorted(groups.items()):
        first, *others = sorted(Path(s) for s in shots)
        references.append(first)
        queries += others
        of_group += [group] * len(others)
    return references, queries, of_group


# ------------------------------------------------------------------ scoring one configuration


@dataclass(frozen=True)
class Answers:
    """What a configuration answered for every query: its visual ranking, the score the fallback decision compares
    with the threshold, and whether the visual match was accepted (not sent to the rating fallback)."""

    ranked: np.ndarray  # (nq, depth) int64 reference ids, best first (the visual rule), -1 padding
    score: np.ndarray  # (nq,) float64 decision score of the top match (higher = more likely a copy)
    accepted: np.ndarray  # (nq,) bool: score at or above the threshold


def search_answers(core: SearchCore, features: np.ndarray, depth: int = RANKING_DEPTH, chunk: int = 256) -> Answers:
    """A search core's answers to query features (nq, dim), all through `SearchCore.search` as `Collection.search`
    calls it: the visual ranking (threshold -inf, `depth` results) and the decision at the core's own threshold
    (`DECISION_K` results: the match score and whether the rating fallback answered). Queries go `chunk` at a time,
    which bounds the memory of the ranked similarities."""
    ranked, score, accepted = [], [], []
    for start in range(0, len(features), chunk):
        batch = features[start : start + chunk]
        ranked.append(core.search(batch, depth, threshold=-np.inf).ids)
        decided = core.search(batch, DECISION_K)
        score.append(decided.score)
        accepted.append(~decided.fallback)
    return Answers(np.vstack(ranked), np.concatenate(score), np.concatenate(accepted))


def restrict(queries: Queries, keep: np.ndarray) -> Queries:
    """The queries against a collection of only the references `keep` (bool, one per reference): reference ids
    renumbered among those kept, and copies of a reference left out counted as negatives (distractors)."""
    keep = np.asarray(keep, dtype=bool)
    new_id = np.where(keep, np.cumsum(keep) - 1, -1)
    reference = np.where(queries.reference >= 0, new_id[np.clip(queries.reference, 0, None)], -1)
    kinds = np.where((queries.reference >= 0) & (reference < 0), "distractor", queries.kinds)
    return Queries(queries.sources, queries.edits, queries.strengths, kinds, reference, queries.seeds,
                   queries.canvases)


def summary(queries: Queries, answers: Answers) -> dict[str, float]:
    """The headline scores of one configuration: muAP, recall at 90% precision, top-1 accuracy, Copydays mAP,
    ROC AUC of the decision score, miss rate (copies sent to the fallback), false-match rate (negatives accepted),
    and the false-match rate on hard negatives (scenes) alone."""
    is_copy = queries.is_copy
    correct = is_copy & (answers.ranked[:, 0] == queries.reference)
    n_copies = int(is_copy.sum())
    scene = queries.kinds == "scene"
    return {
        "muAP": micro_average_precision(answers.score, correct, n_copies),
        "R@P90": recall_at_precision(answers.score, correct, n_copies, 0.9),
        "top-1": float(correct[is_copy].mean()),
        "mAP": copydays_map(queries.reference, answers.ranked, is_copy),
        "AUROC": roc_auc(answers.score, is_copy),
        "miss": float((~answers.accepted[is_copy]).mean()),
        "false match": float(answers.accepted[~is_copy].mean()),
        "false match, scenes": float(answers.accepted[scene].mean()) if scene.any() else float("nan"),
    }


def copydays_map(reference: np.ndarray, ranked: np.ndarray, keep: np.ndarray) -> float:
    """Copydays' mAP over the queries `keep`: each query's one relevant item is its reference; AP of its ranking."""
    reference, ranked = np.asarray(reference)[keep], np.asarray(ranked)[keep]
    if not len(reference):
        return float("nan")
    rel = relevance(ranked, reference, np.arange(max(int(ranked.max()), int(reference.max())) + 1))
    return mean_average_precision(rel, np.ones(len(reference), dtype=np.int64))


def by_strength(queries: Queries, answers: Answers) -> pd.DataFrame:
    """Per strength: copies, top-1 accuracy, Copydays mAP, muAP (that strength's copies pooled with every
    negative, as DISC2021 pools), miss rate at the threshold, and the share found (right top-1, accepted)."""
    rows = []
    for strength in STRENGTHS:
        mask = queries.strengths == strength
        rows.append({"strength": strength, **_group_scores(queries, answers, mask & queries.is_copy)})
    return pd.DataFrame(rows)


def by_edit(queries: Queries, answers: Answers) -> pd.DataFrame:
    """Per edit, the same scores as `by_strength`, and the false-match rate of the negatives made by that edit."""
    rows = []
    for name, edit in EDITS.items():
        copies = (queries.edits == name) & queries.is_copy
        negatives = (queries.edits == name) & ~queries.is_copy
        rows.append({"edit": name, "strength": edit.strength, **_group_scores(queries, answers, copies),
                     "false match": float(answers.accepted[negatives].mean()) if negatives.any() else float("nan")})
    return pd.DataFrame(rows)


def _group_scores(queries: Queries, answers: Answers, copies: np.ndarray) -> dict[str, float]:
    if not copies.any():
        return {"copies": 0, **dict.fromkeys(("top-1", "mAP", "muAP", "miss", "found"), float("nan"))}
    correct = copies & (answers.ranked[:, 0] == queries.reference)
    pooled = copies | ~queries.is_copy  # this group's copies and every negative
    return {
        "copies": int(copies.sum()),
        "top-1": float(correct[copies].mean()),
        "mAP": copydays_map(queries.reference, answers.ranked, copies),
        "muAP": micro_average_precision(answers.score[pooled], correct[pooled], int(copies.sum())),
        "miss": float((~answers.accepted[copies]).mean()),
        "found": float((correct & answers.accepted)[copies].mean()),
    }
