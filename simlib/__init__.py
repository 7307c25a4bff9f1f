"""simlib: similar-image search with CNN features, PCA, FAISS HNSW and star-rating fallback."""

from .backbones import BACKBONES, Backbone, WeightsUnavailableError, load_backbone
from .collection import AddReport, Collection, CollectionError, RemoveReport, SearchResponse, SearchResult
from .images import FileError, ImageDecodeError, load_image
from .index import IndexParams
from .ratings import Rating, read_rating
from .reduce import PCA
from .search_core import Hits, SearchConfig, SearchCore
from .store import CollectionFileError
from .sync import SyncReport

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "AddReport",
    "Backbone",
    "Collection",
    "CollectionError",
    "CollectionFileError",
    "FileError",
    "Hits",
    "ImageDecodeError",
    "IndexParams",
    "PCA",
    "Rating",
    "RemoveReport",
    "SearchResponse",
    "SearchConfig",
    "SearchCore",
    "SearchResult",
    "SyncReport",
    "WeightsUnavailableError",
    "load_backbone",
    "load_image",
    "read_rating",
]
