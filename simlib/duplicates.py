"""Copies in a collection: exact groups (the same file bytes or the same decoded pixels) and near groups (visual
similarity at or above a threshold), kept apart, each with a keeper and why every other member is not it.

How groups are formed, in memory bounded by the pairs found (never an n x n matrix):

1. **The neighbour graph** (`neighbour_edges`). Every live vector searches the core's own index for its nearest
   images, the visual rule forced, a bounded number at a time; pairs at or above a floor are kept. A vector whose
   last neighbour still reaches the floor searches again with four times as many, up to `MAX_NEIGHBOURS`.
2. **Exact groups.** Files with the same SHA-256 (the store records it when a file is indexed), and neighbours of
   the same size whose decoded pixels hash the same (`image_facts.pixel_digest`: a PNG saved from a JPEG, a copy
   with its metadata stripped). Identical pixels give nearly identical features (cosine 0.985 or more measured
   between JPEGs and PNGs of the same pixels), so such files are always neighbours above `EXACT_CANDIDATE`.
   Identity is transitive: an exact group is a connected component of those pairs.
3. **Near groups**, among what is left (each exact group stands as its keeper). Similarity is not transitive:
   connected components would chain A ~ B ~ C into one group where A and C are unlike. A near group is a star
   around its keeper instead (`star_groups`): images are taken in keeper order; an image not yet grouped becomes a
   keeper and takes every image not yet grouped whose similarity *to it* reaches the threshold. Every member is a
   copy of its keeper, so a photo is only ever moved for a keeper it matches.

The keeper order (`keeper_order`): highest rating (unrated counts as 0; a rejected -1 photo is never a keeper),
then more pixels, then sharper (`image_facts.sharpness`; within a factor `SHARPER_BY` of the sharpest counts as
equally sharp, so a recompressed copy is not taken for sharper), then the larger file (at equal resolution: the
original over a recompressed copy), then the oldest (modification time). Members equal to the keeper on all five
are ties: reported as such, and the keeper is the first of them by path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from .image_facts import ImageFacts, pixel_digest, read_facts
from .images import FileError, ImageDecodeError
from .ratings import REJECTED, format_stars
from .records import ImageRecord

if TYPE_CHECKING:
    from .search_core import SearchCore
    from .threshold import Calibration

Kind = Literal["exact", "near"]
ReadRecords = Callable[[np.ndarray], list[ImageRecord]]

FIRST_NEIGHBOURS = 16  # neighbours each vector asks for first
MAX_NEIGHBOURS = 1024  # the most a vector asks for: an image with more copies than this keeps its nearest 1024
SEARCH_BUDGET = 16384  # neighbours searched per call (vectors x k): the search's memory, about 18 MB at 128-d
EXACT_CANDIDATE = 0.9  # neighbours this similar (or the threshold, if lower) are checked for identical pixels
SHARPER_BY = 1.25  # a Laplacian variance must exceed the sharpest's / SHARPER_BY to count as equally sharp
RECORD_CHUNK = 4096  # records read at a time when every file's SHA-256 is gathered
CRITERIA = ("the highest rating", "the most pixels", "the sharpest", "the largest file", "the oldest")
KEEPER_OF_TIE = ("the keeper of a tie: equal to another member on rating, pixels, sharpness, file size and age, "
                 "and the first of them by path")
NO_KEEPER = "rejected (-1), as is every member of this group: it has no keeper, so nothing of it is moved"


@dataclass(frozen=True)
class Edges:
    """Pairs of ids (`first` < `second`, each pair once) and their visual similarity, every one at least `floor`."""

    first: np.ndarray  # (e,) int64
    second: np.ndarray  # (e,) int64
    similarity: np.ndarray  # (e,) float32, cosine of the core's vectors
    floor: float

    def at_least(self, threshold: float) -> "Edges":
        keep = self.similarity >= threshold
        return Edges(self.first[keep], self.second[keep], self.similarity[keep], max(self.floor, threshold))

    @property
    def nbytes(self) -> int:
        return self.first.nbytes + self.second.nbytes + self.similarity.nbytes


def neighbour_edges(core: "SearchCore", floor: float, *, ef_search: int | None = None,
                    budget: int = SEARCH_BUDGET) -> Edges:
    """Every pair of live ids whose similarity reaches `floor`, found by the core's own index (`search_vectors`,
    the visual rule forced; with a rating weight each vector asks with its own rating). Each call searches at most
    `budget` neighbours in all (so fewer vectors at a time as they ask for more), which with the pairs kept is all
    the memory it takes."""
    live = np.flatnonzero(core.live_)
    rated = core.config.rating_weight > 0
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending, k = live, FIRST_NEIGHBOURS
    while len(pending):
        k = min(k, MAX_NEIGHBOURS, core.live_count)
        again = []
        step = max(1, budget // k)
        for start in range(0, len(pending), step):
            ids = pending[start : start + step]
            hits = core.search_vectors(core.gather(ids), k, threshold=-np.inf, ef_search=ef_search,
                                       query_stars=core.stars_[ids] if rated else None)
            with np.errstate(invalid="ignore"):  # NaN similarities pad missing results
                near = (hits.similarities >= floor) & (hits.ids >= 0)
            more = near[:, -1] & (k < min(MAX_NEIGHBOURS, core.live_count))
            done = ~more
            rows, cols = np.nonzero(near[done] & (hits.ids[done] != ids[done, None]))
            parts.append((ids[done][rows], hits.ids[done][rows, cols], hits.similarities[done][rows, cols]))
            again.append(ids[more])
        pending, k = np.concatenate(again), k * 4
    return _unique_pairs(parts, floor)


def _unique_pairs(parts, floor: float) -> Edges:
    """Each unordered pair once (a pair is usually found from both ends), with its highest similarity."""
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return Edges(empty, empty, np.empty(0, dtype=np.float32), floor)
    a = np.concatenate([p[0] for p in parts]).astype(np.int64)
    b = np.concatenate([p[1] for p in parts]).astype(np.int64)
    similarity = np.concatenate([p[2] for p in parts]).astype(np.float32)
    low, high = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((-similarity, high, low))
    low, high, similarity = low[order], high[order], similarity[order]
    first = np.ones(len(low), dtype=bool)
    first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    return Edges(low[first], high[first], similarity[first], floor)


def star_groups(n: int, first: np.ndarray, second: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The keeper of each of `n` nodes under the star rule: nodes are taken in `order` (most preferred first); a
    node not yet grouped becomes a keeper and takes every neighbour not yet grouped. Edges `first`-`second`. A
    node that keeps only itself is its own keeper; every node gets one."""
    source = np.concatenate([first, second])
    target = np.concatenate([second, first])
    by_source = np.argsort(source, kind="stable")
    target = target[by_source]
    starts = np.searchsorted(source[by_source], np.arange(n + 1))
    keeper = np.full(n, -1, dtype=np.int64)
    for node in np.asarray(order, dtype=np.int64):
        if keeper[node] >= 0:
            continue
        keeper[node] = node
        neighbours = target[starts[node] : starts[node + 1]]
        keeper[neighbours[keeper[neighbours] < 0]] = node
    return keeper


