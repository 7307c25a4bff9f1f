"""The manifest of a collection: what it records about itself (backbone, search configuration, PCA, threshold
calibration, root folder, notes), and the one place that writes and parses it. It is kept as JSON settings in the
collection's database (`simlib.store`); format 1 files kept it, image records included, as manifest.json
(`simlib.archive`). The JSON may come from anywhere, so every field is checked; anything malformed is a
`CollectionFileError` naming the file and the field, wherever it is read (the library, the CLI, the app).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from .images import FileError
from .ratings import Rating, RatingValue, format_stars
from .config import SearchConfig
from .records import ImageRecord
from .store import CollectionFileError, Snapshot
from .threshold import Calibration


@dataclass(frozen=True)
class BackboneRecord:
    """Which backbone made the features: its name, output size and the checksum of its weights file."""

    name: str
    dim: int
    weights_sha256: str
    weights_file: str
    precision: str = "fp32"  # the precision the features were made in; queries are embedded the same way


@dataclass(frozen=True)
class PCARecord:
    """The fitted PCA's size, how many images it was fitted on, and the share of the variance it keeps."""

    n_components: int
    fitted_on: int
    explained_variance: float


@dataclass(frozen=True)
class RootRecord:
    """Where the folder the collection indexes was when it was saved: relative to the collection folder (what
    counts when both have moved together) and absolute."""

    relative: str
    absolute: str


@dataclass
class Manifest:
    backbone: BackboneRecord
    config: SearchConfig
    pca: PCARecord | None  # None: the raw features are searched
    calibration: Calibration
    root: RootRecord | None = None  # None in format 1, whose records hold absolute paths
    notes: list[str] = field(default_factory=list)
    created: str = ""  # written by `simlib.store`
    library_versions: dict[str, str] = field(default_factory=dict)
    # what the collection holds, counted where it is read (`read_manifest`)
    images: int = 0
    errors: list[FileError] = field(default_factory=list)
    ratings: dict[str, int] = field(default_factory=dict)  # 'unrated', '-1', '0' .. '5' (fractions as written)
    rating_conflicts: int = 0

    def to_dict(self) -> dict:
        """The JSON settings simlib writes (`simlib.store` adds format, epoch, times and versions)."""
        return {
            "backbone": asdict(self.backbone),
            "config": self.config.to_dict(),
            "pca": None if self.pca is None else asdict(self.pca),
            "calibration": self.calibration.to_dict(),
            "root": None if self.root is None else asdict(self.root),
            "notes": list(self.notes),
            "library_versions": dict(self.library_versions),
        }

    @classmethod
    def from_dict(cls, data: dict, path: str | os.PathLike) -> "Manifest":
        """The manifest `to_dict` wrote, every field checked; CollectionFileError naming `path` otherwise."""
        try:
            root = data.get("root")
            return cls(
                backbone=_backbone(data),
                config=SearchConfig.from_dict(data["config"]),
                pca=None if data["pca"] is None else PCARecord(
                    _integer(data["pca"]["n_components"]), _integer(data["pca"]["fitted_on"]),
                    _number(data["pca"]["explained_variance"])),
                calibration=_calibration(data["calibration"]),
                root=None if root is None else RootRecord(_text(_dict(root)["relative"]), _text(root["absolute"])),
                notes=[_text(note) for note in _list(data["notes"])],
                created=_text(data.get("created", "")),
                library_versions={_text(k): _text(v) for k, v in _dict(data.get("library_versions", {})).items()},
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CollectionFileError(f"{path}: malformed manifest ({_detail(exc)})") from None


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The manifest of a collection folder with its counts (images, skipped files, ratings), every field checked;
    neither the data files nor the index are read."""
    snapshot = Snapshot(path, data=False)
    try:
        return manifest_of(snapshot)
    finally:
        snapshot.close()


def manifest_of(snapshot: Snapshot) -> Manifest:
    """The manifest of an open collection, with its counts."""
    manifest = Manifest.from_dict(snapshot.settings, snapshot.folder)
    counts = snapshot.rating_counts()
    manifest.rating_conflicts = counts.pop("conflicts")
    manifest.images = sum(counts.values())
    manifest.ratings = dict(sorted(("unrated" if k is None else format_stars(k), v) for k, v in counts.items()))
    manifest.errors = [FileError(p, r) for p, r in snapshot.errors]
    return manifest


def format1_contents(data: dict, path: str | os.PathLike) -> tuple[Manifest, list[ImageRecord]]:
    """The manifest and the image records (absolute paths) of a format 1 manifest.json."""
    manifest = Manifest.from_dict(data, path)
    try:
        images = [_record_from_dict(d) for d in _list(data["images"])]
        manifest.errors = [FileError(_text(e["path"]), _text(e["reason"])) for e in _list(data["errors"])]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise CollectionFileError(f"{path}: malformed manifest ({_detail(exc)})") from None
    return manifest, images


def _detail(exc: Exception) -> str:
    return f"field {exc} is missing" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"


def _backbone(data: dict) -> BackboneRecord:
    recorded = data.get("backbone")
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), str) for k in ("name", "weights_sha256")):
        raise ValueError("the backbone name and weights checksum are missing")
    precision = _text(recorded.get("precision", "fp32"))  # collections written before precision was recorded
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return BackboneRecord(recorded["name"], _integer(recorded["dim"]), recorded["weights_sha256"],
                          _text(recorded["weights_file"]), precision)


def _calibration(data) -> Calibration:
    values = _dict(data)
    if values.get("copies") is not None:
        values["copies"] = _calibration(values["copies"])
    calibration = Calibration(**values)
    for name in ("threshold", "match_median", "nonmatch_median", "miss_rate", "false_match_rate"):
        _number(getattr(calibration, name))
    _integer(calibration.n_match), _integer(calibration.n_nonmatch), _text(calibration.method)
    return calibration


def _record_from_dict(data: dict) -> ImageRecord:
    values = tuple(RatingValue(_text(s), _text(raw), _number(stars)) for s, raw, stars in _list(data["rating_values"]))
    stars = None if data["rating"] is None else _number(data["rating"])
    source = None if data["rating_source"] is None else _text(data["rating_source"])
    problems = tuple(_text(p) for p in _list(data["rating_problems"]))
    return ImageRecord(_text(data["path"]), Rating(stars, source, values, problems))


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _integer(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _text(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value


def _list(value) -> list:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value


def _dict(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {type(value).__name__}")
    return value
