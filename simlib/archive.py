"""Collection files of format version 1: one zip archive holding manifest.json, NumPy arrays (.npy) and the FAISS
index. simlib now keeps collections in folders (`simlib.store`); this reads the old files for `simlib convert`.

Nothing in them is unpickled: arrays load with `allow_pickle=False`, the manifest is JSON, every member is checked
against the SHA-256 the manifest records before it is parsed, and the index bytes are checked by
`simlib.index_check.check_index_bytes` before FAISS reads them.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import CollectionFileError
from .index_check import check_index_bytes

if TYPE_CHECKING:
    import faiss

FORMAT = "simlib-collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.faiss"
MAX_MANIFEST_BYTES = 512 * 1024 * 1024


def read_collection(path: Path) -> tuple[dict, dict[str, np.ndarray], faiss.Index]:
    """Manifest, arrays and index of a collection file, each member verified against its recorded SHA-256."""
    from .index import index_from_bytes

    with _open(path) as archive:
        manifest = _manifest(path, archive)
        arrays = {}
        index_data = None
        for name, expected in manifest["files"].items():
            if not isinstance(expected, dict):
                raise CollectionFileError(f"{path}: manifest entry for {name} is not a checksum record")
            data = _member(path, archive, name, expected)
            if name == INDEX:
                index_data = data
            elif name.endswith(".npy"):
                arrays[name[:-4]] = _parse(path, name, lambda: np.load(io.BytesIO(data), allow_pickle=False))
        if index_data is None:
            raise CollectionFileError(f"{path}: no {INDEX} in the collection")
        rows = arrays["vectors"].shape[0] if "vectors" in arrays else None
        _parse(path, INDEX, lambda: check_index_bytes(index_data, rows))
        index = _parse(path, INDEX, lambda: index_from_bytes(index_data))
    return manifest, arrays, index


def _open(path: Path) -> zipfile.ZipFile:
    path = Path(path)
    if not path.is_file():
        raise CollectionFileError(f"{path}: no such collection file")
    try:
        return zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, OSError) as exc:
        raise CollectionFileError(f"{path}: not a simlib collection file ({exc})") from None


def _manifest(path: Path, archive: zipfile.ZipFile) -> dict:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise CollectionFileError(f"{path}: not a simlib collection file (no {MANIFEST})") from None
    _check_stored(path, info)
    if info.file_size > MAX_MANIFEST_BYTES:
        raise CollectionFileError(f"{path}: {MANIFEST} is implausibly large ({info.file_size} bytes)")
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (ValueError, RecursionError, zipfile.BadZipFile, OSError) as exc:
        raise CollectionFileError(f"{path}: {MANIFEST} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict):
        raise CollectionFileError(f"{path}: not a simlib collection file ({MANIFEST} holds no JSON object)")
    if manifest.get("format") != FORMAT:
        raise CollectionFileError(f"{path}: not a simlib collection file (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        versions = manifest.get("library_versions")
        raise CollectionFileError(
            f"{path}: collection format version {version} was written by simlib "
            f"{versions.get('simlib', '?') if isinstance(versions, dict) else '?'}; "
            f"`simlib convert` reads version {FORMAT_VERSION}. Rebuild the collection with `simlib index`."
        )
    if not isinstance(manifest.get("files"), dict):
        raise CollectionFileError(f"{path}: manifest lists no member files")
    return manifest


def _member(path: Path, archive: zipfile.ZipFile, name: str, expected: dict) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CollectionFileError(f"{path}: member {name} listed in the manifest is missing") from None
    _check_stored(path, info)
    if info.file_size != expected.get("bytes"):
        raise CollectionFileError(
            f"{path}: member {name} has {info.file_size} bytes, the manifest says {expected.get('bytes')}"
        )
    try:
        data = archive.read(name)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CollectionFileError(f"{path}: member {name} is unreadable ({exc})") from None
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise CollectionFileError(f"{path}: checksum mismatch for {name}: the file was modified or corrupted")
    return data


def _check_stored(path: Path, info: zipfile.ZipInfo) -> None:
    """simlib stores members uncompressed, so reading one costs no more memory than the file's size; a compressed
    member could inflate to any size (a zip bomb) and is refused unread."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise CollectionFileError(
            f"{path}: member {info.filename} is compressed; simlib writes members stored, so this file was not "
            "written by simlib"
        )


def _parse(path: Path, name: str, parse):
    try:
        return parse()
    except Exception as exc:
        raise CollectionFileError(f"{path}: member {name} cannot be parsed ({exc})") from None
