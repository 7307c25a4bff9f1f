"""simlib: similar-image search with CNN features, PCA, FAISS HNSW and star-rating fallback."""

from .backbones import BACKBONES, Backbone, WeightsUnavailableError, load_backbone
from .collection import AddReport, Collection, CollectionError, SearchResponse, SearchResult
from .images import FileError, ImageDecodeError, load_image
from .index import IndexParams
from .ratings import Rating, read_rating
from .reduce import PCA
from .search_core import Hits, SearchConfig, SearchCore

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "AddReport",
    "Backbone",
    "Collection",
    "CollectionError",
    "FileError",
    "Hits",
    "ImageDecodeError",
    "IndexParams",
    "PCA",
    "Rating",
    "SearchResponse",
    "SearchConfig",
    "SearchCore",
    "SearchResult",
    "WeightsUnavailableError",
    "load_backbone",
    "load_image",
    "read_rating",
]