def components(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Connected-component label of each of `n` nodes of the graph with edges `first`-`second`."""
    graph = sparse.coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(n, n))
    return csgraph.connected_components(graph, directed=False)[1]


def group_vectors(core: "SearchCore", threshold: float, *, ef_search: int | None = None) -> np.ndarray:
    """Near groups of a core's live vectors by the star rule with the keeper order of ratings alone (no files:
    benchmarks, notebooks): the keeper id of every id, -1 for ids in no group (`keepers_by_rating`)."""
    return keepers_by_rating(core.stars_, neighbour_edges(core, threshold, ef_search=ef_search))


def keepers_by_rating(stars: np.ndarray, edges: Edges) -> np.ndarray:
    """The keeper id of each of the `len(stars)` ids under the star rule over `edges`, keepers taken by rating
    (higher first, unrated as 0, rejected last, then by id); -1 for ids in no group."""
    nodes = np.unique(np.concatenate([edges.first, edges.second]))
    rated = np.asarray(stars, dtype=np.float64)[nodes]
    order = np.lexsort((nodes, -np.nan_to_num(rated, nan=0.0), rated == REJECTED))
    keeper = star_groups(len(nodes), np.searchsorted(nodes, edges.first), np.searchsorted(nodes, edges.second), order)
    out = np.full(len(stars), -1, dtype=np.int64)
    grouped = np.bincount(keeper, minlength=len(nodes))[keeper] > 1
    out[nodes[grouped]] = nodes[keeper[grouped]]
    return out


# ------------------------------------------------------------------------------------------------ the keeper


def keeper_order(facts: Sequence[ImageFacts], component: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `facts` from the most to the least preferred keeper, and each one's sharpness class (0: as
    sharp as the sharpest of its kind). Sharpness classes are made within each `component` label among images of
    equal rating and pixels: the sharpest and every image within `SHARPER_BY` of it form class 0, the sharpest of
    the rest and those within `SHARPER_BY` of it class 1, and so on."""
    eligible = np.array([f.rating != REJECTED for f in facts], dtype=bool)
    stars = np.array([0.0 if f.rating is None else f.rating for f in facts], dtype=np.float64)
    pixels = np.array([f.pixels for f in facts], dtype=np.int64)
    sharp = np.array([f.sharpness for f in facts], dtype=np.float64)
    size = np.array([f.file_size for f in facts], dtype=np.int64)
    mtime = np.array([f.mtime_ns for f in facts], dtype=np.int64)
    path_rank = np.argsort(np.argsort(np.array([f.path for f in facts], dtype=object), kind="stable"))
    sharp_class = np.zeros(len(facts), dtype=np.int64)
    kind = (np.asarray(component), eligible, stars, pixels)
    previous, anchor, level = None, 0.0, 0
    for i in np.lexsort((-sharp, *kind[::-1])):  # by kind, sharpest first within a kind
        here = tuple(k[i] for k in kind)
        if here != previous:
            previous, anchor, level = here, sharp[i], 0
        elif sharp[i] * SHARPER_BY < anchor:
            anchor, level = sharp[i], level + 1
        sharp_class[i] = level
    order = np.lexsort((path_rank, mtime, -size, sharp_class, -pixels, -stars, ~eligible))
    return order, sharp_class


