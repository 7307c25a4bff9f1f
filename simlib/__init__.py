"""simlib: similar-image search with CNN features, PCA, FAISS HNSW and star-rating fallback.

The names below are imported on first use (PEP 562), so `import simlib.cli` or reading a manifest does not load
torch, FAISS or scikit-learn.
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {
    "BACKBONES": "backbones",
    "Backbone": "backbones",
    "load_backbone": "backbones",
    "AddReport": "collection",
    "Collection": "collection",
    "RemoveReport": "collection",
    "SearchResponse": "collection",
    "SearchResult": "collection",
    "CollectionError": "errors",
    "CollectionFileError": "errors",
    "WeightsUnavailableError": "errors",
    "FileError": "images",
    "ImageDecodeError": "images",
    "load_image": "images",
    "load_thumbnail": "images",
    "IndexParams": "config",
    "SearchConfig": "config",
    "Rating": "ratings",
    "read_rating": "ratings",
    "PCA": "reduce",
    "Hits": "search_core",
    "SearchCore": "search_core",
    "SyncReport": "sync",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'simlib' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
