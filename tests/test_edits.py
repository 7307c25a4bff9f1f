import numpy as np
import pytest

pytest.importorskip("albumentations", reason="the copy-detection edits need the bench extra (albumentations)")

from simlib.edits import EDITS, STRENGTHS, apply_edit, edits_of  # noqa: E402

from .conftest import scene  # noqa: E402


def test_sixteen_edits_in_three_strengths():
    assert [len(edits_of(s)) for s in STRENGTHS] == [3, 7, 6]
    assert sorted(name for s in STRENGTHS for name in edits_of(s)) == sorted(EDITS)
    with pytest.raises(ValueError, match="strength"):
        edits_of("extreme")


@pytest.mark.parametrize("name", list(EDITS))
def test_each_edit_changes_the_photo_and_reproduces_from_its_seed(name):
    photo, canvas = scene(0, (400, 300)), scene(1, (360, 480))
    first = apply_edit(photo, name, seed=3, canvas=canvas)
    again = apply_edit(photo, name, seed=3, canvas=canvas)
    other = apply_edit(photo, name, seed=4, canvas=canvas)
    assert first.mode == "RGB" and min(first.size) > 0
    assert np.array_equal(np.asarray(first), np.asarray(again))
    changed = first.size != photo.size or not np.array_equal(np.asarray(first), np.asarray(photo))
    assert changed
    if name != "flip":  # a flip has nothing to draw
        assert first.size != other.size or not np.array_equal(np.asarray(first), np.asarray(other))


def test_crops_keep_the_share_of_the_area_they_promise():
    photo = scene(0, (800, 600))
    for name, (low, high) in {"crop-70-90": (0.7, 0.9), "crop-50": (0.45, 0.55), "crop-20-30": (0.2, 0.3)}.items():
        for seed in range(5):
            width, height = apply_edit(photo, name, seed).size
            assert low - 0.01 <= width * height / (800 * 600) <= high + 0.01, name


def test_the_overlay_pastes_the_photo_onto_the_canvas():
    photo, canvas = scene(0, (400, 300)), scene(1, (640, 480))
    pasted = apply_edit(photo, "overlay", seed=0, canvas=canvas)
    assert pasted.size == canvas.size
    same = np.all(np.asarray(pasted) == np.asarray(canvas), axis=2)
    assert 0.3 < same.mean() < 0.95  # part of the canvas is still there, part is covered by the photo
    with pytest.raises(ValueError, match="canvas"):
        apply_edit(photo, "overlay", seed=0)


def test_a_flip_mirrors_and_an_unknown_edit_is_refused():
    photo = scene(0, (400, 300))
    assert np.array_equal(np.asarray(apply_edit(photo, "flip", 0)), np.asarray(photo)[:, ::-1])
    with pytest.raises(ValueError, match="unknown edit"):
        apply_edit(photo, "sepia", 0)
