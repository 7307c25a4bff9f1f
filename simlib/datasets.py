"""The image sets the notebooks and benchmarks run on: the bundled sample in `data/`, and the real sets in
`../shared/datasets` beside the project (the wallpaper groups, and the copy-detection benchmark made from
`photos/` and `scenes/`), with the copy-detection features cached on disk.

`notebook_dataset(DATASET, shared=...)` is the preamble every notebook used to repeat: "bundled" or "shared",
checked, resolved to image paths, failing with the path when `../shared/datasets` is absent.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .copydetect import PhotoSplit, Queries, plan_queries, render_query, scene_split, split_photos
from .evaluate import load_wallpaper_groups
from .features import extract_features
from .files import find_images
from .threshold import CALIBRATION_SAMPLE, COPY_BATCH, calibration_sample, edited_copy, embed_edited_copies

ROOT = Path(__file__).resolve().parents[1]  # the project: data/ and, beside it, ../shared/datasets
SHARED = ROOT.parent / "shared" / "datasets"
DATASETS = ("bundled", "shared")


# ------------------------------------------------------------------ the copy-detection benchmark


@dataclass(frozen=True)
class CopyDetectionSet:
    """The copy-detection benchmark's files: the collection (photo references, then one shot per scene group), the
    background, and the planned queries (`simlib.copydetect.plan_queries`)."""

    split: PhotoSplit
    scene_references: list[Path]
    scene_groups: list[str]  # the group of each scene query
    queries: Queries
    seed: int

    @property
    def references(self) -> list[Path]:
        return self.split.references + self.scene_references


def copy_detection_set(
    shared: Path = SHARED,
    *,
    n_references: int = 1000,
    n_distractors: int = 176,
    n_background: int = 176,
    n_scene_groups: int | None = None,
    seed: int = 0,
) -> CopyDetectionSet:
    """The benchmark on `shared`/photos (split by `split_photos`) and `shared`/scenes (the first `n_scene_groups`
    groups by name; None: all). The defaults use all 1,352 photos: 1,000 references, 176 distractors (704
    negative queries), 176 background images; with the 70 scene groups, 1,070 references and 879 negatives."""
    photos = sorted((Path(shared) / "photos").glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"{Path(shared) / 'photos'}: no photos found (the benchmark needs ../shared/datasets)")
    split = split_photos(photos, n_references, n_distractors, n_background, seed)
    groups = _scene_groups(Path(shared) / "scenes", n_scene_groups)
    scene_refs, scene_queries, scene_of = scene_split(groups)
    queries = plan_queries(split.references, split.distractors, scene_queries, seed=seed)
    return CopyDetectionSet(split, scene_refs, scene_of, queries, seed)


def _scene_groups(folder: Path, limit: int | None) -> dict[str, list[Path]]:
    if not (folder / "groups.csv").is_file():
        return {}
    groups: dict[str, list[Path]] = {}
    with open(folder / "groups.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            groups.setdefault(row["group"], []).append(folder / row["file"])
    return {name: groups[name] for name in sorted(groups)[:limit]}


@dataclass(frozen=True)
class CopyDetectionFeatures:
    """Backbone features of the benchmark (rows L2-normalised, float32): references, background, queries, and the
    edited copies a collection of the references calibrates its threshold with (`simlib.threshold`)."""

    references: np.ndarray  # (n_references, dim)
    background: np.ndarray  # (n_background, dim)
    queries: np.ndarray  # (n_queries, dim)
    calibration: np.ndarray  # (n_copies, dim): `embed_edited_copies` of `calibration_sample(n_references)`
    calibration_ids: np.ndarray  # (n_copies,) the reference each calibration copy was made from


def embed_copy_detection(backbone, data: CopyDetectionSet, cache: Path | None = None) -> CopyDetectionFeatures:
    """The features of `data`, computed (about ten minutes for the full benchmark on 2 cores) or read from `cache`,
    a folder where they are kept under a key of everything they depend on: files, plan, backbone weights, library
    versions, and the code that makes the images (`simlib.edits`, `render_query`; for the calibration copies, kept
    apart, `edited_copy`, `embed_edited_copies` and the sample size)."""
    from . import edits

    def queries() -> dict[str, np.ndarray]:
        return {"references": _extract(backbone, data.references),
                "background": _extract(backbone, data.split.background),
                "queries": embed_queries(backbone, data.queries)}

    def calibration() -> dict[str, np.ndarray]:
        copies, copied = _calibration_copies(backbone, data.references)
        return {"calibration": copies, "calibration_ids": copied}

    files = sorted({*data.references, *data.split.background, *data.queries.sources})
    plan = [data.queries.edits.tolist(), data.queries.seeds.tolist(), [str(c) for c in data.queries.canvases]]
    made = cached_arrays(cache, f"copydetect-{backbone.name}", queries, backbone, files, plan, edits, render_query)
    calibrated = cached_arrays(cache, f"calibration-{backbone.name}", calibration, backbone, data.references,
                               edited_copy, embed_edited_copies, CALIBRATION_SAMPLE)
    return CopyDetectionFeatures(**made, **calibrated)


def cached_arrays(cache: Path | None, name: str, compute, backbone, files, *depends) -> dict[str, np.ndarray]:
    """`compute()`'s arrays (a dict), kept in the folder `cache` (None: not kept) under `name` and a key of the
    backbone's weights (None: no backbone), `files` (names and sizes), library versions and `depends` (plain data,
    or modules and functions whose source counts)."""
    if cache is None:
        return compute()
    import albumentations
    import cv2
    import PIL

    parts = {
        "weights": None if backbone is None else backbone.weights_sha256,
        "files": [(Path(p).name, Path(p).stat().st_size) for p in files],
        "versions": [albumentations.__version__, cv2.__version__, PIL.__version__, np.__version__],
        "depends": [_source_digest(d) if inspect.ismodule(d) or inspect.isfunction(d) else d for d in depends],
    }
    key = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
    path = Path(cache) / f"{name}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return arrays


def _source_digest(code) -> str:
    return hashlib.sha256(inspect.getsource(code).encode()).hexdigest()


def _extract(backbone, paths: list[Path]) -> np.ndarray:
    result = extract_features(backbone, paths, progress=False)
    if result.errors:
        raise ValueError(f"benchmark images failed to decode: {result.errors}")
    return result.features


def _calibration_copies(backbone, references: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """What `Collection` calibrates with when built from `references`: one edited copy of each sampled image."""
    sample = calibration_sample(len(references))
    copies, origin = embed_edited_copies(backbone, [references[i] for i in sample], variants=list(range(len(sample))))
    return copies, sample[origin]


def embed_queries(backbone, queries: Queries) -> np.ndarray:
    """Features (n_queries, dim) of every query, rendered (`render_query`) and embedded `COPY_BATCH` at a time."""
    out = np.empty((len(queries), backbone.dim), dtype=np.float32)
    for start in range(0, len(queries), COPY_BATCH):
        stop = min(len(queries), start + COPY_BATCH)
        out[start:stop] = backbone.embed_images([render_query(queries, i) for i in range(start, stop)])
    return out


# ------------------------------------------------------------------ the notebooks' datasets


@dataclass(frozen=True)
class NotebookDataset:
    """What a notebook runs on: image paths, their group labels (None: no groups), separate query images, folders
    that could not be read, and for the copy-detection benchmark its set (paths are then its references)."""

    name: str
    paths: list[Path]
    labels: np.ndarray | None
    queries: list[Path]
    problems: list
    copy_detection: CopyDetectionSet | None = None


def notebook_dataset(
    dataset: str, shared: Literal["wallpapers", "copy-detection", "rated"] = "wallpapers", *, root: Path = ROOT
) -> NotebookDataset:
    """"bundled": `data/collection` (26 rated photos) and the queries in `data/queries`. "shared": the set of
    `../shared/datasets` that `shared` names: the 106 wallpapers in their near-duplicate groups, the copy-detection
    benchmark (`copy_detection_set`), or the 31 photos rated with ExifTool. ValueError for another name,
    FileNotFoundError naming the folder when the shared datasets are absent."""
    if dataset not in DATASETS:
        raise ValueError(f"DATASET must be 'bundled' or 'shared', got {dataset!r}")
    if dataset == "bundled":
        paths, problems = find_images(root / "data" / "collection")
        return NotebookDataset("bundled sample", paths, None, sorted((root / "data" / "queries").glob("*.jpg")),
                               problems)
    folder = root.parent / "shared" / "datasets"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not found (DATASET='shared' needs ../shared/datasets beside the project)")
    if shared == "wallpapers":
        wallpapers = load_wallpaper_groups(folder / "wallpapers")
        return NotebookDataset("wallpapers", wallpapers.paths, wallpapers.labels, [], [])
    if shared == "copy-detection":
        data = copy_detection_set(folder)
        return NotebookDataset("copy detection", data.references, np.arange(len(data.references)), [], [], data)
    if shared == "rated":
        paths, problems = find_images(folder / "rated")
        return NotebookDataset("rated photos", paths, None, [], problems)
    raise ValueError(f"shared must be 'wallpapers', 'copy-detection' or 'rated', got {shared!r}")
