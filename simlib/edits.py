"""Edited copies for copy detection: 16 edits in three strengths, made with albumentations and seeded.

The strengths follow Copydays and DISC2021. *mild*: what sharing does to a photo (resize, JPEG quality 50-90, a
small crop). *medium*: what an editor does (crop to half the area, JPEG quality 10-30, rotation, horizontal flip,
colour and contrast, blur, added text). *strong*: what DISC2021's hardest copies do (crop to 20-30% of the area,
perspective, the photo pasted onto another one, heavy filters, screenshot-like padding, three medium edits at
once). `apply_edit(image, name, seed)` makes the same copy for the same seed on every run.

These edits are the benchmark's, and are deliberately not the ones `simlib.threshold` calibrates with, so that a
benchmark measures how well the product's calibration generalises to edits it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import albumentations as A
import cv2
import numpy as np
from PIL import Image

STRENGTHS = ("mild", "medium", "strong")
# words written by the text edit, as captions and watermarks read
WORDS = ("sale", "holiday", "meme", "look", "2024", "wow", "photo", "credit", "news", "best", "copy", "share",
         "summer", "when you", "like", "follow", "original", "breaking")
Transforms = list  # the albumentations transforms of one edit, in order


@dataclass(frozen=True)
class Edit:
    """One kind of edit: its name, strength, a one-line description, and how to make its transforms for an image
    of `height` x `width` pixels from a random generator (and a canvas photo for the overlay)."""

    name: str
    strength: str
    description: str
    transforms: Callable[[int, int, np.random.Generator], Transforms]
    needs_canvas: bool = False


def _crop(height: int, width: int, rng: np.random.Generator, low: float, high: float) -> A.RandomCrop:
    """A crop keeping a share of the area drawn from [low, high], with the photo's aspect ratio."""
    side = float(np.sqrt(rng.uniform(low, high)))
    return A.RandomCrop(max(1, round(height * side)), max(1, round(width * side)), p=1)


def _rotation(rng: np.random.Generator) -> A.Rotate:
    angle = float(rng.uniform(10, 30) * rng.choice([-1, 1]))
    return A.Rotate(limit=(angle, angle), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1)


def _colour() -> A.ColorJitter:
    return A.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.4, 1.6), hue=(-0.08, 0.08), p=1)


def _blur(height: int, width: int) -> A.GaussianBlur:
    sigma = 0.005 * max(height, width)  # 4 px on an 800 px photo, about 1.1 px once the backbone squashes it to 224
    return A.GaussianBlur(sigma_limit=(sigma, 1.6 * sigma), blur_limit=0, p=1)


def _text(rng: np.random.Generator) -> A.TextImage:
    colour = tuple(int(c) for c in rng.choice([[255, 255, 255], [0, 0, 0], [255, 220, 0], [230, 30, 30]]))
    return A.TextImage(font_path=font_path(), font_size_fraction_range=(0.6, 0.9), font_color=colour, p=1)


def _padding(height: int, width: int, rng: np.random.Generator) -> Transforms:
    """Screenshot-like: the photo shrunk inside a window frame with a title bar, then saved as a JPEG."""
    scale = float(rng.uniform(0.5, 0.75))
    side = round(width * rng.uniform(0.15, 0.4))
    top = round(height * rng.uniform(0.2, 0.45))
    bottom = round(height * rng.uniform(0.05, 0.3))
    fill = tuple(int(c) for c in rng.choice([[255, 255, 255], [240, 240, 240], [30, 30, 30], [0, 0, 0]]))
    return [
        A.Resize(max(1, round(height * scale)), max(1, round(width * scale)), p=1),
        A.Pad(padding=(round(side * scale), round(top * scale), round(side * scale), round(bottom * scale)),
              fill=fill, border_mode=cv2.BORDER_CONSTANT, p=1),
        A.ImageCompression(quality_range=(70, 90), p=1),
    ]


def _heavy_filter() -> A.OneOf:
    return A.OneOf(
        [
            A.Posterize(num_bits=(2, 2), p=1),
            A.Solarize(threshold_range=(0.3, 0.6), p=1),
            A.Compose([A.ToSepia(p=1), A.RandomBrightnessContrast((-0.3, 0.3), (0.4, 0.7), p=1)]),
            A.Emboss(alpha=(0.8, 1.0), strength=(1.0, 2.0), p=1),
            A.Downscale(scale_range=(0.06, 0.1), p=1),  # pixelation
            A.Compose([A.ToGray(p=1), A.Sharpen(alpha=(0.8, 1.0), lightness=(0.8, 1.2), p=1)]),
        ],
        p=1,
    )


def _combination(height: int, width: int, rng: np.random.Generator) -> Transforms:
    """Three different medium edits (crop, rotation, flip, colour, blur, text, in that order), then JPEG 30-60."""
    makers = {
        "crop": lambda: _crop(height, width, rng, 0.45, 0.55),
        "rotate": lambda: _rotation(rng),
        "flip": lambda: A.HorizontalFlip(p=1),
        "colour": _colour,
        "blur": lambda: _blur(height, width),
        "text": lambda: _text(rng),
    }
    chosen = sorted(rng.choice(len(makers), size=3, replace=False))
    return [list(makers.values())[i]() for i in chosen] + [A.ImageCompression(quality_range=(30, 60), p=1)]


