"""Heavy objects shared by every browser session of this server process: built once, cached, never changed.

A session that adds images to a shared collection works on its own `Collection.copy()`.
"""

from __future__ import annotations

import io
from pathlib import Path

import streamlit as st

from simlib import Backbone, Collection, load_backbone
from simlib.images import ImageSource, load_thumbnail

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "collection"
THUMBNAIL_SIDE = 320


@st.cache_resource(show_spinner="Loading the backbone...")
def backbone(name: str, precision: str = "auto") -> Backbone:
    """The backbone called `name` ('auto', 'resnet18' or 'efficientnet_lite0') in `precision`, loaded once per
    server."""
    return load_backbone(name, precision=precision)


@st.cache_resource(show_spinner="Indexing the bundled sample collection (once per server)...", max_entries=16)
def sample_collection(backbone_name: str, rating_weight: float) -> Collection:
    """The bundled sample in `data/collection`: features extracted once per backbone; another rating weight only
    rebuilds the index from the stored vectors."""
    if rating_weight:
        return sample_collection(backbone_name, 0.0).copy(rating_weight=rating_weight)
    return Collection.build(SAMPLE, backbone(backbone_name), progress=False, num_workers=0)


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(source: ImageSource, modified_ns: int = 0) -> bytes:
    """JPEG bytes of an upright copy of the image at most THUMBNAIL_SIDE pixels a side. `modified_ns` (the file's
    modification time) only keys the cache, so an image changed on disk is read again."""
    image = load_thumbnail(source, THUMBNAIL_SIDE)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
