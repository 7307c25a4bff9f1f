"""The task-level object: build a collection of images, add, remove and sync, search it with rating fallback, save
and load.

Data flows one way: files -> features (backbone) -> the search core (PCA vectors, ratings, HNSW index, threshold)
-> ranked results, with star ratings read beside it. The collection holds what is about files (records relative to
its root folder, skipped files, the backbone); everything about vectors is `simlib.search_core`, the on-disk
layout `simlib.store`, folder reconciliation `simlib.sync`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
from PIL import Image

from . import store
from .backbones import Backbone, load_backbone
from .duplicates import DuplicateCache, DuplicateReport, find_duplicates
from .errors import CollectionError
from .features import Extractor, Progress, embed_query, extract_features
from .files import find_images, walk_images
from .images import FileError, ImageSource, source_name, to_rgb
from .manifest import BackboneRecord, Manifest, PCARecord, RootRecord
from .ratings import REJECTED, Rating, RatingValue, format_stars, read_rating
from .records import FileStamp, ImageRecord, Records, common_folder
from .search_core import Hits, SearchConfig, SearchCore
from .store import CollectionFileError, Snapshot
from .sync import SyncReport, plan_sync
from .threshold import calibrate, calibration_sample, embed_edited_copies

Reason = Literal["visual", "rating-fallback"]

# Compaction (a new index over the live images, every file written anew) pays once removed images are more than
# this share of the ids: a filtered search then visits that share of dead nodes, and they cost memory and disk.
COMPACT_SHARE = 0.2
# The saved index is rewritten when more images than this were added since it was written; until then loading
# adds them to the saved graph again (about a millisecond each at a million images), which keeps saves small.
INDEX_TAIL_LIMIT = 1000
FEATURE_BLOCK = 65536  # rows copied at a time when features are written from one file to another


@dataclass(frozen=True)
class SearchResult:
    rank: int
    id: int
    path: str
    similarity: float  # cosine similarity of PCA vectors, visual only
    rating: float | None
    reason: Reason
    score: float  # its match score: the similarity less the query's neighbourhood term (simlib.scoring)

    def to_dict(self) -> dict:
        return {"path": self.path, "similarity": self.similarity, "rating": self.rating, "reason": self.reason}


@dataclass
class SearchResponse:
    query: str
    query_rating: Rating
    best_similarity: float
    threshold: float
    fallback: bool
    message: str
    results: list[SearchResult]
    match_score: float  # compared with the threshold: best_similarity less the neighbourhood term

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "query_rating": self.query_rating.stars,
            "best_similarity": self.best_similarity,
            "match_score": self.match_score,
            "threshold": self.threshold,
            "fallback": self.fallback,
            "message": self.message,
            "results": [r.to_dict() for r in self.results],
        }


@dataclass
class AddReport:
    added: int
    errors: list[FileError] = field(default_factory=list)
    already_present: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class RemoveReport:
    removed: int  # images removed
    not_found: list[str] = field(default_factory=list)  # paths that named no image of the collection


@dataclass
class _Saved:
    """The store this collection was loaded from or last saved to, and what it holds of it."""

    snapshot: Snapshot
    rows: int  # ids the store holds (features and vectors written for them)
    index_rows: int  # ids the saved index file holds
    removed: frozenset[int]  # ids the store records as removed
    config: SearchConfig


class Collection:
    """Images indexed for similar-image search with rating fallback: image records, a backbone, and the search core
    (`simlib.search_core.SearchCore`) built from their features.

    >>> collection = Collection.build("photos/")             # doctest: +SKIP
    >>> collection.search("query.jpg", k=5).results          # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: Backbone,
        config: SearchConfig = SearchConfig(),
        *,
        images: Sequence[ImageRecord] = (),
        features: np.ndarray | None = None,
        core: SearchCore | None = None,
        errors: Sequence[FileError] = (),
        notes: Sequence[str] | None = None,
        root: str | os.PathLike | None = None,
    ):
        """An empty collection to `add` to, or one assembled from records and a core built elsewhere (then
        `features`, the backbone features of the records, may be None: such a collection searches, but cannot be
        refitted or saved). `root`: the folder paths are kept relative to (default: the one holding them all)."""
        self.backbone = backbone
        self.records = Records.of(images, None if root is None else Path(os.path.abspath(root)))
        self.core = core
        self.config = core.config if core is not None else config
        if features is None and core is None:
            features = np.empty((0, backbone.dim), dtype=np.float32)
        self._features: list[np.ndarray] | None = None if features is None else [features]
        self.errors: list[FileError] = list(errors)
        self.notes: list[str] = list(notes) if notes is not None else ([backbone.notice] if backbone.notice else [])
        self._saved: _Saved | None = None
        self._features_from: Snapshot | None = None  # the store whose mapped features file is _features[0]
        if core is not None and len(core) != len(self.records):
            raise CollectionError(f"{len(self.records)} image records for a search core of {len(core)} vectors")
        if features is not None and features.shape != (len(self.records), backbone.dim):
            raise CollectionError(f"features of shape {features.shape} for {len(self.records)} images of a "
                                  f"{backbone.dim}-d backbone")
        self._forget()

    # ---------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        backbone: Backbone | str = "auto",
        config: SearchConfig = SearchConfig(),
        *,
        weights: str | os.PathLike | None = None,
        progress: Progress = True,
        batch_size: int | None = None,
        num_workers: int | None = None,
        extractor: Extractor | None = None,
    ) -> "Collection":
        """A new collection from a folder (searched recursively; it becomes the collection's root) or a list of
        image files (root: the folder holding them all)."""
        if isinstance(backbone, str):
            backbone = load_backbone(backbone, weights)
        collection = cls(backbone, config)
        collection.add(source, refit=True, progress=progress, batch_size=batch_size, num_workers=num_workers,
                       extractor=extractor)
        return collection

    def add(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        refit: bool = False,
        progress: Progress = True,
        batch_size: int | None = None,
        num_workers: int | None = None,
        extractor: Extractor | None = None,
    ) -> AddReport:
        """Index more images. Without `refit` the fitted PCA and threshold are kept; with it both are learned
        again from every image, and the index is rebuilt. Files already in the collection are not added twice.

        Features are extracted in this process (`batch_size` files per step, `num_workers` decoding processes) or,
        given an `extractor`, by it: `simlib.distributed.RayExtractor` runs the extraction on a Ray cluster."""
        if self._features is None and (refit or self.core is None):
            raise CollectionError("this collection holds no backbone features, so it cannot be refitted")
        paths, walk_errors = _resolve_sources(source)
        if self.records.root is None and paths:
            one_folder = isinstance(source, (str, os.PathLike)) and Path(source).is_dir()
            self.records.root = Path(os.path.abspath(source)) if one_folder else common_folder(paths)
        known = set(self._live_ids_of(paths))
        fresh = [p for p in paths if p not in known]
        added, errors = self._extract(fresh, progress, batch_size, num_workers, extractor)
        report = AddReport(len(added), walk_errors + errors, len(paths) - len(fresh))
        self.errors.extend(report.errors)
        if not added and not refit:
            return report
        report.notes.extend(self._append(*added_columns(added), refit=refit))
        self.notes.extend(n for n in report.notes if n not in self.notes)
        return report

    def _extract(self, paths: list[str], progress, batch_size, num_workers, extractor: Extractor | None):
        """(records, features) of the files that decoded, each stamped before it was read, and the errors."""
        stamps: dict[str, FileStamp] = {}
        errors = []
        for path in paths:
            try:
                stamps[path] = FileStamp.of(path)
            except OSError as exc:
                errors.append(FileError(path, f"cannot read: {exc.strerror or exc}"))
        readable = [p for p in paths if p in stamps]
        if not readable:
            return [], errors
        if extractor is None:
            result = extract_features(self.backbone, readable, batch_size=batch_size, num_workers=num_workers,
                                      progress=progress)
        else:
            result = extractor(self.backbone, readable, progress=progress)
        added = [(ImageRecord(readable[i], read_rating(readable[i]), stamps[readable[i]]), result.features[j])
                 for j, i in enumerate(result.indices)]
        return added, errors + result.errors

    def _append(self, records: list[ImageRecord], features: np.ndarray | None, *, refit: bool) -> list[str]:
        stars = _stars(records)
        if self.core is not None:
            stars = np.concatenate([self.core.stars_, stars])
            live = np.concatenate([self.core.live_, np.ones(len(records), dtype=bool)])
        self.records.append(records)
        if features is not None:
            self._features.append(features)
        self._forget()
        if refit or self.core is None:
            return self._fit(stars, None if self.core is None else live)
        self.core.add(features, stars[len(self.core):])
        pca = self.core.pca_
        if pca is not None and pca.n_samples_ * 2 < len(self):
            return [f"PCA was fitted on {pca.n_samples_} images and the collection now holds {len(self)}; add "
                    "with refit=True (CLI: --refit) to learn it again from all of them."]
        return []

    def _fit(self, stars: np.ndarray, live: np.ndarray | None) -> list[str]:
        """Learn PCA and threshold from every image's features, `stars` their ratings; ids not `live` (removed)
        go for good."""
        if live is not None and not live.all():
            keep = np.flatnonzero(live)
            self._take(keep)
            stars = stars[keep]
        n = len(self.records)
        if n < 2:
            skipped = f" ({len(self.errors)} files skipped)" if self.errors else ""
            raise CollectionError(f"a collection needs at least 2 readable images to fit PCA, got {n}{skipped}")
        features = self.features
        self._features = [features]
        sample = calibration_sample(n)
        records = self.records.records(sample)
        core = SearchCore(self.config).fit(features, stars)
        copies, origin = embed_edited_copies(self.backbone, [r.path for r in records],
                                             variants=list(range(len(sample))))
        if not len(origin):
            raise CollectionError("cannot calibrate the match threshold: no indexed image could be read again")
        self.core = core.set_calibration(calibrate(core, copies, sample[origin]))
        self._forget()
        kept = core.pca_.n_components_ if core.pca_ is not None else None
        if kept is None or kept >= self.config.pca_dim:
            return []
        notes = [f"PCA keeps {kept} dimensions instead of {self.config.pca_dim}: {n} images support at most {n - 1}."]
        if self.config.whiten:
            # benchmarks 4 and 10: whitened PCA-105 fitted on 106 wallpapers lost 72 mAP points; fitted on 150 or
            # more photos (128 dimensions) whitening gained 1 to 4 muAP points
            notes.append(f"whitening fitted on {n} images divides the last dimensions by almost no spread and "
                         "magnifies their noise, which can ruin retrieval: measured on 106 images it cost 72 mAP "
                         "points. Index without --whiten, or with more images than PCA dimensions.")
        return notes

    def _take(self, keep: np.ndarray) -> None:
        """Keep only the ids `keep` (renumbered 0..): records and features; the core is the caller's."""
        self.records = self.records.take(keep)
        self._features = [self._feature_rows(keep)]
        self._features_from = None

    def copy(self, *, rating_weight: float | None = None) -> "Collection":
        """An independent collection: adding to the copy leaves this one unchanged. Features and records are
        shared (nothing changes them in place); with `rating_weight` only the index is rebuilt, from the stored
        PCA vectors, without extracting any features again."""
        core = self._built()
        twin = Collection.__new__(Collection)
        twin.__dict__.update(self.__dict__)
        twin.core = core.copy() if rating_weight is None else core.with_rating_weight(rating_weight)
        twin.config = twin.core.config
        twin.records = self.records.copy()
        twin._features = None if self._features is None else list(self._features)
        twin.errors, twin.notes = list(self.errors), list(self.notes)
        twin._forget()
        return twin

    @property
    def root(self) -> Path | None:
        """The folder the records are relative to (the folder indexed)."""
        return self.records.root

    @property
    def threshold(self) -> float:
        """The match threshold in use: the configured one, else the calibrated one."""
        return self._built().threshold

    @property
    def features(self) -> np.ndarray:
        """Backbone features (n, dim) of every id, removed ones included until compaction. A loaded collection
        reads them from its features file here, checking every chunk's checksum the first time."""
        if self._features is None:
            raise CollectionError("this collection holds no backbone features")
        return self._feature_rows(slice(None))

    def _feature_rows(self, rows: slice | np.ndarray) -> np.ndarray:
        """Features of a slice or an array of ids, gathered from the arrays they are held in."""
        parts = self._features
        if isinstance(rows, slice):
            if rows == slice(None):
                self._verify_mapped_features()
                return parts[0] if len(parts) == 1 else np.concatenate(parts)
            rows = np.arange(*rows.indices(sum(len(p) for p in parts)))
        if len(rows) and rows.min() < len(parts[0]):
            self._verify_mapped_features()
        if len(parts) == 1:
            return parts[0][rows]
        ends = np.cumsum([len(p) for p in parts])
        which = np.searchsorted(ends, rows, side="right")
        out = np.empty((len(rows), self.backbone.dim), dtype=np.float32)
        for p in np.unique(which):
            here = which == p
            out[here] = parts[p][rows[here] - (ends[p] - len(parts[p]))]
        return out

    def _verify_mapped_features(self) -> None:
        """Check the mapped features file (`_features[0]` of a loaded collection) once, before it is read."""
        if self._features_from is not None:
            self._features_from.array("features")
            self._features_from = None

    def _built(self) -> SearchCore:
        if self.core is None:
            raise CollectionError("the collection has not been built: add images first")
        return self.core

    def _forget(self) -> None:
        self._folders: dict = {}  # folder list and folder filter masks, valid until images change

    # ---------------------------------------------------------------- removing and syncing

    def remove(self, paths: Sequence[str | os.PathLike] | str | os.PathLike) -> RemoveReport:
        """Leave out of every search the images at `paths`: files, or folders (everything under them). They are
        dropped from disk at the next save that compacts (`COMPACT_SHARE`)."""
        core = self._built()
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        found = self._live_ids_of(paths)
        ids, not_found = [], []
        for path in paths:
            absolute = os.path.abspath(path)
            under = self.records.ids_under(absolute)
            matched = found.get(absolute, []) + [int(i) for i in under[core.live_[under]]]
            ids += matched
            if not matched:
                not_found.append(os.fspath(path))
        removed = core.remove(np.unique(np.array(ids, dtype=np.int64)))
        self._forget()
        return RemoveReport(removed, not_found)

    def sync(
        self,
        folder: str | os.PathLike,
        *,
        progress: Progress = True,
        batch_size: int | None = None,
        num_workers: int | None = None,
        extractor: Extractor | None = None,
    ) -> SyncReport:
        """Bring the images under `folder` in line with the files there now: add new files, remove deleted ones,
        extract again the ones whose content changed (size or modification time changed and the SHA-256 differs;
        a file only touched costs no inference) and read again the ratings whose sidecars changed. Features are
        extracted as `add` extracts them."""
        core = self._built()
        folder = Path(os.path.abspath(folder))
        walked = walk_images(folder)
        recorded = [entry for entry in self.records.stamps(folder) if core.live_[entry[0]]]
        plan = plan_sync(recorded, walked.images, walked.sidecars)
        report = SyncReport(touched=len(plan.touched), skipped=walked.errors + plan.errors)
        self._restamp(plan.touched)
        report.rating_changed = self._rerate(plan.rerate)
        report.unchanged = plan.unchanged + len(plan.rerate) - report.rating_changed
        report.removed = core.remove([i for i, _, _ in plan.removed])
        core.remove([i for i, _, _ in plan.changed])
        fresh = plan.added + [path for _, path, _ in plan.changed]
        added, errors = self._extract(fresh, progress, batch_size, num_workers, extractor)
        failed = {e.path for e in errors}
        new = set(plan.added)
        report.added = sum(record.path in new for record, _ in added)
        report.changed = len(added) - report.added
        report.removed += sum(path in failed for _, path, _ in plan.changed)  # changed into something unreadable
        report.skipped += errors
        self.errors = [e for e in self.errors if not e.path.startswith(os.path.join(folder, ""))] + report.skipped
        if added:
            report.notes = self._append(*added_columns(added), refit=False)
        self._forget()
        return report

    def _restamp(self, entries: list[tuple[int, str, FileStamp]]) -> None:
        """New stamps for the records of files only touched."""
        ids = [i for i, _, _ in entries]
        self.records.update(ids, [replace(r, stamp=stamp) for r, (_, _, stamp) in zip(self.records.records(ids),
                                                                                    entries)])

    def _rerate(self, entries: list[tuple[int, str, FileStamp]]) -> int:
        """Read again the ratings of `entries` (id, path, the stamp now); returns how many changed."""
        ids = [i for i, _, _ in entries]
        old = self.records.records(ids)
        changed = [(i, ImageRecord(path, read_rating(path), stamp)) for i, path, stamp in entries]
        differs = [(i, r) for (i, r), before in zip(changed, old) if r.rating != before.rating]
        self.records.update(ids, [r for _, r in changed])  # the new sidecar stamps, whether or not the rating moved
        if differs:
            moved = self.core.set_stars([i for i, _ in differs], _stars([r for _, r in differs]))
            if not np.array_equal(moved, [i for i, _ in differs]):  # rating weight > 0: the images have new ids
                self.records.append([r for _, r in differs])
                self._features.append(self._feature_rows(np.array([i for i, _ in differs])))
        return len(differs)

    # ---------------------------------------------------------------- duplicates

    def duplicate_groups(
        self,
        threshold: float | None = None,
        *,
        cache: DuplicateCache | None = None,
        ef_search: int | None = None,
    ) -> DuplicateReport:
        """Groups of copies among the images: exact (the same file bytes or decoded pixels) and near (visual
        similarity to the group's keeper at or above `threshold`; default: the collection's calibrated one), each
        with its keeper and why every other member is not it (`simlib.duplicates`). A `cache` kept between calls
        lets another threshold regroup without searching or decoding again."""
        return find_duplicates(self._built(), self.records.records, threshold, cache=cache, ef_search=ef_search)

    # ---------------------------------------------------------------- searching

    def search(
        self,
        query: ImageSource | Image.Image,
        k: int = 10,
        *,
        threshold: float | None = None,
        min_rating: float | None = None,
        under: str | os.PathLike | None = None,
        exclude: Sequence[int] = (),
        query_rating: float | None = None,
        ef_search: int | None = None,
        name: str | None = None,
    ) -> SearchResponse:
        """The `k` most similar images, or, when the query's match score (its best visual similarity less a term for
        how crowded its neighbourhood is, `simlib.scoring`) is below the match threshold, the `k` images whose
        rating is closest to the query's (ties broken by similarity).

        The query's rating is `query_rating` if given, else read from its metadata (and sidecars, for a path).
        Rejected images (-1) are fallback candidates only for a rejected query. `min_rating` (images rated at least
        that), `under` (images in that folder or below it) and `exclude` (ids left out, e.g. the query's own)
        filter both rules.
        """
        self._built()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if name is not None:
            label = name
        elif isinstance(query, Image.Image):
            label = getattr(query, "filename", "") or "<image>"
        else:
            label = source_name(query)
        rating = _query_rating(query, query_rating)
        features = self._query_features(query, label)
        return self.search_features(features, k, threshold=threshold, min_rating=min_rating, under=under,
                                    exclude=exclude, query_rating=rating, ef_search=ef_search, name=label)

    def search_features(
        self,
        features: np.ndarray,
        k: int = 10,
        *,
        threshold: float | None = None,
        min_rating: float | None = None,
        under: str | os.PathLike | None = None,
        exclude: Sequence[int] = (),
        query_rating: Rating | float | None = None,
        ef_search: int | None = None,
        name: str = "<features>",
    ) -> SearchResponse:
        """`search` for a query whose backbone features (dim,) are already extracted; its rating is
        `query_rating` (a `Rating`, or stars; default unrated)."""
        core = self._built()
        if isinstance(query_rating, Rating):
            rating = query_rating
        else:
            rating = Rating(None, None) if query_rating is None else _given_rating(query_rating)
        threshold = core.threshold if threshold is None else float(threshold)
        hits = core.search(
            np.asarray(features)[None], k, threshold=threshold, ef_search=ef_search, min_rating=min_rating,
            allowed=self._allowed(under, exclude), query_stars=np.nan if rating.stars is None else rating.stars,
        )
        return self._response(name, rating, threshold, hits)

    def search_many(
        self,
        queries: Sequence[ImageSource],
        k: int = 10,
        *,
        threshold: float | None = None,
        min_rating: float | None = None,
        under: str | os.PathLike | None = None,
        query_rating: float | None = None,
        ef_search: int | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> list[SearchResponse | FileError]:
        """`search` for many query files at once: decoded in worker processes and embedded in batches, as
        `extract_features` does, then searched in one call of the core. One answer per query, in order: its
        response, or the `FileError` saying why it could not be read (the other queries are answered)."""
        core = self._built()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        labels = [source_name(q) for q in queries]
        extracted = extract_features(self.backbone, queries, names=labels, batch_size=batch_size,
                                     num_workers=num_workers, progress=False)
        threshold = core.threshold if threshold is None else float(threshold)
        answers: list[SearchResponse | None] = [None] * len(queries)
        if len(extracted.indices):
            ratings = [_query_rating(queries[i], query_rating) for i in extracted.indices]
            hits = core.search(
                extracted.features, k, threshold=threshold, ef_search=ef_search, min_rating=min_rating,
                allowed=self._allowed(under, ()),
                query_stars=np.array([np.nan if r.stars is None else r.stars for r in ratings]),
            )
            for row, (i, rating) in enumerate(zip(extracted.indices, ratings)):
                answers[i] = self._response(labels[i], rating, threshold, hits, row)
        errors = {error.path: error for error in extracted.errors}
        return [answer if answer is not None else errors[labels[i]] for i, answer in enumerate(answers)]

    def _response(self, label: str, rating: Rating, threshold: float, hits: Hits, row: int = 0) -> SearchResponse:
        ids, similarities = hits.found(row)
        best, score, fallback = float(hits.best[row]), float(hits.score[row]), bool(hits.fallback[row])
        around = float(hits.neighbourhood[row])
        subtracted = self.core.config.score_norm * around
        if not fallback:
            message = f"{self._scored(best, score, around)}, which reaches the match threshold {threshold:.3f}."
            reason: Reason = "visual"
        else:
            if not len(ids):
                why = "and no image has a usable rating to fall back on."
            elif rating.stars is None:
                why = "the query has no rating, so these are the highest-rated images."
            else:
                stated = "rejected (-1) rating" if rating.rejected else f"{format_stars(rating.stars)}-star rating"
                why = f"these are the images rated closest to the query's {stated}."
            message = f"{self._scored(best, score, around)}, which is below the match threshold {threshold:.3f}; {why}"
            reason = "rating-fallback"
        records = self._records(ids)
        results = [
            SearchResult(rank, int(i), record.path, float(s), record.rating.stars, reason, float(s) - subtracted)
            for rank, (i, s, record) in enumerate(zip(ids, similarities, records), start=1)
        ]
        return SearchResponse(label, rating, best, threshold, fallback, message, results, score)

    def _scored(self, best: float, score: float, around: float) -> str:
        """How the match score was made, in words: 'Best visual similarity 0.853, less 0.5 x 0.612 ...'."""
        if not np.isfinite(best):
            return "Best visual similarity none"
        config = self.core.config
        if config.score_norm == 0:
            return f"Best visual similarity {best:.3f}"
        first, last = (_ordinal(r + 1) for r in config.norm_ranks)
        return (f"Best visual similarity {best:.3f}, less {config.score_norm:g} x {around:.3f} (the "
                f"mean similarity of the query's {first} to {last} nearest images), gives the match score "
                f"{score:.3f}")

    def _records(self, ids: Sequence[int]) -> list[ImageRecord]:
        """The records of `ids`, each checked against the ratings the search core holds."""
        records = self.records.records(ids)
        stars = self._built().stars_
        for i, record in zip(ids, records):
            if not _same_stars(record.rating.stars, stars[i]):
                raise CollectionFileError(f"{self._where()}: the rating of {record.path} is "
                                          f"{format_stars(record.rating.stars)} in its record and "
                                          f"{format_stars(None if np.isnan(stars[i]) else stars[i])} in the ratings "
                                          "array: the collection was modified or corrupted")
        return records

    def _where(self) -> str:
        return str(self._saved.snapshot.folder) if self._saved is not None else "the collection"

    def _query_features(self, query: ImageSource | Image.Image, label: str) -> np.ndarray:
        if isinstance(query, Image.Image):
            return self.backbone.embed_images([to_rgb(query)])[0]
        return embed_query(self.backbone, query, name=label)

    def _allowed(self, under, exclude: Sequence[int]):
        """What `under` and `exclude` allow: None (everything), a cached selection of a folder, or a mask."""
        if under is None and not len(exclude):
            return None
        if not len(exclude):
            key = ("selection", os.path.join(os.path.abspath(under), ""))
            if key not in self._folders:
                self._folders[key] = self._built().selection(self.folder_mask(under))
            return self._folders[key]
        allowed = np.ones(len(self.core), dtype=bool) if under is None else self.folder_mask(under).copy()
        allowed[np.asarray(exclude, dtype=np.int64)] = False
        return allowed

    def folders(self) -> list[str]:
        """The folders that hold the collection's images, sorted."""
        if "folders" not in self._folders:
            live = self._built().live_
            self._folders["folders"] = sorted({os.path.dirname(r.path) for i, r in self.records.scan("/") if live[i]})
        return self._folders["folders"]

    def folder_mask(self, folder: str | os.PathLike) -> np.ndarray:
        """(n,) bool: the images whose file lies in `folder` or below it."""
        prefix = os.path.join(os.path.abspath(folder), "")
        if prefix not in self._folders:
            mask = np.zeros(len(self.records), dtype=bool)
            mask[self.records.ids_under(prefix)] = True
            self._folders[prefix] = mask
        return self._folders[prefix]

    @property
    def images(self) -> "LiveImages":
        """The records of the images searched (removed ones left out), in id order."""
        return LiveImages(self)

    def _live_ids_of(self, paths: Sequence[str | os.PathLike]) -> dict[str, list[int]]:
        found = self.records.ids_of(paths)
        if self.core is None:
            return found
        live = {p: [i for i in ids if self.core.live_[i]] for p, ids in found.items()}
        return {p: ids for p, ids in live.items() if ids}

    # ---------------------------------------------------------------- persistence

    def manifest(self, folder: str | os.PathLike | None = None) -> Manifest:
        """What the collection records about itself; `folder`: where it is saved (the root is recorded relative
        to it as well as absolute)."""
        core = self._built()
        pca = core.pca_
        root = self.records.root
        return Manifest(
            backbone=BackboneRecord(self.backbone.name, self.backbone.dim, self.backbone.weights_sha256,
                                    os.path.basename(self.backbone.weights_path), self.backbone.precision),
            config=core.config,
            pca=None if pca is None else PCARecord(pca.n_components_, pca.n_samples_,
                                                   float(pca.explained_variance_ratio_.sum())),
            calibration=core.calibration_,
            root=None if root is None else RootRecord(
                os.path.relpath(root, os.path.abspath(folder)) if folder is not None else os.fspath(root),
                os.fspath(root)),
            notes=self.notes,
            library_versions=store.library_versions(),
            images=len(self),
            errors=self.errors,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the collection to the folder `path`. Saving again where it was loaded from or last saved writes
        only what changed (new images, removals, ratings); a compaction (`COMPACT_SHARE`), a refit, or a new
        place writes everything. A crash at any moment leaves the last collection saved in full."""
        self._built()
        if self._features is None:
            raise CollectionError("this collection holds no backbone features, so it cannot be saved")
        folder = Path(os.path.abspath(path))
        saved = self._saved if self._saved is not None and self._saved.snapshot.folder == folder else None
        compact = self.compaction_pays
        incremental = saved is not None and not compact and self._continues(saved)
        with store.write(folder, generation=None if saved is None else saved.snapshot.generation,
                         fresh=not incremental) as writer:
            if incremental:
                tail = self._write_changes(writer, saved)
            else:
                tail = self._write_all(writer, compact)
            writer.set_settings({**self.manifest(folder).to_dict(), "index_tail": tail})
            writer.set_errors([(e.path, e.reason) for e in self.errors])
            writer.rows_total = len(self.core)
        snapshot = Snapshot(folder, data=True, index=False)
        self._saved = _Saved(snapshot, len(self.core), snapshot.files["index"].rows,
                             frozenset(snapshot.removed.tolist()), self.core.config)
        self.records.rebased(snapshot)
        if not incremental:  # the features are the file's now, read from it (and verified) when needed
            self._features, self._features_from = [snapshot.mapped("features")], snapshot
        return folder

    @property
    def compaction_pays(self) -> bool:
        """Whether the next save compacts: removed images are more than `COMPACT_SHARE` of the ids."""
        core = self._built()
        return len(core) - core.live_count > COMPACT_SHARE * len(core)

    def _continues(self, saved: _Saved) -> bool:
        """Whether the store still holds this collection's ids as they are (no refit, no compaction since) and
        its index file is the start of this core's index (same configuration, added to since)."""
        core = self.core
        tail = [count for first, count in core.batches_ if first >= saved.index_rows]
        starts = [first for first, _ in core.batches_ if first >= saved.index_rows]
        return (core.config == saved.config and self.records.continues(saved.snapshot, saved.rows)
                and sum(tail) == len(core) - saved.index_rows and (not starts or starts[0] == saved.index_rows))

    def _write_changes(self, writer: store.Writer, saved: _Saved) -> list[int]:
        """An incremental save: the rows, features and vectors of new ids, changed rows, removals, the ratings
        column, and the index when enough was added since it was written. Returns the index tail."""
        core, n, first = self.core, len(self.core), saved.rows
        removed = sorted(set(np.flatnonzero(~core.live_).tolist()) - saved.removed)
        writer.remove_rows(removed)
        changed = [i for i in self.records.changed_saved(first) if core.live_[i]]
        writer.update_rows(changed, self.records.rows(changed))
        new = [i for i in range(first, n) if core.live_[i]]
        writer.insert_rows(new, self.records.rows(new))
        if n > first:
            writer.append("features", self._feature_rows(slice(first, n)))
            writer.append("vectors", core.gather(np.arange(first, n)))
        if n > first or changed:
            writer.replace("stars", core.stars_, n)
        if n - saved.index_rows > INDEX_TAIL_LIMIT:
            writer.replace_index(core.index_)
            return []
        return [count for start, count in core.batches_ if start >= saved.index_rows]

    def _write_all(self, writer: store.Writer, compact: bool) -> list[int]:
        """A full write: every file new; with `compact`, the removed images dropped and the index rebuilt."""
        keep = np.flatnonzero(self.core.live_) if compact else np.arange(len(self.core))
        if compact:
            self.core = self.core.compacted()
            self.records = self.records.take(keep)
        core, n = self.core, len(self.core)
        stored = self.records.stored_ids()
        if self.records.source is not None:
            writer.copy_rows(self.records.source.folder, np.where(core.live_, stored, -1))
        held = np.flatnonzero((stored < 0) & core.live_)
        writer.insert_rows(held, self.records.rows(held))
        writer.remove_rows(np.flatnonzero(~core.live_).tolist())
        for start in range(0, n, FEATURE_BLOCK):  # a block at a time: the features need not fit in memory
            writer.append("features", self._feature_rows(keep[start : start + FEATURE_BLOCK]))
        if n == 0:
            writer.append("features", np.empty((0, self.backbone.dim), dtype=np.float32))
        writer.append("vectors", core.vectors_)
        writer.replace("stars", core.stars_, n)
        writer.replace_index(core.index_)
        writer.set_arrays({} if core.pca_ is None else {f"pca_{k}": v for k, v in core.pca_.to_arrays().items()})
        return []

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backbone: Backbone | None = None,
        *,
        weights: str | os.PathLike | None = None,
        root: str | os.PathLike | None = None,
    ) -> "Collection":
        """Read a saved collection; its backbone is loaded (or `backbone` checked) against the recorded weights and
        precision, so queries are embedded exactly as the collection's images were. `root`: where the indexed folder
        is now, when it is neither where the collection records it (beside the collection folder as it was when
        saved) nor at its recorded absolute path."""
        folder = Path(os.path.abspath(path))
        snapshot = Snapshot(folder)
        manifest = Manifest.from_dict(snapshot.settings, folder)
        recorded = manifest.backbone
        if backbone is None:
            backbone = load_backbone(recorded.name, weights, precision=recorded.precision)
        if backbone.name != recorded.name or backbone.weights_sha256 != recorded.weights_sha256:
            raise CollectionError(
                f"{path}: built with {recorded.name} weights sha256 {recorded.weights_sha256[:12]}..., "
                f"but the backbone given is {backbone.name} with weights sha256 {backbone.weights_sha256[:12]}... "
                f"({backbone.weights_path}); pass the original weights file"
            )
        if backbone.precision != recorded.precision:
            raise CollectionError(
                f"{path}: its features were made in {recorded.precision}, but the backbone given runs in "
                f"{backbone.precision}; load it with precision={recorded.precision!r}"
            )
        folder_root = _resolve_root(folder, manifest.root, root)
        try:
            tail = snapshot.settings.get("index_tail", [])
            if not isinstance(tail, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tail):
                raise ValueError("index_tail must be a list of batch sizes")
            live = np.ones(snapshot.rows_total, dtype=bool)
            if len(snapshot.removed) and (snapshot.removed.max() >= len(live)):
                raise ValueError("a removed id lies outside the collection")
            live[snapshot.removed] = False
            arrays = {**snapshot.arrays(), "vectors": snapshot.array("vectors"), "stars": snapshot.array("stars"),
                      "live": live}
            core = SearchCore.from_arrays(manifest.config, arrays, snapshot.index(), manifest.calibration,
                                          batches=tail)
        except (KeyError, ValueError) as exc:
            detail = f"array {exc} is missing" if isinstance(exc, KeyError) else str(exc)
            raise CollectionFileError(f"{path}: inconsistent collection: {detail}") from None
        collection = cls(replace(backbone, notice=None), manifest.config, errors=[FileError(p, r) for p, r in
                                                                                  snapshot.errors],
                         notes=manifest.notes)
        collection.core = core
        collection.records = Records(folder_root, snapshot, snapshot.rows_total)
        collection._features, collection._features_from = [snapshot.mapped("features")], snapshot
        collection._saved = _Saved(snapshot, snapshot.rows_total, snapshot.files["index"].rows,
                                   frozenset(snapshot.removed.tolist()), manifest.config)
        collection._forget()
        return collection

    def __len__(self) -> int:
        """Images searched (removed ones left out)."""
        return len(self.records) if self.core is None else self.core.live_count

    def __repr__(self) -> str:
        if self.core is None:
            return f"Collection({len(self)} images, backbone={self.backbone.name}, not built)"
        pca = self.core.pca_
        reduced = f"pca={pca.n_components_}" if pca is not None else "raw features"
        return f"Collection({len(self)} images, backbone={self.backbone.name}, {reduced}, threshold={self.threshold:.3f})"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class LiveImages(Sequence[ImageRecord]):
    """The records of a collection's live images in id order, read from its store as they are asked for."""

    def __init__(self, collection: Collection):
        self._records = collection.records
        core = collection.core
        self._ids = np.arange(len(self._records)) if core is None else np.flatnonzero(core.live_)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return self._records.records(self._ids[item])
        return self._records.records([self._ids[item]])[0]

    def __iter__(self) -> Iterator[ImageRecord]:
        for start in range(0, len(self._ids), 4096):
            yield from self._records.records(self._ids[start : start + 4096])


def added_columns(added: list[tuple[ImageRecord, np.ndarray]]) -> tuple[list[ImageRecord], np.ndarray]:
    records = [record for record, _ in added]
    features = np.stack([f for _, f in added]) if added else None
    return records, features


def _resolve_root(folder: Path, recorded: RootRecord | None, given: str | os.PathLike | None) -> Path | None:
    """The indexed folder: `given`, else where the collection records it relative to itself (both moved
    together), else its recorded absolute path."""
    if given is not None:
        root = Path(os.path.abspath(given))
        if not root.is_dir():
            raise CollectionError(f"{given}: the root given for {folder} is not a folder")
        return root
    if recorded is None:
        return None
    beside = Path(os.path.normpath(folder / recorded.relative))
    for candidate in (beside, Path(recorded.absolute)):
        if candidate.is_dir():
            return candidate
    raise CollectionError(
        f"{folder}: the folder it indexes is missing: neither {beside} (where it was beside the collection) nor "
        f"{recorded.absolute} exists. Open it with root=NEW_PATH (simlib: --root NEW_PATH) where the folder is now"
    )


def _same_stars(recorded: float | None, held: float) -> bool:
    return np.isnan(held) if recorded is None else recorded == held


def _stars(records: Sequence[ImageRecord]) -> np.ndarray:
    return np.array([np.nan if r.rating.stars is None else r.rating.stars for r in records], dtype=np.float64)


def _resolve_sources(source) -> tuple[list[str], list[FileError]]:
    """Absolute paths of the image files named by `source`: a folder, a file, or a list of either."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    errors: list[FileError] = []
    for item in items:
        if Path(item).is_dir():
            found, walk_errors = find_images(item)
            files.extend(found)
            errors.extend(walk_errors)
        else:
            files.append(Path(item))
    unique = dict.fromkeys(os.path.abspath(f) for f in files)
    return list(unique), errors


def _given_rating(value: float) -> Rating:
    stars = float(value)
    if not (stars == REJECTED or 0 <= stars <= 5):
        raise ValueError(f"query rating must be -1 (rejected) or within 0..5, got {value}")
    return Rating(stars, "given by the caller", (RatingValue("given by the caller", str(value), stars),))


def _query_rating(query, override: float | None) -> Rating:
    if override is not None:
        return _given_rating(override)
    if isinstance(query, Image.Image):
        return Rating(None, None)
    if isinstance(query, (str, os.PathLike, bytes, bytearray)):
        return read_rating(query if not isinstance(query, bytearray) else bytes(query))
    data = query.read()
    query.seek(0)
    return read_rating(data)
