"""Acting on duplicate groups, safely: every copy that is not its group's keeper moves, with its XMP sidecars, into
a folder where it keeps its place relative to the collection's root; an undo manifest is written before the first
file moves; nothing is ever deleted or overwritten.

A sidecar named `photo.jpg.xmp` belongs to `photo.jpg` alone and moves with it. One named `photo.xmp` is shared by
every file `photo.*` in its folder (a RAW file and its JPEG, Lightroom's convention): it moves only when no other
`photo.*` stays, and is otherwise left in place (the plan says so). A file moves by a hard link and an unlink on
one filesystem, else by an exclusive copy and an unlink, so an existing file is never replaced.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from .duplicates import DuplicateReport
from .ratings import sidecar_paths

MANIFEST_FORMAT = "simlib-duplicates-undo"
MANIFEST_VERSION = 1
OUTSIDE_ROOT = "outside-root"  # where a file indexed from outside the collection's root goes under the folder
SIDECAR_SUFFIX = ".xmp"


class CullingError(ValueError):
    """Moves that cannot be made safely, or an undo manifest that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Move:
    """One file to move: absolute paths, what it is, and the number of its group in the report (from 1)."""

    source: str
    target: str
    kind: Literal["image", "sidecar"]
    group: int


@dataclass
class MovePlan:
    """The moves, and the sidecars left in place with the reason."""

    moves: list[Move]
    kept_sidecars: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        return [m.source for m in self.moves if m.kind == "image"]


@dataclass
class UndoReport:
    """What an undo did: files moved back, files already in place, and files it could not restore (and why)."""

    restored: list[Move] = field(default_factory=list)
    in_place: list[Move] = field(default_factory=list)
    failed: list[tuple[Move, str]] = field(default_factory=list)
    collection: str | None = None

    @property
    def images(self) -> list[str]:
        return [m.source for m in self.restored if m.kind == "image"]


def plan_moves(report: DuplicateReport, root: str | os.PathLike, destination: str | os.PathLike) -> MovePlan:
    """Where each copy (non-keeper of a group with a keeper) and its sidecars go under `destination`. Raises
    CullingError when `destination` lies inside the collection's `root` (a sync would index the copies again), when
    a target exists already, or when two files would go to one place."""
    root, destination = Path(os.path.abspath(root)), Path(os.path.abspath(destination))
    if destination == root or destination.is_relative_to(root):
        raise CullingError(f"{destination}: lies inside the collection's folder {root}, where syncing the "
                           "collection would index the moved copies again; choose a folder outside it")
    copies = [(number, member.path) for number, group in enumerate(report.groups, start=1) for member in group.copies]
    moving = {path for _, path in copies}
    plan = MovePlan([])
    for number, path in copies:
        plan.moves.append(Move(path, os.fspath(_target(Path(path), root, destination)), "image", number))
        for sidecar in sidecar_paths(Path(path)):
            sharers = _sharers(sidecar, Path(path), moving)
            if sharers:
                plan.kept_sidecars.append((os.fspath(sidecar), f"also the sidecar of {sharers[0].name}, which stays"))
            elif all(m.source != os.fspath(sidecar) for m in plan.moves):
                plan.moves.append(Move(os.fspath(sidecar), os.fspath(_target(sidecar, root, destination)), "sidecar",
                                       number))
    _check_targets(plan.moves)
    return plan


def _target(path: Path, root: Path, destination: Path) -> Path:
    if path.is_relative_to(root):
        return destination / path.relative_to(root)
    return destination / OUTSIDE_ROOT / path.relative_to(path.anchor)


def _sharers(sidecar: Path, image: Path, moving: set[str]) -> list[Path]:
    """Other files that a `photo.xmp` sidecar also belongs to and that stay (a `photo.jpg.xmp` has none)."""
    if sidecar.name != image.stem + SIDECAR_SUFFIX:
        return []
    return sorted(p for p in sidecar.parent.glob(f"{_glob_escape(image.stem)}.*")
                  if p.suffix.lower() != SIDECAR_SUFFIX and p != image and p.stem == image.stem
                  and os.fspath(p) not in moving)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _check_targets(moves: list[Move]) -> None:
    taken: dict[str, str] = {}
    for move in moves:
        if os.path.lexists(move.target):
            raise CullingError(f"{move.target}: already exists, so {move.source} cannot be moved there; nothing "
                               "was moved")
        if move.target in taken:
            raise CullingError(f"{move.target}: both {taken[move.target]} and {move.source} would be moved there; "
                               "nothing was moved")
        taken[move.target] = move.source


