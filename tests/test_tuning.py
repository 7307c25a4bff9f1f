import numpy as np
import pandas as pd
import pytest

from simlib import Collection, SearchCore
from simlib.ratings import REJECTED
from simlib.reduce import normalize_rows
from simlib.tuning import (
    cheapest_settings,
    fallback_rate,
    leave_one_out_search,
    recommend_hnsw,
    sweep_hnsw,
    sweep_ivf_pq,
    sweep_pca,
    synthetic_like,
)

from .conftest import scene, xmp_packet
from .test_evaluate import clustered


def gaussian(n, dim=24, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# ------------------------------------------------------------------ PCA size


def test_pca_sweep_measures_each_supported_size_with_and_without_whitening_and_the_raw_reference():
    features, labels = clustered(n_groups=10, per_group=4, dim=64)  # 40 items: at most 39 dimensions
    table = sweep_pca(features, labels, dims=(1, 8, 100))
    assert sorted(set(table["dims"])) == [1, 8, 39, 64]
    assert len(table) == 3 * 2 + 1 and table["whiten"].tolist().count(True) == 3
    raw = table[table["pca"] == "raw"].iloc[0]
    assert raw["dims"] == 64 and raw["mAP"] > 0.95
    by_dims = table[~table["whiten"]].set_index("dims")["mAP"]
    assert by_dims[1] < by_dims[8] - 0.3  # one dimension cannot separate ten groups
    assert (table["fitted_on"] == 40).all()


def test_pca_sweep_fitted_on_extra_features_reaches_more_dimensions():
    features, labels = clustered(n_groups=5, per_group=4, dim=64)
    extra, _ = clustered(n_groups=20, per_group=4, dim=64, seed=1)
    table = sweep_pca(features, labels, dims=(32,), whiten=(False,), fit_features=np.vstack([features, extra]))
    assert table["dims"].tolist() == [32, 64] and (table["fitted_on"] == 100).all()


# ------------------------------------------------------------------ HNSW parameters


@pytest.fixture(scope="module")
def hnsw_sweep():
    return sweep_hnsw(gaussian(3000), gaussian(100, seed=1), M=(4, 32), ef_construction=(16, 200),
                      ef_search=(1, 40, 400), k=10, repeats=1)


def test_hnsw_sweep_has_one_row_per_setting_searched_at_least_at_k(hnsw_sweep):
    assert len(hnsw_sweep) == 2 * 2 * 3
    assert sorted(set(hnsw_sweep["ef_search"])) == [10, 40, 400]  # efSearch 1 is searched at k = 10
    assert set(hnsw_sweep.columns) >= {"M", "ef_construction", "ef_search", "k", "recall", "qps", "build_s",
                                       "bytes_per_vector"}
    assert (hnsw_sweep["distances_per_query"] > 0).all()


def test_hnsw_recall_grows_with_ef_search_and_memory_with_M(hnsw_sweep):
    for _, setting in hnsw_sweep.groupby(["M", "ef_construction"]):
        recall = setting.sort_values("ef_search")["recall"].to_numpy()
        assert recall[-1] > recall[0]
    low = hnsw_sweep.query("M == 4 and ef_construction == 16 and ef_search == 10")["recall"].iloc[0]
    high = hnsw_sweep.query("M == 32 and ef_construction == 200 and ef_search == 400")["recall"].iloc[0]
    assert low < 0.7 and high > 0.98  # 24-d Gaussian data is hard for a sparse graph with a narrow beam
    for _, setting in hnsw_sweep.groupby(["M", "ef_construction"]):  # a wider beam compares more vectors
        assert setting.sort_values("ef_search")["distances_per_query"].is_monotonic_increasing
    memory = hnsw_sweep.groupby("M")["bytes_per_vector"].first()
    assert memory[32] > 2 * memory[4]  # graph links (about 2M of 4 bytes each) outweigh the 96-byte vector


def test_ivf_pq_sweep_raises_recall_and_work_with_nprobe_and_codes_the_width():
    vectors = normalize_rows(gaussian(10_000, dim=24, seed=4))
    sweep = sweep_ivf_pq(vectors, normalize_rows(gaussian(100, dim=24, seed=5)), nlist=(32,), nprobe=(1, 4, 32, 64),
                         pq_m=10, repeats=1)
    assert sweep["nprobe"].tolist() == [1, 4, 32] and (sweep["kind"] == "ivf-pq").all()  # 64 > nlist: left out
    assert (sweep["pq_m"] == 8).all()  # the largest code size up to 10 bytes that splits 24 dimensions
    assert sweep["recall"].is_monotonic_increasing and sweep["distances_per_query"].is_monotonic_increasing
    assert sweep["recall"].iloc[0] < 0.6 and sweep["recall"].iloc[-1] > 0.95
    assert (sweep["bytes_per_vector"] < 8 + 8 + 4).all()  # 8-byte codes and ids, centroids and codebooks besides


def sweep_table(rows):
    columns = ["M", "ef_construction", "ef_search", "recall", "qps", "distances_per_query", "bytes_per_vector"]
    return pd.DataFrame(rows, columns=columns)


def test_cheapest_settings_take_the_smallest_ef_search_reaching_the_floor():
    table = sweep_table(
        [
            [8, 40, 16, 0.90, 9000, 300, 180],
            [8, 40, 32, 0.96, 6000, 500, 180],
            [8, 40, 64, 0.99, 3000, 900, 180],
            [16, 40, 16, 0.97, 8000, 450, 240],
            [4, 40, 64, 0.80, 9000, 600, 150],
        ]
    )
    cheapest = cheapest_settings(table, 0.95)
    # cheapest first; M=4 never reaches the floor
    assert cheapest[["M", "ef_search"]].values.tolist() == [[16, 16], [8, 32]]


def test_recommendation_is_the_cheapest_reaching_the_floor_and_prefers_less_memory_when_about_as_cheap():
    table = sweep_table(
        [
            [16, 40, 16, 0.97, 8000, 450, 240],
            [8, 40, 32, 0.96, 9000, 480, 180],  # within 10% of the cheapest, and smaller
            [32, 40, 16, 0.99, 4000, 700, 370],
        ]
    )
    assert recommend_hnsw(table, 0.95)[["M", "ef_search"]].tolist() == [8, 32]
    assert recommend_hnsw(table, 0.95, cost_tolerance=0.0)[["M", "ef_search"]].tolist() == [16, 16]


def test_recommendation_without_any_setting_reaching_the_floor_is_the_most_accurate():
    table = sweep_table([[8, 40, 16, 0.60, 9000, 300, 180], [16, 40, 16, 0.70, 5000, 400, 240]])
    assert recommend_hnsw(table, 0.95)["M"] == 16


def test_synthetic_vectors_follow_the_main_directions_of_the_real_ones():
    rng = np.random.default_rng(3)
    real = normalize_rows(rng.standard_normal((200, 16)) * np.geomspace(4, 0.1, 16) + 2 * np.eye(16)[0])
    fake = synthetic_like(real, 5000, seed=0)
    assert fake.shape == (5000, 16) and np.allclose(np.linalg.norm(fake, axis=1), 1, atol=1e-5)
    assert np.array_equal(fake, synthetic_like(real, 5000, seed=0))
    top = lambda x: np.linalg.eigh(np.cov(x, rowvar=False))[1][:, -1]  # noqa: E731
    assert abs(top(real) @ top(fake)) > 0.95
    assert np.allclose(fake.mean(axis=0), real.mean(axis=0), atol=0.05)


# ------------------------------------------------------------------ match threshold and rating fallback


def test_fallback_rate_is_the_share_of_queries_below_each_threshold():
    rates = fallback_rate(np.array([0.2, 0.5, 0.8, 0.9]), np.array([0.1, 0.5, 0.85, 1.0]))
    assert rates.tolist() == [0.0, 0.25, 0.75, 1.0]


@pytest.fixture(scope="module")
def small_collection(resnet18, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rated")
    for i in range(10):
        scene(i).save(folder / f"{i}.jpg", quality=90)
        (folder / f"{i}.jpg.xmp").write_text(xmp_packet([0, 1, 2, 3, 4, 5, 5, 4, 3, REJECTED][i]))
    return Collection.build(folder, resnet18, progress=False)


def without(collection, original):
    """The collection as it would be without image `original`: the same PCA vectors and ratings, the rest left."""
    keep = np.flatnonzero(np.arange(len(collection)) != original)
    core = collection.core
    smaller = SearchCore.from_state(core.config, core.pca_, core.vectors_[keep], core.stars_[keep],
                                    calibration=core.calibration_)
    return Collection(collection.backbone, images=[collection.images[i] for i in keep], core=smaller)


@pytest.mark.parametrize("rule, threshold", [("visual", -np.inf), ("rating-fallback", np.inf)])
@pytest.mark.parametrize("original", [3, 9])
def test_leave_one_out_search_gives_the_results_of_the_collection_without_the_original(
    small_collection, rule, threshold, original
):
    query = scene(original)
    assert small_collection.search(query, 4, threshold=-np.inf).results[0].id == original  # it would find itself
    results = leave_one_out_search(small_collection, query, original, 4, rule, query_rating=3)
    expected = without(small_collection, original).search(query, 4, threshold=threshold, query_rating=3).results
    assert [(r.path, r.reason) for r in results] == [(r.path, r.reason) for r in expected]
    assert [r.similarity for r in results] == pytest.approx([r.similarity for r in expected], abs=1e-6)


def test_leave_one_out_search_rejects_an_unknown_rule(small_collection):
    with pytest.raises(ValueError, match="rule"):
        leave_one_out_search(small_collection, scene(3), 3, 3, "fallback")
