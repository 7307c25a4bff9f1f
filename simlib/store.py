"""Collection folders on disk: records in SQLite, arrays in checksummed data files beside it, one writer at a time.

    photos.simlib/
      collection.sqlite     one row per image, the skipped files, the settings (JSON), the PCA arrays, and the
                            name, size and SHA-256 of every chunk of every data file
      features-<id>.f32     backbone features (n, dim), little-endian float32, appended a chunk per save
      vectors-<id>.f32      the search core's reduced vectors (n, pca dim), appended the same way
      stars-<id>.f64        each image's rating (n,), NaN for unrated; rewritten when ratings change (8 bytes each)
      index-<id>.faiss      the FAISS index over the first ids; the ids added since are added again at load,
                            in the batches they were added in (`simlib.index.add_vectors` makes that exact)
      lock                  held (flock) by the process writing

A save appends what is new to the data files, fsyncs them, then commits one SQLite transaction that records the
new chunks, rows and settings; until that commit the database names only what was there before, so a crash at
any moment leaves the last collection saved in full. Bytes a killed writer appended past the recorded chunks are
cut by the next writer, and files no committed state names are removed then. A full write (a new collection,
compaction, refit) puts everything into new files under a new epoch, in one transaction the same way.

Nothing is unpickled: arrays are raw little-endian numbers of a recorded dtype and shape, settings are JSON, and
every chunk, array and index is checked against its SHA-256 before it is used; the FAISS bytes are checked by
`simlib.index_check.check_index_bytes` before FAISS reads them. Loading maps the features and vectors into memory
without reading the features (they are verified when something reads them all, such as a refit).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .errors import CollectionFileError
from .ratings import Rating, RatingValue
from .records import FileStamp, Row

if TYPE_CHECKING:
    import faiss

FORMAT = "simlib-collection"
FORMAT_VERSION = 2
DATABASE = "collection.sqlite"
LOCK = "lock"
KINDS = {"features": ("<f4", "f32"), "vectors": ("<f4", "f32"), "stars": ("<f8", "f64"), "index": ("faiss", "faiss")}
ARRAY_DTYPES = {"<f4", "<f8", "<i8"}
BUSY_MS = 60_000  # how long SQLite waits for another connection's lock before failing
LOOKUP_BATCH = 900  # ids per query (SQLite allows 999 parameters)

# path: relative to the root with '/' separators, or absolute outside it, as bytes (names need not be UTF-8);
# size, mtime_ns, sha256: the file when its features were extracted; sidecars: its XMP sidecars then
# ("name size mtime_ns" lines); stars: NULL for unrated; rating: JSON {source, values, problems}
IMAGES = """(id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE, size INTEGER, mtime_ns INTEGER, sha256 TEXT,
    sidecars BLOB NOT NULL, stars REAL, conflict INTEGER NOT NULL, rating TEXT NOT NULL)"""
SCHEMA = f"""
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images {IMAGES};
CREATE TABLE removed (id INTEGER PRIMARY KEY);
CREATE TABLE errors (path BLOB NOT NULL, reason BLOB NOT NULL);
CREATE TABLE arrays (name TEXT PRIMARY KEY, dtype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL,
                     sha256 TEXT NOT NULL);
