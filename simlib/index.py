"""Vector index: float32 vectors in, FAISS HNSW (or exact) index out; search returns ids ranked by L2 distance.

Ids are insertion positions (0, 1, 2, ...), so the n-th vector added keeps id n for the life of the index.
For unit vectors L2 ranking equals cosine ranking (|a - b|^2 = 2 - 2 cos).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import faiss
import numpy as np


@dataclass(frozen=True)
class IndexParams:
    """HNSW graph degree `M`, build beam `ef_construction`, default query beam `ef_search`; kind 'exact' is brute force."""

    kind: Literal["hnsw", "exact"] = "hnsw"
    M: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    def __post_init__(self) -> None:
        if self.kind not in ("hnsw", "exact"):
            raise ValueError(f"index kind must be 'hnsw' or 'exact', got {self.kind!r}")
        for name in ("M", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_vectors(x: np.ndarray, dim: int | None = None, name: str = "vectors") -> np.ndarray:
    """C-contiguous float32 (n, d), with a clear error for anything else."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have {x.shape[1]} dimensions, the index has {dim}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


RATING_MIDPOINT = 2.5  # the rating appended for unrated images and queries


def with_rating(vectors: np.ndarray, stars: np.ndarray | None, weight: float) -> np.ndarray:
    """Vectors as indexed: with weight w > 0, a coordinate w * stars / 5 is appended (unrated, NaN: 2.5 stars).

    Ranking by L2 distance then adds w^2 (difference in stars / 5)^2 to each visual distance.
    """
    if weight == 0 or stars is None:
        return vectors
    filled = np.where(np.isnan(stars), RATING_MIDPOINT, stars)
    return np.hstack([vectors, (weight * filled / 5.0)[:, None]]).astype(np.float32)


def build_index(vectors: np.ndarray, params: IndexParams = IndexParams()) -> faiss.Index:
    """A new index over `vectors` (n, d) float32."""
    vectors = check_vectors(vectors)
    d = vectors.shape[1]
    if params.kind == "exact":
        index = faiss.IndexFlatL2(d)
    else:
        index = faiss.IndexHNSWFlat(d, int(params.M))
        index.hnsw.efConstruction = int(params.ef_construction)
        index.hnsw.efSearch = int(params.ef_search)
    add_vectors(index, vectors)
    return index


def add_vectors(index: faiss.Index, vectors: np.ndarray) -> None:
    """Append `vectors`; they get ids ntotal, ntotal + 1, ..."""
    vectors = check_vectors(vectors, index.d)
    if len(vectors):
        index.add(vectors)


def search_index(
    index: faiss.Index, queries: np.ndarray, k: int, ef_search: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and ids (nq, k), nearest first; missing neighbours have id -1."""
    queries = check_vectors(queries, index.d, "queries")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    params = None
    if isinstance(index, faiss.IndexHNSW) and ef_search is not None:
        # per-call parameters: no shared state is changed, so concurrent searches may differ in efSearch
        params = faiss.SearchParametersHNSW(efSearch=max(int(ef_search), k))
    elif isinstance(index, faiss.IndexHNSW) and index.hnsw.efSearch < k:
        params = faiss.SearchParametersHNSW(efSearch=k)
    return index.search(queries, k, params=params)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: exact squared L2 distances and ids (nq, k) by brute force."""
    index = faiss.IndexFlatL2(check_vectors(vectors).shape[1])
    index.add(check_vectors(vectors))
    return index.search(check_vectors(queries, index.d, "queries"), min(int(k), index.ntotal))


def index_to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def index_from_bytes(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def bytes_per_vector(index: faiss.Index) -> float:
    """Serialized size of the index divided by the number of vectors it holds."""
    return len(index_to_bytes(index)) / max(index.ntotal, 1)
