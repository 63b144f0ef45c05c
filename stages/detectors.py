"""Anomaly detectors, all with one interface: `fit(X, y=None)`, then `decision_function(X)`
where higher means more anomalous, `decision_scores_` (scores of the fit data) and
`threshold_` (the score above which an image is flagged, set by `contamination`).

Classic detectors are PyOD's estimators. The model-state detectors and the audit baselines
are written here in the same interface:
- mahalanobis: class-conditional means with a shared covariance (Lee et al., 2018);
- deep_knn: distance to the k-th nearest fit neighbour of L2-normalised features
  (Sun et al., 2022);
- msp: one minus the maximum softmax probability (Hendrycks & Gimpel, 2017);
- energy: the negative free energy -T * logsumexp(logits / T) (Liu et al., 2020);
- off_grid: the share of pixels off the 1/255 grid of real images;
- ink: how far an image's total intensity lies from the fit images' median.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stages.tables import LOGITS

PIXELS = "pixels"
GRID_TOLERANCE = 1e-4


class ThresholdedDetector:
    """Base of the detectors written here: the threshold is the (1 - contamination)
    quantile of the fit data's scores, as in PyOD."""

    def __init__(self, *, contamination: float = 0.1):
        self.contamination = contamination

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "ThresholdedDetector":
        self._learn(np.asarray(X, dtype=np.float64), y)
        self.decision_scores_ = self._fit_scores(np.asarray(X, dtype=np.float64))
        self.threshold_ = float(np.percentile(self.decision_scores_,
                                              100 * (1 - self.contamination)))
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self._score(np.asarray(X, dtype=np.float64))

    def _learn(self, X: np.ndarray, y: np.ndarray | None) -> None:
        """Learn what the scores need from the fit data (nothing by default)."""

    def _fit_scores(self, X: np.ndarray) -> np.ndarray:
        return self._score(X)

    def _score(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Mahalanobis(ThresholdedDetector):
    """Smallest Mahalanobis distance to a class mean, with a covariance shared by classes."""

    def _learn(self, X: np.ndarray, y: np.ndarray | None) -> None:
        if y is None:
            raise ValueError("mahalanobis needs the labels of its fit images")
        classes = np.unique(y)
        self.means_ = np.stack([X[y == label].mean(axis=0) for label in classes])
        centred = X - self.means_[np.searchsorted(classes, y)]
        covariance = centred.T @ centred / len(X)
        self.precision_ = np.linalg.pinv(covariance, hermitian=True)

    def _score(self, X: np.ndarray) -> np.ndarray:
        distances = [np.sum(((X - mean) @ self.precision_) * (X - mean), axis=1)
                     for mean in self.means_]
        return np.min(distances, axis=0)


class DeepKnn(ThresholdedDetector):
    """Distance from an L2-normalised feature vector to its k-th nearest fit neighbour."""

    def __init__(self, *, k: int = 50, contamination: float = 0.1):
        super().__init__(contamination=contamination)
        self.k = k

    @staticmethod
    def _normalise(X: np.ndarray) -> np.ndarray:
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)

    def _learn(self, X: np.ndarray, y: np.ndarray | None) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.k_ = min(self.k, len(X) - 1)
        self.index_ = NearestNeighbors(n_neighbors=self.k_ + 1).fit(self._normalise(X))

    def _fit_scores(self, X: np.ndarray) -> np.ndarray:
        # A fit image is its own nearest neighbour: skip it.
        distances, _ = self.index_.kneighbors(self._normalise(X), n_neighbors=self.k_ + 1)
        return distances[:, -1]

    def _score(self, X: np.ndarray) -> np.ndarray:
        distances, _ = self.index_.kneighbors(self._normalise(X), n_neighbors=self.k_)
        return distances[:, -1]


class MaxSoftmax(ThresholdedDetector):
    """One minus the largest softmax probability of the logits."""

    def __init__(self, *, temperature: float = 1.0, contamination: float = 0.1):
        super().__init__(contamination=contamination)
        self.temperature = temperature

    def _score(self, X: np.ndarray) -> np.ndarray:
        scaled = X / self.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        probabilities = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
        return 1 - probabilities.max(axis=1)


class Energy(ThresholdedDetector):
    """Free energy of the logits, -T * logsumexp(logits / T): high when no class is sure."""

    def __init__(self, *, temperature: float = 1.0, contamination: float = 0.1):
        super().__init__(contamination=contamination)
        self.temperature = temperature

    def _score(self, X: np.ndarray) -> np.ndarray:
        from scipy.special import logsumexp

        return -self.temperature * logsumexp(X / self.temperature, axis=1)


class OffGrid(ThresholdedDetector):
    """Share of pixels whose value is not a multiple of 1/255."""

    def _score(self, X: np.ndarray) -> np.ndarray:
        raw = X * 255
        return np.mean(np.abs(raw - np.round(raw)) > GRID_TOLERANCE, axis=1)


