"""Collections of format version 1 (one zip file, `simlib.archive`) converted to collection folders (format 2)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import archive
from .backbones import load_backbone
from .collection import Collection, CollectionError
from .manifest import format1_contents
from .records import FileStamp, ImageRecord, sidecar_stamp
from .search_core import SearchCore
from .store import CollectionFileError


def convert_collection(old: str | os.PathLike, new: str | os.PathLike, *,
                       weights: str | os.PathLike | None = None) -> Collection:
    """Read the format 1 file `old` (every member verified) and save it as the collection folder `new`; returns
    the collection. Format 1 records no file stamps, so each image's size and modification time are taken from
    the file now and its hash is left unknown: a later sync extracts a file again only if those differ."""
    old = Path(old)
    raw, arrays, index = archive.read_collection(old)
    manifest, images = format1_contents(raw, old)
    recorded = manifest.backbone
    backbone = load_backbone(recorded.name, weights)
    if backbone.weights_sha256 != recorded.weights_sha256:
        raise CollectionError(f"{old}: built with {recorded.name} weights sha256 {recorded.weights_sha256[:12]}..., "
                              f"but {backbone.weights_path} has sha256 {backbone.weights_sha256[:12]}...; pass the "
                              "original weights file")
    try:
        core = SearchCore.from_arrays(manifest.config, arrays, index, manifest.calibration)
        features = arrays["features"]
        if features.dtype != np.float32:
            raise ValueError(f"features must be float32, got {features.dtype}")
        stars = np.array([np.nan if r.rating.stars is None else r.rating.stars for r in images])
        if not np.array_equal(stars, core.stars_, equal_nan=True):
            raise ValueError("the ratings array disagrees with the image records")
        collection = Collection(backbone, images=[ImageRecord(r.path, r.rating, _stamp(r.path)) for r in images],
                                features=features, core=core, errors=manifest.errors, notes=manifest.notes)
    except (KeyError, ValueError, CollectionError) as exc:
        detail = f"member {exc}.npy is missing" if isinstance(exc, KeyError) else str(exc)
        raise CollectionFileError(f"{old}: inconsistent collection: {detail}") from None
    collection.save(new)
    return collection


def _stamp(path: str) -> FileStamp | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return FileStamp(stat.st_size, stat.st_mtime_ns, None, sidecar_stamp(Path(path)))
