"""Duplicate groups on real files: byte and pixel copies form exact groups, edited copies near groups, unrelated
photos none; the keeper follows rating, then resolution, then sharpness, then file size; the CLI moves copies
and their sidecars only with --apply, writes an undo manifest that restores them, and updates the collection."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from simlib import Collection, SearchConfig, SearchCore
from simlib.cli import main
from simlib.culling import CullingError, plan_moves
from simlib.duplicates import (
    FIRST_NEIGHBOURS,
    SHARPER_BY,
    DuplicateCache,
    DuplicateGroup,
    DuplicateMember,
    DuplicateReport,
    duplicate_threshold,
    group_vectors,
    keeper_order,
    neighbour_edges,
    star_groups,
)
from simlib.image_facts import ImageFacts, laplacian_variance
from simlib.index import IndexParams

from .conftest import SHARED, needs_offline_backbone, scene, xmp_packet

PHOTOS = SHARED / "photos"
# real photos of unlike subjects; synthetic scenes stand in for them when ../shared/datasets is absent
SOURCES = {
    "dog": "darknet__dog.jpg", "taj": "gcompris__TajMahal_background.jpg", "alpaca": "gcompris__alpaca.jpg",
    "lily": "elementary__Water_Lily.jpg", "mountain": "elementary__Snow_Capped_Mountain.jpg",
    "urban": "elementary__Urban_Dream.jpg", "bridge": "gcompris__TowerBridgeLondon_background.jpg",
    "pier": "elementary__Sunset_by_the_Pier.jpg", "horses": "darknet__horses.jpg",
    "fly": "elementary__Musca_domestica.jpg", "stanford": "opencvdoc__stanford.jpg",
}
OLD, NEW = 1_600_000_000, 1_700_000_000  # modification times (seconds): originals older than their copies


def original(name: str) -> Image.Image:
    if PHOTOS.is_dir():
        with Image.open(PHOTOS / SOURCES[name]) as image:
            return image.convert("RGB")
    return scene(700 + list(SOURCES).index(name), (640, 480))


def save(image: Image.Image, path: Path, stars: float | None = None, sidecar: str = ".jpg.xmp", **options) -> Path:
    """Write `image` (JPEG quality 90 unless told), its rating in a sidecar (`photo.jpg.xmp` or `photo.xmp`),
    and an old modification time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}) | options)
    if stars is not None:
        side = path.with_name(path.name + ".xmp") if sidecar == ".jpg.xmp" else path.with_suffix(".xmp")
        side.write_text(xmp_packet(stars))
    os.utime(path, (OLD, OLD))
    return path


