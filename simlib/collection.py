"""The task-level object: build a collection of images, add to it, search it with rating fallback, save and load.

Data flows one way: files -> features (backbone) -> the search core (PCA vectors, ratings, HNSW index, threshold)
-> ranked results, with star ratings read beside it. The collection holds what is about files (records, skipped
files, the backbone); everything about vectors is `simlib.search_core`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from . import archive
from .archive import CollectionFileError
from .backbones import Backbone, load_backbone
from .errors import CollectionError
from .features import Progress, embed_query, extract_features
from .files import find_images
from .images import FileError, ImageSource, source_name, to_rgb
from .manifest import BackboneRecord, ImageRecord, Manifest, PCARecord
from .ratings import REJECTED, Rating, RatingValue, format_stars, read_rating
from .search_core import Hits, SearchConfig, SearchCore
from .threshold import calibrate, calibration_sample, embed_edited_copies

Reason = Literal["visual", "rating-fallback"]


@dataclass(frozen=True)
class SearchResult:
    rank: int
    id: int
    path: str
    similarity: float  # cosine similarity of PCA vectors, visual only
    rating: float | None
    reason: Reason

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

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "query_rating": self.query_rating.stars,
            "best_similarity": self.best_similarity,
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
    ):
        """An empty collection to `add` to, or one assembled from records and a core built elsewhere (then
        `features`, the backbone features of the records, may be None: such a collection searches, but cannot be
        refitted or saved)."""
        self.backbone = backbone
        self.images: list[ImageRecord] = list(images)
        self.core = core
        self.config = core.config if core is not None else config
        if features is None and core is None:
            features = np.empty((0, backbone.dim), dtype=np.float32)
        self.features = features
        self.errors: list[FileError] = list(errors)
        self.notes: list[str] = list(notes) if notes is not None else ([backbone.notice] if backbone.notice else [])
        if core is not None and len(core) != len(self.images):
            raise CollectionError(f"{len(self.images)} image records for a search core of {len(core)} vectors")
        if features is not None and features.shape != (len(self.images), backbone.dim):
            raise CollectionError(f"features of shape {features.shape} for {len(self.images)} images of a "
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
    ) -> "Collection":
        """A new collection from a folder (searched recursively) or a list of image files."""
        if isinstance(backbone, str):
            backbone = load_backbone(backbone, weights)
        collection = cls(backbone, config)
        collection.add(source, refit=True, progress=progress, batch_size=batch_size, num_workers=num_workers)
        return collection

    def add(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        refit: bool = False,
        progress: Progress = True,
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> AddReport:
        """Index more images. Without `refit` the fitted PCA and threshold are kept; with it both are learned
        again from every image, and the index is rebuilt. Files already in the collection are not added twice."""
        if self.features is None and (refit or self.core is None):
            raise CollectionError("this collection holds no backbone features, so it cannot be refitted")
        paths, walk_errors = _resolve_sources(source)
        known = {record.path for record in self.images}
        fresh = [p for p in paths if p not in known]
        result = extract_features(
            self.backbone, fresh, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
        records = [ImageRecord(fresh[i], read_rating(fresh[i])) for i in result.indices]
        report = AddReport(len(records), walk_errors + result.errors, len(paths) - len(fresh))
        self.errors.extend(report.errors)
        if not records and not refit:
            return report
        self.images.extend(records)
        if self.features is not None:
            self.features = np.concatenate([self.features, result.features]) if len(self.features) else result.features
        if refit or self.core is None:
            report.notes.extend(self._fit())
        else:
            self.core.add(result.features, _stars(records))
            pca = self.core.pca_
            if pca is not None and pca.n_samples_ * 2 < len(self.images):
                report.notes.append(
                    f"PCA was fitted on {pca.n_samples_} images and the collection now holds "
                    f"{len(self.images)}; add with refit=True (CLI: --refit) to learn it again from all of them."
                )
        self._forget()
        self.notes.extend(n for n in report.notes if n not in self.notes)
        return report

    def _fit(self) -> list[str]:
        n = len(self.images)
        if n < 2:
            skipped = f" ({len(self.errors)} files skipped)" if self.errors else ""
            raise CollectionError(f"a collection needs at least 2 readable images to fit PCA, got {n}{skipped}")
        core = SearchCore(self.config).fit(self.features, _stars(self.images))
        sample = calibration_sample(n)
        copies, origin = embed_edited_copies(
            self.backbone, [self.images[i].path for i in sample], variants=list(range(len(sample)))
        )
        if not len(origin):
            raise CollectionError("cannot calibrate the match threshold: no indexed image could be read again")
        self.core = core.set_calibration(calibrate(core, copies, sample[origin]))
        kept = core.pca_.n_components_ if core.pca_ is not None else None
        if kept is not None and kept < self.config.pca_dim:
            return [f"PCA keeps {kept} dimensions instead of {self.config.pca_dim}: {n} images support at most "
                    f"{n - 1}."]
        return []

    def copy(self, *, rating_weight: float | None = None) -> "Collection":
        """An independent collection: adding to the copy leaves this one unchanged. Features and records are
        shared (nothing changes them in place); with `rating_weight` only the index is rebuilt, from the stored
        PCA vectors, without extracting any features again."""
        core = self._built()
        twin_core = core.copy() if rating_weight is None else core.with_rating_weight(rating_weight)
        return Collection(self.backbone, images=self.images, features=self.features, core=twin_core,
                          errors=self.errors, notes=self.notes)

    @property
    def threshold(self) -> float:
        """The match threshold in use: the configured one, else the calibrated one."""
        return self._built().threshold

    def _built(self) -> SearchCore:
        if self.core is None:
            raise CollectionError("the collection has not been built: add images first")
        return self.core

    def _forget(self) -> None:
        self._folders: dict = {}  # folder list and folder filter masks, valid until images are added

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
        """The `k` most similar images, or, when the best visual similarity is below the match threshold, the `k`
        images whose rating is closest to the query's (ties broken by similarity).

        The query's rating is `query_rating` if given, else read from its metadata (and sidecars, for a path).
        Rejected images (-1) are fallback candidates only for a rejected query. `min_rating` (images rated at least
        that), `under` (images in that folder or below it) and `exclude` (ids left out, e.g. the query's own)
        filter both rules.
        """
        core = self._built()
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
        threshold = core.threshold if threshold is None else float(threshold)
        hits = core.search(
            features[None], k, threshold=threshold, ef_search=ef_search, min_rating=min_rating,
            allowed=self._allowed(under, exclude), query_stars=np.nan if rating.stars is None else rating.stars,
        )
        return self._response(label, rating, threshold, hits)

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
        best, fallback = float(hits.best[row]), bool(hits.fallback[row])
        if not fallback:
            message = f"Best visual similarity {best:.3f} reaches the match threshold {threshold:.3f}."
            reason: Reason = "visual"
        else:
            best_text = f"{best:.3f}" if np.isfinite(best) else "none"
            if not len(ids):
                why = "and no image has a usable rating to fall back on."
            elif rating.stars is None:
                why = "the query has no rating, so these are the highest-rated images."
            else:
                stated = "rejected (-1) rating" if rating.rejected else f"{format_stars(rating.stars)}-star rating"
                why = f"these are the images rated closest to the query's {stated}."
            message = f"Best visual similarity {best_text} is below the match threshold {threshold:.3f}; {why}"
            reason = "rating-fallback"
        results = [
            SearchResult(rank, int(i), self.images[i].path, float(s), self.images[i].rating.stars, reason)
            for rank, (i, s) in enumerate(zip(ids, similarities), start=1)
        ]
        return SearchResponse(label, rating, best, threshold, fallback, message, results)

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
        allowed = np.ones(len(self), dtype=bool) if under is None else self.folder_mask(under).copy()
        allowed[np.asarray(exclude, dtype=np.int64)] = False
        return allowed

    def folders(self) -> list[str]:
        """The folders that hold the collection's images, sorted."""
        if "folders" not in self._folders:
            self._folders["folders"] = sorted({os.path.dirname(r.path) for r in self.images})
        return self._folders["folders"]

    def folder_mask(self, folder: str | os.PathLike) -> np.ndarray:
        """(n,) bool: the images whose file lies in `folder` or below it."""
        prefix = os.path.join(os.path.abspath(folder), "")
        if prefix not in self._folders:
            self._folders[prefix] = np.fromiter((r.path.startswith(prefix) for r in self.images), bool,
                                                len(self.images))
        return self._folders[prefix]

    # ---------------------------------------------------------------- persistence

    def manifest(self) -> Manifest:
        """What the collection file records beside the arrays and the index."""
        core = self._built()
        pca = core.pca_
        return Manifest(
            backbone=BackboneRecord(self.backbone.name, self.backbone.dim, self.backbone.weights_sha256,
                                    os.path.basename(self.backbone.weights_path), self.backbone.precision),
            config=core.config,
            pca=None if pca is None else PCARecord(pca.n_components_, pca.n_samples_,
                                                   float(pca.explained_variance_ratio_.sum())),
            calibration=core.calibration_,
            images=self.images,
            errors=self.errors,
            notes=self.notes,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the collection to `path` atomically: a crash mid-save leaves the previous file intact."""
        core = self._built()
        if self.features is None:
            raise CollectionError("this collection holds no backbone features, so it cannot be saved")
        arrays = {"features": self.features, **core.to_arrays()}
        return archive.write_collection(Path(path), self.manifest().to_dict(), arrays, core.index_)

    @classmethod
    def load(
        cls, path: str | os.PathLike, backbone: Backbone | None = None, *, weights: str | os.PathLike | None = None
    ) -> "Collection":
        """Read a saved collection; its backbone is loaded (or `backbone` checked) against the recorded weights and
        precision, so queries are embedded exactly as the collection's images were."""
        raw, arrays, index = archive.read_collection(Path(path))
        manifest = Manifest.from_dict(raw, path)
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
        try:
            core = SearchCore.from_arrays(manifest.config, arrays, index, manifest.calibration)
            features = arrays["features"]
            if features.dtype != np.float32:
                raise ValueError(f"features must be float32, got {features.dtype}")
            collection = cls(replace(backbone, notice=None), images=manifest.images, features=features, core=core,
                             errors=manifest.errors, notes=manifest.notes)
            if not np.array_equal(_stars(manifest.images), core.stars_, equal_nan=True):
                raise ValueError("the ratings array disagrees with the image records")
            return collection
        except (KeyError, ValueError, CollectionError) as exc:
            detail = f"member {exc}.npy is missing" if isinstance(exc, KeyError) else str(exc)
            raise CollectionFileError(f"{path}: inconsistent collection: {detail}") from None

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        if self.core is None:
            return f"Collection({len(self)} images, backbone={self.backbone.name}, not built)"
        pca = self.core.pca_
        reduced = f"pca={pca.n_components_}" if pca is not None else "raw features"
        return f"Collection({len(self)} images, backbone={self.backbone.name}, {reduced}, threshold={self.threshold:.3f})"


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


def _query_rating(query, override: float | None) -> Rating:
    if override is not None:
        stars = float(override)
        if not (stars == REJECTED or 0 <= stars <= 5):
            raise ValueError(f"query rating must be -1 (rejected) or within 0..5, got {override}")
        return Rating(stars, "given by the caller", (RatingValue("given by the caller", str(override), stars),))
    if isinstance(query, Image.Image):
        return Rating(None, None)
    if isinstance(query, (str, os.PathLike, bytes, bytearray)):
        return read_rating(query if not isinstance(query, bytearray) else bytes(query))
    data = query.read()
    query.seek(0)
    return read_rating(data)
