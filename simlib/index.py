"""Vector index: float32 vectors in, FAISS HNSW, IVF-PQ (or exact) index out; search returns ids ranked by L2
distance.

Ids are insertion positions (0, 1, 2, ...), so the n-th vector added keeps id n for the life of the index.
For unit vectors L2 ranking equals cosine ranking (|a - b|^2 = 2 - 2 cos). A search may be restricted to a subset
of ids through a FAISS selector (`IDSelectorBitmap`), inside FAISS, so k results come back in one call.

FAISS builds an HNSW graph on every core: which links a node gets depends on the order the threads reach it, so
two builds of the same vectors may differ slightly in their links (and in the rare result near the recall limit);
a saved index gives the same results every time it is loaded.

An IVF-PQ index (`faiss.IndexIVFPQ` over a flat coarse quantizer) holds only product-quantized codes and their ids:
its distances are approximate, so its results are a shortlist that `rerank` orders exactly against float vectors
kept elsewhere (the search core's, memory-mapped from the collection).
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import threading
from typing import Iterator, Literal

import faiss
import numpy as np

from .config import MAX_EF, MAX_M, IndexParams  # noqa: F401  (the index's settings, kept where they are used)

TRAIN_SEED = 0x1F4  # seeds the sample an IVF-PQ index is trained on
TRAIN_PER_LIST = 64  # training vectors per inverted list (FAISS's k-means needs 39 at least)
PQ_BITS = 8  # bits per sub-quantizer code: one byte per sub-vector


def check_vectors(x: np.ndarray, dim: int | None = None, name: str = "vectors") -> np.ndarray:
    """C-contiguous float32 (n, d), with a clear error for anything else."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have {x.shape[1]} dimensions, the index has {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not _norms_finite(x):
        raise ValueError(f"{name} contain NaN or infinite values, or values so large that distances overflow")
    return x


def _norms_finite(x: np.ndarray) -> bool:
    """Whether every row's squared L2 norm is finite in float32: no NaN, no infinity, nothing whose distances would
    overflow. FAISS's own kernel does it: for one query, a NumPy ufunc here costs several microseconds more than
    its own run time, about a tenth of a small HNSW search (benchmarks/ann.py)."""
    n, d = x.shape
    if n == 1:
        return math.isfinite(faiss.fvec_norm_L2sqr(faiss.swig_ptr(x), d))
    norms = np.empty(n, dtype=np.float32)
    faiss.fvec_norms_L2sqr(faiss.swig_ptr(norms), faiss.swig_ptr(x), d, n)
    return bool(np.isfinite(norms).all())


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
    kind = params.kind_for(len(vectors))
    if kind == "ivf-pq":
        return _build_ivf_pq(vectors, params)
    if kind == "exact":
        index = faiss.IndexFlatL2(d)
    else:
        index = faiss.IndexHNSWFlat(d, int(params.M))
        index.hnsw.efConstruction = int(params.ef_construction)
        index.hnsw.efSearch = int(params.ef_search)
    if len(vectors):
        index.add(vectors)  # on every core: links depend on thread timing, so a build is saved whole
        prefer_huge_pages(index)
    return index


def _build_ivf_pq(vectors: np.ndarray, params: IndexParams) -> faiss.IndexIVFPQ:
    """IVF-PQ over a flat coarse quantizer, trained on a seeded sample of `TRAIN_PER_LIST` x nlist vectors (at
    least 256 x `TRAIN_PER_LIST`, for the PQ codebooks), then every vector added."""
    n, d = vectors.shape
    if d % params.pq_m:
        raise ValueError(f"an IVF-PQ index splits each vector into pq_m={params.pq_m} parts: the indexed width {d} "
                         "(the PCA size, plus one with a rating weight) must be a multiple of it")
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, int(params.nlist), int(params.pq_m), PQ_BITS)
    index.nprobe = min(int(params.nprobe), int(params.nlist))
    size = min(n, TRAIN_PER_LIST * max(int(params.nlist), 256))
    sample = np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size, replace=False))
    index.train(np.ascontiguousarray(vectors[sample]))
    index.add(vectors)  # FAISS adds in blocks of 65,536, so memory beyond the codes stays bounded
    return index


