"""Settings of the search core and its index: plain frozen dataclasses, checked on creation, written to and read
from a collection's manifest. No heavy imports, so reading a manifest (`simlib info`) starts at once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Literal

BACKBONE_NAMES = ("resnet18", "efficientnet_lite0")  # `simlib.backbones.BACKBONES`, named without importing torch
MAX_M = 4096
MAX_EF = 1 << 20
# Below this many vectors an exact index answers one query faster than HNSW at simlib's settings, and exactly:
# benchmarks/index_kind.py measured exact 8,317 / HNSW 5,700 queries per second at 8,000 vectors and 2,718 / 4,903 at
# 12,000 (128-d, 2-core AMD EPYC); kind 'auto' is exact below it and HNSW from it on.
EXACT_BELOW = 10_000
# From this many vectors kind 'auto' builds IVF-PQ: the HNSW graph would take 7.8 GB (784 bytes per 128-d vector at
# M=32, benchmarks/ann.py at 1M), half a 16 GB laptop's memory, where IVF-PQ takes 40 bytes per vector and recall@10
# 0.974 at the default nprobe 256 and shortlist 40 x k, the fastest setting measured with recall >= 0.95
# (benchmarks/big_index.py at 10M: 65 one-query QPS; 0.908 at nprobe 128 with 20 x k)
IVF_PQ_FROM = 10_000_000
MAX_NORM_RANK = 100  # deepest neighbour the match score may average over
# IVF-PQ bounds: the FAISS reader allocates per list and per code byte before it checks anything, and a search
# allocates in proportion to nprobe and the shortlist, so beyond these a value is a mistake or a forged file
MAX_NLIST = 1 << 20
MAX_PQ_M = 1024
MAX_REFINE = 1000
# FAISS's k-means warns below 39 training points per centroid, and each PQ sub-quantizer has 256 centroids: a
# collection smaller than 39 x max(nlist, 256) vectors cannot train an IVF-PQ index well and gets an exact one
TRAIN_POINTS_PER_CENTROID = 39
KINDS = ("hnsw", "exact", "auto", "ivf-pq")


@dataclass(frozen=True)
class IndexParams:
    """HNSW graph degree `M`, build beam `ef_construction`, default query beam `ef_search`; kind 'exact' is brute
    force, 'auto' exact below `EXACT_BELOW` vectors, HNSW from there and IVF-PQ from `IVF_PQ_FROM` (what a
    collection gets by default).

    Kind 'ivf-pq' holds compressed codes only: `nlist` inverted lists (k-means cells), `pq_m` code bytes per vector,
    `nprobe` lists searched by default, and a shortlist of `refine` x k candidates re-ranked exactly against the
    search core's float vectors. Below `ivf_min_vectors` it is exact (too few vectors to train it)."""

    kind: Literal["hnsw", "exact", "auto", "ivf-pq"] = "hnsw"
    M: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 4096
    pq_m: int = 32
    nprobe: int = 256
    refine: int = 40

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}")
        for name, limit in (("M", MAX_M), ("ef_construction", MAX_EF), ("ef_search", MAX_EF), ("nlist", MAX_NLIST),
                            ("pq_m", MAX_PQ_M), ("nprobe", MAX_NLIST), ("refine", MAX_REFINE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not 1 <= int(value) <= limit:
                # memory and time grow with each of them: beyond these a value is a mistake or a forged file
                raise ValueError(f"{name} must be within 1..{limit}, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)

    def kind_for(self, n: int) -> Literal["hnsw", "exact", "ivf-pq"]:
        """The kind of index `n` vectors get."""
        if self.kind == "auto":
            if n < EXACT_BELOW:
                return "exact"
            return "ivf-pq" if n >= max(IVF_PQ_FROM, self.ivf_min_vectors) else "hnsw"
        if self.kind == "ivf-pq" and n < self.ivf_min_vectors:
            return "exact"
        return self.kind

    @property
    def ivf_min_vectors(self) -> int:
        """The fewest vectors an IVF-PQ index is trained on: 39 per k-means centroid (FAISS's own floor)."""
        return TRAIN_POINTS_PER_CENTROID * max(int(self.nlist), 256)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that shapes a search core besides the features: PCA size (None: the raw features, L2-normalised),
    whitening, index, rating weight, and a fixed match threshold (None: the calibrated one)."""

    pca_dim: int | None = 128
    whiten: bool = False
    index: IndexParams = IndexParams(kind="auto")
    rating_weight: float = 0.0  # weight of the appended rating coordinate; 0 = pure visual search
    threshold: float | None = None
    score_norm: float = 0.5  # weight of the neighbourhood term in the match score; 0 = the best similarity alone
    norm_ranks: tuple[int, int] = (4, 8)  # first and last rank (zero-based) of the neighbours in that term

    def __post_init__(self) -> None:
        if self.pca_dim is not None and (isinstance(self.pca_dim, bool) or not isinstance(self.pca_dim, int)
                                         or self.pca_dim < 1):
            raise ValueError(f"pca_dim must be an integer >= 1 or None, got {self.pca_dim!r}")
        if not isinstance(self.whiten, bool):
            raise ValueError(f"whiten must be true or false, got {self.whiten!r}")
        if not isinstance(self.index, IndexParams):
            raise ValueError(f"index must be IndexParams, got {type(self.index).__name__}")
        if not _real(self.rating_weight) or not 0 <= self.rating_weight < math.inf:
            raise ValueError(f"rating_weight must be a finite number >= 0, got {self.rating_weight!r}")
        if self.threshold is not None and (not _real(self.threshold) or math.isnan(self.threshold)):
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")
        if not _real(self.score_norm) or not 0 <= self.score_norm <= 1:
            raise ValueError(f"score_norm must be a number within 0..1, got {self.score_norm!r}")
        first, last = _pair(self.norm_ranks)
        if not 1 <= first <= last <= MAX_NORM_RANK:
            raise ValueError(f"norm_ranks must be two ranks 1 <= first <= last <= {MAX_NORM_RANK}, "
                             f"got {self.norm_ranks!r}")
        object.__setattr__(self, "norm_ranks", (first, last))  # a JSON list read back becomes the tuple again

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        """The config `to_dict` wrote; ValueError for anything else (the data may come from an untrusted file).
        A config written before score normalisation existed has none: its threshold was calibrated on the best
        similarity alone."""
        if not isinstance(data, dict) or not isinstance(data.get("index"), dict):
            raise ValueError("the search configuration is not an object with an index object")
        try:
            return cls(**{"score_norm": 0.0, **data, "index": IndexParams(**data["index"])})
        except TypeError as exc:
            raise ValueError(f"the search configuration has unexpected fields ({exc})") from None


def _real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _pair(value) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
            isinstance(v, Integral) and not isinstance(v, bool) for v in value):
        raise ValueError(f"norm_ranks must be two integers, got {value!r}")
    return int(value[0]), int(value[1])


