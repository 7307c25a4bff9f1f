"""What belongs to one browser session: its upload folder, its own collection and the outcome of its last action.

The workspace lives in `st.session_state`, so concurrent sessions never see each other's uploads or collections.
Uploaded files are written into the session's own folder under sanitised names (`simlib.files.safe_file_name`);
the folder is removed when the session ends, unless a saved collection refers to the images in it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

import resources
from simlib import Backbone, Collection, FileError, SearchConfig
from simlib.duplicates import DuplicateCache
from simlib.files import safe_file_name
from simlib.manifest import read_manifest
from simlib.store import DATABASE, locked

STORE_ENV = "SIMLIB_APP_STORE"  # where saved collections and session upload folders live
LIBRARY_ENV = "SIMLIB_APP_LIBRARY"  # a server folder whose subfolders may be indexed and synced
MAX_UPLOAD_ENV = "SIMLIB_APP_MAX_UPLOAD_MB"  # per-file limit for uploads
DEFAULT_MAX_UPLOAD_MB = 50.0
SIDECAR_SUFFIX = ".xmp"
PENDING_RATING_WEIGHT = "pending_rating_weight"  # applied to the sidebar slider before it is drawn


def store() -> Path:
    return Path(os.environ.get(STORE_ENV) or resources.ROOT / "build" / "app")


def saved_folder() -> Path:
    return store() / "collections"


def saved_names() -> list[str]:
    """Names of the collections saved on this server, newest first."""
    files = sorted((p for p in saved_folder().glob("*.simlib") if (p / DATABASE).is_file()),
                   key=lambda p: (p / DATABASE).stat().st_mtime, reverse=True)
    return [p.stem for p in files]


def library_folder() -> Path | None:
    """The server folder under which folders may be indexed, or None when the app is not given one."""
    folder = os.environ.get(LIBRARY_ENV)
    return Path(folder).resolve() if folder else None


def sync_saved(library: Path, relative: str, name: str, backbone: Backbone, config: SearchConfig,
               progress) -> tuple[Collection, str]:
    """Build the saved collection `name` of the folder `relative` under `library`, or sync it when it exists;
    returns it and a sentence saying what was done."""
    folder = (library / relative).resolve()
    if not folder.is_relative_to(library) or not folder.is_dir():
        raise ValueError(f"{relative!r} is not a folder under {library}")
    target = saved_folder() / f"{safe_file_name(name)}.simlib"
    with locked(target):  # from loading to saving: another session or process syncing it waits
        if (target / DATABASE).exists():
            collection = Collection.load(target, resources.backbone(read_manifest(target).backbone.name))
            report = collection.sync(folder, progress=progress, num_workers=0)
            summary = f"Synced {target.stem!r} with {folder}: {report.summary()}."
        else:
            collection = Collection(backbone, config)
            report = collection.add(folder, refit=True, progress=progress, num_workers=0)
            summary = f"Built {target.stem!r} from {folder}: {report.added} images."
        collection.save(target)
    return collection, summary


def max_upload_bytes() -> int:
    return int(float(os.environ.get(MAX_UPLOAD_ENV) or DEFAULT_MAX_UPLOAD_MB) * 1_000_000)


def too_large(size: int) -> str | None:
    """Why an upload of `size` bytes is refused, or None when it is accepted."""
    limit = max_upload_bytes()
    if size <= limit:
        return None
    return f"too large: {size / 1e6:.1f} MB, the limit is {limit / 1e6:g} MB per file"


@dataclass
class Outcome:
    """What the last build, add, save or open did, shown until the next one."""

    summary: str
    skipped: list[FileError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False


class Workspace:
    """One session's state. `collection` is None while the session looks at the shared bundled sample."""

    def __init__(self) -> None:
        uploads = store() / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="session-", dir=uploads))
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.collection: Collection | None = None
        self.label = "the bundled sample collection"
        self.outcome: Outcome | None = None
        self._written: dict[str, Path] = {}  # upload file_id -> where its bytes were written
        # neighbours and file facts of the collection shown: the Duplicates tab's slider regroups from them
        self.duplicates = DuplicateCache()

    def active(self, backbone_name: str, rating_weight: float) -> Collection:
        """The collection searches run on, with the sidebar's rating weight (a changed weight rebuilds only
        the index, from the stored vectors)."""
        if self.collection is None:
            return resources.sample_collection(backbone_name, rating_weight)
        if self.collection.config.rating_weight != rating_weight:
            self.collection = self.collection.copy(rating_weight=rating_weight)
        return self.collection

    def adopt(self, collection: Collection, label: str) -> None:
        """Make `collection` (owned by this session only) the open one."""
        self.collection = collection
        self.label = label

    def close(self) -> None:
        """Back to the shared bundled sample."""
        self.collection = None
        self.label = "the bundled sample collection"

    def write_uploads(self, files: Iterable[UploadedFile]) -> tuple[list[Path], list[FileError]]:
        """Write uploaded files into this session's folder under sanitised, unique names.

        Returns the image candidates (every file except XMP sidecars, which are written beside them so their
        ratings are read) and the files refused before decoding (too large). A file uploaded once is written once.
        """
        images: list[Path] = []
        refused: list[FileError] = []
        for upload in files:
            name = safe_file_name(upload.name)
            reason = too_large(upload.size)
            if reason:
                refused.append(FileError(name, reason))
                continue
            path = self._written.get(upload.file_id)
            if path is None:
                path = self._free_path(name)
                path.write_bytes(upload.getbuffer())
                self._written[upload.file_id] = path
            if path.suffix.lower() != SIDECAR_SUFFIX:
                images.append(path)
        return images, refused

    def _free_path(self, name: str) -> Path:
        path = self.folder / name
        stem, suffix = os.path.splitext(name)
        number = 2
        while path.exists():
            path = self.folder / f"{stem}-{number}{suffix}"
            number += 1
        return path

    def save(self, name: str, overwrite: bool) -> Path:
        """Save the open collection on the server as `name`; its uploaded images are then kept."""
        if self.collection is None:
            raise ValueError("the bundled sample is always available; build or add images before saving")
        target = saved_folder() / f"{safe_file_name(name)}.simlib"
        if target.exists() and not overwrite:
            raise FileExistsError(f"a collection called {target.stem!r} already exists; tick 'Overwrite' to replace it")
        self.collection.save(target)
        self._remove_folder.detach()
        return target


def open_saved(name: str) -> Collection:
    """A saved collection, loaded with the backbone it was built with (cached like every backbone)."""
    path = saved_folder() / f"{safe_file_name(name)}.simlib"
    recorded = read_manifest(path).backbone
    return Collection.load(path, resources.backbone(recorded.name, recorded.precision))


def current() -> Workspace:
    """This session's workspace, created on its first run."""
    if "workspace" not in st.session_state:
        st.session_state["workspace"] = Workspace()
    return st.session_state["workspace"]
