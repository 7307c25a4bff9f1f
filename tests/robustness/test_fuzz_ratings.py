"""Fuzzing the rating reader with Hypothesis: random bytes, mutated rated files of every format, generated XMP
packets and files with random sidecars. Whatever comes in, a valid `Rating` comes out and nothing is raised.

About 5,000 cases in all, derandomised so that CI runs the same ones; tests/robustness/fuzz_ratings.py runs the
same property under atheris for as long as wanted.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simlib.ratings import REJECTED, Rating, RatingValue, read_rating, xmp_values

from .seeds import rated_seeds

# Pillow warns about the corrupt EXIF it skips; here that is the point
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

SEEDS = rated_seeds()
FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def check_rating(rating) -> None:
    """The contract: a Rating whose stars are None, -1 or within 0..5, agreeing with its first value."""
    assert isinstance(rating, Rating)
    for value in rating.values:
        check_value(value)
    if rating.stars is None:
        assert rating.source is None and rating.values == ()
    else:
        assert (rating.stars, rating.source) == (rating.values[0].stars, rating.values[0].source)
    assert all(isinstance(problem, str) for problem in rating.problems)
    assert isinstance(rating.describe(), str)


def check_value(value) -> None:
    assert isinstance(value, RatingValue) and isinstance(value.source, str) and isinstance(value.raw, str)
    assert math.isfinite(value.stars) and (value.stars == REJECTED or 0 <= value.stars <= 5)


@st.composite
def mutated(draw, seed: bytes | None = None) -> bytes:
    """A seed file with a few bytes overwritten, inserted, deleted or the whole cut short."""
    data = bytearray(seed if seed is not None else SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate", "number"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "overwrite":
            data[position : position + len(chunk)] = chunk
        elif action == "insert":
            data[position:position] = chunk
        elif action == "delete":
            del data[position : position + len(chunk)]
        elif action == "truncate":
            del data[position:]
        else:  # a length or offset field turned into an extreme value
            data[position : position + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"]))
    return bytes(data)


@settings(FUZZ, max_examples=800)
@given(st.binary(max_size=4096))
def test_random_bytes_give_a_rating_never_an_exception(data):
    check_rating(read_rating(data))


@settings(FUZZ, max_examples=1800)
@given(mutated())
def test_mutated_rated_files_of_every_format_give_a_rating_never_an_exception(data):
    check_rating(read_rating(data))


NAMESPACES = ["http://ns.adobe.com/xap/1.0/", "http://ns.microsoft.com/photo/1.0/", "http://ns.microsoft.com/photo/1.0",
              "adobe:ns:meta/", "urn:other"]
RATING_TEXT = st.one_of(
    st.sampled_from(["0", "1", "2.5", "5", "-1", "6", "-2", "nan", "inf", "-inf", "1e309", "0x3", " 3 ", "", "99",
                     "100", "3,5", "١", "&lt;", "&amp;", "&#x33;", "&#51;"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**30, 10**30).map(str),
    st.text(max_size=12).map(lambda s: s.replace("<", "").replace("&", "").replace('"', "")),
)


@st.composite
def xmp_documents(draw) -> bytes:
    """XMP-like documents: ratings as attributes or elements in assorted namespaces, nested, in any encoding,
    with packet wrappers, comments, CDATA, DOCTYPEs and entity references sprinkled in."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        namespace = draw(st.sampled_from(NAMESPACES))
        value = draw(RATING_TEXT)
        form = draw(st.sampled_from(["attribute", "element", "cdata", "nested"]))
        if form == "attribute":
            parts.append(f'<rdf:Description xmlns:n="{namespace}" n:Rating="{value}"/>')
        elif form == "element":
            parts.append(f'<n:Rating xmlns:n="{namespace}">{value}</n:Rating>')
        elif form == "cdata":
            parts.append(f'<n:Rating xmlns:n="{namespace}"><![CDATA[{value}]]></n:Rating>')
        else:
            parts.append(f'<a><b><n:Rating xmlns:n="{namespace}"><c>{value}</c></n:Rating></b></a>')
    body = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            + "".join(parts) + "</rdf:RDF></x:xmpmeta>")
    prefix = draw(st.sampled_from(["", '<?xml version="1.0"?>', '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>',
                                   "<!-- c -->", '<!DOCTYPE x [<!ENTITY e "5">]>', "\ufeff", "\x00", "junk"]))
    suffix = draw(st.sampled_from(["", '<?xpacket end="w"?>', "</x:xmpmeta>", "&e;", "\x00\x00"]))
    text = prefix + body + suffix
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=20)) + text[cut:]
    encoding = draw(st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-16", "latin-1"]))
    return text.encode(encoding, "replace")


@settings(FUZZ, max_examples=1500)
@given(xmp_documents())
def test_xmp_values_returns_only_valid_values_or_problems(packet):
    for item in xmp_values(packet):
        if isinstance(item, str):
            assert item
        else:
            check_value(item)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


SIDECAR = st.one_of(st.none(), st.binary(max_size=512), xmp_documents(), mutated(SEEDS["jpeg"]))


@settings(FUZZ, max_examples=600)
@given(image=st.one_of(st.binary(max_size=512), mutated()), full=SIDECAR, short=SIDECAR)
def test_files_with_random_sidecars_give_a_rating_never_an_exception(folder, image, full, short):
    photo = folder / "photo.jpg"
    photo.write_bytes(image)
    for sidecar, content in ((folder / "photo.jpg.xmp", full), (folder / "photo.xmp", short)):
        sidecar.unlink(missing_ok=True)
        if content is not None:
            sidecar.write_bytes(content)
    check_rating(read_rating(photo))
