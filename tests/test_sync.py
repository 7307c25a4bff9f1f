"""Sync: a collection brought in line with its folder after photos were deleted, added, edited, re-rated in a
sidecar and touched; only new and edited photos are extracted, and a sync with nothing changed reads no image."""

from __future__ import annotations

import os
import shutil

import pytest

import simlib.collection
from simlib import Collection
from simlib.cli import main
from simlib.records import ImageRecord

from .conftest import scene, xmp_packet


@pytest.fixture(scope="module")
def original(resnet18, tmp_path_factory):
    """Six photos, 0..3 rated by sidecars, and their collection."""
    photos = tmp_path_factory.mktemp("sync") / "photos"
    photos.mkdir()
    for i in range(6):
        scene(800 + i).save(photos / f"{i}.jpg", quality=90)
        if i < 4:
            (photos / f"{i}.jpg.xmp").write_text(xmp_packet(i + 1))
    return photos, Collection.build(photos, resnet18, progress=False, num_workers=0)


@pytest.fixture
def library(original, tmp_path):
    """A copy of the photos (times kept) and of their collection, saved beside them."""
    photos, built = original
    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)  # modification times kept, so the records' stamps still hold
    images = [ImageRecord(str(copy / os.path.basename(r.path)), r.rating, r.stamp) for r in built.images]
    collection = Collection(built.backbone, images=images, features=built.features, core=built.core.copy(), root=copy)
    collection.save(tmp_path / "photos.simlib")
    return copy, tmp_path / "photos.simlib"


@pytest.fixture
def extracted(monkeypatch):
    """The files each feature extraction was asked for."""
    calls = []
    original = simlib.collection.extract_features

    def recording(backbone, sources, **options):
        calls.append(sorted(os.path.basename(s) for s in sources))
        return original(backbone, sources, **options)

    monkeypatch.setattr(simlib.collection, "extract_features", recording)
    return calls


def test_sync_adds_removes_re_extracts_and_re_rates_only_what_changed(library, resnet18, extracted):
    photos, target = library
    (photos / "1.jpg").unlink()
    scene(850).save(photos / "new.jpg", quality=90)
    scene(851).save(photos / "2.jpg", quality=90)  # other pixels under the same name
    (photos / "3.jpg.xmp").write_text(xmp_packet(5))  # only the rating, in the sidecar
    stat = (photos / "4.jpg").stat()
    os.utime(photos / "4.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes
    collection = Collection.load(target, resnet18)
    report = collection.sync(photos, progress=False, num_workers=0)
    assert (report.added, report.removed, report.changed, report.rating_changed) == (1, 1, 1, 1)
    assert (report.unchanged, report.touched, report.skipped) == (3, 1, [])
    assert extracted == [["2.jpg", "new.jpg"]]  # the touched photo and the re-rated one cost no inference
    collection.save(target)
    loaded = Collection.load(target, resnet18)
    assert sorted(os.path.basename(r.path) for r in loaded.images) == ["0.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg",
                                                                       "new.jpg"]
    assert loaded.search(photos / "2.jpg", k=1).results[0].path == str(photos / "2.jpg")
    assert loaded.search(photos / "3.jpg", k=1).results[0].rating == 5.0
    assert loaded.sync(photos, progress=False, num_workers=0).summary() == (
        "0 added, 0 removed, 0 changed, 0 rating changed, 6 unchanged, 0 skipped")
    assert extracted == [["2.jpg", "new.jpg"]]  # nothing changed: no image was read


def test_the_sync_command_prints_its_summary_and_the_skipped_files(library, resnet18_weights, capsys):
    photos, target = library
    (photos / "0.jpg").unlink()
    (photos / "broken.jpg").write_text("not a jpeg")
    capsys.readouterr()
    assert main(["index", str(photos), "-o", str(target), "--sync", "-q", "--weights", str(resnet18_weights)]) == 0
    out = capsys.readouterr().out
    assert "0 added, 1 removed, 0 changed, 0 rating changed, 5 unchanged, 1 skipped." in out
    assert "broken.jpg: not an image format Pillow can read" in out
