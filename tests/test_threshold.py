from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from simlib.index import IndexParams
from simlib.reduce import normalize_rows
from simlib.search_core import SearchConfig, SearchCore
from simlib.threshold import EDITS, calibrate, calibration_sample, choose_threshold, edited_copy, embed_edited_copies

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
    sizes = {EDITS[v]: edited_copy(original, v).size for v in range(len(EDITS))}
    assert sizes["crop-50-recompress"] == (283, 212) and sizes["crop-25"] == (200, 150)
    assert sizes["rotate-10"] == sizes["shrink-into-frame"] == sizes["colour-contrast"] == (400, 300)
    assert len(EDITS) == 10 and edited_copy(original, 10).size == edited_copy(original, 0).size  # edits cycle


def test_edits_survive_tiny_images():
    assert edited_copy(Image.new("RGB", (1, 1)), 0).size == (1, 1)


def test_edited_copies_are_labelled_with_their_source_and_unreadable_sources_skipped(resnet18, tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.jpg")
        scene(i, (500, 400)).save(paths[-1])
    features, origin = embed_edited_copies(resnet18, paths, variants=3)
    assert features.shape == (6, 512) and origin.tolist() == [0, 0, 0, 1, 1, 1]
    one_each, origin = embed_edited_copies(resnet18, [paths[0], tmp_path / "gone.jpg", paths[1]], variants=[2, 0, 1])
    assert one_each.shape == (2, 512) and origin.tolist() == [0, 2]
    assert np.allclose(one_each, features[[2, 4]], atol=1e-5)  # edit 2 of image 0, edit 1 of image 1


def test_calibration_scores_each_copy_against_its_original_and_the_nearest_other_image():
    # four images on the unit circle of a 2-d core; copies slightly rotated from their originals
    angles = np.array([0.0, 0.5, 2.0, 3.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    core = SearchCore.from_state(SearchConfig(pca_dim=None, index=IndexParams("exact")), None, vectors)
    copies = np.stack([np.cos(angles[:2] + 0.1), np.sin(angles[:2] + 0.1)], axis=1).astype(np.float32)
    calibration = calibrate(core, copies, np.array([0, 1]))
    # copy of 0 is 0.1 from its original and 0.4 from image 1; copy of 1 is 0.1 from it and 0.6 from image 0
    assert calibration.match_median == pytest.approx(np.cos(0.1))
    assert calibration.nonmatch_median == pytest.approx((np.cos(0.4) + np.cos(0.6)) / 2)
    assert np.cos(0.4) < calibration.threshold < np.cos(0.1)


def test_with_score_normalisation_calibration_scores_copies_as_a_search_would():
    """Match score = best similarity - weight x mean similarity at the ranks, with the original in the collection
    (match) and taken out with every image at least as close to it as the copy (non-match), by brute force."""
    rng = np.random.default_rng(0)
    vectors = normalize_rows(rng.standard_normal((12, 6)))
    config = SearchConfig(pca_dim=None, index=IndexParams("exact"), score_norm=0.5, norm_ranks=(1, 3))
    core = SearchCore.from_state(config, None, vectors)
    originals = np.arange(6)
    copies = normalize_rows(vectors[originals] + 0.3 * rng.standard_normal((6, 6)))
    match, nonmatch = [], []
    for copy, original in zip(copies, originals):
        similarities = np.sort(vectors @ copy)[::-1]
        copies_of_it = vectors @ vectors[original] >= copy @ vectors[original]  # the original, and image 4 for 1
        others = np.sort(vectors[~copies_of_it] @ copy)[::-1]
        match.append(similarities[0] - 0.5 * similarities[1:4].mean())
        nonmatch.append(others[0] - 0.5 * others[1:4].mean())
    expected = choose_threshold(np.array(match), np.array(nonmatch))
    calibration = calibrate(core, copies, originals)
    assert calibration.threshold == pytest.approx(expected.threshold, abs=1e-5)
    assert calibration.match_median == pytest.approx(expected.match_median, abs=1e-5)
    assert calibration.nonmatch_median == pytest.approx(expected.nonmatch_median, abs=1e-5)


def test_the_calibration_sample_is_seeded_and_bounded():
    assert np.array_equal(calibration_sample(1000), calibration_sample(1000))
    assert len(calibration_sample(1000)) == 100 and calibration_sample(7).tolist() == list(range(7))


def test_another_copy_of_the_original_is_not_counted_as_a_non_match():
    # image 1 is a copy of image 0 (closer to it than the edited copy is); image 2 is another picture
    angles = np.array([0.0, 0.05, 1.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    config = SearchConfig(pca_dim=None, index=IndexParams("exact"), score_norm=0.0)
    core = SearchCore.from_state(config, None, vectors)
    copy = np.array([[np.cos(-0.2), np.sin(-0.2)]], dtype=np.float32)  # an edited copy of image 0
    calibration = calibrate(core, copy, np.array([0]))
    assert calibration.nonmatch_median == pytest.approx(np.cos(1.2))  # image 2, not the copy at 0.05
    assert calibration.match_median == pytest.approx(np.cos(0.2))


def test_with_score_normalisation_the_near_duplicate_threshold_is_calibrated_on_similarity_alone():
    rng = np.random.default_rng(1)
    vectors = normalize_rows(rng.standard_normal((40, 8)))
    copies = normalize_rows(vectors[:20] + 0.4 * rng.standard_normal((20, 8)))
    plain = SearchConfig(pca_dim=None, index=IndexParams("exact"), score_norm=0.0)
    normed = calibrate(SearchCore.from_state(replace(plain, score_norm=0.5), None, vectors), copies, np.arange(20))
    alone = calibrate(SearchCore.from_state(plain, None, vectors), copies, np.arange(20))
    assert alone.copies is None and alone.on_similarity is alone
    assert normed.on_similarity.threshold == pytest.approx(alone.threshold)
    assert normed.threshold < alone.threshold  # the score is the similarity less a positive neighbourhood term