class Ink(ThresholdedDetector):
    """Distance of an image's total intensity from the median of the fit images."""

    def _learn(self, X: np.ndarray, y: np.ndarray | None) -> None:
        self.median_ink_ = float(np.median(X.sum(axis=1)))

    def _score(self, X: np.ndarray) -> np.ndarray:
        return np.abs(X.sum(axis=1) - self.median_ink_)


def _pyod(class_path: str, **fixed: Any) -> Callable[..., Any]:
    module_name, class_name = class_path.rsplit(".", 1)

    def make(**settings: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module_name), class_name)(**settings, **fixed)

    return make


class FullRankPca:
    """PyOD's PCA detector on the directions the fit data spans.

    PyOD divides each component's distance by its explained variance, so a direction with
    none (a dead ReLU unit, a never-inked pixel, softmax outputs that always sum to 1) would
    give infinite scores. Constant columns are dropped and, unless `n_components` is set,
    only as many components as the standardised fit data's rank are kept."""

    def __init__(self, **settings: Any):
        self.settings = settings

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "FullRankPca":
        from pyod.models.pca import PCA

        self.columns_ = np.flatnonzero(np.ptp(X, axis=0) > 0)
        varying = X[:, self.columns_]
        settings = dict(self.settings)
        if settings.get("n_components") is None:
            standardised = (varying - varying.mean(axis=0)) / varying.std(axis=0)
            settings["n_components"] = int(np.linalg.matrix_rank(standardised))
        self.detector_ = PCA(**settings).fit(varying)
        self.decision_scores_ = self.detector_.decision_scores_
        self.threshold_ = self.detector_.threshold_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.detector_.decision_function(X[:, self.columns_])


def _any(representation: str) -> bool:
    return True


def _only(name: str) -> Callable[[str], bool]:
    return lambda representation: representation == name


@dataclass(frozen=True)
class DetectorSpec:
    """How to build a detector and where it applies.

    make: builds it from its `detect.<name>` settings (plus `random_state` if `seeded`).
    applies_to: which representations it can score.
    fits_on_train: fit on the train split (with its labels) in both settings.
    superlinear: its cost grows faster than linearly, so its fit set is capped.
    """

    make: Callable[..., Any]
    applies_to: Callable[[str], bool] = _any
    seeded: bool = False
    fits_on_train: bool = False
    superlinear: bool = False
    paper: str = ""


DETECTORS: dict[str, DetectorSpec] = {
    "iforest": DetectorSpec(_pyod("pyod.models.iforest.IForest", n_jobs=1), seeded=True,
                            paper="Liu, Ting & Zhou, 2008"),
    "lof": DetectorSpec(_pyod("pyod.models.lof.LOF", n_jobs=1), superlinear=True,
                        paper="Breunig et al., 2000"),
    "knn": DetectorSpec(_pyod("pyod.models.knn.KNN", n_jobs=1), superlinear=True,
                        paper="Ramaswamy, Rastogi & Shim, 2000"),
    "ocsvm": DetectorSpec(_pyod("pyod.models.ocsvm.OCSVM"), superlinear=True,
                          paper="Schölkopf et al., 2001"),
    "pca": DetectorSpec(FullRankPca, seeded=True, paper="Shyu et al., 2003"),
    "ecod": DetectorSpec(_pyod("pyod.models.ecod.ECOD"), paper="Li et al., 2022"),
    "copod": DetectorSpec(_pyod("pyod.models.copod.COPOD"), paper="Li et al., 2020"),
    "hbos": DetectorSpec(_pyod("pyod.models.hbos.HBOS"),
                         paper="Goldstein & Dengel, 2012"),
    "mahalanobis": DetectorSpec(Mahalanobis, fits_on_train=True, paper="Lee et al., 2018"),
    "deep_knn": DetectorSpec(DeepKnn, fits_on_train=True, superlinear=True,
                             paper="Sun et al., 2022"),
    "msp": DetectorSpec(MaxSoftmax, applies_to=_only(LOGITS),
                        paper="Hendrycks & Gimpel, 2017"),
    "energy": DetectorSpec(Energy, applies_to=_only(LOGITS), paper="Liu et al., 2020"),
    "off_grid": DetectorSpec(OffGrid, applies_to=_only(PIXELS), paper="audit baseline"),
    "ink": DetectorSpec(Ink, applies_to=_only(PIXELS), paper="audit baseline"),
}


def build(name: str, settings: dict[str, Any], seed: int) -> Any:
    """A fresh detector `name` with its settings, seeded where it draws random numbers."""
    spec = DETECTORS[name]
    return spec.make(**settings, **({"random_state": seed} if spec.seeded else {}))