def make_library(root: Path) -> Path:
    """Originals, byte copies, a pixel copy, recompressed / resized / blurred / cropped copies, unrelated photos."""
    photos = root / "photos"
    dog = save(original("dog"), photos / "dog.jpg", 2, sidecar=".xmp")
    (photos / "backup").mkdir(parents=True)
    shutil.copy2(dog, photos / "backup" / "dog.jpg")  # the same bytes, rated higher
    (photos / "backup" / "dog.jpg.xmp").write_text(xmp_packet(4))
    w, h = original("dog").size
    save(original("dog").crop((w // 20, h // 20, w - w // 20, h - h // 20)), photos / "edits" / "dog-crop.jpg")
    save(original("taj"), photos / "taj.jpg")
    save(Image.open(photos / "taj.jpg").convert("RGB"), photos / "taj.png")  # the same decoded pixels
    pier = save(original("pier"), photos / "pier.jpg")
    shutil.copy2(pier, photos / "backup" / "pier.jpg")  # identical in every respect: a tie
    alpaca = original("alpaca")
    save(alpaca, photos / "alpaca.jpg")
    save(alpaca.resize((alpaca.width // 2, alpaca.height // 2)), photos / "edits" / "alpaca-small.jpg", 3)
    lily = original("lily")
    save(lily, photos / "lily.jpg", 3)
    save(lily.resize((lily.width // 2, lily.height // 2)), photos / "edits" / "lily-half.jpg", 3)
    mountain = original("mountain")
    save(mountain, photos / "mountain.jpg")
    save(mountain.filter(ImageFilter.GaussianBlur(1.5)), photos / "edits" / "mountain-blurred.jpg")
    save(original("urban"), photos / "urban.jpg")
    save(original("urban"), photos / "edits" / "urban-q60.jpg", quality=60)
    bridge = original("bridge")
    save(bridge, photos / "bridge.jpg", -1, sidecar=".xmp")  # rejected
    save(bridge, photos / "edits" / "bridge-q75.jpg", quality=75)
    for name in ("horses", "fly", "stanford"):
        save(original(name), photos / f"{name}.jpg")
    return photos


@pytest.fixture(scope="module")
def library(tmp_path_factory, efficientnet) -> tuple[Path, Path]:
    """The photos folder and a saved collection of it beside it (module scope: built once)."""
    root = tmp_path_factory.mktemp("duplicates")
    photos = make_library(root)
    Collection.build(photos, efficientnet, progress=False, num_workers=0).save(root / "photos.simlib")
    return photos, root / "photos.simlib"


@pytest.fixture(scope="module")
def collection(library, efficientnet) -> Collection:
    return Collection.load(library[1], efficientnet)


# The grouping tests fix the threshold: the calibrated one depends on 20 edited copies of this small folder, and
# in a folder holding copies some of them count as non-matches (0.910 here, which leaves the dog's crop out, at
# similarity 0.899). test_the_threshold_defaults_... checks the default.
THRESHOLD = 0.85


@pytest.fixture(scope="module")
def report(collection):
    return collection.duplicate_groups(THRESHOLD)


@pytest.fixture
def workspace(library, tmp_path) -> tuple[Path, Path]:
    """A private copy of the photos and their collection, for tests that move files."""
    photos, saved = library
    shutil.copytree(photos, tmp_path / "photos")
    shutil.copytree(saved, tmp_path / "photos.simlib")
    return tmp_path / "photos", tmp_path / "photos.simlib"


def names(group, photos: Path) -> list[str]:
    return [Path(m.path).relative_to(photos).as_posix() for m in group.members]


def groups_by_keeper(report, photos: Path) -> dict[str, list[str]]:
    return {names(g, photos)[0]: names(g, photos) for g in report.groups}


pytestmark = needs_offline_backbone


# ------------------------------------------------------------------------------------------------ grouping


def test_byte_and_pixel_copies_form_exact_groups_kept_apart_from_near_copies(report, library):
    photos = library[0]
    exact = {names(g, photos)[0]: (names(g, photos), [m.match for m in g.members]) for g in report.of_kind("exact")}
    assert exact == {
        "backup/dog.jpg": (["backup/dog.jpg", "dog.jpg"], ["keeper", "same file bytes"]),
        "taj.png": (["taj.png", "taj.jpg"], ["keeper", "same decoded pixels"]),
        "backup/pier.jpg": (["backup/pier.jpg", "pier.jpg"], ["keeper", "same file bytes"]),
    }
    # the crop of the dog is a near copy of the exact group's keeper, in a group of its own kind
    near = {names(g, photos)[0]: names(g, photos) for g in report.of_kind("near")}
    assert near["backup/dog.jpg"] == ["backup/dog.jpg", "edits/dog-crop.jpg"]


def test_edited_copies_form_near_groups_and_unrelated_photos_none(report, library):
    photos = library[0]
    near = {names(g, photos)[0]: names(g, photos) for g in report.of_kind("near")}
    assert near == {
        "backup/dog.jpg": ["backup/dog.jpg", "edits/dog-crop.jpg"],
        "edits/alpaca-small.jpg": ["edits/alpaca-small.jpg", "alpaca.jpg"],
        "lily.jpg": ["lily.jpg", "edits/lily-half.jpg"],
        "mountain.jpg": ["mountain.jpg", "edits/mountain-blurred.jpg"],
        "urban.jpg": ["urban.jpg", "edits/urban-q60.jpg"],
        "edits/bridge-q75.jpg": ["edits/bridge-q75.jpg", "bridge.jpg"],
    }
    grouped = {m.path for g in report.groups for m in g.members}
    assert not grouped & {str(photos / f"{n}.jpg") for n in ("horses", "fly", "stanford")}
    assert all(m.similarity >= report.threshold.value for g in report.of_kind("near") for m in g.members)


def test_the_keeper_follows_rating_then_resolution_then_sharpness_then_file_size(report, library):
    members = {Path(m.path).relative_to(library[0]).as_posix(): m for g in report.groups for m in g.members}
    assert members["alpaca.jpg"].reason == "unrated (counts as 0 stars), the keeper rated 3"  # beats resolution
    assert members["edits/alpaca-small.jpg"].reason == "the keeper: the highest rating"
    assert members["edits/lily-half.jpg"].reason.startswith("fewer pixels: ")
    assert members["lily.jpg"].reason == "the keeper: the highest rating, then the most pixels"
    assert members["edits/mountain-blurred.jpg"].reason.startswith("less sharp: Laplacian variance ")
    assert members["edits/urban-q60.jpg"].reason.startswith("smaller file at the same resolution and sharpness")
    assert members["urban.jpg"].reason.endswith("then the sharpest, then the largest file")
    assert members["dog.jpg"].reason == "rated 2, the keeper rated 4"  # byte copies: their sidecars differ


def test_a_rejected_photo_is_never_the_keeper_and_ties_are_reported(report, library):
    groups = groups_by_keeper(report, library[0])
    assert groups["edits/bridge-q75.jpg"] == ["edits/bridge-q75.jpg", "bridge.jpg"]  # the original is rejected
    rejected = next(m for g in report.groups for m in g.members if m.path.endswith("/bridge.jpg"))
    assert rejected.reason == "rejected (-1): never the keeper"
    pier = next(g for g in report.groups if g.members[0].path.endswith("backup/pier.jpg"))
    assert pier.tie and [m.tie for m in pier.members] == [True, True]
    assert pier.members[1].reason.startswith("tie: ")
    assert all(not g.tie for g in report.groups if g is not pier)


def test_every_member_shows_its_rating_size_and_why(report):
    for group in report.groups:
        assert group.keeper is not None and group.keeper is group.members[0]
        for member in group.members:
            assert member.facts.width > 0 and member.facts.height > 0 and member.facts.file_size > 0
            assert member.reason
    rows = report.rows()
    assert {"rating", "width", "height", "file_size", "sharpness", "reason", "role"} <= set(rows[0])


def test_the_threshold_defaults_to_the_calibrated_one_with_its_error_rates_and_can_be_set(collection, report):
    calibration = collection.core.calibration_.on_similarity  # on similarity alone, not on the match score
    assert calibration is not collection.core.calibration_ and calibration.threshold > collection.threshold
    default = collection.duplicate_groups()
    assert default.threshold.value == calibration.threshold and default.threshold.source == "calibrated"
    assert default.threshold.miss_rate == calibration.miss_rate
    assert "false-match rate" in default.threshold.describe()
    assert report.threshold.source == "given"
    cache = DuplicateCache()
    strict = collection.duplicate_groups(0.999, cache=cache)
    assert strict.threshold.source == "given" and not strict.of_kind("near")
    assert len(strict.of_kind("exact")) == 3  # identity does not depend on the threshold
    loose = collection.duplicate_groups(report.threshold.value, cache=cache)  # regrouped from the cache
    assert [names(g, Path("/")) for g in loose.groups] == [names(g, Path("/")) for g in report.groups]


def test_a_file_changed_since_indexing_is_left_out_with_the_reason(library, efficientnet, tmp_path):
    photos, saved = library
    shutil.copytree(photos, tmp_path / "photos")
    shutil.copytree(saved, tmp_path / "photos.simlib")
    (tmp_path / "photos" / "urban.jpg").write_bytes((photos / "fly.jpg").read_bytes())
    report = Collection.load(tmp_path / "photos.simlib", efficientnet).duplicate_groups()
    assert [e.path for e in report.errors] == [str(tmp_path / "photos" / "urban.jpg")]
    assert "changed since it was indexed" in report.errors[0].reason
    assert not any(m.path.endswith("urban-q60.jpg") for g in report.groups for m in g.members)


# ------------------------------------------------------------------------------------------------ the rules on arrays


def test_a_group_is_a_star_around_its_keeper_so_a_chain_does_not_merge_unlike_images():
    # A ~ B and B ~ C, but A and C are unlike
    first, second = np.array([0, 1]), np.array([1, 2])
    assert star_groups(3, first, second, np.array([1, 0, 2])).tolist() == [1, 1, 1]  # B keeps both its copies
    assert star_groups(3, first, second, np.array([0, 1, 2])).tolist() == [0, 0, 2]  # A keeps B; C is alone


def test_neighbour_edges_find_every_pair_above_the_floor_even_past_the_first_neighbours():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 64)).astype(np.float32)
    vectors[:40] = vectors[0] + 0.05 * rng.standard_normal((40, 64))  # 40 copies: more than FIRST_NEIGHBOURS
    vectors[40:50] = vectors[50:60] + 0.4 * rng.standard_normal((10, 64))  # 10 more pairs
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    core = SearchCore.from_state(SearchConfig(pca_dim=None, index=IndexParams(M=8)), None, vectors)
    edges = neighbour_edges(core, 0.8, budget=64 * FIRST_NEIGHBOURS)
    similarities = vectors @ vectors.T
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(similarities >= 0.8, 1)))}
    assert len(expected) > 40 * 39 // 2 and 40 > FIRST_NEIGHBOURS
    assert set(zip(edges.first.tolist(), edges.second.tolist())) == expected
    assert np.allclose(edges.similarity, similarities[edges.first, edges.second], atol=1e-5)
    keeper = group_vectors(core, 0.8)
    assert set(keeper[:40].tolist()) == {int(keeper[0])} and (keeper[60:] == -1).all()


def test_removed_images_are_in_no_group():
    vectors = np.eye(4, 8, dtype=np.float32)
    vectors[1] = vectors[0]
    core = SearchCore.from_state(SearchConfig(pca_dim=None, index=IndexParams("exact")), None, vectors)
    assert group_vectors(core, 0.9).tolist() == [0, 0, -1, -1]
    core.remove([1])
    assert group_vectors(core, 0.9).tolist() == [-1, -1, -1, -1]


def facts(path: str, rating=None, size=(100, 100), sharpness=100.0, file_size=1000, mtime_ns=0) -> ImageFacts:
    return ImageFacts(path, rating, size[0], size[1], sharpness, file_size, mtime_ns, None)


def test_keeper_order_treats_sharpness_within_the_factor_as_equal_and_lets_the_file_size_decide():
    members = [facts("a", sharpness=100.0, file_size=500), facts("b", sharpness=100.0 / SHARPER_BY * 1.01,
                                                                    file_size=900),
               facts("c", sharpness=30.0, file_size=2000), facts("d", rating=-1, size=(999, 999)),
               facts("e", rating=1)]
    order, classes = keeper_order(members, np.zeros(5, dtype=int))
    assert [members[i].path for i in order] == ["e", "b", "a", "c", "d"]
    assert classes[:3].tolist() == [0, 0, 1]


def test_laplacian_variance_is_lower_for_a_blurred_image():
    noise = np.random.default_rng(0).uniform(0, 255, (64, 64))
    sharp = Image.fromarray(noise.astype(np.uint8))
    blurred = np.asarray(sharp.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    assert laplacian_variance(blurred) < laplacian_variance(noise) / 4
    assert laplacian_variance(np.zeros((2, 2))) == 0.0


# ------------------------------------------------------------------------------------------------ the command


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_move_to_without_apply_moves_nothing(workspace, tmp_path, capsys):
    photos, saved = workspace
    before = files_under(photos)
    code, out, _ = run(capsys, "duplicates", saved, "--move-to", tmp_path / "culled", "--threshold", THRESHOLD)
    assert code == 0 and "Dry run: nothing was moved" in out
    assert "would move " in out and "edits/mountain-blurred.jpg" in out
    assert files_under(photos) == before and not (tmp_path / "culled").exists()


def test_apply_moves_copies_and_sidecars_and_undo_restores_them(workspace, tmp_path, capsys, efficientnet):
    photos, saved = workspace
    before = files_under(photos)
    culled = tmp_path / "culled"
    code, out, _ = run(capsys, "duplicates", saved, "--move-to", culled, "--apply", "--threshold", THRESHOLD)
    assert code == 0, out
    moved = {"dog.jpg", "dog.xmp", "taj.jpg", "pier.jpg", "edits/dog-crop.jpg", "alpaca.jpg", "edits/lily-half.jpg",
             "edits/lily-half.jpg.xmp", "edits/mountain-blurred.jpg", "edits/urban-q60.jpg", "bridge.jpg",
             "bridge.xmp"}
    manifest = next(culled.glob("simlib-undo-*.json"))
    assert files_under(culled) == moved | {manifest.name}  # at their paths relative to the collection's root
    assert files_under(photos) == before - moved
    moves = json.loads(manifest.read_text())["moves"]
    assert {Path(m["from"]).relative_to(photos).as_posix() for m in moves} == moved
    assert all(Path(m["to"]) == culled / Path(m["from"]).relative_to(photos) for m in moves)

    reopened = Collection.load(saved, efficientnet)
    left = {Path(r.path).relative_to(photos).as_posix() for r in reopened.images}
    assert left == {p for p in before - moved if not p.endswith(".xmp")}
    found = reopened.search(culled / "edits" / "mountain-blurred.jpg", k=len(reopened)).results
    assert all("mountain-blurred" not in r.path for r in found)  # the collection no longer returns it
    assert not reopened.duplicate_groups(THRESHOLD).groups

    code, out, _ = run(capsys, "duplicates", "--undo", manifest)
    assert code == 0 and f"Restored {len(moved)} file(s)" in out
    assert files_under(photos) == before and files_under(culled) == {manifest.name}
    restored = Collection.load(saved, efficientnet)
    assert len(restored) == len(reopened) + 9 and len(restored.duplicate_groups(THRESHOLD).groups) == 9


def test_move_to_refuses_a_folder_inside_the_collection_and_a_taken_target(workspace, capsys):
    photos, saved = workspace
    before = files_under(photos)
    code, _, err = run(capsys, "duplicates", saved, "--move-to", photos / "culled", "--apply", "--threshold", THRESHOLD)
    assert code == 1 and "lies inside the collection's folder" in err
    taken = photos.parent / "culled" / "edits" / "mountain-blurred.jpg"
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"someone else's file")
    code, _, err = run(capsys, "duplicates", saved, "--move-to", photos.parent / "culled", "--apply", "--threshold", THRESHOLD)
    assert code == 1 and "already exists" in err and "nothing was moved" in err
    assert files_under(photos) == before and taken.read_bytes() == b"someone else's file"


def test_a_sidecar_shared_with_a_photo_that_stays_is_left_in_place(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("photo.png", "photo.jpg", "photo.xmp", "photo.jpg.xmp"):
        (folder / name).write_bytes(b"x")
    keeper, copy = (DuplicateMember(i, facts(str(folder / n)), i == 0, "visual similarity", 1.0, "why")
                    for i, n in enumerate(("photo.png", "photo.jpg")))
    report = DuplicateReport([DuplicateGroup("near", (keeper, copy))], duplicate_threshold(None, 0.9), [])
    plan = plan_moves(report, folder, tmp_path / "culled")
    assert [(Path(m.source).name, m.kind) for m in plan.moves] == [("photo.jpg", "image"), ("photo.jpg.xmp", "sidecar")]
    assert plan.kept_sidecars == [(str(folder / "photo.xmp"), "also the sidecar of photo.png, which stays")]
    with pytest.raises(CullingError, match="lies inside the collection's folder"):
        plan_moves(report, folder, folder / "culled")


def test_json_and_csv_list_every_member_with_its_role_and_reason(library, capsys):
    code, out, _ = run(capsys, "duplicates", library[1], "--json", "--threshold", THRESHOLD)
    payload = json.loads(out)
    assert code == 0 and len(payload["groups"]) == 9 and payload["threshold"]["source"] == "given"
    assert {m["role"] for g in payload["groups"] for m in g["members"]} == {"keeper", "copy"}
    code, out, _ = run(capsys, "duplicates", library[1], "--csv", "--threshold", "0.999")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {r["kind"] for r in rows} == {"exact"} and len(rows) == 6
