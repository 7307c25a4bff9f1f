import numpy as np
import pytest
from sklearn.decomposition import PCA as SklearnPCA
from sklearn.exceptions import NotFittedError

from simlib import reduce
from simlib.reduce import PCA, normalize_rows


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((300, 40)) * np.linspace(5, 0.1, 40)).astype(np.float32)


def test_matches_scikit_learn_up_to_component_sign(data):
    ours = PCA(10).fit(data)
    reference = SklearnPCA(10, svd_solver="full").fit(data)
    assert np.allclose(ours.explained_variance_, reference.explained_variance_, rtol=1e-4)
    assert np.allclose(ours.explained_variance_ratio_, reference.explained_variance_ratio_, rtol=1e-4)
    assert np.allclose(np.abs(ours.transform(data)), np.abs(reference.transform(data)), atol=1e-3)


def test_fewer_samples_than_components_keeps_what_the_data_supports(data):
    pca = PCA(128).fit(data[:7])
    assert pca.n_components_ == 6
    assert pca.transform(data).shape == (300, 6)


def test_one_sample_is_a_clear_error(data):
    with pytest.raises(ValueError, match="at least 2 samples"):
        PCA(4).fit(data[:1])


def test_whitening_gives_unit_variance(data):
    reduced = PCA(5, whiten=True).fit_transform(data)
    assert np.allclose(reduced.var(axis=0, ddof=1), 1.0, atol=1e-3)


def test_fit_is_deterministic_and_round_trips_through_plain_arrays(data):
    first, second = PCA(8, whiten=True).fit(data), PCA(8, whiten=True).fit(data[::-1].copy())
    assert np.allclose(first.components_, second.components_, atol=1e-5)
    restored = PCA.from_arrays(first.to_arrays())
    assert all(a.dtype != object for a in first.to_arrays().values())
    assert np.array_equal(restored.transform(data), first.transform(data))
    assert restored.n_samples_ == 300 and restored.whiten


def test_constructor_arguments_are_stored_untouched():
    pca = PCA(n_components=999, whiten=True)
    assert pca.n_components == 999 and pca.whiten is True and not hasattr(pca, "components_")


def test_shape_errors_are_clear(data):
    pca = PCA(4).fit(data)
    with pytest.raises(ValueError, match="fitted on 40"):
        pca.transform(data[:, :5])
    with pytest.raises(ValueError, match="2-D"):
        pca.fit(data[0])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        PCA(3).transform(data)


def test_normalize_rows_leaves_zero_rows_alone():
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_the_float32_fit_agrees_with_an_exact_float64_eigendecomposition_on_feature_like_data(monkeypatch):
    """Unit vectors with a large common mean, as CNN features are: the covariance scikit-learn accumulates in
    float32 still gives the float64 spectrum and subspace."""
    rng = np.random.default_rng(1)
    features = rng.standard_normal((20_000, 256)) * np.geomspace(1, 0.01, 256) + 3
    features = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    monkeypatch.setattr(reduce, "FLOAT64_BYTES", 0)  # as a collection too large for a float64 copy is fitted
    pca = PCA(32).fit(features)
    centred = features.astype(np.float64) - features.astype(np.float64).mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(features) - 1))
    values, vectors = values[::-1][:32], vectors[:, ::-1][:, :32].T
    assert np.allclose(pca.explained_variance_, values, rtol=1e-3)
    assert np.abs(np.sum(pca.components_ * vectors, axis=1)).min() > 0.999


@pytest.mark.parametrize("whiten", [False, True])
def test_truncating_a_fit_transforms_as_a_pca_fitted_at_that_size(data, whiten):
    truncated = PCA(32).fit(data).truncated(8, whiten)
    assert truncated.n_components_ == 8 and truncated.whiten == whiten
    assert np.allclose(truncated.transform(data), PCA(8, whiten=whiten).fit(data).transform(data), atol=1e-4)


def test_directions_a_small_collection_does_not_span_keep_no_variance():
    """Duplicates leave directions with no variance; fitted in float64 they stay at zero rather than at float32
    rounding, so whitening leaves them unscaled and a query is not measured along noise."""
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((6, 64)).astype(np.float32)
    features = np.vstack([rows, rows[:3]])  # 9 images, 6 distinct: at most 5 directions of variance
    pca = PCA(8).fit(features)
    assert pca.n_components_ == 8 and pca.explained_variance_ratio_[5:].max() < 1e-12
