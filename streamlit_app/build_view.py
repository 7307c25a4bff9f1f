"""The Build tab: index uploaded images (a new collection, or added to the open one), build or sync a collection of a
folder on the server, save, reopen."""

from __future__ import annotations

from typing import Callable, Sequence

import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.runtime.uploaded_file_manager import UploadedFile

import labels
from simlib import Backbone, Collection, CollectionError, SearchConfig
from simlib.store import CollectionFileError
from workspace import (
    LIBRARY_ENV,
    PENDING_RATING_WEIGHT,
    Outcome,
    Workspace,
    library_folder,
    max_upload_bytes,
    open_saved,
    saved_folder,
    saved_names,
    sync_saved,
)

# Decoding stays in the script thread (num_workers=0): forking DataLoader workers out of the multi-threaded
# Streamlit server is not safe.
WORKERS = 0


def render(workspace: Workspace, backbone: Backbone, active: Collection, rating_weight: float) -> None:
    outcome_slot = st.container()
    st.subheader("Index your own images")
    files = st.file_uploader(
        f"Images to index, up to {max_upload_bytes() / 1e6:g} MB each (XMP sidecars uploaded with them are read "
        "for ratings)",
        accept_multiple_files=True, key="build_files",
    )
    new, add, refit = st.columns([1, 1, 2])
    refit = refit.checkbox(
        "Refit PCA and the threshold on every image when adding", key="refit",
        help="Slower: PCA is learned again from all stored features and the threshold recalibrated. "
        "Without it, new images are projected with the PCA already fitted.",
    )
    if new.button("Build a new collection", key="build", type="primary", disabled=not files):
        _build(workspace, files, backbone, rating_weight)
    if add.button("Add to the open collection", key="add", disabled=not files):
        _add(workspace, files, active, refit)
    st.divider()
    _server_folder(workspace, backbone, rating_weight)
    st.divider()
    _save_and_open(workspace)
    with outcome_slot:
        _show(workspace.outcome)


def _build(workspace: Workspace, files: Sequence[UploadedFile], backbone: Backbone, rating_weight: float) -> None:
    paths, refused = workspace.write_uploads(files)
    collection = Collection(backbone, SearchConfig(rating_weight=rating_weight))
    collection.errors.extend(refused)  # kept with the collection's other skipped files, and saved with them
    bar, progress = _progress_bar(len(paths), "fitting PCA, building the index and calibrating the threshold")
    try:
        report = collection.add(paths, refit=True, progress=progress, num_workers=WORKERS)
    except CollectionError as exc:
        workspace.outcome = Outcome(f"No collection was built: {exc}", list(collection.errors), failed=True)
        return
    bar.progress(1.0, text=f"Indexed {report.added} of {len(files)} files")
    workspace.adopt(collection, "your uploaded images")
    workspace.outcome = Outcome(
        f"Built a new collection of {report.added} images from {len(files)} uploaded files.",
        list(collection.errors), report.notes,
    )


def _add(workspace: Workspace, files: Sequence[UploadedFile], active: Collection, refit: bool) -> None:
    paths, refused = workspace.write_uploads(files)
    # a copy, so the shared sample is never touched and a failed add leaves the open collection as it was
    collection = active.copy()
    known_errors = len(collection.errors)
    collection.errors.extend(refused)
    then = "refitting PCA and recalibrating the threshold" if refit else "adding them to the index"
    bar, progress = _progress_bar(len(paths), then)
    try:
        report = collection.add(paths, refit=refit, progress=progress, num_workers=WORKERS)
    except CollectionError as exc:
        workspace.outcome = Outcome(f"No images were added: {exc}", collection.errors[known_errors:], failed=True)
        return
    bar.progress(1.0, text=f"Added {report.added} of {len(files)} files")
    label = workspace.label if workspace.collection is not None else "the bundled sample plus your images"
    workspace.adopt(collection, label)
    present = f" {report.already_present} were already in it." if report.already_present else ""
    workspace.outcome = Outcome(
        f"Added {report.added} images; the collection now holds {len(collection)}.{present}",
        collection.errors[known_errors:], report.notes,
    )