def versus_keeper(keeper: ImageFacts, member: ImageFacts, keeper_class: int, member_class: int,
                  same_pixels: bool = False) -> tuple[int, str]:
    """The first criterion on which `keeper` beats `member` (an index into `CRITERIA`; len(CRITERIA) for a tie)
    and a sentence saying so; `same_pixels`: the two decode to the same pixels (an exact group)."""
    if member.rating == REJECTED:
        return 0, "rejected (-1): never the keeper"
    stars, keeper_stars = _stars(member.rating), _stars(keeper.rating)
    if stars != keeper_stars:
        return 0, f"{_rating(member.rating)}, the keeper {_rating(keeper.rating)}"
    if member.pixels != keeper.pixels:
        return 1, (f"fewer pixels: {member.width}x{member.height}, the keeper {keeper.width}x{keeper.height}")
    if member_class != keeper_class:
        return 2, (f"less sharp: Laplacian variance {member.sharpness:.0f}, the keeper {keeper.sharpness:.0f}")
    if member.file_size != keeper.file_size:
        how = ("for the same pixels (another format, compression or less metadata)" if same_pixels else
               "at the same resolution and sharpness, as a recompressed copy is")
        return 3, f"smaller file {how}: {_size(member.file_size)}, the keeper {_size(keeper.file_size)}"
    if member.mtime_ns != keeper.mtime_ns:
        return 4, f"newer: modified {_when(member.mtime_ns)}, the keeper {_when(keeper.mtime_ns)}"
    return len(CRITERIA), ("tie: the same rating, pixels, sharpness, file size and age as the keeper, which is "
                           "the first of them by path")


