import numpy as np
import pytest
from sklearn.decomposition import PCA as SklearnPCA

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
    with pytest.raises(RuntimeError, match="not fitted"):
        PCA(3).transform(data)


def test_normalize_rows_leaves_zero_rows_alone():
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])
