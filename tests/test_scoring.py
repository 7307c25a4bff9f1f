import numpy as np
import pytest

from simlib.scoring import match_score, neighbourhood

NAN = np.nan


def test_the_neighbourhood_is_the_mean_at_the_ranks_once_sorted_best_first():
    similarities = np.array([[0.9, 0.1, 0.5, 0.7, 0.3], [0.2, 0.8, NAN, 0.6, NAN]])
    # row 0 sorted: 0.9 0.7 0.5 0.3 0.1; ranks 1-3 -> (0.7 + 0.5 + 0.3) / 3
    # row 1 sorted: 0.8 0.6 0.2, then nothing: ranks 1-3 -> (0.6 + 0.2) / 2
    assert neighbourhood(similarities, (1, 3)) == pytest.approx([0.5, 0.4])
    assert neighbourhood(similarities, (5, 8)).tolist() == [0.0, 0.0]  # no image at those ranks


def test_the_match_score_subtracts_the_weighted_neighbourhood_from_the_best():
    similarities = np.array([[0.9, 0.1, 0.5, 0.7, 0.3], [NAN, NAN, NAN, NAN, NAN]])
    scores = match_score(similarities, 0.5, (1, 3))
    assert scores[0] == pytest.approx(0.9 - 0.5 * 0.5) and scores[1] == -np.inf
    assert match_score(similarities, 0.0, (1, 3))[0] == pytest.approx(0.9)
