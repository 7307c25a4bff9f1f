"""Per-image records: which file each id is, what the file looked like when it was indexed, and its rating.

Paths are kept relative to the collection's root (the folder indexed), so a collection moved together with that
folder, or opened where the folder is mounted elsewhere (`root=`), keeps every result valid; a file outside the
root is kept by its absolute path. Records are columnar: a loaded collection keeps only an array saying where each
id's row is (`simlib.store` reads rows on demand, a few per search), and holds in memory just the rows added or
changed since it was loaded.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Iterator, Protocol, Sequence

import numpy as np

from .ratings import Rating

HASH_BLOCK = 1 << 20  # bytes read at a time while hashing a file


@dataclass(frozen=True)
class FileStamp:
    """What a file looked like when it was indexed: size in bytes, modification time in nanoseconds, the SHA-256
    of its bytes (None where unknown: a collection converted from format 1), and its XMP sidecars as one line
    "name size mtime_ns" each (`sidecar_stamp`), since a rating can change there without the file changing."""

    size: int
    mtime_ns: int
    sha256: str | None
    sidecars: str

    @classmethod
    def of(cls, path: str | os.PathLike) -> "FileStamp":
        """The stamp of the file at `path` now (reads the whole file to hash it)."""
        info = os.stat(path)
        return cls(info.st_size, info.st_mtime_ns, file_sha256(path), sidecar_stamp(path))

    def same_size_and_time(self, info: os.stat_result) -> bool:
        return (self.size, self.mtime_ns) == (info.st_size, info.st_mtime_ns)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def sidecar_stamp(path: str | os.PathLike, present: Collection[str] | None = None) -> str:
    """The XMP sidecars of `path` that exist, in precedence order (those `simlib.ratings.sidecar_paths` reads), as
    "name size mtime_ns" lines; `present`: the .xmp paths known to exist (others are not looked for). With plain
    stat calls: a sync makes one for every file of the library."""
    path = os.fspath(path)
    lines = []
    for sidecar in dict.fromkeys((path + ".xmp", os.path.splitext(path)[0] + ".xmp")):
        if present is not None and sidecar not in present:
            continue
        try:
            info = os.stat(sidecar)
        except OSError:
            continue
        if sidecar != path and stat.S_ISREG(info.st_mode):
            lines.append(f"{os.path.basename(sidecar)} {info.st_size} {info.st_mtime_ns}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ImageRecord:
    """One indexed image: its file's absolute path, its rating, and the file's stamp when it was indexed."""

    path: str
    rating: Rating
    stamp: FileStamp | None = None


@dataclass(frozen=True)
class Row:
    """A record as stored: `key` is the path relative to the root ('/'-separated), or absolute outside it."""

    key: str
    rating: Rating
    stamp: FileStamp | None


class RowSource(Protocol):
    """Rows saved in a store, by the ids they have there (`simlib.store.Snapshot`)."""

    def rows(self, ids: Sequence[int]) -> list[Row]: ...

    def ids_under(self, key_prefix: str | None, absolute_prefix: str) -> np.ndarray: ...

    def ids_of(self, keys: Sequence[str]) -> dict[str, int]: ...

    def scan(self, key_prefix: str | None, absolute_prefix: str) -> Iterator[tuple[int, Row]]: ...

    def stamps(self, key_prefix: str | None, absolute_prefix: str) -> Iterator[tuple[int, str, FileStamp | None]]: ...


class Records:
    """The records of a collection by id, removed ids included until it is compacted. Each id's row is either a
    row of a saved store (`source`, read on demand) or one held here (added or changed since loading)."""

    def __init__(self, root: Path | None, source: RowSource | None = None, saved: int = 0):
        self.root = root
        self.source = source
        self._where = np.arange(saved, dtype=np.int64)  # >= 0: row id in `source`; -1 - j: self._rows[j]
        self._rows: list[Row] = []
        self._inverse_of: np.ndarray | None = None  # the `_where` that `_inverse_ids` was made from

    @classmethod
    def of(cls, records: Iterable[ImageRecord], root: Path | None = None) -> "Records":
        """Records held in memory, relative to `root` (default: the folder holding all of them)."""
        records = list(records)
        if root is None and records:
            root = common_folder(r.path for r in records)
        made = cls(root)
        made.append(records)
        return made

    def __len__(self) -> int:
        return len(self._where)

    @property
    def root(self) -> Path | None:
        """The folder relative keys are relative to."""
        return self._root

    @root.setter
    def root(self, root: Path | None) -> None:
        self._root = root
        self._prefix = None if root is None else os.path.join(os.fspath(root), "")  # joined to a million keys

    def continues(self, source: RowSource, rows: int) -> bool:
        """Whether ids below `rows` are still `source`'s rows of the same ids (or changed rows held here), so that
        a save there writes only what changed."""
        where = self._where[:rows]
        return (self.source is source and len(self) >= rows
                and bool(np.all((where == np.arange(len(where))) | (where < 0))))

    def changed_saved(self, saved: int) -> list[int]:
        """Ids below `saved` whose rows are held here (changed since loading)."""
        return np.flatnonzero(self._where[:saved] < 0).tolist()

    def stored_ids(self) -> np.ndarray:
        """For each id, the id of its row in `source`, or -1 where the row is held here."""
        return np.where(self._where >= 0, self._where, -1)

    # ---------------------------------------------------------------- paths

    def key(self, path: str | os.PathLike) -> str:
        """How `path` is stored: relative to the root when it lies under it, else absolute."""
        absolute = os.path.abspath(path)
        if self.root is not None and _under(absolute, os.fspath(self.root)):
            return os.path.relpath(absolute, self.root).replace(os.sep, "/")
        return absolute

    def absolute(self, key: str) -> str:
        return key if key.startswith("/") else self._prefix + key

    # ---------------------------------------------------------------- reading

    def rows(self, ids: Sequence[int]) -> list[Row]:
        where = self._where[np.asarray(ids, dtype=np.int64)]
        stored = [int(w) for w in where if w >= 0]
        found = dict(zip(stored, self.source.rows(stored))) if stored else {}
        return [found[int(w)] if w >= 0 else self._rows[-1 - int(w)] for w in where]

    def records(self, ids: Sequence[int]) -> list[ImageRecord]:
        return [ImageRecord(self.absolute(row.key), row.rating, row.stamp) for row in self.rows(ids)]

    def paths(self, ids: Sequence[int]) -> list[str]:
        return [self.absolute(row.key) for row in self.rows(ids)]

    def ids_under(self, folder: str | os.PathLike) -> np.ndarray:
        """Ids whose file lies in `folder` or below it, sorted."""
        key_prefix, absolute = self._prefixes(folder)
        found = [np.array([i for i, j in self._held() if _matches(self._rows[j].key, key_prefix, absolute)],
                          dtype=np.int64)]
        if self.source is not None:
            found.append(self._current(self.source.ids_under(key_prefix, absolute)))
        return np.unique(np.concatenate(found))

    def ids_of(self, paths: Sequence[str | os.PathLike]) -> dict[str, list[int]]:
        """Absolute path -> the ids recorded for it (several when older ones were removed), for `paths`."""
        keys = {self.key(p): os.path.abspath(p) for p in paths}
        out: dict[str, list[int]] = {}
        if self.source is not None and keys:
            stored = self.source.ids_of(list(keys))
            inverse = self._inverse()
            for key, stored_id in stored.items():
                if stored_id < len(inverse) and inverse[stored_id] >= 0:
                    out.setdefault(keys[key], []).append(int(inverse[stored_id]))
        for i, j in self._held():
            key = self._rows[j].key
            if key in keys:
                out.setdefault(keys[key], []).append(i)
        return out

    def scan(self, folder: str | os.PathLike) -> Iterator[tuple[int, ImageRecord]]:
        """(id, record) of every id whose file lies in `folder` or below it, in one pass over the store."""
        key_prefix, absolute = self._prefixes(folder)
        if self.source is not None:
            inverse = self._inverse()
            for stored_id, row in self.source.scan(key_prefix, absolute):
                if stored_id < len(inverse) and inverse[stored_id] >= 0:
                    yield int(inverse[stored_id]), ImageRecord(self.absolute(row.key), row.rating, row.stamp)
        for i, j in self._held():
            row = self._rows[j]
            if _matches(row.key, key_prefix, absolute):
                yield i, ImageRecord(self.absolute(row.key), row.rating, row.stamp)

    def stamps(self, folder: str | os.PathLike) -> Iterator[tuple[int, str, FileStamp | None]]:
        """(id, absolute path, stamp) of every id whose file lies in `folder` or below it, without the ratings:
        what a sync compares with the files."""
        key_prefix, absolute = self._prefixes(folder)
        if self.source is not None:
            inverse = self._inverse()
            for stored_id, key, stamp in self.source.stamps(key_prefix, absolute):
                if stored_id < len(inverse) and inverse[stored_id] >= 0:
                    yield int(inverse[stored_id]), self.absolute(key), stamp
        for i, j in self._held():
            row = self._rows[j]
            if _matches(row.key, key_prefix, absolute):
                yield i, self.absolute(row.key), row.stamp

    def _prefixes(self, folder: str | os.PathLike) -> tuple[str | None, str]:
        """How keys of files under `folder` begin: relative keys with the first (None: no relative key lies
        there; "": every one does), absolute keys with the second."""
        absolute = os.path.join(os.path.abspath(folder), "")
        if self.root is None:
            return None, absolute
        root = os.path.join(os.fspath(self.root), "")
        if root.startswith(absolute):
            return "", absolute
        if absolute.startswith(root):
            return os.path.relpath(absolute, root).replace(os.sep, "/") + "/", absolute
        return None, absolute

    # ---------------------------------------------------------------- changing

    def append(self, records: Sequence[ImageRecord]) -> None:
        if self.root is None and records:
            self.root = common_folder(r.path for r in records)
        start = len(self._rows)
        self._rows.extend(Row(self.key(r.path), r.rating, r.stamp) for r in records)
        self._where = np.concatenate([self._where, -1 - np.arange(start, len(self._rows), dtype=np.int64)])

    def update(self, ids: Sequence[int], records: Sequence[ImageRecord]) -> None:
        """New contents (rating, stamp) for the rows of `ids`."""
        where = self._where.copy()
        for i, record in zip(ids, records):
            self._rows.append(Row(self.key(record.path), record.rating, record.stamp))
            where[i] = -len(self._rows)
        self._where = where

    def take(self, ids: np.ndarray) -> "Records":
        """Records whose id i is this one's ids[i] (for a compacted collection)."""
        taken = Records(self.root, self.source)
        taken._where = self._where[ids]
        taken._rows = self._rows
        return taken

    def copy(self) -> "Records":
        twin = self.take(np.arange(len(self)))
        twin._rows = list(self._rows)
        return twin

    def rebased(self, source: RowSource) -> None:
        """After a save: every row is now `source`'s row of the same id."""
        self.source = source
        self._where = np.arange(len(self), dtype=np.int64)
        self._rows = []

    # ---------------------------------------------------------------- internals

    def _held(self) -> Iterator[tuple[int, int]]:
        for i in np.flatnonzero(self._where < 0):
            yield int(i), int(-1 - self._where[i])

    def _inverse(self) -> np.ndarray:
        """Row id in `source` -> current id (-1 where no current id uses that row); made once per state."""
        if self._inverse_of is not self._where:
            stored = self._where >= 0
            size = int(self._where[stored].max()) + 1 if stored.any() else 0
            self._inverse_ids = np.full(size, -1, dtype=np.int64)
            self._inverse_ids[self._where[stored]] = np.flatnonzero(stored)
            self._inverse_of = self._where
        return self._inverse_ids

    def _current(self, stored_ids: np.ndarray) -> np.ndarray:
        """Current ids of rows of `source` (those still used, in the order given)."""
        inverse = self._inverse()
        stored_ids = np.asarray(stored_ids, dtype=np.int64)
        mapped = inverse[stored_ids[stored_ids < len(inverse)]]
        return mapped[mapped >= 0]


def common_folder(paths: Iterable[str]) -> Path:
    """The deepest folder holding every path."""
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(os.path.join(folder, ""))


def _matches(key: str, key_prefix: str | None, absolute_prefix: str) -> bool:
    if os.path.isabs(key):
        return key.startswith(absolute_prefix)
    return key_prefix is not None and key.startswith(key_prefix)
