"""Serialized FAISS indexes checked before FAISS reads them.

FAISS reads an index trusting every length and id in it: a forged length makes it allocate that much before
failing, and a forged neighbour id makes a search read outside the graph. So before FAISS sees the bytes, their
structure is checked against the three layouts simlib writes (faiss/impl/index_write.cpp: IndexHNSWFlat over
IndexFlatL2, IndexFlatL2 alone, or IndexIVFPQ over an IndexFlatL2 quantizer with ArrayInvertedLists); anything
else is refused.
"""

from __future__ import annotations

import struct

import numpy as np

from .config import MAX_NLIST, MAX_PQ_M
from .index import MAX_EF, PQ_BITS

_HNSW_FLAT, _FLAT_L2, _IVF_PQ = b"IHNf", b"IxF2", b"IwPQ"
_ARRAY_LISTS, _FULL, _SPARSE = b"ilar", b"full", b"sprs"
_METRIC_L2 = 1
_MAX_LEVELS = 64


class _IndexReader:
    """Reads the little-endian fields of a serialized index, refusing any length the bytes do not hold."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.position = 0

    def take(self, size: int) -> memoryview:
        if size < 0 or size > len(self.data) - self.position:
            raise ValueError(f"a field at byte {self.position} claims {size} bytes; {self.remaining} remain")
        self.position += size
        return self.data[self.position - size : self.position]

    @property
    def remaining(self) -> int:
        return len(self.data) - self.position

    def scalar(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def vector(self, dtype: str, scale: int = 1) -> np.ndarray:
        """A std::vector: its element count (times `scale` elements), then the elements."""
        count = self.scalar("Q") * scale
        itemsize = np.dtype(dtype).itemsize
        if count > self.remaining // itemsize:
            raise ValueError(f"a vector at byte {self.position - 8} claims {count} elements; {self.remaining} bytes remain")
        return np.frombuffer(self.take(count * itemsize), dtype=dtype)


def check_index_bytes(data: bytes, rows: int | None = None) -> None:
    """Raise ValueError unless `data` is an HNSW-flat, IVF-PQ or flat L2 index as simlib writes it, consistent in
    every length and id, with `rows` vectors when given."""
    reader = _IndexReader(data)
    kind = bytes(reader.take(4))
    if kind not in (_HNSW_FLAT, _FLAT_L2, _IVF_PQ):
        raise ValueError(f"index type {kind!r} is not one simlib writes (HNSW-flat, IVF-PQ or flat L2)")
    d, n = _check_index_header(reader)
    if rows is not None and n != rows:
        raise ValueError(f"the index holds {n} vectors, the collection {rows}")
    if kind == _IVF_PQ:
        _check_ivf_pq(reader, d, n)
        if reader.remaining:
            raise ValueError(f"{reader.remaining} unexpected bytes after the index")
        return
    if kind == _HNSW_FLAT:
        _check_hnsw(reader, n)
        if bytes(reader.take(4)) != _FLAT_L2:
            raise ValueError("the HNSW graph is not stored over a flat L2 index")
        if _check_index_header(reader) != (d, n):
            raise ValueError("the HNSW graph and its vector storage disagree on shape")
    codes = reader.vector("<f4", scale=1)
    if codes.size != n * d:
        raise ValueError(f"the index stores {codes.size} values for {n} vectors of {d} dimensions")
    if reader.remaining:
        raise ValueError(f"{reader.remaining} unexpected bytes after the index")


def _check_index_header(reader: _IndexReader, trained: tuple[bytes, ...] = (b"\x00", b"\x01")) -> tuple[int, int]:
    d, n = reader.scalar("i"), reader.scalar("q")
    reader.take(16)  # two unused 64-bit fields
    if bytes(reader.take(1)) not in trained:
        raise ValueError("the index header is malformed")
    if reader.scalar("i") != _METRIC_L2:
        raise ValueError("the index does not use the L2 metric")
    if d < 1 or n < 0:
        raise ValueError(f"the index declares {d} dimensions and {n} vectors")
    return d, n


def _check_hnsw(reader: _IndexReader, n: int) -> None:
    """Every node's neighbour list lies where its level says and names only nodes present on that level."""
    probabilities = reader.vector("<f8")
    cumulative = reader.vector("<i4").astype(np.int64)
    levels = reader.vector("<i4").astype(np.int64)
    offsets = reader.vector("<u8")
    neighbours = reader.vector("<i4")
    entry, max_level = reader.scalar("i"), reader.scalar("i")
    ef_construction, ef_search = reader.scalar("i"), reader.scalar("i")
    reader.scalar("i")  # upper_beam, unused by FAISS
    depth = len(probabilities)
    if not 1 <= depth <= _MAX_LEVELS or len(cumulative) != depth + 1 or cumulative[0] != 0:
        raise ValueError("the HNSW level table is malformed")
    if np.any(np.diff(cumulative) < 0) or not np.isfinite(probabilities).all():
        raise ValueError("the HNSW level table is malformed")
    if len(levels) != n or len(offsets) != n + 1:
        raise ValueError("the HNSW graph does not match its vector count")
    if not (1 <= ef_construction <= MAX_EF and 1 <= ef_search <= MAX_EF):
        # a search allocates in proportion to efSearch
        raise ValueError(f"HNSW efConstruction {ef_construction} or efSearch {ef_search} outside 1..{MAX_EF}")
    if n and (levels.min() < 1 or levels.max() > depth):
        raise ValueError("an HNSW node has a level outside the level table")
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets.astype(np.int64)), cumulative[levels]):
        raise ValueError("the HNSW neighbour offsets do not follow the node levels")
    if len(neighbours) != int(offsets[-1]):
        raise ValueError("the HNSW neighbour table does not match its offsets")
    if n == 0:
        if entry != -1:
            raise ValueError("an empty HNSW graph names an entry point")
        return
    if not 0 <= entry < n or max_level != levels.max() - 1 or levels[entry] - 1 != max_level:
        raise ValueError("the HNSW entry point is not a node on the top level")
    if neighbours.min(initial=-1) < -1 or neighbours.max(initial=-1) >= n:
        raise ValueError("an HNSW neighbour id lies outside the graph")
    # Every node lives on level 0, so only links above it can name a node absent from their level: the slots of
    # the few nodes with upper levels, each slot's level looked up from its position in its node's list.
    upper = np.flatnonzero(levels > 1)
    counts = (cumulative[levels[upper]] - cumulative[1]).astype(np.int64)
    starts = offsets[upper].astype(np.int64) + cumulative[1]
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    slots = np.repeat(starts, counts) + within
    slot_level = np.searchsorted(cumulative, within + cumulative[1], side="right") - 1
    linked = neighbours[slots] >= 0
    if np.any(levels[neighbours[slots][linked]] <= slot_level[linked]):
        raise ValueError("an HNSW node links to a node absent from that level")