CREATE TABLE files (name TEXT PRIMARY KEY, kind TEXT NOT NULL UNIQUE, width INTEGER NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE chunks (file TEXT NOT NULL, seq INTEGER NOT NULL, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
                     sha256 TEXT NOT NULL, PRIMARY KEY (file, seq));
"""
TABLES = ("settings", "images", "removed", "errors", "arrays", "files", "chunks")
_ROW_COLUMNS = "id, path, size, mtime_ns, sha256, sidecars, stars, rating"


class CollectionLockedError(CollectionFileError):
    """Another process is writing the collection."""


def library_versions() -> dict[str, str]:
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
    versions["sqlite"] = sqlite3.sqlite_version
    return versions


# ------------------------------------------------------------------------------------------------ format


def check_folder(path: Path) -> None:
    """Raise CollectionFileError unless `path` is a collection folder of this format."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as handle:
            zipped = handle.read(4) == b"PK\x03\x04"
        if zipped:
            raise CollectionFileError(
                f"{path}: a collection file of format version 1 (one zip file); this simlib keeps a collection in "
                f"a folder (format version {FORMAT_VERSION}). Convert it with `simlib convert {path} NEW.simlib` "
                "(or `simlib.convert.convert_collection`)"
            )
        raise CollectionFileError(f"{path}: not a simlib collection (a file, not a collection folder)")
    if not path.exists():
        raise CollectionFileError(f"{path}: no such collection")
    if not (path / DATABASE).is_file():
        raise CollectionFileError(f"{path}: not a simlib collection (no {DATABASE} in the folder)")


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path / DATABASE, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        db.execute("PRAGMA synchronous = FULL")
        return db
    except sqlite3.Error as exc:
        raise CollectionFileError(f"{path / DATABASE}: cannot be opened ({exc})") from None


@contextlib.contextmanager
def _sql(path: Path, what: str):
    """SQLite errors as CollectionFileError naming the database and what was being done."""
    try:
        yield
    except sqlite3.Error as exc:
        raise CollectionFileError(f"{path / DATABASE}: {what} failed: {exc}") from None


# ------------------------------------------------------------------------------------------------ the lock

_held: dict[str, list] = {}  # lock file -> [re-entrant thread lock, open lock file, depth]; flock is per process
_held_guard = threading.Lock()


@contextlib.contextmanager
def locked(folder: str | os.PathLike, *, wait: bool = True, on_wait=None):
    """Hold the writer lock of the collection folder (created if needed): other processes that ask for it wait
    (`wait`, calling `on_wait(message)` once first) or get CollectionLockedError. Re-entrant in a thread; other
    threads of this process wait for it too."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder / LOCK)
    with _held_guard:
        entry = _held.setdefault(key, [threading.RLock(), None, 0])
    entry[0].acquire()
    try:
        if entry[2] == 0:
            entry[1] = _take_flock(Path(key), folder, wait, on_wait)
        entry[2] += 1
        try:
            yield
        finally:
            entry[2] -= 1
            if entry[2] == 0:
                entry[1].close()  # releases the flock
                entry[1] = None
    finally:
        entry[0].release()


def _take_flock(lock: Path, folder: Path, wait: bool, on_wait):
    handle = open(lock, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        message = f"{folder}: another process (pid {holder}) is writing this collection"
        if not wait:
            handle.close()
            raise CollectionLockedError(f"{message}; try again when it has finished") from None
        if on_wait is not None:
            on_wait(f"{message}; waiting for it to finish")
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class DataFile:
    """A data file as the database records it: `rows` of `width` values (for an index: the ids it holds) in
    chunks of (rows, bytes, sha256)."""

    name: str
    kind: str
    width: int
    rows: int
    chunks: tuple[tuple[int, int, str], ...]

    @property
    def bytes(self) -> int:
        return sum(size for _, size, _ in self.chunks)


class Snapshot:
    """A collection folder as its last commit left it: settings, arrays and data files, mapped at opening (unless
    `data` is False: settings and records only); image rows are read on demand (`rows`), and refused if the
    collection was rewritten since (another epoch)."""

    def __init__(self, folder: str | os.PathLike, *, data: bool = True, index: bool = True):
        self.folder = Path(os.path.abspath(folder))
        check_folder(self.folder)
        self._db = _connect(self.folder)
        self._lock = threading.Lock()
        with _sql(self.folder, "reading the collection"), self._read():
            self._check_schema()
            self.settings = self._settings()
            self.epoch = _integer(self.settings, "epoch", self.folder)
            self.generation = _integer(self.settings, "generation", self.folder)
            self.rows_total = _integer(self.settings, "rows", self.folder)
            self.files = self._files()
            self.removed = np.array([r[0] for r in self._db.execute("SELECT id FROM removed ORDER BY id")],
                                    dtype=np.int64)
            self.errors = [(_text(p), _text(r)) for p, r in self._db.execute("SELECT path, reason FROM errors")]
            self._arrays = self._db.execute("SELECT name, dtype, shape, data, sha256 FROM arrays").fetchall()
            # opened inside the read transaction: no writer can commit and remove them meanwhile
            self._maps = {kind: self._map(kind) for kind in ("features", "vectors", "stars")} if data else {}
            self._index_bytes = self._read_file(self.files["index"]) if data and index else b""
        self._verified: set[str] = set()

    @contextlib.contextmanager
    def _read(self):
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("COMMIT")

    def _check_schema(self) -> None:
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = set(TABLES) - tables
        if missing:
            raise CollectionFileError(f"{self.folder / DATABASE}: not a simlib collection database (no "
                                      f"{', '.join(sorted(missing))} table)")

    def _settings(self) -> dict:
        settings = {}
        for key, value in self._db.execute("SELECT key, value FROM settings"):
            try:
                settings[key] = json.loads(value)
            except (TypeError, ValueError, RecursionError):
                raise CollectionFileError(f"{self.folder / DATABASE}: setting {key!r} is not valid JSON") from None
        if settings.get("format") != FORMAT:
            raise CollectionFileError(f"{self.folder}: not a simlib collection (format {settings.get('format')!r})")
        version = settings.get("format_version")
        if version != FORMAT_VERSION:
            versions = settings.get("library_versions")
            raise CollectionFileError(
                f"{self.folder}: collection format version {version} was written by simlib "
                f"{versions.get('simlib', '?') if isinstance(versions, dict) else '?'}; this simlib reads version "
                f"{FORMAT_VERSION}. Rebuild the collection with `simlib index`."
            )
        return settings

    def _files(self) -> dict[str, DataFile]:
        chunks: dict[str, list] = {}
        for file, seq, rows, size, digest in self._db.execute(
            "SELECT file, seq, rows, bytes, sha256 FROM chunks ORDER BY file, seq"
        ):
            chunks.setdefault(file, []).append((rows, size, digest))
        files = {}
        for name, kind, width, rows in self._db.execute("SELECT name, kind, width, rows FROM files"):
            if kind not in KINDS or not isinstance(name, str) or Path(name).name != name or name == DATABASE:
                raise CollectionFileError(f"{self.folder / DATABASE}: data file entry {name!r} ({kind!r}) is invalid")
            data = DataFile(name, kind, width, rows, tuple(chunks.get(name, ())))
            _check_data_file(self.folder, data, self.rows_total)
            files[kind] = data
        missing = set(KINDS) - set(files)
        if missing:
            raise CollectionFileError(f"{self.folder / DATABASE}: no {', '.join(sorted(missing))} file recorded")
        return files

    def _map(self, kind: str) -> np.ndarray:
        data = self.files[kind]
        dtype = np.dtype(KINDS[kind][0])
        path = self.folder / data.name
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CollectionFileError(f"{self.folder}: data file {data.name} is missing ({exc.strerror})") from None
        # a killed writer may have left bytes past the recorded chunks; the stars file is written whole
        if size < data.bytes or (kind == "stars" and size != data.bytes):
            raise CollectionFileError(f"{self.folder}: data file {data.name} has {size} bytes, the database "
                                      f"records {data.bytes}")
        shape = (data.rows, data.width) if kind != "stars" else (data.rows,)
        if data.rows == 0:
            return np.empty(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def _read_file(self, data: DataFile) -> bytes:
        path = self.folder / data.name
        try:
            with open(path, "rb") as handle:
                content = handle.read(data.bytes + 1)
        except OSError as exc:
            raise CollectionFileError(f"{self.folder}: data file {data.name} is unreadable ({exc.strerror})") from None
        if len(content) != data.bytes:
            raise CollectionFileError(f"{self.folder}: data file {data.name} has {path.stat().st_size} bytes, the "
                                      f"database records {data.bytes}")
        return content

    # -------------------------------------------------------------------- verified contents

    def mapped(self, kind: str) -> np.ndarray:
        """The features, vectors or stars as mapped, not yet verified (`array` verifies)."""
        return self._maps[kind]

    def array(self, kind: str) -> np.ndarray:
        """The features, vectors or stars, memory-mapped; each chunk checked against its SHA-256 the first time
        (which reads the whole file once)."""
        mapped = self._maps[kind]
        if kind not in self._verified:
            _verify_chunks(self.folder, self.files[kind], memoryview(mapped).cast("B") if mapped.size else b"")
            self._verified.add(kind)
        return mapped

    def index(self) -> faiss.Index:
        """The FAISS index, checked (checksum, then structure) before FAISS reads it; it holds the first
        `files['index'].rows` ids. Read once: the bytes are let go."""
        data = self.files["index"]
        content = self._index_bytes
        if len(content) != data.bytes:
            raise ValueError("the index bytes of this snapshot were not read, or were already parsed")
        _verify_chunks(self.folder, data, content)
        from .index import index_from_bytes  # FAISS loads with the index, not with the records (`simlib info`)
        from .index_check import check_index_bytes

        try:
            check_index_bytes(content, data.rows)
            index = index_from_bytes(content, huge_pages="soon")  # loading returns while the pages collapse
        except Exception as exc:
            raise CollectionFileError(f"{self.folder}: index {data.name} cannot be parsed ({exc})") from None
        self._index_bytes = b""  # the parsed index holds its own copy
        return index

    def arrays(self) -> dict[str, np.ndarray]:
        """The small arrays (the PCA's), each checked against its SHA-256."""
        arrays = {}
        for name, dtype, shape, data, digest in self._arrays:
            where = f"{self.folder / DATABASE}: array {name!r}"
            if dtype not in ARRAY_DTYPES or not isinstance(data, bytes):
                raise CollectionFileError(f"{where} has dtype {dtype!r}; simlib writes {sorted(ARRAY_DTYPES)}")
            if hashlib.sha256(data).hexdigest() != digest:
                raise CollectionFileError(f"{where}: checksum mismatch: the database was modified or corrupted")
            try:
                dims = json.loads(shape)
                if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
                    raise ValueError(f"shape {shape!r}")
                arrays[name] = np.frombuffer(data, dtype=dtype).reshape(dims)
            except (ValueError, TypeError) as exc:
                raise CollectionFileError(f"{where} cannot be parsed ({exc})") from None
        return arrays

    # -------------------------------------------------------------------- rows (simlib.records.RowSource)

    def rows(self, ids: Sequence[int]) -> list[Row]:
        found: dict[int, Row] = {}
        with self._lookup():
            for start in range(0, len(ids), LOOKUP_BATCH):
                batch = [int(i) for i in ids[start : start + LOOKUP_BATCH]]
                query = f"SELECT {_ROW_COLUMNS} FROM images WHERE id IN ({','.join('?' * len(batch))})"
                found.update(self._parse(row) for row in self._db.execute(query, batch))
        missing = [i for i in ids if int(i) not in found]
        if missing:
            raise CollectionFileError(f"{self.folder}: image id {missing[0]} was removed by another process since "
                                      "the collection was loaded; load it again")
        return [found[int(i)] for i in ids]

    def ids_under(self, key_prefix: str | None, absolute_prefix: str) -> np.ndarray:
        clause, arguments = _prefix_ranges(key_prefix, absolute_prefix)
        with self._lookup():
            ids = [i for (i,) in self._db.execute(f"SELECT id FROM images WHERE {clause}", arguments)]
        return np.array(ids, dtype=np.int64)

    def ids_of(self, keys: Sequence[str]) -> dict[str, int]:
        found = {}
        with self._lookup():
            for start in range(0, len(keys), LOOKUP_BATCH):
                batch = [_blob(k) for k in keys[start : start + LOOKUP_BATCH]]
                query = f"SELECT path, id FROM images WHERE path IN ({','.join('?' * len(batch))})"
                found.update((_text(path), i) for path, i in self._db.execute(query, batch))
        return found

    def scan(self, key_prefix: str | None, absolute_prefix: str) -> Iterator[tuple[int, Row]]:
        clause, arguments = _prefix_ranges(key_prefix, absolute_prefix)
        with self._lookup():
            rows = self._db.execute(f"SELECT {_ROW_COLUMNS} FROM images WHERE {clause}", arguments).fetchall()
        return (self._parse(row) for row in rows)

    def stamps(self, key_prefix: str | None, absolute_prefix: str) -> Iterator[tuple[int, str, FileStamp | None]]:
        clause, arguments = _prefix_ranges(key_prefix, absolute_prefix)
        with self._lookup():
            rows = self._db.execute(f"SELECT id, path, size, mtime_ns, sha256, sidecars FROM images WHERE {clause}",
                                    arguments).fetchall()
        for i, path, size, mtime_ns, digest, sidecars in rows:
            try:
                stamp = None if size is None else FileStamp(int(size), int(mtime_ns), digest, _text(sidecars))
                yield i, _text(path), stamp
            except (TypeError, ValueError) as exc:
                raise CollectionFileError(f"{self.folder / DATABASE}: image row {i} is malformed ({exc})") from None

    def rating_counts(self) -> dict[str | float, int]:
        """Live images per rating value (None: unrated), and the number with conflicting sources (key 'conflicts')."""
        with self._lookup():
            counts: dict = dict(self._db.execute("SELECT stars, count(*) FROM images GROUP BY stars").fetchall())
            counts["conflicts"] = self._db.execute("SELECT count(*) FROM images WHERE conflict").fetchone()[0]
        return counts

    @contextlib.contextmanager
    def _lookup(self):
        with _sql(self.folder, "reading image records"), self._read():
            (value,) = self._db.execute("SELECT value FROM settings WHERE key = 'epoch'").fetchone() or ("null",)
            if json.loads(value) != self.epoch:
                raise CollectionFileError(f"{self.folder}: the collection was rewritten by another process since "
                                          "it was loaded; load it again")
            yield

    def _parse(self, row) -> tuple[int, Row]:
        i, path, size, mtime_ns, digest, sidecars, stars, rating = row
        try:
            details = json.loads(rating)
            stars = None if stars is None else float(stars)
            if stars is not None and not (stars == -1 or 0 <= stars <= 5):
                raise ValueError(f"rating {stars} is neither -1 nor within 0..5")
            values = tuple(RatingValue(str(s), str(raw), float(v)) for s, raw, v in details["values"])
            parsed = Rating(stars, details["source"], values, tuple(str(p) for p in details["problems"]))
            if parsed.source is not None and not isinstance(parsed.source, str):
                raise ValueError("the rating source is not text")
            stamp = None if size is None else FileStamp(int(size), int(mtime_ns), digest, _text(sidecars))
            return i, Row(_text(path), parsed, stamp)
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise CollectionFileError(f"{self.folder / DATABASE}: image row {i} is malformed ({exc})") from None

    def close(self) -> None:
        self._db.close()


def _check_data_file(folder: Path, data: DataFile, rows_total: int) -> None:
    where = f"{folder / DATABASE}: data file {data.name}"
    if not all(isinstance(v, int) and v >= 0 for v in (data.width, data.rows)):
        raise CollectionFileError(f"{where}: width and rows must be integers >= 0")
    for rows, size, digest in data.chunks:
        if not (isinstance(rows, int) and isinstance(size, int) and rows >= 0 and size >= 0 and isinstance(digest, str)):
            raise CollectionFileError(f"{where}: a chunk record is malformed")
    if data.kind == "index":
        if data.rows > rows_total or len(data.chunks) != 1:
            raise CollectionFileError(f"{where}: holds {data.rows} ids of {rows_total}, in {len(data.chunks)} chunks")
        return
    itemsize = np.dtype(KINDS[data.kind][0]).itemsize
    width = data.width if data.kind != "stars" else 1
    if data.rows != rows_total or sum(r for r, _, _ in data.chunks) != data.rows or any(
        size != rows * width * itemsize for rows, size, _ in data.chunks
    ):
        raise CollectionFileError(f"{where}: its chunks do not hold the {rows_total} rows of {width} values "
                                  "the collection has")


def _verify_chunks(folder: Path, data: DataFile, content) -> None:
    position = 0
    for _, size, digest in data.chunks:
        if hashlib.sha256(content[position : position + size]).hexdigest() != digest:
            raise CollectionFileError(f"{folder}: checksum mismatch for {data.name} (bytes {position} to "
                                      f"{position + size}): the file was modified or corrupted")
        position += size


def _prefix_ranges(key_prefix: str | None, absolute_prefix: str) -> tuple[str, list[bytes]]:
    """A WHERE clause (ranges of the path index) for keys beginning with `key_prefix` (None: none; "": every
    relative key) or, for absolute keys, `absolute_prefix` (which ends with '/'). Relative keys never begin with
    '/' and absolute ones always do."""
    ranges: list[tuple[bytes, bytes | None]] = []
    if key_prefix == "":
        ranges += [(b"", b"/"), (b"0", None)]  # everything but what begins with '/'
    elif key_prefix is not None:
        ranges.append(_range(_blob(key_prefix)))
    ranges.append(_range(_blob(absolute_prefix)))
    clause = " OR ".join("(path >= ?" + (" AND path < ?)" if high is not None else ")") for _, high in ranges)
    return clause, [bound for pair in ranges for bound in pair if bound is not None]


def _range(prefix: bytes) -> tuple[bytes, bytes]:
    """Bytes beginning with `prefix`, which ends with '/': from it up to the same with '0' ('/' + 1) last."""
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])