def rerank(queries: np.ndarray, ids: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k of `ids` (nq, c) nearest each query (nq, d) by exact squared L2 distance to `candidates` (nq, c, d),
    the vectors of those ids; -1 ids (missing) rank last and stay -1. Distances in float64, so that the order does
    not depend on how the arrays are aligned in memory."""
    differences = candidates.astype(np.float64) - queries.astype(np.float64)[:, None, :]
    distances = np.where(ids >= 0, np.einsum("qcd,qcd->qc", differences, differences), np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1)


LEVEL_SEED = 0x51B11B  # seeds the HNSW levels of added vectors, with the id of the first one


def add_vectors(index: faiss.Index, vectors: np.ndarray) -> None:
    """Append `vectors`; they get ids ntotal, ntotal + 1, ...

    The same batch added to the same index gives the same graph in any process: the HNSW levels of the new nodes
    are drawn from `LEVEL_SEED` and the first new id (FAISS would draw them from a generator whose state is not
    saved), and the links are made on one thread (on several, they depend on which thread gets where first). So a
    saved graph completed at load time with the batches added since (`simlib.store`) is the graph that was saved.
    """
    vectors = check_vectors(vectors, index.d)
    if not len(vectors):
        return
    if isinstance(index, faiss.IndexHNSW):
        _preset_levels(index.hnsw, len(vectors), index.ntotal)
    if not isinstance(index, faiss.IndexHNSW):
        index.add(vectors)  # an IVF index appends each vector to its list in id order on any number of threads
        return
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # per calling thread in OpenMP: other threads keep theirs
    try:
        index.add(vectors)
    finally:
        faiss.omp_set_num_threads(threads)
    prefer_huge_pages(index)  # adding may have moved the arrays


def _preset_levels(hnsw: faiss.HNSW, n: int, first_id: int) -> None:
    """Draw the levels of n new nodes as FAISS's `HNSW::random_level` does, from a generator seeded by `first_id`;
    FAISS uses levels already present for the nodes it adds."""
    probabilities = faiss.vector_to_array(hnsw.assign_probas)
    draws = np.random.default_rng((LEVEL_SEED, first_id)).random(n)
    levels = np.minimum(np.searchsorted(np.cumsum(probabilities), draws, side="right"), len(probabilities) - 1)
    existing = faiss.vector_to_array(hnsw.levels)
    faiss.copy_array_to_vector(np.concatenate([existing, levels.astype(np.int32) + 1]), hnsw.levels)


_HUGE_PAGE = 2 << 20
_HUGE_PAGES_FROM = 16 << 20  # smaller arrays are covered by the TLB anyway
_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25


def prefer_huge_pages(index: faiss.Index) -> int:
    """Ask Linux to back the index's large arrays (vectors, graph) with 2 MB pages; returns the bytes advised.

    An HNSW query reads a few thousand vectors and neighbour lists at random places. Once the index outgrows the
    caches, each read with 4 KB pages also misses the TLB, and with 2 MB pages most of those misses go
    (benchmarks/ann.py measures the difference). This is advice only: contents never change, and a refusal (another
    system, transparent huge pages off, a kernel before 6.1 for the immediate collapse) leaves the index as it was.
    """
    madvise = _madvise()
    if madvise is None:
        return 0
    advised = 0
    for array in _large_arrays(index):
        start = -(-array.ctypes.data // _HUGE_PAGE) * _HUGE_PAGE
        stop = (array.ctypes.data + array.nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if stop > start:
            madvise(start, stop - start, _MADV_HUGEPAGE)  # pages faulted from now on
            madvise(start, stop - start, _MADV_COLLAPSE)  # pages already there, now rather than eventually
            advised += stop - start
    return advised


@functools.lru_cache(maxsize=1)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _large_arrays(index: faiss.Index) -> Iterator[np.ndarray]:
    """Views of the arrays a search reads at random: an HNSW graph's, and its (or a flat index's) vectors."""
    index = faiss.downcast_index(index)
    vectors = []
    if isinstance(index, faiss.IndexHNSW):
        vectors += [index.hnsw.neighbors, index.hnsw.offsets]
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexFlatCodes):
        vectors.append(index.codes)
    for vector in vectors:
        if vector.size():
            array = faiss.rev_swig_ptr(vector.data(), vector.size())
            if array.nbytes >= _HUGE_PAGES_FROM:
                yield array


def search_index(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    ef_search: int | None = None,
    selector: faiss.IDSelector | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and ids (nq, k), nearest first; missing neighbours have id -1. With `selector`, only
    the ids it selects are returned (the selector must live until the call returns). `ef_search` is the search
    effort: the beam of an HNSW index, the lists probed (nprobe) of an IVF one; an IVF-PQ index's distances are
    those of its codes, approximate (see `rerank`)."""
    queries = check_vectors(queries, index.d, "queries")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return search_checked(index, queries, k, ef_search, selector)


