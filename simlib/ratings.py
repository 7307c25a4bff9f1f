"""Star ratings: an image file (or its bytes) in, a `Rating` out, with every source found and any conflict.

Sources and precedence (first valid value wins, as in digiKam, with sidecars ahead of the embedded packet as
Lightroom and darktable treat them):

1. XMP sidecar `photo.jpg.xmp` (darktable, digiKam), then `photo.xmp` (Lightroom): xmp:Rating, then
   MicrosoftPhoto:Rating
2. the embedded XMP packet: xmp:Rating, then MicrosoftPhoto:Rating
3. EXIF 0x4746 Rating, then EXIF 0x4749 RatingPercent

Stars run 0..5 and may be fractional (xmp:Rating is a Real); -1 means rejected. Percent values (MicrosoftPhoto:Rating,
RatingPercent) map to stars the way photo managers do: 1/25/50/75/99 -> 1..5, values between round down, 0 -> 0.
A file with no valid value anywhere is unrated (`stars is None`), which is not the same as 0 stars. Values out of
range or not numeric are skipped and listed in `problems`. The reader never raises for any file content.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from PIL import Image

XMP_NS = "http://ns.adobe.com/xap/1.0/"
MICROSOFT_PHOTO_NS = ("http://ns.microsoft.com/photo/1.0/", "http://ns.microsoft.com/photo/1.0")
EXIF_RATING = 0x4746
EXIF_RATING_PERCENT = 0x4749
TIFF_XMP = 700
MAX_XMP_BYTES = 4 * 1024 * 1024  # a larger sidecar or packet is refused, not parsed
REJECTED = -1.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = (b"iTXt", b"tEXt", b"zTXt")  # chunks that may hold the XMP packet, keyed XML:com.adobe.xmp


@dataclass(frozen=True)
class RatingValue:
    """One value found in one place: `source` like 'xmp:Rating' or 'sidecar photo.xmp xmp:Rating'."""

    source: str
    raw: str
    stars: float


@dataclass(frozen=True)
class Rating:
    """The rating that wins the precedence, every valid value found, and what could not be read."""

    stars: float | None
    source: str | None
    values: tuple[RatingValue, ...] = ()
    problems: tuple[str, ...] = field(default=())

    @property
    def unrated(self) -> bool:
        return self.stars is None

    @property
    def rejected(self) -> bool:
        return self.stars == REJECTED

    @property
    def conflict(self) -> bool:
        """True when sources disagree after converting percent values to stars."""
        return len({v.stars for v in self.values}) > 1

    def describe(self) -> str:
        if self.stars is None:
            return "unrated"
        text = "rejected" if self.rejected else f"{format_stars(self.stars)} star{'' if self.stars == 1 else 's'}"
        text += f" (from {self.source})"
        if self.conflict:
            others = ", ".join(f"{v.source}={format_stars(v.stars)}" for v in self.values[1:])
            text += f"; conflicting: {others}"
        return text


UNRATED = Rating(None, None)


def format_stars(stars: float | None) -> str:
    if stars is None:
        return "-"
    return str(int(stars)) if float(stars).is_integer() else f"{stars:g}"


def percent_to_stars(percent: float) -> float:
    """0..100 -> 0..5 stars: 1/25/50/75/99 are the thresholds for 1..5 stars; values between round down."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent rating {percent} outside 0..100")
    for threshold, stars in ((99, 5), (75, 4), (50, 3), (25, 2), (1, 1)):
        if percent >= threshold:
            return float(stars)
    return 0.0


