"""PCA: fitted on the collection's features with scikit-learn, applied to every vector; learned state saved as plain
arrays (never pickled)."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA as _SklearnPCA
from sklearn.exceptions import NotFittedError

_CHUNK = 65536
FLOAT64_BYTES = 512 << 20  # features up to this size in float64 (100,000 x 640 dimensions) are fitted in float64


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


class PCA:
    """Principal component analysis in the scikit-learn style: `fit` learns, `transform` applies.

    The fit is scikit-learn's exact `covariance_eigh` solver: one pass of X.T @ X over the rows and an
    eigendecomposition of the covariance, in float64 for collections of up to `FLOAT64_BYTES` of features and in
    float32 beyond (a memory-mapped feature file is then read, never copied; see `_precision`); components are sign-fixed by
    scikit-learn, so fits reproduce. When the data supports fewer than `n_components` dimensions (at most
    n_samples - 1), `n_components_` says how many were kept. The learned state is plain arrays (`to_arrays`), so a
    collection file never holds a pickled estimator; `transform` is applied here in row chunks, as scikit-learn's
    would, except that whitening leaves directions of (numerically) no variance unscaled instead of dividing by
    zero.
    """

    def __init__(self, n_components: int = 128, whiten: bool = False):
        self.n_components = n_components
        self.whiten = whiten

    def fit(self, X: np.ndarray) -> "PCA":
        X = _check_2d(X, "X")
        n, d = X.shape
        if n < 2:
            raise ValueError(f"PCA needs at least 2 samples, got {n}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        k = min(int(self.n_components), n - 1, d)
        fitted = _SklearnPCA(k, svd_solver="covariance_eigh", copy=False).fit(_precision(X))
        # C order, as `from_arrays` restores them: the layout decides BLAS's summation order, so a loaded PCA
        # transforms to the very same floats
        self.mean_ = np.ascontiguousarray(fitted.mean_, dtype=np.float32)
        self.components_ = np.ascontiguousarray(fitted.components_, dtype=np.float32)
        self.explained_variance_ = fitted.explained_variance_.astype(np.float64)
        self.explained_variance_ratio_ = np.nan_to_num(fitted.explained_variance_ratio_.astype(np.float64))
        self.n_components_ = k
        self.n_samples_ = n
        self.n_features_in_ = d
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(n, n_features_in_) -> (n, n_components_) float32."""
        self._check_fitted()
        X = _check_2d(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, PCA was fitted on {self.n_features_in_}")
        out = np.empty((X.shape[0], self.n_components_), dtype=np.float32)
        scale = self._whitening_scale()
        for start in range(0, X.shape[0], _CHUNK):
            chunk = (np.asarray(X[start : start + _CHUNK], dtype=np.float32) - self.mean_) @ self.components_.T
            out[start : start + _CHUNK] = chunk / scale if scale is not None else chunk
        return out

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def truncated(self, n_components: int, whiten: bool | None = None) -> "PCA":
        """The first `n_components` of this fit (with or without whitening): what fitting that size on the same
        data gives, without another eigendecomposition."""
        self._check_fitted()
        n = max(1, min(int(n_components), self.n_components_))
        pca = PCA(n, self.whiten if whiten is None else bool(whiten))
        pca.mean_, pca.components_ = self.mean_, self.components_[:n]
        pca.explained_variance_ = self.explained_variance_[:n]
        pca.explained_variance_ratio_ = self.explained_variance_ratio_[:n]
        pca.n_components_, pca.n_samples_, pca.n_features_in_ = n, self.n_samples_, self.n_features_in_
        return pca

    def _whitening_scale(self) -> np.ndarray | None:
        if not self.whiten:
            return None
        # Directions with (numerically) no variance are left unscaled rather than blown up.
        floor = max(float(self.explained_variance_[0]) * 1e-6, 1e-12) if self.n_components_ else 1e-12
        return np.sqrt(np.maximum(self.explained_variance_, floor)).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Learned state as plain arrays (for np.save; nothing pickled)."""
        self._check_fitted()
        return {
            "mean": self.mean_,
            "components": self.components_,
            "explained_variance": self.explained_variance_,
            "explained_variance_ratio": self.explained_variance_ratio_,
            "settings": np.array([self.n_components, int(self.whiten), self.n_samples_], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "PCA":
        n_components, whiten, n_samples = (int(v) for v in arrays["settings"])
        pca = cls(n_components=n_components, whiten=bool(whiten))
        pca.mean_ = np.asarray(arrays["mean"], dtype=np.float32)
        pca.components_ = np.asarray(arrays["components"], dtype=np.float32)
        pca.explained_variance_ = np.asarray(arrays["explained_variance"], dtype=np.float64)
        pca.explained_variance_ratio_ = np.asarray(arrays["explained_variance_ratio"], dtype=np.float64)
        if pca.components_.ndim != 2:
            raise ValueError("inconsistent PCA arrays: components must be 2-D")
        pca.n_components_, pca.n_features_in_ = pca.components_.shape
        pca.n_samples_ = n_samples
        if pca.mean_.shape != (pca.n_features_in_,) or pca.explained_variance_.shape != (pca.n_components_,):
            raise ValueError("inconsistent PCA arrays")
        return pca

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError("PCA is not fitted yet; call fit first")


def _precision(X: np.ndarray) -> np.ndarray:
    """The features in the precision the covariance is accumulated in: float64 while a copy costs at most
    `FLOAT64_BYTES`, else float32 without a copy. scikit-learn computes X.T @ X in X's dtype; in float32 the
    directions a small collection does not span (duplicate images) come out with a variance of float32 rounding
    (about 1e-8 of the total) instead of zero, and queries would be measured along them. A large collection spans
    every direction, and there float32 agrees with float64 (tests/test_reduce.py)."""
    if X.dtype == np.float64 or X.size * 8 <= FLOAT64_BYTES:
        return np.asarray(X, dtype=np.float64)
    return X if X.dtype == np.float32 else np.asarray(X, dtype=np.float32)


def _check_2d(X: np.ndarray, name: str) -> np.ndarray:
    if not hasattr(X, "ndim"):
        X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    return X
