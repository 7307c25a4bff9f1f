"""Match threshold: the match score above which a query counts as having a good visual match.

The default is derived from the collection itself. A sample of its images is edited the way copies of a photo get
edited, from mild to strong (downscaled and recompressed, cropped to 80, 70, 50 and 25% of the area, rotated,
colours changed, blurred, mirrored, shrunk into a frame); each copy's match score with its original in the
collection is a *match* score, and its match score with the original and its other copies taken out a *non-match*
score (the match score being the search core's: the best similarity less its neighbourhood term,
`simlib.search_core`; an image at least as similar to the original as the edited copy is counts as another copy of
it, not as another image). The threshold is the value that minimises the sum of the two error rates (Youden's J)
between those distributions, the midpoint of the best interval when several values tie. The same copies scored by
their best similarity alone give the near-duplicate threshold (`Calibration.copies`, `simlib.duplicates`).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from .images import ImageSource, load_image
from .scoring import match_score

if TYPE_CHECKING:
    from .backbones import Backbone
    from .search_core import SearchCore

EDITS = (
    "downscale-recompress",
    "crop-80",
    "crop-70-offcentre-recompress",
    "crop-50-recompress",
    "rotate-10",
    "colour-contrast",
    "blur-recompress",
    "mirror-crop-80",
    "shrink-into-frame",
    "crop-25",
)
CALIBRATION_SAMPLE = 100  # edited copies made to calibrate the match threshold (10 of each edit)
COPY_BATCH = 8  # edited copies decoded and held at once while they are embedded
CALIBRATION_NEIGHBOURS = 32  # nearest images searched for each edited copy's nearest other that is not a copy


def edited_copy(image: Image.Image, variant: int) -> Image.Image:
    """A deterministic edited copy of an RGB image: edit `EDITS[variant % len(EDITS)]`."""
    width, height = image.size
    edit = EDITS[variant % len(EDITS)]
    if edit == "downscale-recompress":
        copy = image.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.BICUBIC)
        return _recompress(copy, quality=60)
    if edit == "crop-80":
        return image.crop(_box(width, height, 0.8, 0.5, 0.5))
    if edit == "crop-70-offcentre-recompress":
        return _recompress(image.crop(_box(width, height, 0.7, 0.35, 0.6)), quality=75)
    if edit == "crop-50-recompress":  # half the area
        return _recompress(image.crop(_box(width, height, 0.707, 0.4, 0.55)), quality=40)
    if edit == "rotate-10":
        return image.rotate(10, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    if edit == "colour-contrast":
        more_colour = ImageEnhance.Color(image).enhance(1.4)
        return ImageEnhance.Brightness(ImageEnhance.Contrast(more_colour).enhance(0.7)).enhance(1.15)
    if edit == "blur-recompress":
        return _recompress(image.filter(ImageFilter.GaussianBlur(0.006 * max(width, height))), quality=30)
    if edit == "mirror-crop-80":  # 80% of the area
        return ImageOps.mirror(image.crop(_box(width, height, 0.894, 0.5, 0.5)))
    if edit == "shrink-into-frame":  # a screenshot or a post: the photo at 60% inside a white frame
        small = image.resize((max(1, round(width * 0.6)), max(1, round(height * 0.6))), Image.Resampling.BICUBIC)
        frame = Image.new("RGB", (width, height), (255, 255, 255))
        frame.paste(small, ((width - small.width) // 2, (height - small.height) * 2 // 3))
        return _recompress(frame, quality=80)
    return image.crop(_box(width, height, 0.5, 0.45, 0.5))  # crop-25: a quarter of the area


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
    copies: "Calibration | None" = None  # the same copies on the best similarity alone (None: that is this one)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def on_similarity(self) -> "Calibration":
        """The calibration of the best similarity alone: what two images' similarity is compared with to call
        them copies of one another (near duplicates)."""
        return self if self.copies is None else self.copies


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


def calibration_sample(n: int, size: int = CALIBRATION_SAMPLE, seed: int = 0) -> np.ndarray:
    """The ids (sorted) of the images whose edited copies calibrate a collection of `n` images: a seeded sample."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def embed_edited_copies(
    backbone: "Backbone", sources: Sequence[ImageSource], variants: Sequence[int] | int = len(EDITS)
) -> tuple[np.ndarray, np.ndarray]:
    """Features of edited copies of each source, and for each copy the position of its source.

    `variants` is how many copies per source (edits 0, 1, 2, ...) or, per source, the one edit to make. A source
    that cannot be read again (moved or changed since it was indexed) is skipped. At most `COPY_BATCH` decoded
    copies are held at once, so memory does not grow with the number of sources.
    """
    edits = [[v] for v in variants] if not isinstance(variants, int) else [list(range(variants))] * len(sources)
    if len(edits) != len(sources):
        raise ValueError(f"{len(edits)} variants for {len(sources)} sources")
    features, origin, batch = [], [], []

    def flush() -> None:
        if batch:
            features.append(backbone.embed_images(batch))
            batch.clear()

    for i, (source, chosen) in enumerate(zip(sources, edits)):
        try:
            original = load_image(source, min_side=2 * backbone.spec.input_size)
        except Exception:
            continue
        for variant in chosen:
            batch.append(edited_copy(original, variant))
            origin.append(i)
            if len(batch) >= COPY_BATCH:
                flush()
    flush()
    stacked = np.concatenate(features) if features else np.empty((0, backbone.dim), np.float32)
    return stacked, np.array(origin, dtype=np.int64)


