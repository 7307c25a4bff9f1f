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
from pathlib import Path
from typing import Sequence

from .images import FileError
from .records import FileStamp, ImageRecord, file_sha256, sidecar_stamp


@dataclass
class SyncPlan:
    """What a sync does. Each recorded image is in exactly one of removed, changed, rerate or unchanged;
    `touched` (same content, new size or time) overlaps rerate and unchanged."""

    added: list[str] = field(default_factory=list)  # files with no record: extract
    removed: list[tuple[int, ImageRecord]] = field(default_factory=list)  # records whose file is gone
    changed: list[tuple[int, ImageRecord]] = field(default_factory=list)  # content differs: extract again
    rerate: list[tuple[int, ImageRecord]] = field(default_factory=list)  # sidecars changed (record: new stamp)
    touched: list[tuple[int, ImageRecord]] = field(default_factory=list)  # record with the new size and time
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


def plan_sync(recorded: Sequence[tuple[int, ImageRecord]], files: Sequence[str | os.PathLike]) -> SyncPlan:
    """Compare `recorded` (id, record) with the image `files` found under the same folder now."""
    plan = SyncPlan()
    by_path = {record.path: (i, record) for i, record in recorded}
    for file in files:
        path = os.fspath(file)
        if path not in by_path:
            plan.added.append(path)
            continue
        i, record = by_path.pop(path)
        try:
            _compare(plan, i, record, path)
        except FileNotFoundError:
            plan.removed.append((i, record))
        except OSError as exc:
            plan.errors.append(FileError(path, f"cannot read: {exc.strerror or exc}"))
    plan.removed.extend(by_path.values())
    return plan


def _compare(plan: SyncPlan, i: int, record: ImageRecord, path: str) -> None:
    stat = os.stat(path)
    stamp = record.stamp
    if stamp is None or not stamp.same_size_and_time(stat):
        digest = file_sha256(path)
        if stamp is None or stamp.sha256 != digest:
            plan.changed.append((i, record))
            return
        stamp = FileStamp(stat.st_size, stat.st_mtime_ns, digest, stamp.sidecars)
        record = replace(record, stamp=stamp)
        plan.touched.append((i, record))
    sidecars = sidecar_stamp(Path(path))
    if sidecars != stamp.sidecars:
        plan.rerate.append((i, replace(record, stamp=replace(stamp, sidecars=sidecars))))
    else:
        plan.unchanged += 1
