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
import time
import zipfile
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np

from .index import index_from_bytes, index_to_bytes

FORMAT = "simlib-collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.faiss"
MAX_MANIFEST_BYTES = 512 * 1024 * 1024


class CollectionFileError(ValueError):
    """A collection file that is missing, corrupt, tampered with, or from an incompatible version."""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("simlib", "torch", "torchvision", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    versions["faiss"] = faiss.__version__
    return versions


def write_collection(path: Path, manifest: dict, arrays: dict[str, np.ndarray], index: faiss.Index) -> Path:
    """Atomically write `manifest` (plus format, versions and checksums), `arrays` and `index` to `path`."""
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


def read_collection(path: Path) -> tuple[dict, dict[str, np.ndarray], faiss.Index]:
    """Manifest, arrays and index of a collection file, each member verified against its recorded SHA-256."""
    with _open(path) as archive:
        manifest = _manifest(path, archive)
        arrays = {}
        index = None
        for name, expected in manifest["files"].items():
            data = _member(path, archive, name, expected)
            if name == INDEX:
                index = _parse(path, name, lambda: index_from_bytes(data))
            elif name.endswith(".npy"):
                arrays[name[:-4]] = _parse(path, name, lambda: np.load(io.BytesIO(data), allow_pickle=False))
        if index is None:
            raise CollectionFileError(f"{path}: no {INDEX} in the collection")
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
    if info.file_size > MAX_MANIFEST_BYTES:
        raise CollectionFileError(f"{path}: {MANIFEST} is implausibly large ({info.file_size} bytes)")
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise CollectionFileError(f"{path}: {MANIFEST} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CollectionFileError(f"{path}: not a simlib collection file (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CollectionFileError(
            f"{path}: collection format version {version} was written by simlib "
            f"{manifest.get('library_versions', {}).get('simlib', '?')}; this simlib reads version {FORMAT_VERSION}. "
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


def _parse(path: Path, name: str, parse):
    try:
        return parse()
    except Exception as exc:
        raise CollectionFileError(f"{path}: member {name} cannot be parsed ({exc})") from None
