import numpy as np
import pytest
from PIL import Image

from simlib.threshold import EDITS, choose_threshold, edited_copy

from .conftest import scene


def test_separable_samples_put_the_threshold_midway_in_the_gap():
    calibration = choose_threshold([0.9, 0.95, 0.8], [0.3, 0.5, 0.4])
    assert calibration.threshold == pytest.approx(0.65)
    assert calibration.miss_rate == 0 and calibration.false_match_rate == 0


def test_overlapping_samples_minimise_the_sum_of_error_rates():
    match = [0.9, 0.85, 0.8, 0.45]
    nonmatch = [0.2, 0.3, 0.35, 0.5]
    calibration = choose_threshold(match, nonmatch)
    # below 0.45 or above 0.5 each make exactly one error; (0.35, 0.45] costs 1/4 false matches, no misses
    assert 0.35 < calibration.threshold <= 0.45
    assert calibration.miss_rate == 0 and calibration.false_match_rate == 0.25
    assert calibration.n_match == 4 and calibration.match_median == pytest.approx(0.825)


def test_empty_samples_are_refused():
    with pytest.raises(ValueError):
        choose_threshold([], [0.1])


def test_edits_are_deterministic_and_differ_from_the_original():
    original = scene(0, (400, 300))
    for variant in range(len(EDITS)):
        first, second = edited_copy(original, variant), edited_copy(original, variant)
        assert np.array_equal(np.asarray(first), np.asarray(second))
        assert first.size != original.size or not np.array_equal(np.asarray(first), np.asarray(original))
    assert edited_copy(original, 0).size == (200, 150)
    assert edited_copy(original, 1).size == (320, 240)


def test_edits_survive_tiny_images():
    assert edited_copy(Image.new("RGB", (1, 1)), 0).size == (1, 1)