_EDITS = [
    Edit("resize", "mild", "downscaled to 35-70% of each side",
         lambda h, w, rng: [A.RandomScale(scale_limit=(-0.65, -0.3), interpolation=cv2.INTER_AREA, p=1)]),
    Edit("jpeg-50-90", "mild", "recompressed at JPEG quality 50-90",
         lambda h, w, rng: [A.ImageCompression(quality_range=(50, 90), p=1)]),
    Edit("crop-70-90", "mild", "cropped to 70-90% of the area",
         lambda h, w, rng: [_crop(h, w, rng, 0.7, 0.9)]),
    Edit("crop-50", "medium", "cropped to 45-55% of the area",
         lambda h, w, rng: [_crop(h, w, rng, 0.45, 0.55)]),
    Edit("jpeg-10-30", "medium", "recompressed at JPEG quality 10-30",
         lambda h, w, rng: [A.ImageCompression(quality_range=(10, 30), p=1)]),
    Edit("rotate", "medium", "rotated by 10-30 degrees either way, black corners",
         lambda h, w, rng: [_rotation(rng)]),
    Edit("flip", "medium", "mirrored left to right",
         lambda h, w, rng: [A.HorizontalFlip(p=1)]),
    Edit("colour", "medium", "brightness, contrast and saturation x0.6-1.4, hue shifted",
         lambda h, w, rng: [_colour()]),
    Edit("blur", "medium", "Gaussian blur, sigma 0.5-0.8% of the longest side",
         lambda h, w, rng: [_blur(h, w)]),
    Edit("text", "medium", "one to three captions written over it",
         lambda h, w, rng: [_text(rng)]),
    Edit("crop-20-30", "strong", "cropped to 20-30% of the area",
         lambda h, w, rng: [_crop(h, w, rng, 0.2, 0.3)]),
    Edit("perspective", "strong", "perspective warp, corners moved by 10-18% of the size",
         lambda h, w, rng: [A.Perspective(scale=(0.1, 0.18), keep_size=True, fit_output=True, p=1)]),
    Edit("overlay", "strong", "shrunk to 35-60% of another photo's width and pasted onto it",
         lambda h, w, rng: [A.OverlayElements(p=1)], needs_canvas=True),
    Edit("heavy-filter", "strong", "one of posterize, solarize, sepia, emboss, pixelate, grey + sharpen",
         lambda h, w, rng: [_heavy_filter()]),
    Edit("screenshot", "strong", "shrunk inside a window-like frame, JPEG 70-90",
         lambda h, w, rng: _padding(h, w, rng)),
    Edit("combination", "strong", "three medium edits at once, then JPEG 30-60",
         lambda h, w, rng: _combination(h, w, rng)),
]
EDITS: dict[str, Edit] = {edit.name: edit for edit in _EDITS}


def edits_of(strength: str) -> list[str]:
    """The names of the edits of one strength, in catalogue order."""
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
    return [edit.name for edit in _EDITS if edit.strength == strength]


@cache
def font_path() -> Path:
    """A TrueType font for the text edit: DejaVu Sans as matplotlib ships it (the same file on every machine)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def apply_edit(image: Image.Image, name: str, seed: int, canvas: Image.Image | None = None) -> Image.Image:
    """The edited copy `name` of an RGB image; the same `seed` gives the same copy. The overlay edit pastes the
    image onto `canvas`, another photo."""
    edit = EDITS.get(name)
    if edit is None:
        raise ValueError(f"unknown edit {name!r}; known: {', '.join(EDITS)}")
    if edit.needs_canvas and canvas is None:
        raise ValueError(f"the {name} edit needs a canvas photo to paste the image onto")
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    transform = A.Compose(edit.transforms(height, width, rng), seed=int(rng.integers(2**31)))
    captions = _captions(rng)  # drawn for every edit, so that each edit's other draws do not depend on it
    overlay = []
    if edit.needs_canvas:
        pixels, overlay = _overlay_inputs(pixels, np.asarray(canvas.convert("RGB")), rng)
    return Image.fromarray(transform(image=pixels, textimage_metadata=captions, overlay_metadata=overlay)["image"])


def _captions(rng: np.random.Generator) -> list[dict]:
    """One to three lines of text at random heights, each 6-12% of the image high."""
    lines = []
    for _ in range(int(rng.integers(1, 4))):
        height = float(rng.uniform(0.06, 0.12))
        top = float(rng.uniform(0.02, 0.96 - height))
        left = float(rng.uniform(0.0, 0.3))
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        lines.append({"bbox": [left, top, min(1.0, left + rng.uniform(0.5, 0.7)), top + height], "text": words})
    return lines


def _overlay_inputs(pixels: np.ndarray, canvas: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """The canvas as the base image and the photo as the element pasted on it, keeping the photo's aspect ratio."""
    ch, cw = canvas.shape[:2]
    h, w = pixels.shape[:2]
    width = float(rng.uniform(0.35, 0.6))
    height = min(0.95, width * (h / w) * (cw / ch))
    width = height * (w / h) * (ch / cw)
    left, top = float(rng.uniform(0, 1 - width)), float(rng.uniform(0, 1 - height))
    return canvas, [{"image": pixels, "bbox": [left, top, left + width, top + height]}]
