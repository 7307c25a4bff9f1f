"""Bad and odd image files: each fails alone with a reason naming it, or decodes correctly, and never costs the
rest of its batch. Orientation, symlink loops and odd file names included."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from simlib import Collection
from simlib.features import extract_features
from simlib.images import ImageDecodeError, load_image

from ..conftest import ROOT, scene
from .conftest import GOOD_PHOTOS
from .corpus import IMAGE_CASES, oriented_jpeg

# Pillow warns about the corrupt EXIF it skips; here that is the point
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")


def build(folder, backbone) -> Collection:
    return Collection.build(folder, backbone, progress=False, num_workers=0)


def good_names(collection: Collection) -> list[str]:
    return sorted(os.path.basename(r.path) for r in collection.images if os.path.basename(r.path).startswith("good-"))


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.id for c in IMAGE_CASES])
def test_each_hostile_file_is_handled_alone_and_the_rest_of_the_batch_is_indexed(case, good_folder, resnet18):
    path = good_folder / case.name
    path.write_bytes(case.make())
    collection = build(good_folder, resnet18)
    assert good_names(collection) == [f"good-{i}.jpg" for i in range(GOOD_PHOTOS)]
    if case.error is not None:
        with pytest.raises(ImageDecodeError) as raised:
            load_image(path)
        assert case.error in raised.value.reason and str(path) in str(raised.value)
        assert [(e.path, e.reason) for e in collection.errors] == [(str(path), raised.value.reason)]
        assert len(collection) == GOOD_PHOTOS
    else:
        assert case.check(load_image(path, min_side=224))
        assert collection.errors == [] and len(collection) == GOOD_PHOTOS + 1
        response = collection.search(path, k=3)
        assert response.results[0].path == str(path)  # the odd file is found by itself


@pytest.mark.parametrize("orientation", range(1, 9))
def test_features_of_every_exif_orientation_match_the_upright_photo(orientation, tmp_path, resnet18):
    upright = scene(40, (400, 300))
    (tmp_path / "upright.jpg").write_bytes(oriented_jpeg(upright, 1))
    (tmp_path / "tagged.jpg").write_bytes(oriented_jpeg(upright, orientation))
    (tmp_path / "untagged.jpg").write_bytes(oriented_jpeg(upright, orientation, write_tag=False))
    result = extract_features(resnet18, [tmp_path / n for n in ("upright.jpg", "tagged.jpg", "untagged.jpg")],
                              progress=False, num_workers=0)
    upright_f, tagged, untagged = result.features
    assert float(upright_f @ tagged) > 0.9999
    if orientation != 1:
        # the same stored pixels read without the tag are measurably further away: the tag is what brings it back
        assert np.linalg.norm(tagged - upright_f) < 0.2 * np.linalg.norm(untagged - upright_f)


def test_symlink_loops_and_broken_links_are_reported_and_the_rest_indexed(good_folder, resnet18):
    (good_folder / "sub").mkdir()
    scene(41).save(good_folder / "sub" / "inside.jpg")
    os.symlink(good_folder, good_folder / "sub" / "back-to-top")  # folder loop
    os.symlink("self.jpg", good_folder / "self.jpg")  # a link to itself
    os.symlink(good_folder / "gone.jpg", good_folder / "broken.jpg")
    os.mkfifo(good_folder / "pipe.jpg")  # reading it would block for ever
    collection = build(good_folder, resnet18)
    assert len(collection) == GOOD_PHOTOS + 1 and good_names(collection) == [f"good-{i}.jpg" for i in range(GOOD_PHOTOS)]
    reasons = {os.path.basename(e.path): e.reason for e in collection.errors}
    assert reasons == {
        "self.jpg": "cannot follow: Too many levels of symbolic links",
        "broken.jpg": "broken symbolic link: its target does not exist",
        "pipe.jpg": "not a regular file (a FIFO, socket or device)",
    }


def test_a_fifo_given_by_name_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageDecodeError, match="empty file"):
        load_image(tmp_path / "pipe.jpg")


@pytest.mark.slow
def test_cli_indexes_and_searches_files_with_hostile_names(good_folder, tmp_path, resnet18_weights):
    hostile = [case for case in IMAGE_CASES if case.id.startswith("name-")]
    for case in hostile:
        (good_folder / case.name).write_bytes(case.make())
    latin1 = os.fsdecode(b"caf\xe9-latin1.jpg")  # not valid UTF-8, as old cameras and zip tools name files
    scene(42).save(good_folder / latin1)
    (good_folder / os.fsdecode(b"broken-\xe9.jpg")).write_bytes(b"not a picture")
    names = [case.name for case in hostile] + [latin1]
    output = tmp_path / "out dir; $(x)" / "photos.simlib"
    weights = ["--weights", str(resnet18_weights)]
    index = simlib_cli("index", str(good_folder), "-o", str(output), "--backbone", "resnet18", *weights, "--workers", "0")
    assert index.returncode == 0, index.stderr
    assert f"Indexed {GOOD_PHOTOS + len(names)} image(s)" in index.stdout
    assert "broken-\\xe9.jpg: not an image format Pillow can read" in index.stdout
    queries = [str(good_folder / name) for name in names]
    found = simlib_cli("search", str(output), *queries, "-k", "1", "--json", *weights)  # one process, one line each
    assert found.returncode == 0, found.stderr
    answers = [json.loads(line) for line in found.stdout.splitlines()]
    assert [answer["query"] for answer in answers] == queries
    assert [answer["results"][0]["path"] for answer in answers] == queries
    table = simlib_cli("search", str(output), str(good_folder / latin1), "-k", "1", *weights)
    assert table.returncode == 0, table.stderr
    assert "caf\\xe9-latin1.jpg" in table.stdout.splitlines()[-1]


def simlib_cli(*args: str) -> subprocess.CompletedProcess:
    """The command as run from a terminal whose locale is, say, en_US.UTF-8: output encoded strictly as UTF-8."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-m", "simlib", *args], capture_output=True, cwd=ROOT, env=env,
                          text=True, errors="surrogateescape")
