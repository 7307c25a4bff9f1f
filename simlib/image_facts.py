"""What the keeper rule compares about one image file, read from the file: resolution, sharpness, size and age.

Sharpness is the variance of the Laplacian of the grey image (grey levels squared), after a box reduction by 2 or
more (to at most `SHARPNESS_SIDE` pixels a side). The reduction matters: at full size the 8x8 blocks of JPEG
compression are edges too, and a copy recompressed at quality 60 scores up to 1.6x its original; box-reduced by 2,
recompressed copies of 45 real photos stay within 0.82-1.14x of their originals while a Gaussian blur of sigma 0.7
to 1 drops to 0.13-0.69x (measured on `../shared/datasets/photos`). So sharpness tells a blurred copy from a sharp
one, and recompression is left to the file size.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import ImageDecodeError, load_image
from .records import ImageRecord

SHARPNESS_SIDE = 1024  # longest side, in pixels, of the grey image whose Laplacian is measured


@dataclass(frozen=True)
class ImageFacts:
    """One image as the keeper rule sees it. `width` x `height`: pixels as stored in the file (before EXIF
    rotation); `sharpness`: Laplacian variance (grey levels squared, see the module); `file_size` in bytes;
    `mtime_ns`: modification time in nanoseconds; `sha256`: of the file's bytes when indexed (None: unknown)."""

    path: str
    rating: float | None
    width: int
    height: int
    sharpness: float
    file_size: int
    mtime_ns: int
    sha256: str | None

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_facts(record: ImageRecord) -> ImageFacts:
    """The facts of an indexed image's file as it is now; `ImageDecodeError` naming the file and the reason when it
    cannot be read or decoded. The rating and SHA-256 are the record's (the collection's view of the file)."""
    try:
        stat = os.stat(record.path)
    except OSError as exc:
        raise ImageDecodeError(record.path, f"cannot read: {exc.strerror or exc}") from None
    image = load_image(record.path, min_side=SHARPNESS_SIDE)  # decoded at a draft scale: the size is the header's
    with Image.open(record.path) as header:  # it decoded just now, so its header opens
        width, height = header.size
    return ImageFacts(record.path, record.rating.stars, width, height, sharpness(image), stat.st_size,
                      stat.st_mtime_ns, None if record.stamp is None else record.stamp.sha256)


def sharpness(image: Image.Image) -> float:
    """Laplacian variance of `image` in grey, box-reduced by an integer factor of at least 2 so that its longest
    side is at most `SHARPNESS_SIDE` (an image under 3 pixels a side after that scores 0)."""
    grey = image.convert("L")
    factor = max(2, math.ceil(max(grey.size) / SHARPNESS_SIDE))
    if min(grey.size) >= 2 * factor:
        grey = grey.reduce(factor)
    return laplacian_variance(np.asarray(grey, dtype=np.float32))


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D array (its border rows and columns left out); 0 for an array
    under 3 x 3."""
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise ValueError(f"a grey image must be 2-D, got shape {grey.shape}")
    if min(grey.shape) < 3:
        return 0.0
    centre = grey[1:-1, 1:-1]
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * centre
    return float(laplacian.var(dtype=np.float64))


def pixel_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the upright decoded RGB pixels at full size and of that size: equal for two files that decode
    to the same picture, whatever their format, compression or metadata. `ImageDecodeError` when undecodable."""
    image = load_image(path, min_side=0)
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
