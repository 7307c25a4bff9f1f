import csv
import io

import pytest
from PIL import Image

from simlib.ratings import percent_to_stars, read_rating, xmp_values

from .conftest import DATA, SHARED, needs_shared, xmp_packet

# expected.csv column -> the source name read_rating reports for it
COLUMNS = {
    "exif_rating": "EXIF:Rating",
    "exif_rating_percent": "EXIF:RatingPercent",
    "xmp_rating": "xmp:Rating",
    "microsoftphoto_rating": "MicrosoftPhoto:Rating",
}


def rows(csv_path):
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def check_against_exiftool(folder, row):
    """Every value ExifTool reports is read from the same source with the same raw value, and nothing more."""
    rating = read_rating(folder / row["file"])
    found = {v.source: v.raw for v in rating.values}
    expected = {source: row[column] for column, source in COLUMNS.items() if row[column]}
    if row["sidecar"]:
        expected[f"sidecar {row['sidecar']} xmp:Rating"] = row["sidecar_xmp_rating"]
    assert {k: float(v) for k, v in found.items()} == {k: float(v) for k, v in expected.items()}
    assert rating.problems == ()
    return rating


def test_bundled_sample_ratings_match_exiftool():
    table = rows(DATA / "expected-ratings.csv")
    assert len(table) == 27
    for row in table:
        check_against_exiftool(DATA, row)


@needs_shared
@pytest.mark.parametrize("row", rows(SHARED / "rated" / "expected.csv") if SHARED.is_dir() else [],
                         ids=lambda row: row["file"])
def test_real_rated_files_match_exiftool(row):
    rating = check_against_exiftool(SHARED / "rated", row)
    case = row["case"]
    expected_stars = {
        "rejected": -1.0, "unrated": None, "xmp-zero": 0.0, "xmp-fractional": 2.5, "percent-99": 5.0,
        "percent-1": 1.0, "exif-rating-percent": 4.0, "microsoftphoto-rating": 2.0, "windows-all-four": 3.0,
        "conflict-exif2-xmp5": 5.0, "sidecar-overrides-embedded": 5.0,
    }
    if case in expected_stars:
        assert rating.stars == expected_stars[case]
    assert rating.conflict == (case in ("conflict-exif2-xmp5", "sidecar-overrides-embedded"))
    assert rating.unrated == (case == "unrated")


@needs_shared
def test_exiftool_samples_embedded_ratings_match():
    folder = SHARED / "exiftool-samples"
    for row in rows(folder / "expected.csv"):
        path = folder / row["file"]
        if path.suffix == ".xmp":
            values = [v for v in xmp_values(path.read_bytes()) if not isinstance(v, str)]
            found = values[0].stars if values else None
        else:
            found = read_rating(path, sidecars=False).stars
        expected = row["xmp_rating"] or row["exif_rating"]
        assert found == (float(expected) if expected else None), row["file"]


@pytest.mark.parametrize(
    "percent, stars", [(0, 0), (1, 1), (24, 1), (25, 2), (49, 2), (50, 3), (74, 3), (75, 4), (98, 4), (99, 5), (100, 5)]
)
def test_percent_maps_to_stars_like_photo_managers(percent, stars):
    assert percent_to_stars(percent) == stars


def png_with_xmp(packet: str) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def test_microsoft_percent_is_not_read_as_stars():
    rating = read_rating(png_with_xmp(xmp_packet(3, microsoft_percent=50).replace('xmp:Rating="3"', "")))
    assert rating.stars == 3.0 and rating.source == "MicrosoftPhoto:Rating"


@pytest.mark.parametrize("raw", ["7", "-3", "abc", "nan", "inf", "0.5e3", ""])
def test_out_of_range_or_non_numeric_values_are_skipped_with_a_problem(raw):
    rating = read_rating(png_with_xmp(xmp_packet(3).replace('"3"', f'"{raw}"')))
    assert rating.unrated and len(rating.problems) == 1 and "xmp:Rating" in rating.problems[0]


def test_utf16_packets_are_read():
    assert [v.stars for v in xmp_values(xmp_packet(4).encode("utf-16-be"))] == [4.0]
    assert [v.stars for v in xmp_values(xmp_packet(2).encode("utf-16-le"))] == [2.0]


def test_sidecar_precedence_photo_jpg_xmp_then_photo_xmp(tmp_path):
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (4, 4)).save(image)
    (tmp_path / "photo.xmp").write_text(xmp_packet(2))
    (tmp_path / "photo.jpg.xmp").write_text(xmp_packet(5))
    rating = read_rating(image)
    assert rating.stars == 5.0 and rating.source == "sidecar photo.jpg.xmp xmp:Rating" and rating.conflict
    assert read_rating(image, sidecars=False).unrated


def test_sidecar_that_is_not_xml_is_a_problem_not_an_error(tmp_path):
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (4, 4)).save(image)
    (tmp_path / "photo.xmp").write_bytes(b"\x89PNG garbage")
    rating = read_rating(image)
    assert rating.unrated and "unparseable" in rating.problems[0]


def test_entity_expansion_is_refused():
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="&lol2;"/></rdf:RDF></x:xmpmeta>'
    )
    assert [p for p in xmp_values(bomb.encode()) if "refused" in p]


def test_external_entities_are_refused_never_fetched(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("5")
    packet = (
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY ext SYSTEM "file://{secret}">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/"><xmp:Rating>&ext;</xmp:Rating></rdf:Description>'
        "</rdf:RDF></x:xmpmeta>"
    )
    values = xmp_values(packet.encode())
    assert len(values) == 1 and isinstance(values[0], str) and "refused" in values[0]


def test_no_metadata_is_unrated_not_zero(tmp_path):
    image = tmp_path / "plain.jpg"
    Image.new("RGB", (4, 4)).save(image)
    rating = read_rating(image)
    assert rating.stars is None and rating.unrated and not rating.rejected and rating.describe() == "unrated"


def test_garbage_bytes_give_unrated_with_a_problem():
    rating = read_rating(b"\xff\xd8\xff\xe1 not really a jpeg")
    assert rating.unrated and rating.problems