def _stars(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or not (value == REJECTED or 0 <= value <= 5):
        raise ValueError(f"star rating {raw!r} is neither -1 nor within 0..5")
    return value


def _percent(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"percent rating {raw!r} is not a number")
    return percent_to_stars(value)


def read_rating(source: str | os.PathLike | bytes, *, sidecars: bool = True) -> Rating:
    """The rating of an image file (with its XMP sidecars when `sidecars`) or of image bytes (embedded only)."""
    values: list[RatingValue] = []
    problems: list[str] = []
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if sidecars:
            for sidecar in sidecar_paths(path):
                _collect(values, problems, _sidecar_values(sidecar))
        if path.is_file():  # never open a FIFO or device: reading it could block for ever
            _collect(values, problems, _embedded_values(path))
        else:
            problems.append(f"embedded metadata unreadable: {'not a regular file' if path.exists() else 'no such file'}")
    elif source:
        _collect(values, problems, _embedded_values(io.BytesIO(bytes(source))))
    if not values:
        return Rating(None, None, (), tuple(problems))
    return Rating(values[0].stars, values[0].source, tuple(values), tuple(problems))


def sidecar_paths(path: Path) -> list[Path]:
    """Sidecars of `path` that exist, in precedence order: photo.jpg.xmp, then photo.xmp."""
    candidates = [path.with_name(path.name + ".xmp"), path.with_suffix(".xmp")]
    return [c for c in candidates if c != path and c.is_file()]


def _collect(values: list[RatingValue], problems: list[str], found: Iterable[RatingValue | str]) -> None:
    for item in found:
        (values if isinstance(item, RatingValue) else problems).append(item)


def _sidecar_values(sidecar: Path) -> list[RatingValue | str]:
    label = f"sidecar {sidecar.name}"
    try:
        with open(sidecar, "rb") as handle:
            packet = handle.read(MAX_XMP_BYTES + 1)  # bounded even if the file grows after is_file() saw it
        if len(packet) > MAX_XMP_BYTES:
            return [f"{label}: larger than {MAX_XMP_BYTES} bytes, not read"]
    except OSError as exc:
        return [f"{label}: cannot read ({exc.strerror or exc})"]
    return xmp_values(packet, prefix=f"{label} ")


def _embedded_values(file: Path | io.BytesIO) -> list[RatingValue | str]:
    found: list[RatingValue | str] = []
    try:
        with open(file, "rb") if isinstance(file, Path) else file as stream:
            if stream.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE:
                packet, exif = _png_metadata(stream)
                found.extend(_exif_values(lambda: _exif_from_bytes(exif)) if exif else [])
            else:
                stream.seek(0)
                with Image.open(stream) as image:
                    packet = _xmp_packet(image)
                    found.extend(_exif_values(image.getexif))
            if packet:
                found[:0] = xmp_values(packet)
    except Exception as exc:  # any file content may arrive here; report, never raise
        found.append(f"embedded metadata unreadable: {type(exc).__name__}: {exc}")
    return found


def _png_metadata(stream: BinaryIO) -> tuple[bytes | None, bytes | None]:
    """The XMP packet and EXIF block of a PNG wherever they lie, found by walking the chunk headers.

    Pillow reads chunks after the image data only by decoding every pixel first, which costs a full decode per
    file and lets a decompression bomb through; here the image data is skipped unread.
    """
    packet = exif = None
    position = len(PNG_SIGNATURE)
    while True:
        stream.seek(position)
        header = stream.read(8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        position += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            break
        if kind in _PNG_TEXT and packet is None:
            packet = _png_xmp(kind, stream.read(min(length, 2 * MAX_XMP_BYTES)))
        elif kind == b"eXIf" and exif is None and length <= MAX_XMP_BYTES:
            exif = stream.read(length)
    return packet, exif



def _png_xmp(kind: bytes, data: bytes) -> bytes | None:
    """The XMP packet in a PNG text chunk keyed XML:com.adobe.xmp; None for any other text chunk."""
    keyword, _, rest = data.partition(b"\0")
    if keyword != b"XML:com.adobe.xmp":
        return None
    compressed = kind == b"zTXt" or (kind == b"iTXt" and rest[:1] not in (b"", b"\0"))
    if kind == b"iTXt":  # compression flag, method, language tag, translated keyword, then the text
        rest = rest[2:].split(b"\0", 2)[-1]
    elif kind == b"zTXt":
        rest = rest[1:]
    if compressed:
        # bounded: a packet inflating past the limit is cut there, then refused by xmp_values as too large
        rest = zlib.decompressobj().decompress(rest, MAX_XMP_BYTES + 1)
    return rest


def _exif_from_bytes(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(data)
    return exif


def _xmp_packet(image: Image.Image) -> bytes | None:
    packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if packet is None and hasattr(image, "tag_v2"):
        packet = image.tag_v2.get(TIFF_XMP)
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    if isinstance(packet, tuple):  # TIFF may hand the tag over as a tuple of byte values
        packet = bytes(packet)
    return packet if isinstance(packet, (bytes, bytearray)) else None


def _exif_values(read_exif: Callable[[], Image.Exif]) -> list[RatingValue | str]:
    found: list[RatingValue | str] = []
    try:
        exif = read_exif()
    except Exception as exc:
        return [f"EXIF unreadable: {type(exc).__name__}: {exc}"]
    for tag, name, convert in ((EXIF_RATING, "EXIF:Rating", _stars), (EXIF_RATING_PERCENT, "EXIF:RatingPercent", _percent)):
        try:
            raw = exif.get(tag)
        except Exception as exc:
            found.append(f"{name} unreadable: {type(exc).__name__}")
            continue
        if raw is not None:
            found.append(_value(name, raw, convert))
    return found


def xmp_values(packet: bytes, prefix: str = "") -> list[RatingValue | str]:
    """xmp:Rating then MicrosoftPhoto:Rating from an XMP packet, parsed namespace-aware with defusedxml."""
    if len(packet) > MAX_XMP_BYTES:
        return [f"{prefix}XMP: larger than {MAX_XMP_BYTES} bytes, not parsed"]
    try:
        root = fromstring(_packet_text(packet), forbid_dtd=True)
    except DefusedXmlException as exc:
        return [f"{prefix}XMP refused: {type(exc).__name__}"]
    except Exception as exc:
        return [f"{prefix}XMP unparseable: {type(exc).__name__}: {exc}"]
    found: list[RatingValue | str] = []
    xmp = _first_property(root, [XMP_NS])
    if xmp is not None:
        found.append(_value(f"{prefix}xmp:Rating", xmp, _stars))
    microsoft = _first_property(root, list(MICROSOFT_PHOTO_NS))
    if microsoft is not None:
        found.append(_value(f"{prefix}MicrosoftPhoto:Rating", microsoft, _percent))
    return found


def _packet_text(packet: bytes) -> str:
    """XMP packets may be UTF-8 or UTF-16 (either byte order); the XML declaration, if any, goes."""
    head = packet[:256]
    if head.count(0) * 3 > len(head):
        first = packet.find(b"<")
        big_endian = first > 0 and packet[first - 1] == 0
        text = packet[first - 1 if big_endian else max(first, 0) :].decode(
            "utf-16-be" if big_endian else "utf-16-le", "replace"
        )
    else:
        text = packet.decode("utf-8", "replace")
    text = text.strip("\ufeff\x00 \t\r\n")
    if text.startswith("<?xml"):
        text = text[text.find("?>") + 2 :]
    return text


def _first_property(root, namespaces: list[str]) -> str | None:
    """The first Rating in `namespaces`, written either as an attribute or as an element."""
    names = {f"{{{ns}}}Rating" for ns in namespaces}
    for element in root.iter():
        for name in names:
            if name in element.attrib:
                return element.attrib[name]
        if element.tag in names:
            return element.text or ""
    return None


def _value(source: str, raw, convert) -> RatingValue | str:
    text = _text(raw)
    try:
        return RatingValue(source, text, convert(text))
    except (TypeError, ValueError, OverflowError) as exc:
        return f"{source}: ignored {text[:40]!r} ({exc})"


def _text(raw) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, tuple) and len(raw) == 1:  # EXIF SHORT counts of 1 may arrive as 1-tuples
        raw = raw[0]
    return str(raw).strip()
