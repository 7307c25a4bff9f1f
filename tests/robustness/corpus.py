"""Hostile and odd files, made in code: every image case of the robustness suite as bytes, with what simlib must do.

`IMAGE_CASES` lists each case once: a file name, a function making its bytes, and either the reason text the
per-file error must contain or a check the decoded image must pass.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, PngImagePlugin

from ..conftest import scene, xmp_packet

ORIENTATION = 0x0112
# the transpose that stores an upright picture so that a viewer applying EXIF orientation n shows it upright
STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def oriented_jpeg(upright: Image.Image, orientation: int, *, write_tag: bool = True) -> bytes:
    """`upright` stored as a camera held sideways stores it, tagged with EXIF `orientation` (unless not
    `write_tag`: the same pixels a reader ignoring the tag would show)."""
    stored = upright.transpose(STORE_FOR_ORIENTATION[orientation]) if orientation in STORE_FOR_ORIENTATION else upright
    exif = Image.Exif()
    if write_tag:
        exif[ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif)


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_split(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) chunks of a PNG."""
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append((data[position + 4 : position + 8], data[position + 8 : position + 8 + length]))
        position += 12 + length
    return chunks


def png_declaring(width: int, height: int) -> bytes:
    """A 200-byte PNG whose header declares `width` x `height` RGB pixels: a decompression bomb's header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def png_with_corrupt_image_data() -> bytes:
    """A PNG whose IDAT chunk (the compressed pixels) has bytes overwritten, as a bad sector or transfer leaves it."""
    chunks = png_split(encode(scene(21), "PNG"))
    rebuilt = b"\x89PNG\r\n\x1a\n"
    for kind, data in chunks:
        if kind == b"IDAT":
            middle = len(data) // 2
            data = data[:middle] + b"\x00" * 64 + data[middle + 64 :]
        rebuilt += png_chunk(kind, data)
    return rebuilt


def png_with_bad_chunk_checksum() -> bytes:
    """A PNG with a text chunk whose CRC does not match its content."""
    data = encode(scene(22), "PNG")
    text = png_chunk(b"tEXt", b"Comment\x00hello", crc=0)
    return data[:33] + text + data[33:]  # after the signature and IHDR


def jpeg_with_app1(payload: bytes, base: bytes | None = None) -> bytes:
    """A JPEG with an extra APP1 segment right after SOI (where EXIF lives)."""
    base = base if base is not None else encode(scene(23), "JPEG", quality=90)
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + base[2:]


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], next_ifd: int = 0) -> bytes:
    """Little-endian TIFF/EXIF block with one IFD at offset 8: entries of (tag, type, count, 4-byte value)."""
    body = struct.pack("<H", len(entries))
    body += b"".join(struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00") for tag, kind, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", next_ifd)


MALFORMED_EXIF = {
    "garbage": b"Exif\x00\x00" + b"\x13\x37 not a TIFF header " * 4,
    "ifd-offset-past-end": b"Exif\x00\x00II*\x00" + struct.pack("<I", 0xFFFFFF00),
    "ifd-loops-to-itself": b"Exif\x00\x00" + tiff_ifd([(ORIENTATION, 3, 1, struct.pack("<H", 3))], next_ifd=8),
    "count-past-end": b"Exif\x00\x00" + tiff_ifd([(ORIENTATION, 3, 0x7FFFFFFF, struct.pack("<I", 8))]),
    "orientation-as-text": b"Exif\x00\x00" + tiff_ifd([(ORIENTATION, 2, 2, b"6\x00")]),
    "orientation-out-of-range": b"Exif\x00\x00" + tiff_ifd([(ORIENTATION, 3, 1, struct.pack("<H", 65535))]),
}


def palette_png_with_transparency() -> bytes:
    """Palette image: index 0 transparent (left half), index 1 opaque red (right half)."""
    image = Image.new("P", (64, 48), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (32, 0, 64, 48))
    return encode(image, "PNG", transparency=0)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 48), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png() -> bytes:
    """A 16-bit greyscale PNG whose top half is 65535 (white) and bottom half 32896 (mid grey, 128 in 8 bits)."""
    pixels = np.full((48, 64), 32896, dtype=np.uint16)
    pixels[:24] = 65535
    return encode(Image.fromarray(pixels), "PNG")


def large_camera_mpo() -> bytes:
    """A multi-picture JPEG (MPO) as many cameras write: a 4000x3000 picture plus a second small one."""
    return encode(scene(24, (4000, 3000)), "MPO", save_all=True, append_images=[scene(25, (160, 120))], quality=80)


# ---------------------------------------------------------------------------------------------- checks


def mostly(rgb: Image.Image, box: tuple[int, int, int, int], colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    region = np.asarray(rgb.crop(box), dtype=np.int16)
    return bool(np.abs(region - np.array(colour)).max() <= tolerance)


def near_original(original: Image.Image, tolerance: float = 12.0) -> Callable[[Image.Image], bool]:
    def check(rgb: Image.Image) -> bool:
        return rgb.size == original.size and float(np.abs(np.asarray(rgb, np.int16) - np.asarray(original)).mean()) < tolerance

    return check


# ---------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class ImageCase:
    """One file of the corpus: its name, its bytes, and the error reason expected (or a check of the decoded image)."""

    id: str
    name: str
    make: Callable[[], bytes]
    error: str | None = None
    check: Callable[[Image.Image], bool] | None = None


CMYK_SOURCE = scene(26, (96, 64))

IMAGE_CASES = [
    ImageCase("zero-bytes", "empty.jpg", lambda: b"", error="empty file (0 bytes)"),
    ImageCase("truncated-jpeg", "cut short.jpg", lambda: encode(scene(27), "JPEG")[:2500],
              error="corrupt or truncated image data"),
    ImageCase("text-named-jpg", "notes.jpg", lambda: b"Shopping list:\n- milk\n- photos\n",
              error="not an image format Pillow can read"),
    ImageCase("png-corrupt-image-data", "bad sector.png", png_with_corrupt_image_data,
              error="corrupt or truncated image data"),
    ImageCase("png-bad-chunk-checksum", "bad crc.png", png_with_bad_chunk_checksum,
              error="a PNG file with a corrupt header"),
    ImageCase("bomb-10-gigapixels", "bomb.png", lambda: png_declaring(100_000, 100_000),
              error="refused as a decompression bomb"),
    ImageCase("bomb-132-megapixels", "bomb-small.png", lambda: png_declaring(12_000, 11_000),
              error="exceeds the limit of 89,478,485 pixels (decompression bomb?)"),
    ImageCase("cmyk-jpeg", "print.jpg", lambda: encode(CMYK_SOURCE.convert("CMYK"), "JPEG", quality=95),
              check=near_original(CMYK_SOURCE.convert("CMYK").convert("RGB"))),
    ImageCase("16-bit-png", "scan16.png", sixteen_bit_png,
              check=lambda rgb: mostly(rgb, (0, 0, 64, 24), (255, 255, 255), 0) and mostly(rgb, (0, 24, 64, 48), (128, 128, 128), 0)),
    ImageCase("palette-png-transparency", "logo.png", palette_png_with_transparency,
              check=lambda rgb: mostly(rgb, (0, 0, 32, 48), (255, 255, 255), 0) and mostly(rgb, (32, 0, 64, 48), (255, 0, 0), 0)),
    ImageCase("animated-gif", "anim.gif", lambda: animated("GIF"),
              check=lambda rgb: mostly(rgb, (0, 0, 64, 48), (255, 0, 0))),
    ImageCase("animated-webp", "anim.webp", lambda: animated("WEBP"),
              check=lambda rgb: mostly(rgb, (0, 0, 64, 48), (255, 0, 0), 24)),
    *[
        ImageCase(f"malformed-exif-{kind}", f"exif-{kind}.jpg", lambda payload=payload: jpeg_with_app1(payload),
                  check=lambda rgb: rgb.size in ((320, 240), (240, 320)))
        for kind, payload in MALFORMED_EXIF.items()
    ],
    ImageCase("one-pixel", "dot.png", lambda: encode(Image.new("RGB", (1, 1), (12, 34, 56)), "PNG"),
              check=lambda rgb: rgb.size == (1, 1) and rgb.getpixel((0, 0)) == (12, 34, 56)),
    ImageCase("panorama-20000x100", "panorama.jpg", lambda: encode(scene(28, (20000, 100)), "JPEG", quality=85),
              check=lambda rgb: rgb.size == (20000, 100)),
    ImageCase("camera-mpo", "camera.jpg", large_camera_mpo,
              check=lambda rgb: rgb.size == (500, 375)),  # decoded at 1/8 scale like any camera JPEG
    ImageCase("name-spaces-unicode-shell", "été 2024 $(rm -rf ~); `id` & 'x' | *.jpg", lambda: encode(scene(29), "JPEG"),
              check=near_original(scene(29))),
    ImageCase("name-leading-dashes", "--output=evil -rf.jpg", lambda: encode(scene(30), "JPEG"),
              check=near_original(scene(30))),
    ImageCase("name-newline", "two\nlines.png", lambda: encode(scene(31), "PNG"), check=near_original(scene(31), 0.5)),
]


def huge_xmp_png(payload_bytes: int, *, compressed: bool) -> bytes:
    """A PNG carrying an XMP packet padded to `payload_bytes` with a rating of 4 at its start."""
    packet = xmp_packet(4).replace("</rdf:RDF>", f"<rdf:Description>{' ' * payload_bytes}</rdf:Description></rdf:RDF>")
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet, zip=compressed)
    return encode(scene(32, (64, 48)), "PNG", pnginfo=info)