def copy_scores(core: "SearchCore", copy_features: np.ndarray,
                original_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The match scores (as `SearchCore.search` scores them, with the core's `score_norm` and `norm_ranks`) of
    edited copies of the core's images `original_ids`: over the whole collection (match), and with each copy's
    original and the original's other copies taken out of it (non-match); see `copy_neighbours`."""
    present, removed = copy_neighbours(core, copy_features, original_ids)
    config = core.config
    return (match_score(present, config.score_norm, config.norm_ranks),
            match_score(removed, config.score_norm, config.norm_ranks))


def copy_neighbours(core: "SearchCore", copy_features: np.ndarray,
                    original_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarities (n_copies, searched) of edited copies of the core's images `original_ids` to the nearest images
    a search scores, over the whole collection and with the original and its other copies taken out (NaN where
    fewer remain). Neighbours by exact search.

    An image at least as similar to the original as the edited copy is counts as a copy of it: in a collection
    holding copies (a backup folder, resized exports) the nearest other image of an edited copy is often another
    copy of the same photo, a match, and counting it as a non-match would push the threshold above every edit.
    Among the `CALIBRATION_NEIGHBOURS` nearest beyond those a search scores, copies are left out (the farthest
    neighbour is kept when all are copies: it bounds the non-match score from above)."""
    import faiss  # here, not at the top: reading a manifest (`simlib info`) imports this module, and must be quick

    original_ids = np.asarray(original_ids, dtype=np.int64)
    queries = core.transform(copy_features)
    originals = core.vectors_[original_ids]
    match = np.einsum("ij,ij->i", queries, originals).astype(np.float64)
    searched = min(len(core), core.config.norm_ranks[1] + 1)  # the neighbours a search scores
    distances, ids = faiss.knn(queries, core.vectors_, min(len(core), searched + CALIBRATION_NEIGHBOURS))
    similarities = 1.0 - distances.astype(np.float64) / 2.0  # unit vectors: |a - b|^2 = 2 - 2 cos
    to_original = np.einsum("qkd,qd->qk", core.vectors_[ids], originals)
    copy = (ids == original_ids[:, None]) | (to_original >= match[:, None])
    copy[copy.all(axis=1), -1] = False
    others = np.where(copy, np.nan, similarities)
    others = -np.sort(np.where(np.isnan(others), np.inf, -others), axis=1)[:, :searched]  # copies last, cut off
    others[np.isinf(others)] = np.nan
    return similarities[:, :searched], others


def calibrate(core: "SearchCore", copy_features: np.ndarray, original_ids: np.ndarray) -> Calibration:
    """The match threshold for `core` from features of edited copies of its images `original_ids`: Youden's J
    between their match scores with the original in the collection and without it (`copy_scores`); with score
    normalisation, `copies` holds the threshold on the best similarity alone from the same copies."""
    if len(original_ids) == 0:
        raise ValueError("cannot calibrate the match threshold without edited copies")
    if len(core) < 2:
        raise ValueError("cannot calibrate the match threshold of fewer than 2 images")
    present, removed = copy_neighbours(core, copy_features, original_ids)  # one exact search serves both scores
    config = core.config

    def threshold(norm: float) -> Calibration:
        return choose_threshold(match_score(present, norm, config.norm_ranks),
                                match_score(removed, norm, config.norm_ranks))

    calibration = threshold(config.score_norm)
    if config.score_norm == 0:
        return calibration
    return replace(calibration, copies=threshold(0.0))
