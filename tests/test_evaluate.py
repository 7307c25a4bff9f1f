import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from simlib.evaluate import (
    ann_recall_at_k,
    average_precision,
    error_rates,
    evaluate_configuration,
    load_wallpaper_groups,
    mean_average_precision,
    micro_average_precision,
    n_relevant,
    precision_at_k,
    precision_recall,
    recall_at_k,
    recall_at_precision,
    relevance,
    roc_auc,
    roc_curve,
    ukbench_score,
)
from simlib.index import IndexParams
from simlib.reduce import PCA
from simlib.search_core import SearchConfig

EXACT = IndexParams("exact")

from .conftest import SHARED, needs_shared


def test_average_precision_by_hand():
    # relevant at ranks 1, 3 of 3 relevant in total: (1/1 + 2/3) / 3
    assert average_precision([True, False, True, False], 3) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision([False, True], 1) == pytest.approx(0.5)
    assert average_precision([False, False], 2) == 0.0
    assert average_precision([True], 0) == 0.0


def test_average_precision_of_a_full_ranking_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.random(50)
        relevant = rng.random(50) < 0.2
        relevant[0] = True
        ranked = relevant[np.argsort(-scores)]
        assert average_precision(ranked, relevant.sum()) == pytest.approx(average_precision_score(relevant, scores))


def test_relevance_and_counts_from_labels():
    db_labels = np.array([0, 0, 1, 1, 1, 2])
    ranked = np.array([[1, 2, 0, -1], [3, 4, 5, 2]])
    rel = relevance(ranked, np.array([0, 1]), db_labels)
    assert rel.tolist() == [[True, False, True, False], [True, True, False, True]]
    assert n_relevant(np.array([0, 1]), db_labels).tolist() == [2, 3]
    assert n_relevant(np.array([0, 1]), db_labels, query_in_db=True).tolist() == [1, 2]


def test_map_precision_recall_by_hand():
    rel = np.array([[True, False, True, False], [False, True, False, False]])
    totals = np.array([2, 2])
    # AP1 = (1 + 2/3) / 2, AP2 = (1/2) / 2
    assert mean_average_precision(rel, totals) == pytest.approx(((1 + 2 / 3) / 2 + 0.25) / 2)
    assert precision_at_k(rel, 1) == 0.5 and precision_at_k(rel, 2) == 0.5
    assert recall_at_k(rel, totals, 3) == pytest.approx((1 + 0.5) / 2)
    assert mean_average_precision(rel, np.array([0, 0])) == 0.0


def test_ukbench_score_counts_hits_in_the_top_four():
    rel = np.array([[True, True, False, True, True], [True, False, False, False, True]])
    assert ukbench_score(rel) == pytest.approx((3 + 1) / 2)


def test_ann_recall_by_hand():
    approximate = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[1, 3, 9], [4, 6, 5]])
    assert ann_recall_at_k(approximate, exact, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert ann_recall_at_k(approximate, exact, 1) == 1.0


def test_micro_average_precision_by_hand():
    # pooled predictions, best score first: right, wrong, right, wrong; 3 true pairs, one never predicted
    scores, correct = [0.9, 0.8, 0.7, 0.6], [True, False, True, False]
    assert micro_average_precision(scores, correct, 3) == pytest.approx((1 / 1 + 2 / 3) / 3)
    # the order of the inputs does not matter, only the scores do
    assert micro_average_precision(scores[::-1], correct[::-1], 3) == pytest.approx((1 + 2 / 3) / 3)
    precision, recall, sorted_scores = precision_recall(scores, correct, 3)
    assert precision.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 1 / 2])
    assert recall.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert sorted_scores.tolist() == [0.9, 0.8, 0.7, 0.6]
    # precision stays >= 0.9 only after the first prediction
    assert recall_at_precision(scores, correct, 3) == pytest.approx(1 / 3)
    assert recall_at_precision(scores, correct, 3, precision=0.6) == pytest.approx(2 / 3)
    assert recall_at_precision([0.5], [False], 1) == 0.0


def test_equal_scores_count_the_wrong_prediction_first():
    assert micro_average_precision([0.5, 0.5], [True, False], 1) == pytest.approx(0.5)
    assert micro_average_precision([0.5, 0.4], [True, False], 1) == 1.0


def test_micro_average_precision_refuses_more_right_answers_than_true_pairs():
    with pytest.raises(ValueError, match="true pairs"):
        micro_average_precision([0.9, 0.8], [True, True], 1)


def disc2021_muap(ground_truth: set, predictions: list) -> float:
    """The DISC2021 definition written out directly (the isc2021 evaluation's steps): predictions are (query,
    reference, score) triples; sort by (score, not correct), highest first; precision and recall after each;
    muAP = sum of (recall step x precision)."""
    judged = [(score, (query, ref) in ground_truth) for query, ref, score in predictions]
    judged.sort(key=lambda item: (item[0], not item[1]), reverse=True)
    ap, found, previous_recall = 0.0, 0, 0.0
    for rank, (_, right) in enumerate(judged, start=1):
        found += right
        recall = found / len(ground_truth)
        ap += (recall - previous_recall) * found / rank
        previous_recall = recall
    return ap


def test_micro_average_precision_agrees_with_the_disc2021_definition_on_a_toy_case():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n_queries, n_refs = 40, 25
        truth = {q: int(rng.integers(n_refs)) for q in range(n_queries) if rng.random() < 0.5}  # half have a copy
        top = rng.integers(n_refs, size=n_queries)
        for q in truth:
            if rng.random() < 0.7:
                top[q] = truth[q]  # most copies find their original
        scores = rng.random(n_queries).round(1 if trial % 2 else 3)  # every other trial full of ties
        predictions = [(q, int(top[q]), float(scores[q])) for q in range(n_queries)]
        correct = np.array([truth.get(q) == top[q] for q in range(n_queries)])
        expected = disc2021_muap(set(truth.items()), predictions)
        assert micro_average_precision(scores, correct, len(truth)) == pytest.approx(expected)


