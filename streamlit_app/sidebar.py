"""The sidebar: backbone and rating weight (they shape the index), then the search-time controls."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import resources
from simlib import Backbone, Collection, WeightsUnavailableError
from simlib.backbones import AUTO, BACKBONES
from workspace import PENDING_RATING_WEIGHT

BACKBONE_CHOICES = [AUTO, *BACKBONES]
MIN_RATING_CHOICES = ["any", 0, 1, 2, 3, 4, 5]


@dataclass(frozen=True)
class Settings:
    backbone: str
    rating_weight: float
    ef_search: int
    min_rating: float | None
    notice_slot: DeltaGenerator  # under the backbone choice, filled by `load_backbone`
    threshold_slot: DeltaGenerator  # filled by `threshold` once the open collection is known


def render() -> Settings:
    bar = st.sidebar
    bar.header("Index")
    name = bar.selectbox(
        "Backbone",
        BACKBONE_CHOICES,
        key="backbone",
        help="auto: ResNet-18 when its ImageNet weights are available, else EfficientNet-Lite0 (works offline). "
        + " ".join(f"{n}: {spec.description}." for n, spec in BACKBONES.items()),
    )
    notice_slot = bar.container()
    # the slider's value lives in session state only, so that opening a collection can set it
    st.session_state.setdefault("rating_weight", 0.0)
    if PENDING_RATING_WEIGHT in st.session_state:
        st.session_state["rating_weight"] = st.session_state.pop(PENDING_RATING_WEIGHT)
    rating_weight = bar.slider(
        "Rating weight", 0.0, 5.0, step=0.25, key="rating_weight",
        help="Appends weight x stars / 5 to every vector, pulling results towards the query's rating.",
    )
    bar.caption(
        "Part of the index: changing it rebuilds the HNSW index from the stored PCA vectors. No features are "
        "extracted again, and the similarity shown stays purely visual."
    )
    bar.header("Search")
    threshold_slot = bar.container()
    ef_search = bar.slider(
        "efSearch", 8, 512, 128, 8, key="ef_search",
        help="HNSW search beam: larger is slower and closer to exact. Applied per query; nothing is rebuilt.",
    )
    min_rating = bar.select_slider(
        "Minimum rating", MIN_RATING_CHOICES, value="any", key="min_rating",
        help="Only images rated at least this many stars are returned (unrated images are left out).",
    )
    minimum = None if min_rating == "any" else float(min_rating)
    return Settings(name, rating_weight, ef_search, minimum, notice_slot, threshold_slot)


def load_backbone(settings: Settings) -> Backbone:
    """The chosen backbone from the cache; its notice (ResNet-18 weights unavailable) is shown under the choice.
    A backbone that cannot be loaded stops the page with the reason."""
    slot = settings.notice_slot
    try:
        backbone = resources.backbone(settings.backbone)
    except WeightsUnavailableError as exc:
        slot.error(f"{settings.backbone} cannot be loaded: {exc}")
        st.error(f"The backbone {settings.backbone} is not available here; choose auto or efficientnet_lite0.")
        st.stop()
    if backbone.notice:
        slot.info("ResNet-18 ImageNet weights are not available offline, so EfficientNet-Lite0 is used.")
        with slot.expander("Why, and how to supply them"):
            st.write(backbone.notice)
    return backbone


def threshold(settings: Settings, collection: Collection) -> float | None:
    """The match threshold for searches: None uses the collection's own (calibrated or configured) one."""
    with settings.threshold_slot:
        calibrated = st.toggle(
            f"Use the collection's threshold ({collection.threshold:.3f})", value=True, key="calibrated_threshold",
            help="Calibrated when the collection was built, from edited copies of its own images.",
        )
        if calibrated:
            return None
        return st.slider(
            "Match threshold", 0.0, 1.0, round(collection.threshold, 2), 0.01, key="threshold",
            help="Below this match score (the best visual similarity less a term for how crowded the query's "
                 "neighbourhood is), results fall back to the rating rule. Nothing is rebuilt.",
        )
