"""The task-level object: build a collection of images, add to it, search it with rating fallback, save and load.

Data flows one way: files -> features (backbone) -> PCA vectors -> HNSW index -> ranked results, with star ratings
read beside it. Learned state (PCA, index, threshold) ends in `_`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

import faiss
import numpy as np
from PIL import Image

from . import archive
from .backbones import Backbone, load_backbone
from .features import Progress, embed_query, extract_features
from .files import find_images
from .images import FileError, ImageSource, load_image, source_name, to_rgb
from .index import IndexParams, add_vectors, build_index, search_index, with_rating
from .ratings import REJECTED, Rating, RatingValue, format_stars, read_rating
from .reduce import PCA, normalize_rows
from .threshold import Calibration, choose_threshold, edited_copy

Reason = Literal["visual", "rating-fallback"]
CALIBRATION_SAMPLE = 60  # edited copies made to calibrate the match threshold (20 of each edit)


class CollectionError(ValueError):
    """A collection that cannot be built, searched, saved or loaded as asked; the message says why."""


@dataclass(frozen=True)
class CollectionConfig:
    """Everything that shapes a collection besides the backbone."""

    pca_dim: int = 128
    whiten: bool = False
    index: IndexParams = IndexParams()
    rating_weight: float = 0.0  # weight of the appended rating coordinate; 0 = pure visual search
    threshold: float | None = None  # match threshold; None = calibrated from the collection

    def __post_init__(self) -> None:
        if self.pca_dim < 1:
            raise ValueError(f"pca_dim must be >= 1, got {self.pca_dim}")
        if self.rating_weight < 0:
            raise ValueError(f"rating_weight must be >= 0, got {self.rating_weight}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CollectionConfig":
        return cls(**{**data, "index": IndexParams(**data["index"])})


@dataclass(frozen=True)
class ImageRecord:
    path: str
    rating: Rating


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
    """Images indexed for similar-image search with rating fallback.

    >>> collection = Collection.build("photos/")             # doctest: +SKIP
    >>> collection.search("query.jpg", k=5).results          # doctest: +SKIP
    """

    def __init__(self, backbone: Backbone, config: CollectionConfig = CollectionConfig()):
        self.backbone = backbone
        self.config = config
        self.images: list[ImageRecord] = []
        self.features = np.empty((0, backbone.dim), dtype=np.float32)
        self.vectors = np.empty((0, 0), dtype=np.float32)
        self.errors: list[FileError] = []
        self.notes: list[str] = [backbone.notice] if backbone.notice else []

    # ---------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        backbone: Backbone | str = "auto",
        config: CollectionConfig = CollectionConfig(),
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
        self.features = np.concatenate([self.features, result.features]) if len(self.features) else result.features
        if refit or not hasattr(self, "pca_"):
            report.notes.extend(self._fit())
        else:
            new_vectors = normalize_rows(self.pca_.transform(result.features))
            self.vectors = np.concatenate([self.vectors, new_vectors])
            add_vectors(self.index_, self._index_vectors(new_vectors, self._stars(records)))
            if self.pca_.n_samples_ * 2 < len(self.images):
                report.notes.append(
                    f"PCA was fitted on {self.pca_.n_samples_} images and the collection now holds "
                    f"{len(self.images)}; add with refit=True (CLI: --refit) to learn it again from all of them."
                )
        self.notes.extend(n for n in report.notes if n not in self.notes)
        return report

    def _fit(self) -> list[str]:
        n = len(self.images)
        if n < 2:
            skipped = f" ({len(self.errors)} files skipped)" if self.errors else ""
            raise CollectionError(f"a collection needs at least 2 readable images to fit PCA, got {n}{skipped}")
        self.pca_ = PCA(self.config.pca_dim, whiten=self.config.whiten).fit(self.features)
        self.vectors = normalize_rows(self.pca_.transform(self.features))
        self.index_ = build_index(self._index_vectors(self.vectors, self._stars()), self.config.index)
        notes = []
        if self.pca_.n_components_ < self.config.pca_dim:
            notes.append(
                f"PCA keeps {self.pca_.n_components_} dimensions instead of {self.config.pca_dim}: "
                f"{n} images support at most {n - 1}."
            )
        self.calibration_ = self._calibrate()
        return notes

    def _calibrate(self) -> Calibration:
        """Match vs non-match similarities of edited copies of a seeded sample (see `simlib.threshold`)."""
        rng = np.random.default_rng(0)
        n = len(self.images)
        sample = np.sort(rng.choice(n, size=min(n, CALIBRATION_SAMPLE), replace=False))
        ids, copies = [], []
        for variant, i in enumerate(sample):
            try:
                original = load_image(self.images[i].path, min_side=2 * self.backbone.spec.input_size)
            except Exception:
                continue  # moved or changed since it was indexed; the rest of the sample still calibrates
            ids.append(i)
            copies.append(edited_copy(original, variant))
        if not ids:
            raise CollectionError("cannot calibrate the match threshold: no indexed image could be read again")
        queries = normalize_rows(self.pca_.transform(self.backbone.embed_images(copies)))
        ids = np.array(ids)
        match = np.einsum("ij,ij->i", queries, self.vectors[ids])
        return choose_threshold(match, _nearest_other(queries, self.vectors, ids))

    def copy(self, *, rating_weight: float | None = None) -> "Collection":
        """An independent collection: adding to the copy leaves this one unchanged. Arrays, PCA and calibration
        are shared (nothing changes them in place) and the index is cloned; with `rating_weight` the index is
        instead rebuilt from the stored PCA vectors with that weight, without extracting any features again."""
        if not hasattr(self, "pca_"):
            raise CollectionError("nothing to copy: the collection has not been built")
        config = self.config if rating_weight is None else replace(self.config, rating_weight=float(rating_weight))
        twin = Collection(self.backbone, config)
        twin.images, twin.errors, twin.notes = list(self.images), list(self.errors), list(self.notes)
        twin.features, twin.vectors = self.features, self.vectors
        twin.pca_, twin.calibration_ = self.pca_, self.calibration_
        if config.rating_weight == self.config.rating_weight:
            twin.index_ = faiss.clone_index(self.index_)
        else:
            twin.index_ = build_index(twin._index_vectors(self.vectors, self._stars()), config.index)
        return twin

    @property
    def threshold(self) -> float:
        """The match threshold in use: the configured one, else the calibrated one."""
        return self.config.threshold if self.config.threshold is not None else self.calibration_.threshold

    # ---------------------------------------------------------------- searching

    def search(
        self,
        query: ImageSource | Image.Image,
        k: int = 10,
        *,
        threshold: float | None = None,
        min_rating: float | None = None,
        query_rating: float | None = None,
        ef_search: int | None = None,
        name: str | None = None,
    ) -> SearchResponse:
        """The `k` most similar images, or, when the best visual similarity is below the match threshold, the `k`
        images whose rating is closest to the query's (ties broken by similarity).

        The query's rating is `query_rating` if given, else read from its metadata (and sidecars, for a path).
        Rejected images (-1) are fallback candidates only for a rejected query. `min_rating` filters both rules.
        """
        if not self.images:
            raise CollectionError("the collection is empty")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if name is not None:
            label = name
        elif isinstance(query, Image.Image):
            label = getattr(query, "filename", "") or "<image>"
        else:
            label = source_name(query)
        rating = _query_rating(query, query_rating)
        q = self._query_vector(query, label)
        threshold = self.threshold if threshold is None else float(threshold)
        allowed = self._allowed(min_rating)
        ids = self._visual_candidates(q, rating.stars, k, allowed, ef_search)
        similarities = self.vectors[ids] @ q if len(ids) else np.empty(0, dtype=np.float32)
        best = float(similarities.max()) if len(ids) else float("-inf")
        if best >= threshold:
            results = self._results(ids, similarities, "visual")
            message = f"Best visual similarity {best:.3f} reaches the match threshold {threshold:.3f}."
            return SearchResponse(label, rating, best, threshold, False, message, results)
        ids, message = self._rating_candidates(q, rating, k, allowed)
        best_text = f"{best:.3f}" if np.isfinite(best) else "none"
        message = f"Best visual similarity {best_text} is below the match threshold {threshold:.3f}; {message}"
        results = self._results(ids, self.vectors[ids] @ q, "rating-fallback")
        return SearchResponse(label, rating, best, threshold, True, message, results)

    def _query_vector(self, query: ImageSource | Image.Image, label: str) -> np.ndarray:
        if isinstance(query, Image.Image):
            features = self.backbone.embed_images([to_rgb(query)])[0]
        else:
            features = embed_query(self.backbone, query, name=label)
        return normalize_rows(self.pca_.transform(features[None]))[0]

    def _allowed(self, min_rating: float | None) -> np.ndarray | None:
        if min_rating is None:
            return None
        with np.errstate(invalid="ignore"):
            return self._stars() >= float(min_rating)

    def _visual_candidates(
        self, q: np.ndarray, stars: float | None, k: int, allowed: np.ndarray | None, ef_search: int | None
    ) -> np.ndarray:
        """Ids nearest to q in index order, filtered by `allowed`; asks the index for more until k pass."""
        n = len(self.images)
        wanted = min(k, n if allowed is None else int(allowed.sum()))
        if wanted == 0:
            return np.empty(0, dtype=np.int64)
        query = self._index_vectors(q[None], np.array([np.nan if stars is None else stars]))
        fetch = wanted if allowed is None else min(n, 4 * wanted)
        while True:
            _, ids = search_index(self.index_, query, fetch, ef_search or self.config.index.ef_search)
            ids = ids[0][ids[0] >= 0]
            if allowed is not None:
                ids = ids[allowed[ids]]
            if len(ids) >= wanted or fetch >= n:
                return ids[:wanted].astype(np.int64)
            fetch = min(n, fetch * 4)

    def _rating_candidates(self, q: np.ndarray, rating: Rating, k: int, allowed: np.ndarray | None):
        stars = self._stars()
        usable = ~np.isnan(stars)
        if not rating.rejected:
            usable &= stars != REJECTED
        if allowed is not None:
            usable &= allowed
        ids = np.flatnonzero(usable)
        similarity = self.vectors[ids] @ q
        if rating.stars is None:
            order = np.lexsort((-similarity, -stars[ids]))
            message = "the query has no rating, so these are the highest-rated images."
        else:
            order = np.lexsort((-similarity, np.abs(stars[ids] - rating.stars)))
            stated = "rejected (-1) rating" if rating.rejected else f"{format_stars(rating.stars)}-star rating"
            message = f"these are the images rated closest to the query's {stated}."
        if not len(ids):
            message = "and no image has a usable rating to fall back on."
        return ids[order[:k]], message

    def _results(self, ids: np.ndarray, similarities: np.ndarray, reason: Reason) -> list[SearchResult]:
        stars = self._stars([self.images[i] for i in ids])  # the results' only: all of them costs O(collection)
        return [
            SearchResult(rank, int(i), self.images[i].path, float(s), None if np.isnan(r) else float(r), reason)
            for rank, (i, s, r) in enumerate(zip(ids, similarities, stars), start=1)
        ]

    # ---------------------------------------------------------------- ratings in the vector

    def _stars(self, records: Sequence[ImageRecord] | None = None) -> np.ndarray:
        records = self.images if records is None else records
        return np.array([np.nan if r.rating.stars is None else r.rating.stars for r in records], dtype=np.float64)

    def _index_vectors(self, vectors: np.ndarray, stars: np.ndarray) -> np.ndarray:
        return with_rating(vectors, stars, self.config.rating_weight)

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write the collection to `path` atomically: a crash mid-save leaves the previous file intact."""
        if not hasattr(self, "pca_"):
            raise CollectionError("nothing to save: the collection has not been built")
        return archive.write_collection(Path(path), self._manifest(), self._arrays(), self.index_)

    def _manifest(self) -> dict:
        return {
            "backbone": {
                "name": self.backbone.name,
                "dim": self.backbone.dim,
                "weights_sha256": self.backbone.weights_sha256,
                "weights_file": os.path.basename(self.backbone.weights_path),
            },
            "config": self.config.to_dict(),
            "pca": {"n_components": self.pca_.n_components_, "fitted_on": self.pca_.n_samples_},
            "calibration": self.calibration_.to_dict(),
            "images": [_record_to_dict(r) for r in self.images],
            "errors": [asdict(e) for e in self.errors],
            "notes": self.notes,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"features": self.features, "vectors": self.vectors}
        arrays.update({f"pca_{k}": v for k, v in self.pca_.to_arrays().items()})
        return arrays

    @classmethod
    def load(
        cls, path: str | os.PathLike, backbone: Backbone | None = None, *, weights: str | os.PathLike | None = None
    ) -> "Collection":
        """Read a saved collection; its backbone is loaded (or `backbone` checked) against the recorded weights."""
        manifest, arrays, index = archive.read_collection(Path(path))
        recorded = manifest.get("backbone")
        if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), str) for k in ("name", "weights_sha256")):
            raise CollectionError(f"{path}: malformed manifest: the backbone name and weights checksum are missing")
        if backbone is None:
            backbone = load_backbone(recorded["name"], weights)
        if backbone.name != recorded["name"] or backbone.weights_sha256 != recorded["weights_sha256"]:
            raise CollectionError(
                f"{path}: built with {recorded['name']} weights sha256 {recorded['weights_sha256'][:12]}..., "
                f"but the backbone given is {backbone.name} with weights sha256 {backbone.weights_sha256[:12]}... "
                f"({backbone.weights_path}); pass the original weights file"
            )
        try:  # the manifest is JSON from anywhere: any field may be missing or of the wrong type
            collection = cls(replace(backbone, notice=None), CollectionConfig.from_dict(manifest["config"]))
            index_params = collection.config.index
            if not (index_params.M <= 4096 and max(index_params.ef_search, index_params.ef_construction) <= archive.MAX_EF):
                raise ValueError(f"HNSW settings {index_params} are beyond any real use")  # memory grows with them
            collection.images = [_record_from_dict(d) for d in manifest["images"]]
            collection.errors = [FileError(**e) for e in manifest["errors"]]
            collection.notes = [str(note) for note in manifest["notes"]]
            collection.features = arrays["features"]
            collection.vectors = arrays["vectors"]
            collection.pca_ = PCA.from_arrays({k[4:]: v for k, v in arrays.items() if k.startswith("pca_")})
            collection.index_ = index
            collection.calibration_ = Calibration(**manifest["calibration"])
            float(collection.threshold), collection._stars()  # numbers, or ValueError here rather than in search
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CollectionError(f"{path}: malformed manifest or arrays ({type(exc).__name__}: {exc})") from None
        collection._check_consistent(path)
        return collection

    def _check_consistent(self, path) -> None:
        n = len(self.images)
        shapes = (self.features.shape, self.vectors.shape, self.index_.ntotal)
        if shapes != ((n, self.backbone.dim), (n, self.pca_.n_components_), n):
            raise CollectionError(f"{path}: inconsistent collection: {n} images but arrays/index of {shapes}")
        if self.features.dtype != np.float32 or self.vectors.dtype != np.float32:
            raise CollectionError(f"{path}: inconsistent collection: features and vectors must be float32")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        fitted = f", pca={self.pca_.n_components_}, threshold={self.threshold:.3f}" if hasattr(self, "pca_") else ""
        return f"Collection({len(self)} images, backbone={self.backbone.name}{fitted})"


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


def _nearest_other(queries: np.ndarray, vectors: np.ndarray, exclude: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """For each query row i, the highest similarity to any vector except `exclude[i]`, in bounded memory."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    rows = np.arange(len(queries))
    for start in range(0, len(vectors), chunk):
        sims = queries @ vectors[start : start + chunk].T
        inside = (exclude >= start) & (exclude < start + len(sims.T))
        sims[rows[inside], exclude[inside] - start] = -np.inf
        best = np.maximum(best, sims.max(axis=1))
    return best


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


def _record_to_dict(record: ImageRecord) -> dict:
    rating = record.rating
    return {
        "path": record.path,
        "rating": rating.stars,
        "rating_source": rating.source,
        "rating_conflict": rating.conflict,
        "rating_values": [[v.source, v.raw, v.stars] for v in rating.values],
        "rating_problems": list(rating.problems),
    }


def _record_from_dict(data: dict) -> ImageRecord:
    values = tuple(RatingValue(s, raw, float(stars)) for s, raw, stars in data["rating_values"])
    return ImageRecord(data["path"], Rating(data["rating"], data["rating_source"], values, tuple(data["rating_problems"])))
