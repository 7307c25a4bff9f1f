"""The search core: backbone features in, ranked ids, visual similarities and the rule that chose them out.

It holds what search needs and nothing about files: the fitted PCA, the reduced vectors, each image's star rating
as an array, the FAISS index, the rating weight and the match threshold (the result of `simlib.threshold`'s
calibration). It is built from arrays and saved as arrays; `simlib.collection.Collection` adds image records and a
backbone around it, and evaluation, tuning, benchmarks, notebooks and the app all search through it.

The rule: the visual rule returns the k nearest images; when the query's match score is below the match threshold,
the rating rule returns instead the k images whose rating is closest to the query's (for an unrated query the
highest rated), ties broken by visual similarity. The match score (`simlib.scoring`) is the best visual similarity less
`score_norm` times the mean similarity of the query's 5th to 9th nearest images in the collection (`norm_ranks`,
zero-based): SSCD's score normalisation with the collection as its own background. A query that resembles many
images (star fields, cut-outs on white) must then be closer to its best match than one in an empty region; the
ranks skip the first four neighbours so that an original's own near-duplicates (bursts, other sizes) do not count
against its copies. Rejected images (-1) are candidates of the
rating rule only for a rejected query. Filters (minimum rating, an allowed subset such as a folder) apply to both
rules and run inside FAISS: a graph search with a selector over a bitmap of allowed ids, or an exact search over
them when that costs less (`_exact_is_cheaper`).

Removed images: HNSW cannot delete a node, so `remove` marks ids as no longer live and every search leaves them out
through the same bitmaps (combined with any other filter, the masks cached per state). `compacted` builds a core
over the live vectors alone, with a new index, when enough have been removed for that to pay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import faiss
import numpy as np

from .index import (
    MAX_EF,
    IndexParams,
    add_vectors,
    build_index,
    check_vectors,
    flat_storage,
    rerank,
    search_checked,
    with_rating,
)
from .config import SearchConfig
from .ratings import REJECTED
from .reduce import PCA, normalize_rows
from .scoring import neighbourhood
from .threshold import Calibration

# A graph search with a filter keeps only allowed nodes as results; with a small allowed share it stops before it
# has met enough of them and misses neighbours (recall@10 at efSearch 128 on 100k vectors: 0.96 with 10% allowed,
# 0.74 with 2%). Its beam is therefore widened to hold about FILTER_BEAM allowed nodes, FILTER_BEAM / share
# (recall@10 0.98 or more at every share benchmarks/filters.py measures on 100k vectors).
FILTER_BEAM = 32
# Cost of the two paths in distance computations: a graph search computes about 2M distances per beam slot; an
# exact search over a bitmap tests one bit per vector (about a sixteenth of a distance) plus one distance per
# allowed vector. The cheaper path is taken.
BIT_TEST_COST = 1 / 16
# An IVF-PQ index has no float vectors: its exact path compares the query with the allowed vectors of the core, a
# block of ids at a time (bounded memory whatever the share allowed), and its shortlists are re-ranked the same way
EXACT_BLOCK = 1 << 16
RERANK_QUERIES = 256  # queries re-ranked at once: their candidates are gathered into one (queries, shortlist, d) block

@dataclass
class Hits:
    """What a batch of queries found. Row i is query i; missing results (filters, a small collection) are -1."""

    ids: np.ndarray  # (nq, k) int64, ranked
    similarities: np.ndarray  # (nq, k) float32 cosine similarity of the reduced vectors (NaN where id is -1)
    best: np.ndarray  # (nq,) best visual similarity among the visual rule's results (-inf when it found none)
    fallback: np.ndarray  # (nq,) True where the rating rule answered
    score: np.ndarray  # (nq,) match score: best - score_norm x neighbourhood, compared with the threshold
    neighbourhood: np.ndarray  # (nq,) mean similarity of the query's neighbours at `norm_ranks` (`neighbourhood`)

    def __len__(self) -> int:
        return len(self.ids)

    def found(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and similarities of query i's results, without the -1 padding."""
        keep = self.ids[i] >= 0
        return self.ids[i][keep], self.similarities[i][keep]