def _check_ivf_pq(reader: _IndexReader, d: int, n: int) -> None:
    """IndexIVFPQ as simlib builds it: trained, over a flat L2 quantizer of nlist centroids, no direct map, codes of
    residuals, 8-bit PQ, array inverted lists whose ids are each of 0..n - 1 exactly once."""
    nlist, nprobe = reader.scalar("Q"), reader.scalar("Q")
    if not 1 <= nlist <= MAX_NLIST or not 1 <= nprobe <= nlist:
        # FAISS allocates per list before it reads them, and a search per list probed
        raise ValueError(f"IVF nlist {nlist} or nprobe {nprobe} outside 1..{MAX_NLIST} (nprobe at most nlist)")
    if bytes(reader.take(4)) != _FLAT_L2 or _check_index_header(reader) != (d, nlist):
        raise ValueError("the IVF quantizer is not a flat L2 index of nlist centroids of the index's width")
    if reader.vector("<f4").size != nlist * d:
        raise ValueError(f"the IVF quantizer does not hold {nlist} centroids of {d} dimensions")
    if bytes(reader.take(1)) != b"\x00" or reader.vector("<i8").size != 0:
        raise ValueError("the IVF index has a direct map, which simlib never writes")
    if bytes(reader.take(1)) != b"\x01":
        raise ValueError("the IVF-PQ index does not encode residuals")
    code_size = reader.scalar("Q")
    pq_d, pq_m, bits = reader.scalar("Q"), reader.scalar("Q"), reader.scalar("Q")
    if pq_d != d or not 1 <= pq_m <= min(MAX_PQ_M, d) or d % pq_m or bits != PQ_BITS or code_size != pq_m:
        raise ValueError(f"the product quantizer (d={pq_d}, M={pq_m}, {bits} bits, {code_size}-byte codes) does "
                         f"not fit the index's {d} dimensions")
    if reader.vector("<f4").size != d << PQ_BITS:
        raise ValueError("the product quantizer's codebooks are not of its size")
    if bytes(reader.take(4)) != _ARRAY_LISTS or reader.scalar("Q") != nlist or reader.scalar("Q") != code_size:
        raise ValueError("the IVF inverted lists are not array lists of the index's nlist and code size")
    _check_inverted_lists(reader, _list_sizes(reader, nlist), code_size, n)


def _list_sizes(reader: _IndexReader, nlist: int) -> np.ndarray:
    """(nlist,) vectors per list, from FAISS's full table or its sparse (list, size) pairs."""
    layout = bytes(reader.take(4))
    table = reader.vector("<u8")
    if layout == _FULL and len(table) == nlist:
        return table
    if layout != _SPARSE or len(table) % 2:
        raise ValueError("the IVF list sizes are malformed")
    lists, counts = table[0::2], table[1::2]
    if np.any(lists >= nlist) or np.any(np.diff(lists.astype(np.int64)) <= 0):
        raise ValueError("the IVF sparse list table names a list outside the index or twice")
    sizes = np.zeros(nlist, dtype=np.uint64)
    sizes[lists] = counts
    return sizes


def _check_inverted_lists(reader: _IndexReader, sizes: np.ndarray, code_size: int, n: int) -> None:
    if np.any(sizes > n) or int(sizes.sum(dtype=np.uint64)) != n:  # no sum can wrap: each size is at most n
        raise ValueError(f"the IVF lists hold {int(sizes.sum(dtype=np.float64)):.0f} vectors, the index {n}")
    seen = np.zeros(n, dtype=bool)
    for size in sizes[sizes > 0].tolist():
        reader.take(size * code_size)  # the codes: any byte is a code of 8 bits
        ids = np.frombuffer(reader.take(size * 8), dtype="<i8")
        if ids.min() < 0 or ids.max() >= n:
            raise ValueError("an IVF list holds an id outside the index")
        seen[ids] = True
    if not seen.all():
        raise ValueError("the IVF lists do not hold every id of the index exactly once")