def _server_folder(workspace: Workspace, backbone: Backbone, rating_weight: float) -> None:
    st.subheader("A folder on this server")
    library = library_folder()
    if library is None:
        st.caption(f"Set {LIBRARY_ENV} to a folder on the server to build collections of the folders under it and "
                   "keep them in sync with their files.")
        return
    st.caption(f"Build a collection of a folder under {library}, saved on this server; building it again syncs it: "
               "new files are added, deleted ones removed, edited ones extracted again, changed ratings read again.")
    folder, name = st.columns(2)
    relative = folder.text_input("Folder", key="server_folder", placeholder="2026/holiday")
    chosen = name.text_input("Collection name", key="server_name", placeholder="holiday")
    if st.button("Build or sync", key="sync", disabled=not chosen.strip()):
        bar, progress = _progress_bar(1, "saving")
        try:
            collection, summary = sync_saved(library, relative, chosen, backbone,
                                             SearchConfig(rating_weight=rating_weight), progress)
        except (CollectionError, CollectionFileError, OSError, ValueError) as exc:
            workspace.outcome = Outcome(f"Not built: {exc}", failed=True)
            return
        bar.progress(1.0, text=summary)
        workspace.adopt(collection, f"the saved collection {chosen!r}")
        workspace.outcome = Outcome(summary, list(collection.errors), list(collection.notes))
        st.session_state[PENDING_RATING_WEIGHT] = collection.config.rating_weight


def _progress_bar(total: int, then: str) -> tuple[DeltaGenerator, Callable[[int, int], None]]:
    bar = st.progress(0.0, text=f"Extracting features from {total} files...")

    def update(done: int, total: int) -> None:
        text = f"Extracted features of {done} of {total} files" if done < total else f"Features extracted; {then}..."
        bar.progress(done / max(total, 1), text=text)

    return bar, update


def _save_and_open(workspace: Workspace) -> None:
    st.subheader("Save and open")
    st.caption(
        f"Collections are saved on this server (in {saved_folder()}) with the images they index, and anyone "
        "using this server can open them."
    )
    save, reopen = st.columns(2)
    with save:
        name = st.text_input("Name", key="save_name", placeholder="holiday-photos")
        overwrite = st.checkbox("Overwrite a saved collection of that name", key="overwrite")
        own = workspace.collection is not None
        if st.button("Save the open collection", key="save", disabled=not own or not name.strip()):
            try:
                path = workspace.save(name, overwrite)
                workspace.outcome = Outcome(f"Saved as {path.stem!r}.")
            except (FileExistsError, ValueError, OSError) as exc:
                workspace.outcome = Outcome(f"Not saved: {exc}", failed=True)
        if not own:
            st.caption("The bundled sample is always here; build or add images to save a collection of your own.")
    with reopen:
        names = saved_names()
        choice = st.selectbox("Saved collections", names, index=None, key="open_name", placeholder="none chosen")
        if st.button("Open", key="open", disabled=choice is None):
            _open(workspace, choice)
        if own and st.button("Back to the bundled sample", key="close"):
            workspace.close()
            workspace.outcome = Outcome("Back to the bundled sample collection.")


def _open(workspace: Workspace, name: str) -> None:
    try:
        collection = open_saved(name)
    except (ValueError, RuntimeError, OSError) as exc:
        workspace.outcome = Outcome(f"Cannot open {name!r}: {exc}", failed=True)
        return
    workspace.adopt(collection, f"the saved collection {name!r}")
    workspace.outcome = Outcome(f"Opened {name!r}: {len(collection)} images.", notes=list(collection.notes))
    # the sidebar, already drawn in this run, takes the collection's rating weight in the next one
    st.session_state[PENDING_RATING_WEIGHT] = collection.config.rating_weight
    st.rerun()


def _show(outcome: Outcome | None) -> None:
    if outcome is None:
        return
    (st.error if outcome.failed else st.success)(outcome.summary)
    if outcome.skipped:
        st.warning(f"{len(outcome.skipped)} files skipped:")
        st.dataframe(labels.skipped(outcome.skipped), hide_index=True)
    for note in outcome.notes:
        st.info(note)