class Selection:
    """Allowed ids: a bool mask, its size, and a FAISS selector over the packed bitmap (kept alive with it). Made
    by `SearchCore.selection`; a caller that filters many queries the same way makes it once and passes it as
    `allowed`, so no query pays for packing the mask. `removals` counts the core's removals it already excludes."""

    def __init__(self, mask: np.ndarray, removals: int = 0):
        self.mask = mask
        self.removals = removals
        self.count = int(np.count_nonzero(mask))
        self._bits = np.packbits(mask, bitorder="little")
        self.selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(self._bits))
        self._ids: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        """The allowed ids, ascending (made on first use)."""
        if self._ids is None:
            self._ids = np.flatnonzero(self.mask)
        return self._ids


class SearchCore:
    """Reduced vectors, ratings and a FAISS index, searched with the visual rule and the rating fallback.

    >>> core = SearchCore(SearchConfig(pca_dim=64)).fit(features, stars)        # doctest: +SKIP
    >>> hits = core.search(query_features, k=10, threshold=0.8)                 # doctest: +SKIP
    """

    def __init__(self, config: SearchConfig = SearchConfig()):
        self.config = config

    # ---------------------------------------------------------------- building

    def fit(self, features: np.ndarray, stars: np.ndarray | None = None, *, pca: PCA | None = None) -> "SearchCore":
        """Learn the PCA from `features` (n, dim) (or use `pca`, fitted elsewhere), reduce them and index them.
        `stars` (n,): each image's rating, NaN for unrated, -1 for rejected."""
        features = check_vectors(features, name="features")
        if pca is None and self.config.pca_dim is not None:
            pca = PCA(self.config.pca_dim, whiten=self.config.whiten).fit(features)
        self.pca_ = pca
        vectors = self.transform(features)
        return self._assemble(vectors, _stars(stars, len(vectors)), None, None, (), None)

    @classmethod
    def from_state(
        cls,
        config: SearchConfig,
        pca: PCA | None,
        vectors: np.ndarray,
        stars: np.ndarray | None = None,
        index: faiss.Index | None = None,
        calibration: Calibration | None = None,
        *,
        batches: Sequence[int] = (),
        live: np.ndarray | None = None,
    ) -> "SearchCore":
        """A core from what `to_arrays` saved (or vectors already reduced with `pca`); the index is built from the
        vectors when not given. An index holding only the first vectors is completed by adding the others in
        `batches` (their sizes, in order), as the core that saved it added them, which gives the very graph it
        had. `live` (n,) bool: False for removed ids (default: none removed). Shapes are checked together."""
        core = cls(config)
        core.pca_ = pca
        vectors = check_vectors(vectors, None if pca is None else pca.n_components_, "vectors")
        return core._assemble(vectors, _stars(stars, len(vectors)), index, calibration, batches, live)

    def _assemble(self, vectors, stars, index, calibration, batches, live) -> "SearchCore":
        self._parts = [vectors]  # the vectors, in the arrays they arrived in (a saved file, then each add)
        self.stars_ = stars
        self.batches_: list[tuple[int, int]] = []  # (first id, count) of each add since the index was built
        self._removals = 0  # how many times ids were removed: a selection made before the last one is redone
        width = vectors.shape[1] + (self.config.rating_weight > 0)
        if index is None:
            index = build_index(with_rating(vectors, stars, self.config.rating_weight), self.config.index)
        if index.d != width or index.ntotal + sum(batches) != len(vectors) or min(batches, default=1) < 1:
            raise ValueError(f"the index holds {index.ntotal} vectors of {index.d} dimensions and {sum(batches)} "
                             f"more are to be added; the core has {len(vectors)} of {width}")
        self.live_ = np.ones(len(vectors), dtype=bool) if live is None else _live(live, len(vectors))
        self.index_ = index
        first = index.ntotal
        for count in batches:
            added = slice(first, first + count)
            add_vectors(index, with_rating(vectors[added], stars[added], self.config.rating_weight))
            self.batches_.append((first, count))
            first += count
        self.calibration_ = calibration
        self._forget()
        return self

    def add(self, features: np.ndarray, stars: np.ndarray | None = None) -> np.ndarray:
        """Reduce and index more features with the fitted PCA; returns their ids."""
        return self.add_vectors(self.transform(features), stars)

    def add_vectors(self, vectors: np.ndarray, stars: np.ndarray | None = None) -> np.ndarray:
        """Index vectors already reduced (and normalised) as `transform` reduces; returns their ids."""
        vectors = check_vectors(vectors, self.dim, "vectors")
        stars = _stars(stars, len(vectors))
        first = len(self)
        if not len(vectors):
            return np.arange(first, first, dtype=np.int64)
        self._parts = self._parts + [vectors]  # a new list: a copy of this core keeps its own
        self.stars_ = np.concatenate([self.stars_, stars])
        self.live_ = np.concatenate([self.live_, np.ones(len(vectors), dtype=bool)])
        if self.config.index.kind_for(len(self)) != self.index_kind:  # an 'auto' index outgrew exact search
            self.index_ = build_index(with_rating(self.vectors_, self.stars_, self.config.rating_weight),
                                      self.config.index)
            self.batches_ = []  # the new index holds every id
        else:
            add_vectors(self.index_, with_rating(vectors, stars, self.config.rating_weight))
            self.batches_ = self.batches_ + [(first, len(vectors))]
        self._forget()
        return np.arange(first, len(self), dtype=np.int64)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Leave `ids` out of every search from now on; returns how many were live. HNSW cannot delete a node, so
        they stay in the index until the core is `compacted`."""
        ids = self._ids(ids)
        removed = int(np.count_nonzero(self.live_[ids]))
        if removed:
            live = self.live_.copy()
            live[ids] = False
            self.live_ = live
            self._removals += 1
            self._forget()
        return removed

    def set_stars(self, ids: Sequence[int] | np.ndarray, stars: np.ndarray) -> np.ndarray:
        """New ratings for `ids`; returns the ids the images have now. With rating weight 0 they keep their ids.
        Otherwise the rating is part of the indexed vector, so they are indexed again under new ids (the same
        vectors, no features extracted) and their old ids removed."""
        ids = self._ids(ids)
        stars = _stars(stars, len(ids))
        if self.config.rating_weight == 0:
            updated = self.stars_.copy()
            updated[ids] = stars
            self.stars_ = updated
            self._forget()
            return ids
        moved = self.add_vectors(self.gather(ids), stars)
        self.remove(ids)
        return moved

    def compacted(self) -> "SearchCore":
        """A core over the live vectors only, with a new index: the i-th live id becomes id i."""
        keep = np.flatnonzero(self.live_)
        return SearchCore.from_state(self.config, self.pca_, self.gather(keep), self.stars_[keep], None,
                                     self.calibration_)

    def _ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids must lie within 0..{len(self) - 1}")
        return ids

    def set_calibration(self, calibration: Calibration) -> "SearchCore":
        """Hold the match threshold `simlib.threshold.calibrate` chose for this core."""
        self.calibration_ = calibration
        return self

    def with_rating_weight(self, rating_weight: float) -> "SearchCore":
        """A core over the same vectors and ratings with another rating weight: only the index is rebuilt."""
        return self._rebuilt(replace(self.config, rating_weight=float(rating_weight)))

    def with_index(self, params: IndexParams) -> "SearchCore":
        """A core over the same vectors and ratings with another index (e.g. exact, for ground truth)."""
        return self._rebuilt(replace(self.config, index=params))

    def copy(self) -> "SearchCore":
        """An independent core: adding to it leaves this one unchanged (arrays are shared until then)."""
        return self._rebuilt(self.config)

    def _rebuilt(self, config: SearchConfig) -> "SearchCore":
        index = faiss.clone_index(self.index_) if config == self.config else None
        core = SearchCore.from_state(config, self.pca_, self.vectors_, self.stars_, index, self.calibration_,
                                     live=self.live_)
        if index is not None:
            core.batches_ = list(self.batches_)
        return core

    def _forget(self) -> None:
        self._subsets: dict = {}  # cached selections, valid until the vectors, ratings or live ids change
        self._live_count = int(np.count_nonzero(self.live_))

    # ---------------------------------------------------------------- properties

    def __len__(self) -> int:
        """Ids in use, removed ones included (ids run 0..len - 1); `live_count` leaves those out."""
        return len(self.stars_)

    @property
    def live_count(self) -> int:
        return self._live_count

    @property
    def vectors_(self) -> np.ndarray:
        """All reduced vectors (n, dim), removed ids included; joined into one array on first use after adds."""
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0]

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of `ids` (any shape of valid ids) without joining the arrays they are held in."""
        if len(self._parts) == 1:
            return self._parts[0][ids]
        ends = np.cumsum([len(part) for part in self._parts])
        which = np.searchsorted(ends, ids, side="right")
        out = np.empty((*np.shape(ids), self.dim), dtype=np.float32)
        for p in np.unique(which):
            here = which == p
            out[here] = self._parts[p][ids[here] - (ends[p] - len(self._parts[p]))]
        return out

    @property
    def index_kind(self) -> str:
        """'hnsw', 'ivf-pq' or 'exact': the kind of index this core holds."""
        if isinstance(self.index_, faiss.IndexHNSW):
            return "hnsw"
        return "ivf-pq" if isinstance(self.index_, faiss.IndexIVF) else "exact"

    @property
    def dim(self) -> int:
        """Width of the reduced vectors (without the rating coordinate)."""
        return self._parts[0].shape[1]

    @property
    def threshold(self) -> float:
        """The match threshold in use: the configured one, else the calibrated one."""
        if self.config.threshold is not None:
            return float(self.config.threshold)
        if self.calibration_ is None:
            raise ValueError("the search core has no match threshold: calibrate it or configure one")
        return float(self.calibration_.threshold)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Backbone features (n, dim) -> the core's L2-normalised vectors (n, self.dim)."""
        features = np.asarray(features) if not hasattr(features, "ndim") else features
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (n, dim), got shape {features.shape}")
        reduced = features if self.pca_ is None else self.pca_.transform(features)
        return normalize_rows(reduced)

    # ---------------------------------------------------------------- searching

    def search(self, features: np.ndarray, k: int = 10, **options) -> Hits:
        """Search with backbone features (nq, dim); options as for `search_vectors`."""
        return self.search_vectors(self.transform(features), k, **options)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        threshold: float | None = None,
        ef_search: int | None = None,
        min_rating: float | None = None,
        allowed: np.ndarray | None = None,
        query_stars: np.ndarray | float | None = None,
    ) -> Hits:
        """The k results for each query vector (nq, self.dim), already reduced and normalised.

        `threshold` overrides the core's (-inf: always the visual rule, +inf: always the rating rule). `min_rating`
        keeps images rated at least that (unrated ones are left out); `allowed`, an (n,) bool mask or a
        `selection` of one, keeps only those ids.
        `query_stars` (nq,) or one value: the queries' ratings (NaN: unrated).
        """
        vectors = check_vectors(vectors, self.dim, "queries")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        threshold = self.threshold if threshold is None else float(threshold)
        if math.isnan(threshold):
            raise ValueError("threshold must be a number, got NaN")
        # the queries' ratings matter to the index only with a rating weight; unrated (None) otherwise until the
        # rating rule needs them (fewer steps for the common one-query visual search)
        weighted = self.config.rating_weight > 0
        q_stars = _query_stars(query_stars, len(vectors)) if weighted or query_stars is not None else None
        everything = self._filter(None, None)  # the live ids: the background of the neighbourhood term
        subset = self._filter(min_rating, allowed)
        k = min(k, self._live_count)
        deep = self.config.score_norm > 0 and subset is everything  # the visual search also gives the neighbourhood
        ids = self._nearest(vectors, q_stars, self._norm_depth(k) if deep else k, subset, ef_search)
        similarities = self._similarities(vectors, ids)
        near = similarities if deep else None
        ids, similarities = ids[:, :k], similarities[:, :k]
        best = np.fmax.reduce(similarities, axis=1, initial=-np.inf)  # NaN (no id) left out
        around = self._neighbourhood(vectors, q_stars, near, everything, ef_search)
        score = best - self.config.score_norm * around
        fallback = ~(score >= threshold)
        if fallback.any():
            if q_stars is None:
                q_stars = _query_stars(None, len(vectors))
            for i in np.flatnonzero(fallback):
                ids[i] = self._by_rating(vectors[i], q_stars[i], ids.shape[1], min_rating, subset, ef_search)
                similarities[i] = self._similarities(vectors[i : i + 1], ids[i : i + 1])[0]
        return Hits(ids, similarities, best, fallback, score, around)

    def _norm_depth(self, k: int) -> int:
        return min(self._live_count, max(k, self.config.norm_ranks[1] + 1))

    def _neighbourhood(self, vectors, q_stars, near: np.ndarray | None, everything: Selection | None,
                       ef_search) -> np.ndarray:
        """(nq,) `neighbourhood` of each query among all live images (filters do not apply: the term measures how
        crowded the query's region of the collection is, which the calibration measured on all of it)."""
        if self.config.score_norm == 0:
            return np.zeros(len(vectors))
        if near is None:
            ids = self._nearest(vectors, q_stars, self._norm_depth(1), everything, ef_search)
            near = self._similarities(vectors, ids)
        return neighbourhood(near, self.config.norm_ranks)

    def _nearest(self, vectors, q_stars, k, subset: Selection | None, ef_search) -> np.ndarray:
        """Ids (nq, k) nearest in index space among `subset` (None: all), -1 where fewer exist."""
        queries = with_rating(vectors, q_stars, self.config.rating_weight)
        if subset is not None and (subset.count == 0 or k == 0):
            return np.full((len(vectors), k), -1, dtype=np.int64)
        if isinstance(self.index_, faiss.IndexIVF):
            return self._nearest_ivf(queries, k, subset, ef_search)
        if subset is None:
            return search_checked(self.index_, queries, k, ef_search)[1]
        ef = self.config.index.ef_search if ef_search is None else int(ef_search)
        ef = max(ef, k, math.ceil(FILTER_BEAM * len(self) / subset.count))
        if subset.count <= k or self._exact_is_cheaper(subset.count, ef):
            return self._exact(queries, k, subset)
        ids = search_checked(self.index_, queries, k, min(ef, MAX_EF), subset.selector)[1]
        return self._complete(queries, ids, k, subset)

    def _nearest_ivf(self, queries, k, subset: Selection | None, ef_search) -> np.ndarray:
        """An IVF-PQ search: a shortlist of `refine` x k ids by code distance, re-ranked exactly. With a filter the
        lists probed grow as the allowed share shrinks (a list then holds that share of allowed vectors), up to
        every list; the exact path is taken where it costs less."""
        nprobe = self.config.index.nprobe if ef_search is None else int(ef_search)
        shortlist = max(k, min(k * self.config.index.refine, len(self)))
        if subset is None:
            return self._reranked(queries, search_checked(self.index_, queries, shortlist, nprobe)[1], k)
        nprobe = min(self.index_.nlist, max(nprobe, math.ceil(nprobe * len(self) / subset.count)))
        if subset.count <= k or self._exact_is_cheaper(subset.count, nprobe):
            return self._exact(queries, k, subset)
        found = search_checked(self.index_, queries, shortlist, nprobe, subset.selector)[1]
        return self._complete(queries, self._reranked(queries, found, k), k, subset)

    def _complete(self, queries, ids, k, subset: Selection) -> np.ndarray:
        # a selective filter can leave the approximate search short of k: those queries are answered exactly
        short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, subset.count))
        if len(short):
            ids[short] = self._exact(queries[short], k, subset)
        return ids

    def _exact(self, queries, k, subset: Selection) -> np.ndarray:
        """Ids (nq, k) of the allowed vectors nearest each query, by exact search."""
        flat = flat_storage(self.index_)
        if flat is not None:
            return search_checked(flat, queries, k, None, subset.selector)[1]
        heap = faiss.ResultHeap(len(queries), k)
        for start in range(0, subset.count, EXACT_BLOCK):
            block = subset.ids[start : start + EXACT_BLOCK]
            distances, found = faiss.knn(queries, self._indexed(block), min(k, len(block)))
            heap.add_result(distances, np.where(found >= 0, block[np.clip(found, 0, None)], -1))
        heap.finalize()
        return heap.I

    def _reranked(self, queries, ids: np.ndarray, k: int) -> np.ndarray:
        """The k of each query's shortlist `ids` nearest by exact distance to the core's own vectors."""
        out = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), RERANK_QUERIES):
            rows = slice(start, start + RERANK_QUERIES)
            out[rows] = rerank(queries[rows], ids[rows], self._indexed(np.clip(ids[rows], 0, None)), k)
        return out

    def _indexed(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of `ids` (any shape) as the index holds them: with the rating coordinate when weighted."""
        gathered = self.gather(ids)
        if self.config.rating_weight == 0:
            return gathered
        flat = with_rating(gathered.reshape(-1, self.dim), self.stars_[ids].reshape(-1), self.config.rating_weight)
        return flat.reshape(*np.shape(ids), flat.shape[1])

    def _exact_is_cheaper(self, allowed: int, ef: int) -> bool:
        """Whether comparing the query with the `allowed` vectors costs fewer distance computations than the
        approximate search at effort `ef` (an HNSW beam, or the lists an IVF index probes, each of its codes
        counted as one distance)."""
        if isinstance(self.index_, faiss.IndexHNSW):
            return len(self) * BIT_TEST_COST + allowed <= ef * 2 * self.config.index.M
        if isinstance(self.index_, faiss.IndexIVF):
            return allowed <= self.index_.nlist + ef * len(self) / self.index_.nlist
        return True

    def _similarities(self, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(nq, k) float32 inner products of each query with its `ids`' vectors, NaN where an id is -1. FAISS's
        kernel computes them, one fixed order of additions whatever the arrays' alignment in memory, so a loaded
        (memory-mapped) collection gives the very numbers the saved one gave, and a core whose vectors are held in
        several arrays (after adds) the numbers of one holding them joined."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(self._parts) == 1:
            base, rows = self._parts[0], ids
        else:  # the rows gathered into one block, each query's own rows numbered within it
            base = self.gather(np.maximum(ids, 0)).reshape(-1, self.dim)
            rows = np.where(ids >= 0, np.arange(ids.size).reshape(ids.shape), -1)
        out = np.empty(ids.shape, dtype=np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(vectors), faiss.swig_ptr(base),
                                         faiss.swig_ptr(rows), self.dim, ids.shape[0], ids.shape[1])
        if ids.size and ids.min() < 0:
            out[ids < 0] = np.nan  # FAISS writes -inf there
        return out

    def _by_rating(self, vector, stars: float, k: int, min_rating, subset: Selection | None, ef_search) -> np.ndarray:
        """The rating rule for one query: tiers of ratings, closest to the query's first (highest first when it is
        unrated); within a tier (ratings equally close), nearest first."""
        found = []
        for values in _tiers(self._rating_values(), stars):
            tier = self._tier(values, min_rating, subset)
            if tier.count == 0:
                continue
            ids = self._nearest(vector[None], np.array([stars]), min(k - len(found), tier.count), tier, ef_search)[0]
            found.extend(ids[ids >= 0].tolist())
            if len(found) >= k:
                break
        return np.array(found + [-1] * (k - len(found)), dtype=np.int64)

    # ---------------------------------------------------------------- subsets

    def _filter(self, min_rating, allowed) -> Selection | None:
        """What a search may return: None for every id, else a selection of live ids passing the filters."""
        if allowed is None:
            if min_rating is None:
                return None if self._live_count == len(self) else self._cached("live", lambda: self.live_)
            return self._cached(("min_rating", float(min_rating)), lambda: self._rating_mask(min_rating))
        selection = allowed if isinstance(allowed, Selection) else self.selection(allowed)
        if len(selection.mask) != len(self):
            raise ValueError(f"the selection covers {len(selection.mask)} ids, the core holds {len(self)}")
        if selection.removals != self._removals:  # made before the latest removal
            selection = Selection(selection.mask & self.live_, self._removals)
        if min_rating is None:
            return selection
        return Selection(selection.mask & self._cached(("min_rating", float(min_rating)),
                                                       lambda: self._rating_mask(min_rating)).mask, self._removals)

    def selection(self, allowed: np.ndarray) -> Selection:
        """The live ids an (n,) bool mask allows, ready to filter searches (`allowed=`)."""
        return Selection(self._mask(allowed) & self.live_, self._removals)

    def _tier(self, values: tuple[float, ...], min_rating, subset: Selection | None) -> Selection:
        own = self._cached(("tier", values, None if min_rating is None else float(min_rating)),
                           lambda: np.isin(self.stars_, values) & self._rating_mask(min_rating))
        cached_filter = subset is None or subset is self._subsets.get("live") or (
            min_rating is not None and subset is self._subsets.get(("min_rating", float(min_rating))))
        return own if cached_filter else Selection(own.mask & subset.mask)

    def _rating_mask(self, min_rating) -> np.ndarray:
        """Live ids rated at least `min_rating` (every live id when None)."""
        if min_rating is None:
            return self.live_
        with np.errstate(invalid="ignore"):
            return (self.stars_ >= float(min_rating)) & self.live_

    def _rating_values(self) -> np.ndarray:
        live = self.stars_[self.live_]
        return self._cached("values", lambda: np.unique(live[~np.isnan(live)]), subset=False)

    def _cached(self, key, make, subset: bool = True):
        if key not in self._subsets:
            made = make()
            self._subsets[key] = Selection(made, self._removals) if subset else made
        return self._subsets[key]

    def _mask(self, allowed) -> np.ndarray:
        mask = np.asarray(allowed)
        if mask.dtype != bool or mask.shape != (len(self),):
            raise ValueError(f"allowed must be a bool array of shape ({len(self)},), got {mask.dtype} {mask.shape}")
        return mask

    # ---------------------------------------------------------------- saving

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The learned state as plain arrays (vectors, stars, live ids, PCA); the index is saved beside them."""
        arrays = {"vectors": self.vectors_, "stars": self.stars_, "live": self.live_}
        if self.pca_ is not None:
            arrays.update({f"pca_{k}": v for k, v in self.pca_.to_arrays().items()})
        return arrays

    @classmethod
    def from_arrays(
        cls,
        config: SearchConfig,
        arrays: dict[str, np.ndarray],
        index: faiss.Index,
        calibration: Calibration | None,
        *,
        batches: Sequence[int] = (),
    ) -> "SearchCore":
        """The core `to_arrays` (and the index, with the `batches` added since it was saved) saved; ValueError
        when the arrays do not fit together. Without a "live" array no id is removed."""
        pca_arrays = {k[4:]: v for k, v in arrays.items() if k.startswith("pca_")}
        pca = PCA.from_arrays(pca_arrays) if pca_arrays else None
        if (pca is None) != (config.pca_dim is None):
            raise ValueError("the PCA arrays do not match the configuration")
        for name, dtype in (("vectors", np.float32), ("stars", np.float64)):
            if arrays[name].dtype != dtype:
                raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {arrays[name].dtype}")
        return cls.from_state(config, pca, arrays["vectors"], arrays["stars"], index, calibration, batches=batches,
                              live=arrays.get("live"))


