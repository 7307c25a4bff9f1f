"""PCA: fitted on the collection's features, applied to every vector; learned state saved as plain arrays."""

from __future__ import annotations

import numpy as np

_CHUNK = 65536


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


class PCA:
    """Principal component analysis in the scikit-learn style: `fit` learns, `transform` applies.

    The fit is exact (eigendecomposition of the covariance, accumulated in float64 over row chunks, so a memory-
    mapped feature file is read once and never copied). Components are sign-fixed, so fits are reproducible.
    When the data supports fewer than `n_components` dimensions (at most n_samples - 1), `n_components_` says
    how many were kept.
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
        mean = np.zeros(d)
        for start in range(0, n, _CHUNK):
            mean += X[start : start + _CHUNK].sum(axis=0, dtype=np.float64)
        mean /= n
        cov = np.zeros((d, d))
        for start in range(0, n, _CHUNK):
            centred = X[start : start + _CHUNK].astype(np.float64) - mean
            cov += centred.T @ centred
        cov /= n - 1
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        eigenvectors = eigenvectors[:, order].T
        signs = np.sign(eigenvectors[np.arange(d), np.abs(eigenvectors).argmax(axis=1)])
        eigenvectors *= np.where(signs == 0, 1.0, signs)[:, None]
        k = min(self.n_components, n - 1, d)
        total = eigenvalues.sum()
        self.mean_ = mean.astype(np.float32)
        self.components_ = eigenvectors[:k].astype(np.float32)
        self.explained_variance_ = eigenvalues[:k]
        self.explained_variance_ratio_ = eigenvalues[:k] / total if total > 0 else np.zeros(k)
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

    def _whitening_scale(self) -> np.ndarray | None:
        if not self.whiten:
            return None
        # Directions with (numerically) no variance are left unscaled rather than blown up.
        floor = max(float(self.explained_variance_[0]) * 1e-6, 1e-12) if self.n_components_ else 1e-12
        return np.sqrt(np.maximum(self.explained_variance_, floor)).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Learned state as plain arrays (for np.savez; nothing pickled)."""
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
        pca.n_components_, pca.n_features_in_ = pca.components_.shape
        pca.n_samples_ = n_samples
        if pca.mean_.shape != (pca.n_features_in_,) or pca.explained_variance_.shape != (pca.n_components_,):
            raise ValueError("inconsistent PCA arrays")
        return pca

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise RuntimeError("PCA is not fitted; call fit first")


def _check_2d(X: np.ndarray, name: str) -> np.ndarray:
    if not hasattr(X, "ndim"):
        X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    return X
