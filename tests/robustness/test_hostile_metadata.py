"""Hostile metadata: entity expansion and external entities refused (and never fetched), enormous packets refused
unparsed, out-of-range and non-numeric ratings skipped, sidecars that are not XML reported; never an exception."""

from __future__ import annotations

import os
import struct
import threading
import xml.sax
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from simlib import Collection
from simlib.images import load_image
from simlib.ratings import MAX_XMP_BYTES, read_rating, xmp_values

from ..conftest import scene, xmp_packet
from .corpus import encode, huge_xmp_png, jpeg_with_app1, tiff_ifd

RDF = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" {attribute}>{element}</rdf:Description>'
    "</rdf:RDF></x:xmpmeta>"
)
BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE x:xmpmeta [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" if i > 1 else "&lol;" * 10}{f"&lol{i - 1};" * 9 if i > 1 else ""}">' for i in range(1, 10))
    + "]>"
    + RDF.format(attribute="", element="<xmp:Rating>&lol9;</xmp:Rating>")
)


def jpeg_with_xmp(packet: str | bytes) -> bytes:
    data = packet.encode() if isinstance(packet, str) else packet
    return jpeg_with_app1(b"http://ns.adobe.com/xap/1.0/\x00" + data)


def png_with_xmp(packet: str) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet)
    return encode(scene(50, (64, 48)), "PNG", pnginfo=info)


def photo_with_sidecar(folder, sidecar: bytes | None, name: str = "photo.jpg"):
    photo = folder / name
    scene(51).save(photo, quality=90)
    if sidecar is not None:
        (folder / (name + ".xmp")).write_bytes(sidecar)
    return photo


# ------------------------------------------------------------------------------------------ entity expansion


@pytest.mark.parametrize("where", ["packet", "sidecar", "jpeg", "png", "webp"])
def test_billion_laughs_is_refused_wherever_it_hides(where, tmp_path):
    if where == "packet":
        problems = xmp_values(BILLION_LAUGHS.encode())
    elif where == "sidecar":
        rating = read_rating(photo_with_sidecar(tmp_path, BILLION_LAUGHS.encode()))
        assert rating.unrated
        problems = rating.problems
    else:
        data = {"jpeg": lambda: jpeg_with_xmp(BILLION_LAUGHS), "png": lambda: png_with_xmp(BILLION_LAUGHS),
                "webp": lambda: encode(scene(52, (64, 48)), "WEBP", xmp=BILLION_LAUGHS.encode())}[where]()
        rating = read_rating(data)
        assert rating.unrated
        assert load_image(data).size in ((320, 240), (64, 48))  # the picture itself is fine
        problems = rating.problems
    assert [p for p in problems if "XMP refused: DTDForbidden" in p]


class RecordingServer:
    """A local HTTP server that records every path asked of it: proof that nothing was fetched."""

    def __init__(self):
        requests = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                body = b'<!ENTITY leaked "5">' if self.path.endswith(".dtd") else b"5"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    recording = RecordingServer()
    yield recording
    recording.close()


def external_packets(url: str, secret) -> dict[str, str]:
    body = RDF.format(attribute="", element="<xmp:Rating>&ext;</xmp:Rating>")
    return {
        "general-entity-http": f'<!DOCTYPE x:xmpmeta [<!ENTITY ext SYSTEM "{url}/entity">]>{body}',
        "general-entity-file": f'<!DOCTYPE x:xmpmeta [<!ENTITY ext SYSTEM "file://{secret}">]>{body}',
        "parameter-entity": f'<!DOCTYPE x:xmpmeta [<!ENTITY % p SYSTEM "{url}/param.dtd"> %p;]>{body}',
        "external-dtd": f'<!DOCTYPE x:xmpmeta SYSTEM "{url}/external.dtd">{body.replace("&ext;", "&leaked;")}',
        "xinclude": RDF.format(attribute='xmlns:xi="http://www.w3.org/2001/XInclude"',
                               element=f'<xmp:Rating><xi:include href="{url}/xinclude" parse="text"/></xmp:Rating>'),
    }