def _stars(stars, n: int) -> np.ndarray:
    """Ratings as float64 (n,): NaN for unrated, -1 for rejected, else 0..5."""
    if stars is None:
        return np.full(n, np.nan)
    stars = np.asarray(stars, dtype=np.float64)
    if stars.shape != (n,):
        raise ValueError(f"stars must have shape ({n},), got {stars.shape}")
    rated = stars[~np.isnan(stars)]
    if not np.all((rated == REJECTED) | ((rated >= 0) & (rated <= 5))):
        raise ValueError("stars must be NaN (unrated), -1 (rejected) or within 0..5")
    return stars


def _live(live, n: int) -> np.ndarray:
    live = np.asarray(live)
    if live.dtype != bool or live.shape != (n,):
        raise ValueError(f"the live mask must be a bool array of shape ({n},), got {live.dtype} {live.shape}")
    return live


def _query_stars(query_stars, nq: int) -> np.ndarray:
    if query_stars is None:
        return np.full(nq, np.nan)
    values = np.broadcast_to(np.asarray(query_stars, dtype=np.float64), (nq,))
    return _stars(np.array(values), nq)


def _tiers(values: np.ndarray, stars: float) -> list[tuple[float, ...]]:
    """Rating values grouped in the order the rating rule takes them. Rejected images (-1) only for a rejected
    query; unrated query: highest first; rated: closest first, equally close values in one tier."""
    if not (stars == REJECTED):
        values = values[values != REJECTED]
    if math.isnan(stars):
        return [(float(v),) for v in values[::-1]]
    gaps = np.abs(values - stars)
    return [tuple(float(v) for v in values[gaps == gap]) for gap in np.unique(gaps)]
