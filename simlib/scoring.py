"""The match score: what the fallback decision compares with the match threshold.

score = best visual similarity - score_norm x neighbourhood, where the neighbourhood is the mean similarity of the
query's neighbours at ranks `norm_ranks` (zero-based, inclusive) in the collection. This is SSCD's score
normalisation (Pizzi et al., "A Self-Supervised Descriptor for Image Copy Detection", CVPR 2022, eq. 8), with the
collection itself as the background set: a query that resembles many images must be closer to its best match than
a query alone in its region. Functions on arrays of similarities; NaN marks "no image there".
"""

from __future__ import annotations

import numpy as np


def neighbourhood(similarities: np.ndarray, ranks: tuple[int, int]) -> np.ndarray:
    """(nq,) the mean of each row's similarities at `ranks` (zero-based, inclusive) once sorted best first; NaN
    entries are left out, and a row with none at those ranks gives 0."""
    similarities = np.asarray(similarities)
    first, last = ranks
    n = similarities.shape[1]
    ascending = np.sort(similarities, axis=1)  # NaN sorts last
    if n > first and not np.isnan(ascending[:, -1:]).any():  # the common case, no NaN anywhere, in fewer steps
        window = ascending[:, max(n - 1 - last, 0) : n - first]  # ranks first..last, best first, are these columns
        return window.sum(axis=1, dtype=np.float64) / window.shape[1]
    similarities = similarities.astype(np.float64)
    window = -np.sort(-similarities, axis=1)[:, first : last + 1]  # best first; NaN sorts last either way
    missing = np.isnan(window)
    counted = window.shape[1] - missing.sum(axis=1)
    total = np.where(missing, 0.0, window).sum(axis=1)
    return np.where(counted > 0, total / np.maximum(counted, 1), 0.0)


def match_score(similarities: np.ndarray, score_norm: float, ranks: tuple[int, int]) -> np.ndarray:
    """(nq,) the match score of each row of similarities to a query's nearest images (any order, NaN for none):
    the best less `score_norm` x `neighbourhood`; -inf for a row without any similarity."""
    similarities = np.asarray(similarities, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        best = np.where(np.isnan(similarities), -np.inf, similarities).max(axis=1, initial=-np.inf)
    return best - score_norm * neighbourhood(similarities, ranks) if score_norm else best
