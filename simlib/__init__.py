"""simlib: similar-image search with CNN features, PCA, FAISS HNSW and star-rating fallback."""

from .backbones import BACKBONES, Backbone, WeightsUnavailableError, load_backbone
from .collection import (
    AddReport,
    Collection,
    CollectionConfig,
    CollectionError,
    SearchResponse,
    SearchResult,
)
from .images import FileError, ImageDecodeError, load_image
from .index import IndexParams
from .ratings import Rating, read_rating
from .reduce import PCA

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "AddReport",
    "Backbone",
    "Collection",
    "CollectionConfig",
    "CollectionError",
    "FileError",
    "ImageDecodeError",
    "IndexParams",
    "PCA",
    "Rating",
    "SearchResponse",
    "SearchResult",
    "WeightsUnavailableError",
    "load_backbone",
    "load_image",
    "read_rating",
]
