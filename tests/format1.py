"""Collection files of format version 1 written as simlib wrote them before collections became folders (one zip:
manifest.json, .npy arrays, index.faiss), so that reading and converting them can be tested."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from simlib import Collection
from simlib.index import index_to_bytes


def write_format1(collection: Collection, path: Path) -> Path:
    core = collection.core
    arrays = {"features": collection.features, "vectors": core.vectors_, "stars": core.stars_}
    arrays.update({f"pca_{k}": v for k, v in core.pca_.to_arrays().items()})
    members: dict[str, bytes] = {}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
        members[f"{name}.npy"] = buffer.getvalue()
    members["index.faiss"] = index_to_bytes(core.index_)
    manifest = collection.manifest().to_dict()
    manifest.pop("root")
    manifest.update(
        format="simlib-collection", format_version=1, created="2026-11-01T00:00:00+0000",
        images=[{"path": r.path, "rating": r.rating.stars, "rating_source": r.rating.source,
                 "rating_conflict": r.rating.conflict, "rating_values": [[v.source, v.raw, v.stars] for v in r.rating.values],
                 "rating_problems": list(r.rating.problems)} for r in collection.images],
        errors=[asdict(e) for e in collection.errors],
        files={name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in members.items()},
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("manifest.json", json.dumps(manifest))
    return path
