"""The manifest of a collection file: what it records beside the arrays and the index, and the one place that
writes and parses it. The JSON may come from anywhere, so every field is checked; anything malformed is a
`CollectionFileError` naming the file and the field, wherever the file is read (the library, the CLI, the app).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import archive
from .archive import CollectionFileError
from .images import FileError
from .ratings import Rating, RatingValue, format_stars
from .config import SearchConfig
from .threshold import Calibration


@dataclass(frozen=True)
class ImageRecord:
    path: str
    rating: Rating


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


@dataclass
class Manifest:
    backbone: BackboneRecord
    config: SearchConfig
    pca: PCARecord | None  # None: the raw features are searched
    calibration: Calibration
    images: list[ImageRecord]
    errors: list[FileError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: str = ""  # written by `simlib.archive`
    library_versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON object simlib writes (`simlib.archive` adds format, versions, creation time and checksums)."""
        return {
            "backbone": asdict(self.backbone),
            "config": self.config.to_dict(),
            "pca": None if self.pca is None else asdict(self.pca),
            "calibration": self.calibration.to_dict(),
            "images": [_record_to_dict(r) for r in self.images],
            "errors": [asdict(e) for e in self.errors],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict, path: str | os.PathLike) -> "Manifest":
        """The manifest `to_dict` wrote, every field checked; CollectionFileError naming `path` otherwise."""
        try:
            return cls(
                backbone=_backbone(data),
                config=SearchConfig.from_dict(data["config"]),
                pca=None if data["pca"] is None else PCARecord(
                    _integer(data["pca"]["n_components"]), _integer(data["pca"]["fitted_on"]),
                    _number(data["pca"]["explained_variance"])),
                calibration=_calibration(data["calibration"]),
                images=[_record_from_dict(d) for d in _list(data["images"])],
                errors=[FileError(_text(e["path"]), _text(e["reason"])) for e in _list(data["errors"])],
                notes=[_text(note) for note in _list(data["notes"])],
                created=_text(data.get("created", "")),
                library_versions={_text(k): _text(v) for k, v in _dict(data.get("library_versions", {})).items()},
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            detail = f"field {exc} is missing" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise CollectionFileError(f"{path}: malformed manifest ({detail})") from None

    def rating_counts(self) -> dict[str, int]:
        """Images per rating ('unrated', '-1', '0' .. '5', fractions as written)."""
        counts: dict[str, int] = {}
        for record in self.images:
            key = "unrated" if record.rating.stars is None else format_stars(record.rating.stars)
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The manifest of a collection file, format and fields checked (the arrays and index are not read)."""
    return Manifest.from_dict(archive.read_manifest(Path(path)), path)


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
    calibration = Calibration(**values)
    for name in ("threshold", "match_median", "nonmatch_median", "miss_rate", "false_match_rate"):
        _number(getattr(calibration, name))
    _integer(calibration.n_match), _integer(calibration.n_nonmatch), _text(calibration.method)
    return calibration


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
