"""Match threshold: the visual similarity above which a query counts as having a good visual match.

The default is derived from the collection itself. A sample of its images is edited the way copies of a photo
get edited (downscaled and recompressed, cropped, cropped off-centre and recompressed); each edited copy's
similarity to its original is a *match* score, and its similarity to the nearest other image in the collection a
*non-match* score. The threshold is the value that minimises the sum of the two error rates (Youden's J) between
those distributions, the midpoint of the best interval when several values tie.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

EDITS = ("downscale-recompress", "crop-80", "crop-70-offcentre-recompress")


def edited_copy(image: Image.Image, variant: int) -> Image.Image:
    """A deterministic edited copy of an RGB image: edit `EDITS[variant % 3]`."""
    width, height = image.size
    edit = EDITS[variant % len(EDITS)]
    if edit == "downscale-recompress":
        copy = image.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.BICUBIC)
        return _recompress(copy, quality=60)
    if edit == "crop-80":
        return image.crop(_box(width, height, 0.8, 0.5, 0.5))
    return _recompress(image.crop(_box(width, height, 0.7, 0.35, 0.6)), quality=75)


def _box(width: int, height: int, scale: float, cx: float, cy: float) -> tuple[int, int, int, int]:
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    left = min(max(0, round(width * cx - w / 2)), width - w)
    top = min(max(0, round(height * cy - h / 2)), height - h)
    return left, top, left + w, top + h


def _recompress(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@dataclass(frozen=True)
class Calibration:
    """How the threshold was chosen: sample sizes, medians, and the error rates it makes on its own sample."""

    threshold: float
    n_match: int
    n_nonmatch: int
    match_median: float
    nonmatch_median: float
    miss_rate: float  # matches below the threshold
    false_match_rate: float  # non-matches at or above it
    method: str = "edited copies vs nearest other image, Youden's J"

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(match: np.ndarray, nonmatch: np.ndarray) -> Calibration:
    """The threshold minimising miss rate + false-match rate between two samples of similarities."""
    match = np.sort(np.asarray(match, dtype=np.float64))
    nonmatch = np.sort(np.asarray(nonmatch, dtype=np.float64))
    if len(match) == 0 or len(nonmatch) == 0:
        raise ValueError("need at least one match and one non-match similarity")
    candidates = np.unique(np.concatenate([match, nonmatch, [np.inf]]))
    misses = np.searchsorted(match, candidates, side="left") / len(match)
    false_matches = 1.0 - np.searchsorted(nonmatch, candidates, side="left") / len(nonmatch)
    cost = misses + false_matches
    best = np.flatnonzero(cost <= cost.min() + 1e-12)
    first = last = best[0]
    while last + 1 < len(candidates) and last + 1 in best:
        last += 1
    # every value in (candidates[first - 1], candidates[last]] makes the same errors: take the middle
    lower = candidates[first - 1] if first > 0 else candidates[0] - 0.05
    upper = candidates[last] if np.isfinite(candidates[last]) else lower + 0.05
    threshold = float((lower + upper) / 2)
    return Calibration(
        threshold=threshold,
        n_match=len(match),
        n_nonmatch=len(nonmatch),
        match_median=float(np.median(match)),
        nonmatch_median=float(np.median(nonmatch)),
        miss_rate=float(np.mean(match < threshold)),
        false_match_rate=float(np.mean(nonmatch >= threshold)),
    )