def search_checked(
    index: faiss.Index, queries: np.ndarray, k: int, ef_search: int | None = None, selector=None
) -> tuple[np.ndarray, np.ndarray]:
    """`search_index` for queries already checked (C-contiguous float32 of the index's width, finite) and k >= 1."""
    params = None
    if isinstance(index, faiss.IndexHNSW):
        ef = index.hnsw.efSearch if ef_search is None else int(ef_search)
        if selector is not None:
            params = faiss.SearchParametersHNSW(efSearch=max(ef, k), sel=selector)
        elif ef_search is not None or ef < k:
            # per-call parameters: no shared state is changed, so concurrent searches may differ in efSearch
            params = _hnsw_parameters(max(ef, k))
    elif isinstance(index, faiss.IndexIVF):
        nprobe = index.nprobe if ef_search is None else min(int(ef_search), index.nlist)
        if selector is not None:
            params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        elif ef_search is not None:
            params = _ivf_parameters(nprobe)
    elif selector is not None:
        params = faiss.SearchParameters(sel=selector)
    n = len(queries)
    distances = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    # The C++ entry point, called directly: FAISS's Python `search` would check and convert the arrays a second
    # time, which costs as much as a small HNSW search when queries come one at a time (benchmarks/ann.py).
    index.search_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(distances), faiss.swig_ptr(ids), params)
    return distances, ids


def flat_storage(index: faiss.Index) -> faiss.Index | None:
    """The flat (exact) index holding the vectors: an HNSW index's storage, or the exact index itself (None for an
    IVF-PQ index, which holds codes only). Searching it with a selector compares the query with the selected
    vectors only."""
    if isinstance(index, faiss.IndexHNSW):
        return faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexIVF):
        return None
    return index


@functools.lru_cache(maxsize=64)
def _hnsw_parameters(ef_search: int) -> faiss.SearchParametersHNSW:
    """One parameter object per efSearch value, made once: FAISS only reads it, so searches may share it, and
    building it through SWIG costs several microseconds per query."""
    return faiss.SearchParametersHNSW(efSearch=ef_search)


@functools.lru_cache(maxsize=64)
def _ivf_parameters(nprobe: int) -> faiss.SearchParametersIVF:
    return faiss.SearchParametersIVF(nprobe=nprobe)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: exact squared L2 distances and ids (nq, min(k, n)), by FAISS's blocked brute force
    (`faiss.knn`, bounded memory whatever the sizes)."""
    vectors = check_vectors(vectors)
    queries = check_vectors(queries, vectors.shape[1], "queries")
    return faiss.knn(queries, vectors, min(int(k), len(vectors)))


def index_to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def index_from_bytes(data: bytes, huge_pages: Literal["now", "soon"] = "now") -> faiss.Index:
    """The index serialized in `data` (check it first: `simlib.index_check.check_index_bytes`), its large arrays
    advised onto huge pages `now`, or `soon`: in a background thread, since collapsing the pages of a large index
    costs about as long as reading it, and a search meanwhile is only slower, never wrong."""
    view, position = memoryview(data), 0

    def read(size: int) -> bytes:
        nonlocal position
        chunk = view[position : position + size]
        position += len(chunk)
        return chunk.tobytes()

    # read in chunks: faiss.deserialize_index would first copy all the bytes into a vector of its own
    index = faiss.read_index(faiss.PyCallbackIOReader(read, 1 << 22))
    if huge_pages == "now":
        prefer_huge_pages(index)
    else:
        threading.Thread(target=prefer_huge_pages, args=(index,), name="simlib-huge-pages", daemon=True).start()
    return index


def bytes_per_vector(index: faiss.Index) -> float:
    """Serialized size of the index divided by the number of vectors it holds."""
    return len(index_to_bytes(index)) / max(index.ntotal, 1)
