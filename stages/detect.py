"""detect: score every test image with each detector on each representation.

Reads:  data/corrupted/{train,test}.parquet (pixels, labels, anomaly flags),
        data/activations/<layer>.parquet for each layer a representation names
Params: detect.*, seed
Writes: data/scores/scores.parquet (long format: one row per image, representation, detector)

Settings: `outlier` fits each detector on the test pool it scores (the article); detectors
that need labels or train neighbours (mahalanobis, deep_knn) fit on the whole train split,
anomalies included. `novelty` fits every detector on the clean train images.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from stages import detectors
from stages import params as params_module
from stages.errors import StageError, run
from stages.params import DetectParams
from stages.tables import (ACTIVATION_KEYS, CORRUPTED_SCHEMA, SCORES_SCHEMA, SPLITS,
                           activation_matrix, pixel_matrix, read_table, write_table)

IMAGES = Path("data/corrupted")
ACTIVATIONS = Path("data/activations")
OUTPUT = Path("data/scores/scores.parquet")


@dataclass(frozen=True)
class Split:
    """One split's features per representation part, with its labels and anomaly flags."""

    parts: dict[str, np.ndarray]
    labels: np.ndarray
    is_anomaly: np.ndarray

    def rows(self, keep: np.ndarray) -> "Split":
        return Split({name: matrix[keep] for name, matrix in self.parts.items()},
                     self.labels[keep], self.is_anomaly[keep])


def combine(fit: list[np.ndarray], score: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate representation parts; with several parts, each is standardised with the
    mean and spread of the fit data so no part outweighs the others by its scale alone."""
    if len(fit) == 1:
        return fit[0], score[0]
    fitted, scored = [], []
    for fit_part, score_part in zip(fit, score):
        mean, spread = fit_part.mean(axis=0), fit_part.std(axis=0)
        spread[spread == 0] = 1
        fitted.append((fit_part - mean) / spread)
        scored.append((score_part - mean) / spread)
    return np.hstack(fitted), np.hstack(scored)


def fit_split(setting: str, spec: detectors.DetectorSpec, train: Split, test: Split) -> Split:
    """The images a detector is fit on, by setting (see the module docstring)."""
    if setting == "novelty":
        return train.rows(~train.is_anomaly)
    return train if spec.fits_on_train else test


def capped_rows(count: int, limit: int, seed: int) -> np.ndarray:
    """Rows of a fit set of `count` images to keep: all, or a seeded sample of `limit`,
    in their original order."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def score_pair(representation: str, name: str, detect: DetectParams, seed: int,
               train: Split, test: Split) -> tuple[np.ndarray, float]:
    """Fit detector `name` on `representation` and return the test scores and threshold."""
    spec = detectors.DETECTORS[name]
    fit = fit_split(detect.setting, spec, train, test)
    fit_is_pool = fit is test
    kept = np.arange(len(fit.labels))
    if spec.superlinear:
        kept = capped_rows(len(fit.labels), detect.max_fit_samples, seed)
        fit = fit.rows(kept)
    parts = representation.split("+")
    fit_matrix, test_matrix = combine([fit.parts[p] for p in parts],
                                      [test.parts[p] for p in parts])
    detector = detectors.build(name, detect.settings(name), seed)
    detector.fit(fit_matrix, fit.labels if spec.fits_on_train else None)
    if fit_is_pool:
        # Scoring fit images again would count each as its own neighbour: they keep the
        # scores the detector gave them while fitting.
        scores = np.empty(len(test.labels))
        if len(kept) < len(scores):
            scores[:] = detector.decision_function(test_matrix)
        scores[kept] = detector.decision_scores_
    else:
        scores = detector.decision_function(test_matrix)
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("it gave scores that are not finite numbers; check its settings")
    return scores, float(detector.threshold_)


def load_splits(parts: set[str]) -> tuple[dict[str, Split], pa.Table]:
    """Features of every representation part per split, and the corrupted test table."""
    images = {split: read_table(IMAGES / f"{split}.parquet", CORRUPTED_SCHEMA)
              for split in SPLITS}
    matrices: dict[str, dict[str, np.ndarray]] = {split: {} for split in SPLITS}
    for part in sorted(parts):
        if part == detectors.PIXELS:
            for split in SPLITS:
                matrices[split][part] = pixel_matrix(images[split])
            continue
        path = ACTIVATIONS / f"{part}.parquet"
        if not path.exists():
            available = sorted(p.stem for p in ACTIVATIONS.glob("*.parquet"))
            raise StageError(f"detect.representations: unknown representation {part!r}; "
                             "allowed: " + ", ".join([detectors.PIXELS] + available)
                             + " (add layers to extract.layers)")
        table = read_table(path, ACTIVATION_KEYS)
        split_column = table.column("split").to_numpy(zero_copy_only=False)
        for split in SPLITS:
            rows = table.filter(pa.array(split_column == split))
            if not np.array_equal(rows.column("sample_id").to_numpy(),
                                  images[split].column("sample_id").to_numpy()):
                raise StageError(f"{path}: its {split} rows do not match "
                                 f"{IMAGES / split}.parquet; re-run extract (dvc repro)")
            matrices[split][part] = activation_matrix(rows)
    return {split: Split(matrices[split], images[split].column("label").to_numpy(),
                         images[split].column("is_anomaly").to_numpy(zero_copy_only=False))
            for split in SPLITS}, images["test"]


def scores_table(test: pa.Table, representation: str, name: str, scores: np.ndarray,
                 threshold: float) -> pa.Table:
    """Long-format rows for one (representation, detector) pair."""
    count = test.num_rows
    return pa.Table.from_arrays([
        test.column("sample_id"), test.column("is_anomaly"), test.column("noise_level"),
        pa.array([representation] * count, pa.string()), pa.array([name] * count, pa.string()),
        pa.array(scores, pa.float64()), pa.array(scores > threshold),
    ], schema=SCORES_SCHEMA)


def main() -> None:
    params = params_module.load("detect", "seed")
    detect = params.detect
    parts = {part for representation in detect.representations
             for part in representation.split("+")}
    splits, test_table = load_splits(parts)

    tables = []
    for representation in detect.representations:
        for name in detect.detectors:
            if not detectors.DETECTORS[name].applies_to(representation):
                print(f"detect: skip {name} on {representation} (it does not apply)",
                      file=sys.stderr)
                continue
            started = time.perf_counter()
            try:
                scores, threshold = score_pair(representation, name, detect, params.seed,
                                               splits["train"], splits["test"])
            except ValueError as error:
                raise StageError(f"detect.{name} on {representation}: {error}") from None
            tables.append(scores_table(test_table, representation, name, scores, threshold))
            print(f"detect: {name} on {representation}: "
                  f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
    if not tables:
        raise StageError("detect.detectors: none of them applies to detect.representations")
    write_table(pa.concat_tables(tables), OUTPUT)


if __name__ == "__main__":
    run(main)
