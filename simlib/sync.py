"""Folder reconciliation: the records of the images under a folder and the files there now in, what to do out.

A file whose size and modification time match its record is unchanged and is not read. One whose size or time
differ is hashed: the same SHA-256 means it was only touched (its record takes the new time, no inference),
another means its content changed (extract it again). A rating can change in an XMP sidecar without the file
changing, so the sidecars' names, sizes and times are compared too, and a changed one means reading the rating
again. `simlib.collection.Collection.sync` carries the plan out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Collection, Sequence

from .images import FileError
from .records import FileStamp, file_sha256, sidecar_stamp

Recorded = tuple[int, str, "FileStamp | None"]  # id, absolute path, the file's stamp when it was indexed


@dataclass
class SyncPlan:
    """What a sync does. Each recorded image is in exactly one of removed, changed, rerate or unchanged;
    `touched` (same content, new size or time) overlaps rerate and unchanged. Entries carry the stamp the record
    should have now."""

    added: list[str] = field(default_factory=list)  # files with no record: extract
    removed: list[Recorded] = field(default_factory=list)  # records whose file is gone
    changed: list[Recorded] = field(default_factory=list)  # content differs: extract again
    rerate: list[Recorded] = field(default_factory=list)  # sidecars changed: read the rating again
    touched: list[Recorded] = field(default_factory=list)  # same content with a new size or time
    unchanged: int = 0
    errors: list[FileError] = field(default_factory=list)  # files that could not be examined (records kept)


@dataclass
class SyncReport:
    """What a sync did, in images."""

    added: int = 0
    removed: int = 0
    changed: int = 0  # content changed: features extracted again
    rating_changed: int = 0  # a sidecar (or the file) changed and the rating read again differs
    unchanged: int = 0
    touched: int = 0  # of the unchanged and rating-changed: modification time moved, content the same
    skipped: list[FileError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        touched = f" ({self.touched} touched: same content, no inference)" if self.touched else ""
        return (f"{self.added} added, {self.removed} removed, {self.changed} changed, {self.rating_changed} rating "
                f"changed, {self.unchanged} unchanged{touched}, {len(self.skipped)} skipped")


def plan_sync(recorded: Sequence[Recorded], files: Sequence[str | os.PathLike],
              sidecars: Collection[str] | None = None) -> SyncPlan:
    """Compare `recorded` (id, path, stamp) with the image `files` found under the same folder now; `sidecars`:
    the .xmp files there (None: look for each file's)."""
    plan = SyncPlan()
    by_path = {path: (i, path, stamp) for i, path, stamp in recorded}
    for file in files:
        path = os.fspath(file)
        entry = by_path.pop(path, None)
        if entry is None:
            plan.added.append(path)
            continue
        try:
            _compare(plan, *entry, sidecars)
        except FileNotFoundError:
            plan.removed.append(entry)
        except OSError as exc:
            plan.errors.append(FileError(path, f"cannot read: {exc.strerror or exc}"))
    plan.removed.extend(by_path.values())
    return plan


def _compare(plan: SyncPlan, i: int, path: str, stamp: FileStamp | None, sidecars: Collection[str] | None) -> None:
    stat = os.stat(path)
    if stamp is None or not stamp.same_size_and_time(stat):
        digest = file_sha256(path)
        if stamp is None or stamp.sha256 != digest:
            plan.changed.append((i, path, stamp))
            return
        stamp = FileStamp(stat.st_size, stat.st_mtime_ns, digest, stamp.sidecars)
        plan.touched.append((i, path, stamp))
    now = sidecar_stamp(path, sidecars)
    if now != stamp.sidecars:
        plan.rerate.append((i, path, replace(stamp, sidecars=now)))
    else:
        plan.unchanged += 1