def test_a_resolving_parser_would_fetch_external_entities_so_the_server_sees_fetches(server, tmp_path):
    """The control for the test below: an XML parser told to resolve external entities does ask the server."""
    parser = xml.sax.make_parser()
    parser.setFeature(xml.sax.handler.feature_external_ges, True)
    parser.setContentHandler(xml.sax.ContentHandler())
    packet = external_packets(server.url, tmp_path / "secret")["general-entity-http"]
    (tmp_path / "doc.xml").write_text(packet)
    parser.parse(str(tmp_path / "doc.xml"))
    assert server.requests == ["/entity"]


@pytest.mark.parametrize("kind", list(external_packets("", "")))
def test_external_entities_are_refused_and_never_fetched(kind, server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("5")
    packet = external_packets(server.url, secret)[kind]
    found = xmp_values(packet.encode())
    sidecar = read_rating(photo_with_sidecar(tmp_path, packet.encode()))
    embedded = read_rating(png_with_xmp(packet))
    assert server.requests == []
    for rating in (sidecar, embedded):
        assert rating.stars != 5.0
    if kind == "xinclude":  # no DTD: parsed, and the unexpanded include element is not a rating
        assert found == ["xmp:Rating: ignored '' (could not convert string to float: '')"]
    else:
        assert found == ["XMP refused: DTDForbidden"] and sidecar.unrated and embedded.unrated


# ------------------------------------------------------------------------------------------ enormous packets


def test_an_enormous_sidecar_is_not_read(tmp_path):
    packet = xmp_packet(5).replace("</rdf:RDF>", f"<!-- {'x' * MAX_XMP_BYTES} --></rdf:RDF>").encode()
    rating = read_rating(photo_with_sidecar(tmp_path, packet))
    assert rating.unrated and rating.problems == (f"sidecar photo.jpg.xmp: larger than {MAX_XMP_BYTES} bytes, not read",)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "compressed"])
def test_an_enormous_embedded_packet_is_refused_unparsed(compressed):
    # 64 MB of padding: compressed, a zip bomb of 64 kB that must not be inflated in full
    data = huge_xmp_png(64 * 2**20, compressed=compressed)
    rating = read_rating(data)
    assert rating.unrated and rating.problems == (f"XMP: larger than {MAX_XMP_BYTES} bytes, not parsed",)


def test_a_large_plain_packet_does_not_stop_the_picture_from_indexing(good_folder, resnet18):
    (good_folder / "big-xmp.png").write_bytes(huge_xmp_png(5 * 2**20, compressed=False))
    collection = Collection.build(good_folder, resnet18, progress=False, num_workers=0)
    record = next(r for r in collection.images if r.path.endswith("big-xmp.png"))
    assert len(collection) == 6 and record.rating.unrated and "not parsed" in record.rating.problems[0]


def test_a_large_compressed_packet_is_refused_by_pillow_with_the_reason(tmp_path):
    """Pillow will not inflate a PNG text chunk beyond 1 MB, so such a picture fails alone, saying why."""
    path = tmp_path / "bloated.png"
    path.write_bytes(huge_xmp_png(2 * 2**20, compressed=True))
    with pytest.raises(Exception, match="Decompressed data too large"):
        load_image(path)
    assert read_rating(path).stars == 4.0  # its rating, within simlib's own 4 MB limit, is still read


# ------------------------------------------------------------------------------------------ bad rating values


@pytest.mark.parametrize(
    "attribute, element, stars",
    [
        ('xmp:Rating="6"', "", None),
        ('xmp:Rating="-2"', "", None),
        ('xmp:Rating="five"', "", None),
        ('xmp:Rating="1e400"', "", None),
        ('xmp:Rating="NaN"', "", None),
        ('xmp:Rating="0x3"', "", None),
        ("", "<xmp:Rating><rdf:Alt><rdf:li>4</rdf:li></rdf:Alt></xmp:Rating>", None),
        ('xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/" MicrosoftPhoto:Rating="150"', "", None),
        ('xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/" MicrosoftPhoto:Rating="-inf"', "", None),
        # an invalid value is skipped and the next source in precedence is used
        ('xmp:Rating="9" xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/" MicrosoftPhoto:Rating="50"', "", 3.0),
    ],
)
def test_out_of_range_or_non_numeric_xmp_ratings_are_skipped_with_a_problem(attribute, element, stars):
    rating = read_rating(png_with_xmp(RDF.format(attribute=attribute, element=element)))
    assert rating.stars == stars and len(rating.problems) == 1 and "ignored" in rating.problems[0]


