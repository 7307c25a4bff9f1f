"""Decoding: a path or bytes in, an upright RGB PIL image out, or an `ImageDecodeError` saying why not."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, BinaryIO]

# Pillow's own bomb limit (about 89.5 megapixels); applied to the pixels actually decoded, so a 100 MP JPEG
# that draft mode decodes at 1/4 scale is accepted while a 100 MP PNG is not.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS

# Formats Pillow can decode at 1/2, 1/4 or 1/8 scale; MPO is the multi-picture JPEG many cameras write.
_DRAFTABLE = ("JPEG", "MPO")
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class FileError:
    """One file that could not be used, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; `path` names it, `reason` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def as_file_error(self) -> FileError:
        return FileError(self.path, self.reason)


def source_name(source: ImageSource, name: str | None = None) -> str:
    """The name used for `source` in messages: `name` if given, else its path, else '<bytes>'."""
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or "<bytes>"


def load_image(
    source: ImageSource,
    *,
    min_side: int = 224,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode `source` to an upright RGB image.

    JPEGs are decoded at the smallest draft scale that keeps both sides >= `min_side` pixels; images that would
    decode to more than `max_pixels` pixels are refused. Raises `ImageDecodeError` naming the file and the reason.
    """
    label = source_name(source, name)
    if isinstance(source, (str, os.PathLike)):
        _check_file(Path(source), label)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError(label, "empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    with warnings.catch_warnings():
        # Pillow warns between 1x and 2x its limit; the size check below decides instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = _open(source, label)
        try:
            return _decode(image, label, min_side, max_pixels)
        finally:
            image.close()


def load_thumbnail(source: ImageSource, side: int, *, name: str | None = None) -> Image.Image:
    """`load_image`, scaled down to at most `side` pixels a side (aspect kept): for drawing. A PNG or WebP decodes
    at full size, and drawing a 4K image into a small plot or page costs seconds; this copy costs nothing to draw."""
    image = load_image(source, min_side=side, name=name)
    image.thumbnail((side, side))
    return image


def _check_file(path: Path, label: str) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found") from None
    except OSError as exc:
        raise ImageDecodeError(label, f"cannot read file: {exc.strerror or exc}") from None
    if path.is_dir():
        raise ImageDecodeError(label, "is a directory, not an image file")
    if size == 0:
        raise ImageDecodeError(label, "empty file (0 bytes)")


def _open(source, label: str) -> Image.Image:
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        kind = _signature(source)
        reason = f"a {kind} file with a corrupt header" if kind else "not an image format Pillow can read"
        raise ImageDecodeError(label, reason) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(label, f"refused as a decompression bomb: {exc}") from None
    except PermissionError:
        raise ImageDecodeError(label, "permission denied") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise ImageDecodeError(label, f"cannot open image: {_describe(exc)}") from None


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}


def _signature(source) -> str | None:
    """The format a file's first bytes announce, when Pillow could not open it: corrupt rather than unknown."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                head = handle.read(16)
        else:
            source.seek(0)
            head = source.read(16)
    except (OSError, ValueError):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def _decode(image: Image.Image, label: str, min_side: int, max_pixels: int) -> Image.Image:
    if image.format in _DRAFTABLE and min_side > 0:
        try:
            image.draft("RGB", (min_side, min_side))
        except Exception as exc:
            raise ImageDecodeError(label, f"cannot decode JPEG: {_describe(exc)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(label, f"declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            label, f"declared size {width}x{height} exceeds the limit of {max_pixels:,} pixels (decompression bomb?)"
        )
    try:
        image.load()  # an animation opens at its first frame; seek(0) is not needed and fails on PSD files
    except Exception as exc:
        raise ImageDecodeError(label, f"corrupt or truncated image data: {_describe(exc)}") from None
    # Only after load: a PNG's getexif() decodes the pixels itself, before the size check, and a failed load
    # marks the image as loaded, so a later load() would hand back the garbage silently.
    orientation = _orientation(image)
    try:
        rgb = to_rgb(image)
    except Exception as exc:
        raise ImageDecodeError(label, f"cannot convert mode {image.mode} to RGB: {_describe(exc)}") from None
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return rgb


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1-8; 1 when absent or unreadable (malformed EXIF must not lose the image)."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16/32-bit and float scaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit modes are divided by 257, 32-bit integers likewise when they fit 16 bits; floats within 0..1 are
    multiplied by 255; anything else outside 0..255 is min-max scaled."""
    array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        scaled = array / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = array * 255.0
    elif low >= 0 and high <= 255:
        scaled = array
    else:
        scaled = (array - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