def _blob(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(blob) -> str:
    if not isinstance(blob, bytes):
        raise ValueError(f"expected bytes, got {type(blob).__name__}")
    return blob.decode("utf-8", "surrogateescape")


def _integer(settings: dict, key: str, folder: Path) -> int:
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CollectionFileError(f"{folder / DATABASE}: setting {key!r} must be an integer >= 0, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------ writing


class Writer:
    """One save: data files appended or written, then one transaction. Use through `write`."""

    def __init__(self, folder: Path, db: sqlite3.Connection, settings: dict, fresh: bool):
        self.folder = folder
        self.db = db
        self.epoch = settings["epoch"] + 1 if fresh else settings["epoch"]
        self.generation = settings["generation"] + 1
        self.rows_total: int | None = None  # ids the collection holds once committed; set by the caller
        self._old_images = fresh  # a fresh write empties the images table, once it has copied what it keeps

    def append(self, kind: str, array: np.ndarray) -> None:
        """Append rows to the features or vectors file (a new file in a fresh write)."""
        dtype = np.dtype(KINDS[kind][0])
        array = np.ascontiguousarray(array, dtype=dtype)
        name, committed, chunks = self._appendable(kind, array.shape[1])
        with open(self.folder / name, "r+b") as handle:
            handle.truncate(committed)  # bytes a killed writer left past the recorded chunks
            handle.seek(committed)
            digest = hashlib.sha256()
            for start in range(0, len(array), 65536):
                block = memoryview(array[start : start + 65536]).cast("B")
                handle.write(block)
                digest.update(block)
            handle.flush()
            os.fsync(handle.fileno())
        self.db.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)",
                        (name, chunks, len(array), array.nbytes, digest.hexdigest()))
        self.db.execute("UPDATE files SET rows = rows + ? WHERE name = ?", (len(array), name))

    def _appendable(self, kind: str, width: int) -> tuple[str, int, int]:
        row = self.db.execute("SELECT name, width FROM files WHERE kind = ?", (kind,)).fetchone()
        if row is None:
            name = self._new_file(kind, width, 0)
            return name, 0, 0
        name, recorded = row
        if recorded != width:
            raise CollectionFileError(f"{self.folder}: {kind} of width {width} for a file of width {recorded}")
        committed, count = self.db.execute("SELECT coalesce(sum(bytes), 0), count(*) FROM chunks WHERE file = ?",
                                           (name,)).fetchone()
        return name, committed, count

    def replace(self, kind: str, content: bytes | np.ndarray, rows: int, width: int = 0) -> None:
        """Write the stars or the index as a new file, replacing the old one at commit."""
        data = content if isinstance(content, bytes) else np.ascontiguousarray(content, KINDS[kind][0]).tobytes()
        self.db.execute("DELETE FROM chunks WHERE file IN (SELECT name FROM files WHERE kind = ?)", (kind,))
        self.db.execute("DELETE FROM files WHERE kind = ?", (kind,))
        name = self._new_file(kind, width, rows)
        with open(self.folder / name, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.db.execute("INSERT INTO chunks VALUES (?, 0, ?, ?, ?)",
                        (name, rows, len(data), hashlib.sha256(data).hexdigest()))

    def replace_index(self, index: faiss.Index) -> None:
        from .index import index_to_bytes

        self.replace("index", index_to_bytes(index), index.ntotal)

    def _new_file(self, kind: str, width: int, rows: int) -> str:
        name = f"{kind}-{uuid.uuid4().hex[:16]}.{KINDS[kind][1]}"
        (self.folder / name).touch()
        self.db.execute("INSERT INTO files VALUES (?, ?, ?, ?)", (name, kind, width, rows))
        return name

    def insert_rows(self, ids: Sequence[int], rows: Sequence[Row]) -> None:
        self._drop_old_images()
        self.db.executemany(f"INSERT INTO images ({_ROW_COLUMNS}, conflict) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (_row_values(int(i), row) for i, row in zip(ids, rows)))

    def update_rows(self, ids: Sequence[int], rows: Sequence[Row]) -> None:
        self.db.executemany("UPDATE images SET path = ?, size = ?, mtime_ns = ?, sha256 = ?, sidecars = ?, "
                            "stars = ?, rating = ?, conflict = ? WHERE id = ?",
                            (_row_values(i, row)[1:] + (i,) for i, row in zip(ids, rows)))

    def remove_rows(self, ids: Sequence[int]) -> None:
        """Removed ids: their rows go, their vectors stay (filtered out) until the collection is compacted."""
        self._drop_old_images()
        self.db.executemany("DELETE FROM images WHERE id = ?", ((int(i),) for i in ids))
        self.db.executemany("INSERT OR IGNORE INTO removed VALUES (?)", ((int(i),) for i in ids))

    def copy_rows(self, source: Path, stored_ids: np.ndarray) -> None:
        """Rows of the collection at `source` (this one included) as new ids: id i gets row stored_ids[i]
        (ids where it is -1 are inserted separately)."""
        pairs = [(int(new), int(old)) for new, old in enumerate(stored_ids) if old >= 0]
        self.db.execute("CREATE TEMP TABLE keep (new INTEGER PRIMARY KEY, old INTEGER NOT NULL)")
        self.db.executemany("INSERT INTO keep VALUES (?, ?)", pairs)
        same = source.resolve() == self.folder.resolve()
        if same:
            self.db.execute("ALTER TABLE images RENAME TO images_before")
            self.db.execute(f"CREATE TABLE main.images {IMAGES}")
        else:
            self.db.execute("DELETE FROM main.images")
            self.db.execute("ATTACH DATABASE ? AS source", (f"file:{source / DATABASE}?mode=ro",))
        self._old_images = False
        table = "main.images_before" if same else "source.images"
        self.db.execute(f"INSERT INTO main.images ({_ROW_COLUMNS}, conflict) SELECT keep.new, i.path, i.size, "
                        f"i.mtime_ns, i.sha256, i.sidecars, i.stars, i.rating, i.conflict FROM keep JOIN {table} i "
                        "ON i.id = keep.old")
        copied = self.db.execute("SELECT count(*) FROM main.images").fetchone()[0]
        if copied != len(pairs):
            raise CollectionFileError(f"{source}: {len(pairs) - copied} image rows to copy are missing")
        self.db.execute("DROP TABLE temp.keep")
        if same:
            self.db.execute("DROP TABLE images_before")
        else:
            self.db.execute("DETACH DATABASE source")

    def _drop_old_images(self) -> None:
        if self._old_images:
            self.db.execute("DELETE FROM images")
            self._old_images = False

    def set_errors(self, errors: Sequence[tuple[str, str]]) -> None:
        self.db.execute("DELETE FROM errors")
        self.db.executemany("INSERT INTO errors VALUES (?, ?)", ((_blob(p), _blob(r)) for p, r in errors))

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.db.execute("DELETE FROM arrays")
        for name, array in arrays.items():
            dtype = array.dtype.newbyteorder("<").str
            data = np.ascontiguousarray(array, dtype=dtype).tobytes()
            self.db.execute("INSERT INTO arrays VALUES (?, ?, ?, ?, ?)", (name, dtype, json.dumps(list(array.shape)),
                                                                          data, hashlib.sha256(data).hexdigest()))

    def set_settings(self, settings: dict) -> None:
        for key, value in settings.items():
            self.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(value, allow_nan=False)))

    def _commit(self) -> None:
        self._drop_old_images()
        if self.rows_total is None:
            raise ValueError("a save must say how many ids the collection holds (rows_total)")
        self.set_settings({"epoch": self.epoch, "generation": self.generation, "rows": self.rows_total,
                           "modified": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        _fsync_folder(self.folder)  # the new files' names are on disk before the database names them
        self.db.execute("COMMIT")


@contextlib.contextmanager
def write(folder: str | os.PathLike, *, generation: int | None, fresh: bool) -> Iterator[Writer]:
    """A save into `folder` under its writer lock, committed when the block ends without an exception. With
    `generation`, the collection must still be at that generation (nobody else saved since it was loaded);
    `fresh` starts a new epoch (every data file new, every table emptied)."""
    folder = Path(folder)
    if folder.is_file():
        check_folder(folder)  # says what the file is (a format 1 collection, or not a collection)
    _check_writable(folder)  # before the lock file goes into a folder that is not a collection
    with locked(folder):
        _check_writable(folder)
        db = _connect(folder)
        try:
            with _sql(folder, "saving"):
                if _initialised(db):
                    db.execute("BEGIN IMMEDIATE")
                    settings = _current_settings(folder, db)
                else:  # new, or the first save of it was killed before it committed
                    settings = _initialise(db)
                if generation is not None and settings["generation"] != generation:
                    raise CollectionFileError(
                        f"{folder}: another process saved to this collection since it was loaded (generation "
                        f"{settings['generation']}, loaded {generation}); load it again and repeat the change"
                    )
                writer = Writer(folder, db, settings, fresh)
                if fresh:
                    for table in ("removed", "errors", "arrays", "files", "chunks"):
                        db.execute(f"DELETE FROM {table}")
                try:
                    yield writer
                    writer._commit()
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        finally:
            db.close()
        remove_unreferenced(folder)


def _check_writable(folder: Path) -> None:
    if folder.is_dir() and not (folder / DATABASE).exists() and any(p.name != LOCK for p in folder.iterdir()):
        raise CollectionFileError(f"{folder}: a folder that is not a simlib collection; save to a new name")


def _initialised(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'settings'").fetchone()[0] == 1


def _initialise(db: sqlite3.Connection) -> dict:
    """Tables and first settings, in a transaction left open for the save that creates the collection."""
    for table in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        raise CollectionFileError(f"a database with a {table[0]!r} table but no settings is not a simlib collection")
    db.executescript("BEGIN IMMEDIATE;" + SCHEMA)
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, "epoch": 0, "generation": 0, "rows": 0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    db.executemany("INSERT INTO settings VALUES (?, ?)", ((k, json.dumps(v)) for k, v in settings.items()))
    return settings


def _current_settings(folder: Path, db: sqlite3.Connection) -> dict:
    settings = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM settings")}
    for key in ("epoch", "generation"):
        _integer(settings, key, folder)
    return settings


def remove_unreferenced(folder: Path) -> None:
    """Data files no committed state names (left by a replaced state or a killed writer); call under the lock."""
    db = _connect(folder)
    try:
        with _sql(folder, "listing data files"):
            named = {name for (name,) in db.execute("SELECT name FROM files")}
    finally:
        db.close()
    suffixes = {f".{ext}" for _, ext in KINDS.values()}
    for path in folder.iterdir():
        if path.suffix in suffixes and path.name.split("-", 1)[0] in KINDS and path.name not in named:
            path.unlink(missing_ok=True)


def _row_values(i: int, row: Row) -> tuple:
    stamp, rating = row.stamp, row.rating
    details = {"source": rating.source, "values": [[v.source, v.raw, v.stars] for v in rating.values],
               "problems": list(rating.problems)}
    return (i, _blob(row.key), None if stamp is None else stamp.size, None if stamp is None else stamp.mtime_ns,
            None if stamp is None else stamp.sha256, _blob("" if stamp is None else stamp.sidecars), rating.stars,
            json.dumps(details, allow_nan=False), int(rating.conflict))


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some filesystems cannot sync a directory; the commit that names the files comes after anyway
    finally:
        os.close(handle)