@pytest.mark.parametrize(
    "entry, problem",
    [
        ((0x4746, 3, 1, struct.pack("<H", 7)), "EXIF:Rating: ignored '7'"),
        ((0x4746, 2, 4, b"abc\x00"), "EXIF:Rating: ignored 'abc'"),
        ((0x4746, 3, 2, struct.pack("<HH", 1, 2)), "EXIF:Rating: ignored '(1, 2)'"),
        ((0x4749, 3, 1, struct.pack("<H", 250)), "EXIF:RatingPercent: ignored '250'"),
    ],
    ids=["rating-7", "rating-text", "rating-two-values", "percent-250"],
)
def test_out_of_range_or_malformed_exif_ratings_are_skipped_with_a_problem(entry, problem):
    data = jpeg_with_app1(b"Exif\x00\x00" + tiff_ifd([entry]))
    rating = read_rating(data)
    assert rating.unrated and len(rating.problems) == 1 and rating.problems[0].startswith(problem)


# ------------------------------------------------------------------------------------------ sidecars


SIDECARS = {
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "a-jpeg": encode(Image.new("RGB", (8, 8)), "JPEG"),
    "nul-bytes": b"\x00" * 100,
    "utf16-garbage": "not xml at all".encode("utf-16"),
    "truncated-xml": xmp_packet(4).encode()[:120],
    "html": b"<html><body><h1>404 Not Found</h1></body></html>",
}


@pytest.mark.parametrize("content", list(SIDECARS.values()), ids=list(SIDECARS))
def test_a_sidecar_that_is_not_xmp_is_a_problem_and_the_embedded_rating_still_counts(content, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_with_xmp(xmp_packet(2)))
    (tmp_path / "photo.jpg.xmp").write_bytes(content)
    rating = read_rating(photo)
    assert rating.stars == 2.0 and rating.source == "xmp:Rating"
    if content == SIDECARS["html"]:  # well-formed XML without a rating: nothing to report
        assert rating.problems == ()
    else:
        assert len(rating.problems) == 1 and rating.problems[0].startswith("sidecar photo.jpg.xmp XMP unparseable")


def test_a_fifo_named_like_a_photo_gives_unrated_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    rating = read_rating(tmp_path / "pipe.jpg")
    assert rating.unrated and rating.problems == ("embedded metadata unreadable: not a regular file",)


@pytest.mark.parametrize("kind", ["folder", "fifo", "self-link", "broken-link"])
def test_a_sidecar_that_is_not_a_file_is_ignored_without_blocking(kind, tmp_path):
    photo = photo_with_sidecar(tmp_path, None)
    sidecar = tmp_path / "photo.jpg.xmp"
    {"folder": sidecar.mkdir, "fifo": lambda: os.mkfifo(sidecar), "self-link": lambda: os.symlink(sidecar.name, sidecar),
     "broken-link": lambda: os.symlink(tmp_path / "gone.xmp", sidecar)}[kind]()
    assert read_rating(photo).unrated


def test_a_collection_builds_when_every_photo_has_a_hostile_sidecar(good_folder, resnet18, server):
    contents = [BILLION_LAUGHS.encode(), external_packets(server.url, "/etc/passwd")["external-dtd"].encode(),
                b"\x00" * 10, SIDECARS["binary"], xmp_packet(7).encode()]
    for photo, content in zip(sorted(good_folder.glob("*.jpg")), contents):
        photo.with_name(photo.name + ".xmp").write_bytes(content)
    collection = Collection.build(good_folder, resnet18, progress=False, num_workers=0)
    assert len(collection) == 5 and collection.errors == [] and server.requests == []
    assert all(r.rating.unrated and len(r.rating.problems) == 1 for r in collection.images)
