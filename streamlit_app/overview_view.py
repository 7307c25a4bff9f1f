"""The Collection tab: size, ratings, PCA, index and threshold of the open collection."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import streamlit as st

import labels
from simlib import Collection
from simlib.ratings import REJECTED, format_stars


def render(collection: Collection) -> None:
    count, skipped, backbone, threshold = st.columns([1, 1, 2, 1])
    count.metric("Images", len(collection))
    skipped.metric("Skipped files", len(collection.errors))
    backbone.metric("Backbone", f"{collection.backbone.name} ({collection.backbone.precision})")
    threshold.metric("Match threshold", f"{collection.threshold:.3f}")
    ratings, variance = st.columns(2)
    with ratings:
        st.subheader("Ratings")
        st.bar_chart(_rating_counts(collection), x="rating", y="images", sort=False)
    with variance:
        _pca(collection)
    index, calibration = st.columns(2)
    with index:
        st.subheader("Index")
        st.dataframe(_index_parameters(collection), hide_index=True)
    with calibration:
        _calibration(collection)
    for note in collection.notes:
        st.info(note)
    if collection.errors:
        st.subheader("Files skipped when the collection was built")
        st.dataframe(labels.skipped(collection.errors), hide_index=True)


def _rating_counts(collection: Collection) -> pd.DataFrame:
    """Images per rating, in rating order: rejected, 0 .. 5 stars (fractions included), unrated."""
    stars = Counter(record.rating.stars for record in collection.images)
    rated = sorted(s for s in stars if s is not None)
    rows = [("rejected" if s == REJECTED else f"{format_stars(s)} ★", stars[s]) for s in rated]
    rows.append(("unrated", stars.get(None, 0)))
    return pd.DataFrame(rows, columns=["rating", "images"])


def _pca(collection: Collection) -> None:
    pca = collection.core.pca_
    st.subheader("PCA explained variance")
    if pca is None:
        st.caption("No PCA: the collection searches the raw backbone features.")
        return
    ratio = np.asarray(pca.explained_variance_ratio_)
    st.caption(
        f"{pca.n_components_} components of {pca.n_features_in_} keep {ratio.sum():.1%} of the variance "
        f"(fitted on {pca.n_samples_} images{', whitened' if pca.whiten else ''})."
    )
    frame = pd.DataFrame(
        {"component": np.arange(1, len(ratio) + 1), "cumulative": np.cumsum(ratio), "per component": ratio}
    )
    st.line_chart(frame, x="component", y=["cumulative", "per component"])


def _index_parameters(collection: Collection) -> pd.DataFrame:
    params = collection.config.index
    kind = collection.core.index_kind
    chosen = " (chosen by size)" if params.kind == "auto" else ""
    names = {"hnsw": "HNSW (FAISS IndexHNSWFlat)", "ivf-pq": "IVF-PQ (FAISS IndexIVFPQ), re-ranked exactly",
             "exact": "exact (FAISS IndexFlatL2)"}
    rows = [("kind", names[kind] + chosen)]
    if kind == "hnsw":
        rows += [("M", params.M), ("efConstruction", params.ef_construction), ("efSearch (default)", params.ef_search)]
    if kind == "ivf-pq":
        rows += [("nlist", params.nlist), ("code bytes (pq_m)", params.pq_m), ("nprobe (default)", params.nprobe),
                 ("shortlist", f"{params.refine} x k")]
    rows += [
        ("vectors", collection.core.index_.ntotal),
        ("dimensions", collection.core.index_.d),
        ("rating weight", collection.config.rating_weight),
    ]
    return pd.DataFrame([(name, str(value)) for name, value in rows], columns=["parameter", "value"])


def _calibration(collection: Collection) -> None:
    st.subheader("Match threshold")
    c = collection.core.calibration_
    if collection.config.threshold is not None:
        st.caption(f"Fixed at {collection.config.threshold:.3f} when the collection was built.")
    st.caption(f"Calibration: {c.method}.")
    rows = [
        ("calibrated threshold", f"{c.threshold:.3f}"),
        ("edited copies (matches)", str(c.n_match)),
        ("non-matches", str(c.n_nonmatch)),
        ("median match similarity", f"{c.match_median:.3f}"),
        ("median nearest non-match", f"{c.nonmatch_median:.3f}"),
        ("miss rate on the sample", f"{c.miss_rate:.1%}"),
        ("false-match rate on the sample", f"{c.false_match_rate:.1%}"),
    ]
    st.dataframe(pd.DataFrame(rows, columns=["", "value"]), hide_index=True)

