"""The Duplicates tab: the open collection's groups of copies as rows of thumbnails, exact and near groups apart,
the keeper marked with its reason, a threshold slider that regroups from the neighbours and file facts already
found (nothing is extracted or indexed again), and the groups as CSV. The app never moves or deletes a file."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import labels
from search_view import show_thumbnail
from simlib import Collection
from simlib.duplicates import DuplicateCache, DuplicateGroup, DuplicateMember, duplicate_threshold

MIN_THRESHOLD = 0.5
COLUMNS = 6
MAX_GROUPS = 30  # groups drawn as thumbnails; the CSV holds every group
KIND_BADGE = {"exact": ":blue-badge[Exact copies]", "near": ":violet-badge[Near duplicates]"}


def render(collection: Collection, cache: DuplicateCache) -> None:
    calibrated = duplicate_threshold(collection.core.calibration_)
    slider, summary = st.columns([2, 3])
    threshold = slider.slider(
        "Near-duplicate threshold", MIN_THRESHOLD, 1.0, round(calibrated.value, 3), 0.005, format="%.3f",
        key="duplicate_threshold",
        help="Visual similarity to a group's keeper at or above which an image is a near duplicate of it. Moving it "
        "regroups from the neighbours already found: no features are extracted and no index is built.",
    )
    report = collection.duplicate_groups(threshold, cache=cache)
    exact, near = report.of_kind("exact"), report.of_kind("near")
    summary.caption(f"The collection's calibrated threshold is {calibrated.describe()}.")
    counts = summary.columns(3)
    counts[0].metric("Exact groups", len(exact))
    counts[1].metric("Near groups", len(near))
    counts[2].metric("Copies besides keepers", sum(len(g.copies) for g in report.groups))
    st.caption("Exact copies have the same file bytes or decode to the same pixels; near duplicates are each at "
               "least the threshold similar to their group's keeper. The keeper: highest rating (a rejected photo "
               "never), then most pixels, then sharpest, then largest file, then oldest. The app never moves or "
               "deletes files: `simlib duplicates COLLECTION --move-to DIR --apply` moves the copies aside, with "
               "an undo manifest.")
    if report.errors:
        with st.expander(f"{len(report.errors)} files left out"):
            st.dataframe(labels.skipped(report.errors), hide_index=True)
    if not report.groups:
        st.info(f"No copies at the threshold {threshold:.3f}.")
        return
    for number, group in enumerate(report.groups[:MAX_GROUPS], start=1):
        _group(number, group)
    if len(report.groups) > MAX_GROUPS:
        st.info(f"Showing the first {MAX_GROUPS} of {len(report.groups)} groups; the CSV holds all of them.")
    st.download_button(
        "Download groups (CSV)", pd.DataFrame(report.rows()).to_csv(index=False).encode(),
        file_name="simlib-duplicates.csv", mime="text/csv", key="download_duplicates", on_click="ignore",
    )


def _group(number: int, group: DuplicateGroup) -> None:
    with st.container(border=True, key=f"duplicate_group_{number}"):
        keeper = "no keeper: every member is rejected" if group.keeper is None else (
            f"keeper {labels.escape(labels.file_name(group.keeper.path))}")
        st.markdown(f"{KIND_BADGE[group.kind]} **Group {number}**: {len(group.members)} images, {keeper}")
        for start in range(0, len(group.members), COLUMNS):
            for column, member in zip(st.columns(COLUMNS), group.members[start : start + COLUMNS]):
                with column:
                    _member(member, group)


def _member(member: DuplicateMember, group: DuplicateGroup) -> None:
    facts = member.facts
    show_thumbnail(st, member.path)
    st.markdown(f"**{labels.escape(labels.file_name(member.path))}**")
    st.markdown(labels.duplicate_badge(member.keeper, member.tie))
    similarity = f" · similarity {member.similarity:.3f}" if group.kind == "near" and not member.keeper else ""
    st.caption(f"{labels.stars(facts.rating)} · {facts.width}x{facts.height} · {facts.file_size / 1e3:.0f} KB"
               f"{similarity}")
    st.caption(labels.escape(member.reason))
