"""Seed files for fuzzing the rating reader: one small, valid, rated file per container format simlib reads ratings
from, each carrying XMP and EXIF ratings so that mutations land in real metadata structures."""

from __future__ import annotations

import struct

from PIL import Image, PngImagePlugin, TiffImagePlugin

from ..conftest import xmp_packet
from .corpus import encode, jpeg_with_app1, png_chunk, tiff_ifd

EXIF_RATED = tiff_ifd([(0x4746, 3, 1, struct.pack("<H", 3)), (0x4749, 3, 1, struct.pack("<H", 50))])
PACKET = xmp_packet(4, microsoft_percent=75)


def rated_seeds() -> dict[str, bytes]:
    picture = Image.new("RGB", (8, 8), (90, 120, 150))
    png_info = PngImagePlugin.PngInfo()
    png_info.add_itxt("XML:com.adobe.xmp", PACKET)
    png = encode(picture, "PNG", pnginfo=png_info)
    tiff_tags = TiffImagePlugin.ImageFileDirectory_v2()
    tiff_tags[700] = PACKET.encode()
    base_jpeg = encode(picture, "JPEG", quality=80)
    return {
        "jpeg": jpeg_with_app1(b"http://ns.adobe.com/xap/1.0/\x00" + PACKET.encode(),
                               jpeg_with_app1(b"Exif\x00\x00" + EXIF_RATED, base_jpeg)),
        "png": png[:-12] + png_chunk(b"eXIf", EXIF_RATED) + png[-12:],  # eXIf after the image data
        "png-compressed-xmp": _png_compressed_xmp(picture),
        "webp": encode(picture, "WEBP", xmp=PACKET.encode(), exif=b"Exif\x00\x00" + EXIF_RATED),
        "tiff": encode(picture, "TIFF", tiffinfo=tiff_tags),
        "gif": encode(picture, "GIF"),
    }


def _png_compressed_xmp(picture: Image.Image) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", PACKET, zip=True)
    return encode(picture, "PNG", pnginfo=info)
