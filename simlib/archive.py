"""Collection files: one zip archive holding manifest.json, NumPy arrays (.npy) and the FAISS index.

Nothing in it is pickled: arrays load with `allow_pickle=False`, the manifest is JSON, and every member is checked
against the SHA-256 the manifest records before it is parsed. Writes go to a temporary file in the same folder,
are fsynced, then renamed over the target, so a crash at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import struct
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import MAX_EF

if TYPE_CHECKING:
    import faiss

FORMAT = "simlib-collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.faiss"
MAX_MANIFEST_BYTES = 512 * 1024 * 1024


class CollectionFileError(ValueError):
    """A collection file that is missing, corrupt, tampered with, or from an incompatible version."""


def library_versions() -> dict[str, str]:
    from importlib import metadata  # here: importing it costs a tenth of a second that `simlib info` need not pay
    versions = {"python": platform.python_version()}
    for package in ("simlib", "torch", "torchvision", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    try:
        versions["faiss"] = metadata.version("faiss-cpu")
    except metadata.PackageNotFoundError:
        versions["faiss"] = "unknown"
    return versions


def write_collection(path: Path, manifest: dict, arrays: dict[str, np.ndarray], index: "faiss.Index") -> Path:
    """Atomically write `manifest` (plus format, versions and checksums), `arrays` and `index` to `path`."""
    from .index import index_to_bytes  # FAISS is imported by what reads or writes an index, not by read_manifest

    path = Path(path)
    if path.is_dir():
        raise CollectionFileError(f"{path}: is a folder; give a file name such as photos.simlib")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    members: dict[str, dict] = {}
    _remove_stale_temporaries(path)
    try:
        with open(temporary, "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, array in arrays.items():
                    buffer = io.BytesIO()
                    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
                    members[f"{name}.npy"] = _write_member(archive, f"{name}.npy", buffer.getbuffer())
                members[INDEX] = _write_member(archive, INDEX, index_to_bytes(index))
                full = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "library_versions": library_versions(),
                    **manifest,
                    "files": members,
                }
                archive.writestr(MANIFEST, json.dumps(full, indent=1, allow_nan=False))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_folder(path.parent)
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files left by a writer that was killed (its process no longer exists)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            pid = int(stale.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _write_member(archive: zipfile.ZipFile, name: str, data) -> dict:
    archive.writestr(name, bytes(data))
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename is still atomic
    finally:
        os.close(handle)


def read_manifest(path: Path) -> dict:
    """The manifest of a collection file, after checking format and version (members are not verified)."""
    with _open(path) as archive:
        return _manifest(path, archive)


def read_collection(path: Path) -> tuple[dict, dict[str, np.ndarray], "faiss.Index"]:
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
            f"this simlib reads version {FORMAT_VERSION}. "
            "Rebuild the collection with `simlib index`."
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


# ------------------------------------------------------------------------------------------------ index.faiss
# FAISS reads an index trusting every length and id in it: a forged length makes it allocate that much before
# failing, and a forged neighbour id makes a search read outside the graph.
# So before FAISS sees the bytes, their structure is checked against the two layouts simlib writes
# (faiss/impl/index_write.cpp: IndexHNSWFlat over IndexFlatL2, or IndexFlatL2 alone); anything else is refused.

_HNSW_FLAT, _FLAT_L2 = b"IHNf", b"IxF2"
_METRIC_L2 = 1
_MAX_LEVELS = 64



class _IndexReader:
    """Reads the little-endian fields of a serialized index, refusing any length the bytes do not hold."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.position = 0

    def take(self, size: int) -> memoryview:
        if size < 0 or size > len(self.data) - self.position:
            raise ValueError(f"a field at byte {self.position} claims {size} bytes; {self.remaining} remain")
        self.position += size
        return self.data[self.position - size : self.position]

    @property
    def remaining(self) -> int:
        return len(self.data) - self.position

    def scalar(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def vector(self, dtype: str, scale: int = 1) -> np.ndarray:
        """A std::vector: its element count (times `scale` elements), then the elements."""
        count = self.scalar("Q") * scale
        itemsize = np.dtype(dtype).itemsize
        if count > self.remaining // itemsize:
            raise ValueError(f"a vector at byte {self.position - 8} claims {count} elements; {self.remaining} bytes remain")
        return np.frombuffer(self.take(count * itemsize), dtype=dtype)


def check_index_bytes(data: bytes, rows: int | None = None) -> None:
    """Raise ValueError unless `data` is an HNSW-flat or flat L2 index as simlib writes it, consistent in every
    length and neighbour id, with `rows` vectors when given."""
    reader = _IndexReader(data)
    kind = bytes(reader.take(4))
    if kind not in (_HNSW_FLAT, _FLAT_L2):
        raise ValueError(f"index type {kind!r} is not one simlib writes (HNSW-flat or flat L2)")
    d, n = _check_index_header(reader)
    if rows is not None and n != rows:
        raise ValueError(f"the index holds {n} vectors, the collection {rows}")
    if kind == _HNSW_FLAT:
        _check_hnsw(reader, n)
        if bytes(reader.take(4)) != _FLAT_L2:
            raise ValueError("the HNSW graph is not stored over a flat L2 index")
        if _check_index_header(reader) != (d, n):
            raise ValueError("the HNSW graph and its vector storage disagree on shape")
    codes = reader.vector("<f4", scale=1)
    if codes.size != n * d:
        raise ValueError(f"the index stores {codes.size} values for {n} vectors of {d} dimensions")
    if reader.remaining:
        raise ValueError(f"{reader.remaining} unexpected bytes after the index")


def _check_index_header(reader: _IndexReader) -> tuple[int, int]:
    d, n = reader.scalar("i"), reader.scalar("q")
    reader.take(16)  # two unused 64-bit fields
    if bytes(reader.take(1)) not in (b"\x00", b"\x01"):
        raise ValueError("the index header is malformed")
    if reader.scalar("i") != _METRIC_L2:
        raise ValueError("the index does not use the L2 metric")
    if d < 1 or n < 0:
        raise ValueError(f"the index declares {d} dimensions and {n} vectors")
    return d, n


def _check_hnsw(reader: _IndexReader, n: int) -> None:
    """Every node's neighbour list lies where its level says and names only nodes present on that level."""
    probabilities = reader.vector("<f8")
    cumulative = reader.vector("<i4").astype(np.int64)
    levels = reader.vector("<i4").astype(np.int64)
    offsets = reader.vector("<u8")
    neighbours = reader.vector("<i4")
    entry, max_level = reader.scalar("i"), reader.scalar("i")
    ef_construction, ef_search, _upper_beam = reader.scalar("i"), reader.scalar("i"), reader.scalar("i")
    depth = len(probabilities)
    if not 1 <= depth <= _MAX_LEVELS or len(cumulative) != depth + 1 or cumulative[0] != 0:
        raise ValueError("the HNSW level table is malformed")
    if np.any(np.diff(cumulative) < 0) or not np.isfinite(probabilities).all():
        raise ValueError("the HNSW level table is malformed")
    if len(levels) != n or len(offsets) != n + 1:
        raise ValueError("the HNSW graph does not match its vector count")
    if not (1 <= ef_construction <= MAX_EF and 1 <= ef_search <= MAX_EF):
        # a search allocates in proportion to efSearch
        raise ValueError(f"HNSW efConstruction {ef_construction} or efSearch {ef_search} outside 1..{MAX_EF}")
    if n and (levels.min() < 1 or levels.max() > depth):
        raise ValueError("an HNSW node has a level outside the level table")
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets.astype(np.int64)), cumulative[levels]):
        raise ValueError("the HNSW neighbour offsets do not follow the node levels")
    if len(neighbours) != int(offsets[-1]):
        raise ValueError("the HNSW neighbour table does not match its offsets")
    if n == 0:
        if entry != -1:
            raise ValueError("an empty HNSW graph names an entry point")
        return
    if not 0 <= entry < n or max_level != levels.max() - 1 or levels[entry] - 1 != max_level:
        raise ValueError("the HNSW entry point is not a node on the top level")
    if neighbours.min(initial=-1) < -1 or neighbours.max(initial=-1) >= n:
        raise ValueError("an HNSW neighbour id lies outside the graph")
    # the level of each slot: its position within its node's list, looked up in the cumulative level sizes
    starts = np.repeat(offsets[:-1].astype(np.int64), np.diff(offsets.astype(np.int64)))
    slot_level = np.searchsorted(cumulative, np.arange(len(neighbours)) - starts, side="right") - 1
    linked = neighbours >= 0
    if np.any(levels[neighbours[linked]] <= slot_level[linked]):
        raise ValueError("an HNSW node links to a node absent from that level")
