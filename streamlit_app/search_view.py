"""The Search tab: a query (uploaded or picked from the collection), k, then the results grid and its CSV."""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

import labels
import resources
from simlib import Collection, CollectionError, ImageDecodeError, SearchResponse
from simlib.files import safe_file_name
from workspace import too_large

UPLOAD, PICK = "Upload an image", "Pick one from the collection"
QUERY_RATING_CHOICES = ["from its metadata", -1, 0, 1, 2, 3, 4, 5]
COLUMNS = 4


ANY_FOLDER = "any folder"


def render(collection: Collection, ef_search: int, threshold: float | None, min_rating: float | None) -> None:
    source, k, query_rating, folder = st.columns([3, 1, 2, 2])
    with source:
        mode = st.radio("Query", [UPLOAD, PICK], horizontal=True, key="query_mode", label_visibility="collapsed")
        query, label = _query(collection, mode)
    k = k.number_input("Results (k)", 1, 50, 8, key="k")
    rating = query_rating.select_slider(
        "Query rating", QUERY_RATING_CHOICES, value="from its metadata", key="query_rating",
        help="The rating the fallback compares with; -1 means rejected.",
    )
    folders = collection.folders()
    under = folder.selectbox(
        "Only images in", [ANY_FOLDER, *folders], key="under", disabled=len(folders) < 2,
        format_func=lambda f: f if f == ANY_FOLDER else labels.folder_name(f),
        help="Results from this folder and the folders below it only (both rules).",
    )
    if query is None:
        st.info("Upload a query image, or pick one from the collection, to see the most similar images.")
        return
    try:
        response = collection.search(
            query, k=int(k), threshold=threshold, min_rating=min_rating, ef_search=ef_search, name=label,
            under=None if under == ANY_FOLDER else under,
            query_rating=None if rating == "from its metadata" else float(rating),
        )
    except (ImageDecodeError, CollectionError, ValueError) as exc:
        st.error(f"Cannot search: {labels.escape(str(exc))}")  # the message names the file
        return
    _show_query(query, response)
    _show_results(response)


def _query(collection: Collection, mode: str) -> tuple[bytes | str | None, str]:
    """The query as bytes (uploaded; never written to disk) or as a collection path, and its display name."""
    if mode == PICK:
        paths = [record.path for record in collection.images]
        path = st.selectbox("Image from the collection", paths, format_func=labels.file_name, key="query_pick")
        return path, labels.file_name(path)
    upload = st.file_uploader("Query image", key="query_file")
    if upload is None:
        return None, ""
    label = safe_file_name(upload.name)
    reason = too_large(upload.size)
    if reason:
        st.error(f"{labels.escape(label)}: {reason}")
        return None, label
    return upload.getvalue(), label


def _show_query(query: bytes | str, response: SearchResponse) -> None:
    picture, facts = st.columns([1, 3])
    show_thumbnail(picture, query)
    facts.markdown(f"**Query:** {labels.escape(response.query)}")
    facts.markdown(f"**Query rating:** {labels.escape(response.query_rating.describe())}")
    if response.fallback:
        facts.warning(response.message)
    else:
        facts.success(response.message)


def _show_results(response: SearchResponse) -> None:
    if not response.results:
        st.warning("No image passes the filters (minimum rating).")
        return
    st.subheader(f"{len(response.results)} results")
    for start in range(0, len(response.results), COLUMNS):
        for column, result in zip(st.columns(COLUMNS), response.results[start : start + COLUMNS]):
            with column.container(border=True):
                show_thumbnail(st, result.path)
                st.markdown(f"**{result.rank}. {labels.escape(labels.file_name(result.path))}**")
                st.markdown(labels.badge(result.reason, result.score, response.threshold))
                st.caption(f"similarity {result.similarity:.3f} · {labels.stars(result.rating)}")
    table = _table(response)
    with st.expander("Results as a table"):
        st.dataframe(table, hide_index=True)
    st.download_button(
        "Download results (CSV)", table.to_csv(index=False).encode(), file_name="simlib-results.csv",
        mime="text/csv", key="download_csv", on_click="ignore",
    )


def _table(response: SearchResponse) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": [r.rank for r in response.results],
            "file": [labels.file_name(r.path) for r in response.results],
            "similarity": [round(r.similarity, 4) for r in response.results],
            "match score": [round(r.score, 4) for r in response.results],
            "rating": [r.rating for r in response.results],
            "reason": [r.reason for r in response.results],
            "query": response.query,
            "threshold": round(response.threshold, 4),
        }
    )


def show_thumbnail(where, source: bytes | str) -> None:
    """An upright thumbnail, or why the image cannot be shown (a saved collection may name files that are no
    longer on this server)."""
    try:
        modified = os.stat(source).st_mtime_ns if isinstance(source, str) else 0
    except OSError as exc:
        where.caption(f"image not available on this server: {exc.strerror}")
        return
    try:
        where.image(resources.thumbnail(source, modified), width="stretch")
    except ImageDecodeError as exc:
        where.caption(f"image cannot be shown: {exc.reason}")