def test_roc_by_hand_and_against_scikit_learn():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    is_match = np.array([True, False, True, False, False])
    fpr, tpr, thresholds = roc_curve(scores, is_match)
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 0.5, 0.5, 1, 1, 1])
    assert thresholds[0] == np.inf and thresholds[1] == 0.9
    # matches beat non-matches in 5 of 6 pairs
    assert roc_auc(scores, is_match) == pytest.approx(5 / 6)
    rng = np.random.default_rng(0)
    random_scores, random_labels = rng.random(200).round(2), rng.random(200) < 0.3
    assert roc_auc(random_scores, random_labels) == pytest.approx(roc_auc_score(random_labels, random_scores))


def test_error_rates_at_a_threshold():
    rates = error_rates([0.9, 0.8, 0.7, 0.6], [True, False, True, False], 0.75)
    assert rates == {"miss_rate": 0.5, "false_match_rate": 0.5}


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        roc_curve([0.1, 0.2], [True, True])


def clustered(n_groups=30, per_group=4, dim=64, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, dim))
    features = np.repeat(centres, per_group, axis=0) + noise * rng.standard_normal((n_groups * per_group, dim))
    return features.astype(np.float32), np.repeat(np.arange(n_groups), per_group)


def test_evaluate_configuration_on_well_separated_groups():
    features, labels = clustered()
    row = evaluate_configuration(features, labels, config=SearchConfig(pca_dim=16, index=IndexParams(M=16)))
    assert len(row) == 1
    row = row.iloc[0]
    assert row["mAP"] > 0.95 and row["P@1"] > 0.95 and row["N-S"] > 3.8 and row["ANN recall@10"] > 0.95
    assert row["dims"] == 16 and row["pca"] == "PCA-16" and row["bytes_per_vector"] > 64


def test_evaluate_configuration_with_separate_queries_raw_and_exact():
    features, labels = clustered()
    queries = features[::4] + 0.01
    row = evaluate_configuration(features, labels, queries, labels[::4], config=SearchConfig(pca_dim=None, index=EXACT))
    assert row.iloc[0]["P@1"] == 1.0 and row.iloc[0]["pca"] == "raw" and row.iloc[0]["ANN recall@10"] == 1.0


def test_noise_lowers_the_scores():
    clean = evaluate_configuration(*clustered(noise=0.3), config=SearchConfig(pca_dim=16)).iloc[0]["mAP"]
    noisy = evaluate_configuration(*clustered(noise=3.0), config=SearchConfig(pca_dim=16)).iloc[0]["mAP"]
    assert noisy < clean - 0.3


def test_a_pca_fitted_elsewhere_is_applied_instead_of_one_fitted_on_the_database():
    features, labels = clustered(n_groups=5, per_group=4)  # 20 items: a fit on them keeps at most 19 dimensions
    extra, _ = clustered(n_groups=30, per_group=4, seed=1)
    exact = SearchConfig(pca_dim=32, index=EXACT)
    alone = evaluate_configuration(features, labels, config=exact).iloc[0]
    wider_pca = PCA(32, whiten=True).fit(np.vstack([features, extra]))
    wider = evaluate_configuration(features, labels, config=exact, pca=wider_pca).iloc[0]
    assert alone["dims"] == 19 and wider["dims"] == 32 and wider["pca"] == "PCA-32 whitened"
    # the same fit, made inside, scores the same
    own = evaluate_configuration(features, labels, config=SearchConfig(pca_dim=16, index=EXACT), pca=PCA(16).fit(features))
    inside = evaluate_configuration(features, labels, config=SearchConfig(pca_dim=16, index=EXACT))
    assert own.iloc[0]["mAP"] == inside.iloc[0]["mAP"]


def test_the_ranking_scored_is_the_one_the_search_core_returns():
    """Leave-one-out scores what a search of each item, with itself dropped, ranks: a hand-made database where
    the nearest other item is of another group for one query."""
    features = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.7, 0.72, 0], [0, 0, 1]], np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    row = evaluate_configuration(features, labels, config=SearchConfig(pca_dim=None, index=EXACT), k=1).iloc[0]
    # item 0 finds 1 (same group); 1 finds 0; 2 finds 3; 3 finds 1 (other group); 4 has no partner
    assert row["P@1"] == pytest.approx(3 / 4)


@needs_shared
def test_wallpaper_groups_load():
    data = load_wallpaper_groups(SHARED / "wallpapers")
    assert len(data) == 106 and all(p.exists() for p in data.paths)
    assert len(data.groups) == 63 and data.labels.max() == 62


def test_match_scores_by_hand():
    db = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    db_labels = np.array([0, 1, 1])
    queries = np.array([[0.8, 0.6], [0.0, 1.0]])
    from simlib.evaluate import match_scores

    match, nonmatch = match_scores(queries, np.array([1, 2]), db, db_labels)
    # query 0 (label 1): same label at rows 1, 2 -> max(0.6, 0.96); other label row 0 -> 0.8
    assert match[0] == pytest.approx(0.96) and nonmatch[0] == pytest.approx(0.8)
    # query 1 has a label no database item has: no match score, non-match is its best similarity overall
    assert match[1] == -np.inf and nonmatch[1] == pytest.approx(1.0)