def write_manifest(plan: MovePlan, destination: str | os.PathLike, collection: str | os.PathLike,
                   threshold: float) -> Path:
    """Write the undo manifest (every move, from -> to) into `destination` before anything moves; returns its
    path. Written to a temporary file, synced and renamed, so it is complete or absent."""
    destination = Path(os.path.abspath(destination))
    destination.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path, number = destination / f"simlib-undo-{stamp}.json", 2
    while path.exists():
        path, number = destination / f"simlib-undo-{stamp}-{number}.json", number + 1
    content = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "collection": os.path.abspath(collection),
        "threshold": threshold,
        "moves": [{"from": m.source, "to": m.target, "kind": m.kind, "group": m.group} for m in plan.moves],
    }
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "x", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


class PartialMoveError(CullingError):
    """A move failed after others were made: `done` lists those (the manifest holds them; an undo restores them)."""

    def __init__(self, message: str, done: list[Move]):
        super().__init__(message)
        self.done = done


def apply_moves(plan: MovePlan) -> list[Move]:
    """Move every file of the plan (write the manifest first); returns the moves made. A failure stops there with
    PartialMoveError naming the file and holding the moves made before it."""
    done: list[Move] = []
    for move in plan.moves:
        try:
            _move_file(Path(move.source), Path(move.target))
        except OSError as exc:
            raise PartialMoveError(f"{move.source}: cannot be moved to {move.target}: {exc.strerror or exc}; "
                                   f"{len(done)} file(s) moved before it", done) from None
        done.append(move)
    return done


def _move_file(source: Path, target: Path) -> None:
    """Move without ever replacing a file: link and unlink, or, across filesystems, an exclusive copy and unlink."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        with open(source, "rb") as reading, open(target, "xb") as writing:
            shutil.copyfileobj(reading, writing)
            writing.flush()
            os.fsync(writing.fileno())
        shutil.copystat(source, target)
    os.unlink(source)


def read_manifest(path: str | os.PathLike) -> tuple[str | None, list[Move]]:
    """The collection folder and the moves an undo manifest records; CullingError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except OSError as exc:
        raise CullingError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CullingError(f"{path}: not an undo manifest (not JSON: {exc})") from None
    if not isinstance(content, dict) or content.get("format") != MANIFEST_FORMAT:
        raise CullingError(f"{path}: not a simlib duplicates undo manifest")
    if content.get("version") != MANIFEST_VERSION:
        raise CullingError(f"{path}: undo manifest version {content.get('version')!r}; this simlib reads "
                           f"version {MANIFEST_VERSION}")
    moves, collection = content.get("moves"), content.get("collection")
    if not isinstance(moves, list) or not (collection is None or isinstance(collection, str)):
        raise CullingError(f"{path}: the undo manifest has no list of moves")
    try:
        found = [Move(str(m["from"]), str(m["to"]), m["kind"], int(m["group"])) for m in moves]
    except (KeyError, TypeError, ValueError):
        raise CullingError(f"{path}: a move of the undo manifest lacks from, to, kind or group") from None
    if any(m.kind not in ("image", "sidecar") for m in found):
        raise CullingError(f"{path}: a move of the undo manifest is neither an image nor a sidecar")
    return collection, found


def undo_moves(path: str | os.PathLike) -> UndoReport:
    """Move back every file the manifest at `path` records, last moved first. A file already back is left alone;
    one whose original place is taken, or that is missing from both places, is reported and not touched."""
    collection, moves = read_manifest(path)
    report = UndoReport(collection=collection)
    for move in reversed(moves):
        moved, original = Path(move.target), Path(move.source)
        if os.path.lexists(original):
            if os.path.lexists(moved):
                report.failed.append((move, f"{original} exists again, so {moved} was left where it is"))
            else:
                report.in_place.append(move)
            continue
        if not os.path.lexists(moved):
            report.failed.append((move, f"missing: neither {moved} nor {original} exists"))
            continue
        try:
            _move_file(moved, original)
        except OSError as exc:
            report.failed.append((move, f"cannot be moved back: {exc.strerror or exc}"))
            continue
        report.restored.append(move)
    return report
