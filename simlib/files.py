"""File discovery: a folder in, the image files under it out (sorted), plus folders that could not be read.
Also the one place that turns a name from outside (an upload) into a file name safe to create."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .images import FileError


def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of every format this Pillow can open."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def find_images(root: str | os.PathLike) -> tuple[list[Path], list[FileError]]:
    """Image files under `root` by extension, recursively, following symlinks but never a loop.

    Hidden files and folders (name starting with '.') are skipped, as photo managers keep caches there.
    Returns the files in sorted order and the folders that could not be listed.
    """
    walked = walk_images(root)
    return [Path(p) for p in walked.images], walked.errors


@dataclass
class Walk:
    """What `walk_images` found: image files (sorted paths), the XMP files beside them, what could not be used."""

    images: list[str]
    sidecars: set[str]
    errors: list[FileError]


def walk_images(root: str | os.PathLike) -> Walk:
    """`find_images` as strings, plus every .xmp file seen on the way (a sync stats only the sidecars that exist:
    a library of a million photos has a million sidecar names that do not)."""
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root}: not a folder")
    extensions = image_extensions()
    walk = Walk([], set(), [])
    seen: set[tuple[int, int]] = set()
    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        try:
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:
                continue  # a symlink back to a folder already walked
            seen.add((stat.st_dev, stat.st_ino))
            entries = list(os.scandir(folder))
        except OSError as exc:
            walk.errors.append(FileError(folder, f"cannot list folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                extension = os.path.splitext(entry.name)[1].lower()
                if extension == ".xmp":
                    walk.sidecars.add(entry.path)
                elif entry.is_dir():
                    stack.append(entry.path)
                elif extension not in extensions:
                    continue
                elif entry.is_file():
                    walk.images.append(entry.path)
                elif entry.is_symlink():  # named like an image, so say why it is left out
                    walk.errors.append(FileError(entry.path, "broken symbolic link: its target does not exist"))
                else:
                    walk.errors.append(FileError(entry.path, "not a regular file (a FIFO, socket or device)"))
            except OSError as exc:  # a looping symlink
                walk.errors.append(FileError(entry.path, f"cannot follow: {exc.strerror or exc}"))
    walk.images.sort()
    return walk


MAX_NAME_BYTES = 200  # below the 255-byte limit of common filesystems, leaving room for a "-2" suffix


def safe_file_name(name: str) -> str:
    """`name` (say, an uploaded file's) reduced to a plain file name: its last path component, letters, digits,
    spaces, '.', '-' and '_' kept and anything else replaced by '_', no leading dot or space, at most
    `MAX_NAME_BYTES` bytes of UTF-8 with the extension kept, and 'file' when nothing usable is left."""
    base = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isalnum() or c in " .-_" else "_" for c in base).lstrip(". ").rstrip(" ")
    stem, ext = os.path.splitext(cleaned)
    if len(ext.encode()) > 16:
        stem, ext = cleaned, ""
    while stem and len((stem + ext).encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem + ext if stem else f"file{ext}"
