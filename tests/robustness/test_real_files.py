"""Real files from many cameras and programs (ExifTool's test images): each decodes as Pillow says it can, or fails
with a clear reason, and its rating is read without an exception either way."""

from __future__ import annotations

import csv
import os

import pytest

from simlib import Collection
from simlib.files import find_images
from simlib.images import ImageDecodeError, load_image
from simlib.ratings import Rating, read_rating

from ..conftest import SHARED, needs_shared

SAMPLES = SHARED / "exiftool-samples"


def expected_rows() -> list[dict]:
    if not SAMPLES.is_dir():
        return []
    with open(SAMPLES / "expected.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@needs_shared
@pytest.mark.parametrize("row", expected_rows(), ids=lambda row: row["file"])
def test_each_exiftool_sample_decodes_or_fails_with_a_clear_reason(row):
    path = SAMPLES / row["file"]
    if row["pillow_opens"] == "yes":
        image = load_image(path, min_side=0)
        width, height = (int(v) for v in row["size"].split("x"))
        upright = (height, width) if row["exif_orientation"] in ("5", "6", "7", "8") else (width, height)
        assert image.mode == "RGB" and image.size == upright
    else:
        with pytest.raises(ImageDecodeError) as raised:
            load_image(path)
        assert raised.value.reason == "not an image format Pillow can read" and raised.value.path == str(path)
    rating = read_rating(path)
    assert isinstance(rating, Rating) and all(isinstance(p, str) for p in rating.problems)


@needs_shared
def test_the_exiftool_samples_folder_indexes_everything_pillow_can_open(resnet18):
    rows = {row["file"]: row["pillow_opens"] == "yes" for row in expected_rows()}
    listed, _ = find_images(SAMPLES)
    collection = Collection.build(SAMPLES, resnet18, progress=False, num_workers=0)
    indexed = sorted(os.path.basename(r.path) for r in collection.images)
    assert indexed == sorted(p.name for p in listed if rows[p.name])
    assert sorted(os.path.basename(e.path) for e in collection.errors) == sorted(p.name for p in listed if not rows[p.name])
    assert all(e.reason for e in collection.errors)


@needs_shared
def test_real_rated_photos_index_with_their_ratings(resnet18):
    with open(SHARED / "rated" / "expected.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    collection = Collection.build(SHARED / "rated", resnet18, progress=False, num_workers=0)
    assert collection.errors == [] and len(collection) == len(rows)
    unrated = {os.path.basename(r.path) for r in collection.images if r.rating.unrated}
    assert unrated == {row["file"] for row in rows if row["case"] == "unrated"}