def _stars(rating: float | None) -> float:
    return 0.0 if rating is None else rating


def _rating(rating: float | None) -> str:
    return "unrated (counts as 0 stars)" if rating is None else f"rated {format_stars(rating)}"


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} KB"


def _when(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group: its facts, whether it is the keeper, how it matches the keeper (`match`: 'same file
    bytes', 'same decoded pixels' or 'visual similarity'), its visual similarity to the keeper, and why it is the
    keeper or why not (`reason`); `tie` when it equals the keeper on every criterion."""

    id: int
    facts: ImageFacts
    keeper: bool
    match: str
    similarity: float
    reason: str
    tie: bool = False

    @property
    def path(self) -> str:
        return self.facts.path


@dataclass(frozen=True)
class DuplicateGroup:
    """Copies of one picture. `kind` 'exact': identical files or pixels; 'near': each member's visual similarity to
    the keeper reaches the threshold. Members: the keeper first, then in keeper order. No keeper when every member
    is rejected (-1): nothing of the group is then moved."""

    kind: Kind
    members: tuple[DuplicateMember, ...]

    @property
    def keeper(self) -> DuplicateMember | None:
        return self.members[0] if self.members[0].keeper else None

    @property
    def copies(self) -> list[DuplicateMember]:
        """The members a culling moves: every non-keeper, none when there is no keeper."""
        return [m for m in self.members if not m.keeper] if self.keeper is not None else []

    @property
    def tie(self) -> bool:
        return any(m.tie for m in self.members)


@dataclass(frozen=True)
class DuplicateThreshold:
    """The near-duplicate threshold used: calibrated from the collection's edited copies (with the error rates it
    makes on them, the estimated share of copy pairs missed and of images falsely paired with their nearest other
    image) or given."""

    value: float
    source: Literal["calibrated", "given"]
    miss_rate: float | None = None
    false_match_rate: float | None = None
    n_match: int | None = None
    n_nonmatch: int | None = None

    def describe(self) -> str:
        if self.source == "given":
            return f"{self.value:.3f} (given)"
        return (f"{self.value:.3f} (calibrated on {self.n_match} edited copies of the collection's images: "
                f"estimated miss rate {self.miss_rate:.1%}, false-match rate {self.false_match_rate:.1%})")


def duplicate_threshold(calibration: "Calibration | None", threshold: float | None = None) -> DuplicateThreshold:
    """`threshold` as given, else the collection's calibrated one: near duplicates are copies, exactly what the
    match threshold's calibration (edited copies against the nearest other image) decides, on the similarity of two
    images alone (`Calibration.on_similarity`: the match score's neighbourhood term belongs to a query)."""
    if threshold is not None:
        value = float(threshold)
        if not np.isfinite(value):
            raise ValueError(f"the duplicate threshold must be a finite number, got {threshold!r}")
        return DuplicateThreshold(value, "given")
    if calibration is None:
        raise ValueError("the collection has no calibrated threshold: give one")
    calibration = calibration.on_similarity
    return DuplicateThreshold(calibration.threshold, "calibrated", calibration.miss_rate,
                              calibration.false_match_rate, calibration.n_match, calibration.n_nonmatch)


@dataclass
class DuplicateReport:
    """The groups (exact ones first, larger first), the threshold, and the files left out because they could not
    be read or changed since they were indexed."""

    groups: list[DuplicateGroup]
    threshold: DuplicateThreshold
    errors: list[FileError]

    def of_kind(self, kind: Kind) -> list[DuplicateGroup]:
        return [g for g in self.groups if g.kind == kind]

    def rows(self) -> list[dict]:
        """One row per member, for CSV: group number, kind, role, path, rating, size, sharpness, match, reason."""
        return [
            {
                "group": number,
                "kind": group.kind,
                "role": "keeper" if member.keeper else "copy",
                "path": member.path,
                "rating": member.facts.rating,
                "width": member.facts.width,
                "height": member.facts.height,
                "file_size": member.facts.file_size,
                "sharpness": round(member.facts.sharpness, 1),
                "modified": _when(member.facts.mtime_ns),
                "match": member.match,
                "similarity": round(member.similarity, 4),
                "tie": member.tie,
                "reason": member.reason,
            }
            for number, group in enumerate(self.groups, start=1)
            for member in group.members
        ]

    def to_dict(self) -> dict:
        threshold = self.threshold
        rows = self.rows()
        return {
            "threshold": {"value": threshold.value, "source": threshold.source, "miss_rate": threshold.miss_rate,
                          "false_match_rate": threshold.false_match_rate},
            "groups": [
                {"kind": g.kind, "keeper": None if g.keeper is None else g.keeper.path, "tie": g.tie,
                 "members": [{k: v for k, v in row.items() if k not in ("group", "kind")}
                             for row in rows if row["group"] == number]}
                for number, g in enumerate(self.groups, start=1)
            ],
            "errors": [{"path": e.path, "reason": e.reason} for e in self.errors],
        }


# ------------------------------------------------------------------------------------------------ finding them


class DuplicateCache:
    """What grouping reuses between calls on one search core (the app's threshold slider regroups with it): the
    neighbour graph, searched again only for a lower floor or a changed core, every file's SHA-256, each file's
    facts and pixel digests."""

    def __init__(self) -> None:
        self._core: SearchCore | None = None
        self._state: tuple = ()
        self._edges: Edges | None = None
        self._digests: dict[int, str] | None = None
        self.facts: dict[tuple[str, int | None, int | None], ImageFacts | FileError] = {}
        self.pixels: dict[str, str | None] = {}

    def _check(self, core: "SearchCore") -> None:
        state = (len(core), core.live_count)
        if core is not self._core or state != self._state:
            self._core, self._state, self._edges, self._digests = core, state, None, None

    def edges(self, core: "SearchCore", floor: float, ef_search: int | None) -> Edges:
        self._check(core)
        if self._edges is None or floor < self._edges.floor:
            self._edges = neighbour_edges(core, floor, ef_search=ef_search)
        return self._edges.at_least(floor)

    def digests(self, core: "SearchCore", read_records: ReadRecords) -> dict[int, str]:
        """id -> SHA-256 of the file's bytes when it was indexed, for live ids whose digest is known."""
        self._check(core)
        if self._digests is None:
            live = np.flatnonzero(core.live_)
            self._digests = {}
            for start in range(0, len(live), RECORD_CHUNK):
                ids = live[start : start + RECORD_CHUNK]
                for i, record in zip(ids.tolist(), read_records(ids)):
                    if record.stamp is not None and record.stamp.sha256:
                        self._digests[i] = record.stamp.sha256
        return self._digests

    def read(self, record: ImageRecord) -> ImageFacts | FileError:
        """The facts of an indexed file, or why they cannot be used (unreadable, or changed since indexing)."""
        stamp = record.stamp
        key = (record.path, None if stamp is None else stamp.size, None if stamp is None else stamp.mtime_ns)
        if key not in self.facts:
            try:
                facts = read_facts(record)
                if stamp is not None and (facts.file_size, facts.mtime_ns) != (stamp.size, stamp.mtime_ns):
                    facts = FileError(record.path, "changed since it was indexed (size or modification time "
                                      "differ): sync the collection first (simlib index FOLDER -o COLLECTION --sync)")
            except ImageDecodeError as exc:
                facts = exc.as_file_error()
            self.facts[key] = facts
        return self.facts[key]

    def pixel_digest(self, path: str) -> str | None:
        if path not in self.pixels:
            try:
                self.pixels[path] = pixel_digest(path)
            except ImageDecodeError:
                self.pixels[path] = None
        return self.pixels[path]


def find_duplicates(
    core: "SearchCore",
    read_records: ReadRecords,
    threshold: float | None = None,
    *,
    cache: DuplicateCache | None = None,
    ef_search: int | None = None,
) -> DuplicateReport:
    """Exact and near groups of a core's live images, whose records `read_records(ids)` gives (see the module)."""
    limit = duplicate_threshold(core.calibration_, threshold)
    cache = DuplicateCache() if cache is None else cache
    edges = cache.edges(core, min(limit.value, EXACT_CANDIDATE), ef_search)
    digests = cache.digests(core, read_records)
    byte_pairs = _same_digest_pairs(digests)
    nodes = np.unique(np.concatenate([edges.first, edges.second, byte_pairs.ravel()]))
    facts, errors = _read_all(nodes, read_records, cache)
    readable = np.array([f is not None for f in facts], dtype=bool)
    nodes, facts = nodes[readable], [f for f in facts if f is not None]
    edges = _between(edges, nodes)
    exact_pairs = np.vstack([_between_pairs(byte_pairs, nodes), _pixel_pairs(edges, nodes, facts, digests, cache)])
    first, second = np.searchsorted(nodes, exact_pairs[:, 0]), np.searchsorted(nodes, exact_pairs[:, 1])
    exact_label = components(len(nodes), first, second)
    groups, stands_for = _exact_groups(nodes, facts, exact_label, digests)
    groups += _near_groups(nodes, facts, edges.at_least(limit.value), stands_for)
    groups.sort(key=lambda g: (g.kind != "exact", -len(g.members), g.members[0].path))
    return DuplicateReport(groups, limit, errors)


def _same_digest_pairs(digests: dict[int, str]) -> np.ndarray:
    """(p, 2) pairs (first id of a digest, another id with it) for every SHA-256 shared by several ids."""
    by_digest: dict[str, list[int]] = {}
    for i, digest in digests.items():
        by_digest.setdefault(digest, []).append(i)
    pairs = [(ids[0], other) for ids in by_digest.values() if len(ids) > 1 for other in ids[1:]]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _read_all(nodes: np.ndarray, read_records: ReadRecords, cache: DuplicateCache):
    facts: list[ImageFacts | None] = []
    errors: list[FileError] = []
    for start in range(0, len(nodes), RECORD_CHUNK):
        for record in read_records(nodes[start : start + RECORD_CHUNK]):
            found = cache.read(record)
            facts.append(found if isinstance(found, ImageFacts) else None)
            if isinstance(found, FileError):
                errors.append(found)
    return facts, errors


def _between(edges: Edges, nodes: np.ndarray) -> Edges:
    keep = np.isin(edges.first, nodes) & np.isin(edges.second, nodes)
    return Edges(edges.first[keep], edges.second[keep], edges.similarity[keep], edges.floor)


def _between_pairs(pairs: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    return pairs[np.isin(pairs[:, 0], nodes) & np.isin(pairs[:, 1], nodes)]


def _pixel_pairs(edges: Edges, nodes, facts, digests, cache: DuplicateCache) -> np.ndarray:
    """Neighbour pairs of the same width and height whose files differ (or whose bytes are unknown) but whose
    decoded pixels are the same."""
    a, b = np.searchsorted(nodes, edges.first), np.searchsorted(nodes, edges.second)
    size = np.array([(f.width, f.height) for f in facts], dtype=np.int64).reshape(-1, 2)
    found = []
    for i, j in zip(*(x[(size[a] == size[b]).all(axis=1)].tolist() for x in (a, b))):
        if _same_bytes(int(nodes[i]), int(nodes[j]), digests):
            continue  # already a pair
        digest = cache.pixel_digest(facts[i].path)
        if digest is not None and digest == cache.pixel_digest(facts[j].path):
            found.append((int(nodes[i]), int(nodes[j])))
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def _same_bytes(a: int, b: int, digests: dict[int, str]) -> bool:
    return a in digests and digests.get(a) == digests.get(b)


def _exact_groups(nodes, facts, label, digests) -> tuple[list[DuplicateGroup], np.ndarray]:
    """The exact groups, and for every node the node that stands for it in the near grouping (its exact group's
    first in keeper order; itself when it is in no exact group)."""
    order, sharp_class = keeper_order(facts, label)
    stands_for = np.arange(len(nodes))
    groups = []
    sizes = np.bincount(label)
    for component in np.unique(label[sizes[label] > 1]):
        members = order[label[order] == component]
        stands_for[members] = members[0]
        head = int(nodes[members[0]])
        matches = ["same file bytes" if _same_bytes(int(nodes[i]), head, digests) else "same decoded pixels"
                   for i in members]
        groups.append(_group("exact", members, nodes, facts, sharp_class, matches, [1.0] * len(members)))
    return groups, stands_for


def _near_groups(nodes, facts, edges: Edges, stands_for: np.ndarray) -> list[DuplicateGroup]:
    """Star groups among the nodes that stand for themselves or for an exact group."""
    a = stands_for[np.searchsorted(nodes, edges.first)]
    b = stands_for[np.searchsorted(nodes, edges.second)]
    keep = a != b
    pairs = _unique_pairs([(a[keep], b[keep], edges.similarity[keep])], edges.floor)
    similarity = {(int(x), int(y)): float(s) for x, y, s in zip(pairs.first, pairs.second, pairs.similarity)}
    label = components(len(nodes), pairs.first, pairs.second)
    order, sharp_class = keeper_order(facts, label)
    keeper = star_groups(len(nodes), pairs.first, pairs.second, order)
    sizes = np.bincount(keeper, minlength=len(nodes))
    groups = []
    for seed in np.unique(keeper[sizes[keeper] > 1]):
        members = order[keeper[order] == seed]
        to_seed = [1.0 if i == seed else similarity[(min(i, seed), max(i, seed))] for i in members.tolist()]
        groups.append(_group("near", members, nodes, facts, sharp_class, ["visual similarity"] * len(members),
                             to_seed))
    return groups


def _group(kind: Kind, members: np.ndarray, nodes, facts, sharp_class, matches: list[str],
           similarities: list[float]) -> DuplicateGroup:
    """A group from its members in keeper order, with how each matches the first and its similarity to it: the
    first is the keeper unless it is rejected (then every member is)."""
    head = int(members[0])
    if facts[head].rating == REJECTED:
        return DuplicateGroup(kind, tuple(
            DuplicateMember(int(nodes[i]), facts[i], False, match, s, NO_KEEPER)
            for i, match, s in zip(members, matches, similarities)))
    verdicts = [versus_keeper(facts[head], facts[i], sharp_class[head], sharp_class[i], kind == "exact")
                for i in members[1:]]
    decisive = max(stage for stage, _ in verdicts)
    tie = decisive == len(CRITERIA)
    why = KEEPER_OF_TIE if tie else "the keeper: " + ", then ".join(CRITERIA[: decisive + 1])
    keeper = DuplicateMember(int(nodes[head]), facts[head], True, "keeper", 1.0, why, tie)
    rest = [DuplicateMember(int(nodes[i]), facts[i], False, match, s, text, stage == len(CRITERIA))
            for i, match, s, (stage, text) in zip(members[1:], matches[1:], similarities[1:], verdicts)]
    return DuplicateGroup(kind, (keeper, *rest))
