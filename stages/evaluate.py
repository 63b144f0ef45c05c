"""evaluate: how well each (representation, detector) pair separates anomalies.

Reads:  data/scores/scores.parquet, data/activations/logits.parquet (classifier accuracy)
Params: evaluate.*, seed
Writes: data/evaluation/metrics.json,
        data/evaluation/plots/{roc,pr}/<representation>/<detector>.csv (for `dvc plots`),
        data/evaluation/plots/{roc,pr,histograms}.png (the same, viewable offline)

Anomalies are the positive class. `recall` and `flag_rate_normal` at the detector's own
threshold are the article's "share flagged" of anomalous and of normal images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from stages import params as params_module
from stages.errors import StageError, run
from stages.tables import (ACTIVATION_KEYS, LOGITS, SCORES_SCHEMA, activation_matrix,
                           atomic_directory, atomic_path, read_table)

SCORES = Path("data/scores/scores.parquet")
LOGITS_TABLE = Path(f"data/activations/{LOGITS}.parquet")
OUTPUT = Path("data/evaluation")
CONFIDENCE = 0.95


def auroc(is_anomaly: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance an anomaly outscores a normal image (ties half)."""
    return float(_auroc_rows(is_anomaly, scores[None, :])[0])


def _auroc_rows(is_anomaly: np.ndarray, scores: np.ndarray) -> np.ndarray:
    ranks = rankdata(scores, axis=1)
    positives = int(is_anomaly.sum())
    negatives = len(is_anomaly) - positives
    rank_sum = ranks[:, is_anomaly].sum(axis=1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def auroc_interval(is_anomaly: np.ndarray, scores: np.ndarray, resamples: int,
                   seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC, resampling anomalies and normal images
    separately so every resample holds both."""
    rng = np.random.default_rng(seed)
    anomalies, normals = np.flatnonzero(is_anomaly), np.flatnonzero(~is_anomaly)
    picks = np.hstack([rng.choice(anomalies, (resamples, len(anomalies))),
                       rng.choice(normals, (resamples, len(normals)))])
    resampled_labels = np.r_[np.ones(len(anomalies), bool), np.zeros(len(normals), bool)]
    values = _auroc_rows(resampled_labels, scores[picks])
    tail = (1 - CONFIDENCE) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def fpr_at_tpr(is_anomaly: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of normal images flagged at the strictest threshold that catches `tpr` of the
    anomalies."""
    false_positive, true_positive, _ = roc_curve(is_anomaly, scores, drop_intermediate=False)
    return float(false_positive[np.searchsorted(true_positive, tpr, side="left")])


def precision_at_n(is_anomaly: np.ndarray, scores: np.ndarray) -> float:
    """Share of anomalies among the n highest scores, n = number of anomalies."""
    count = int(is_anomaly.sum())
    top = np.argsort(-scores, kind="stable")[:count]
    return float(is_anomaly[top].mean())


def threshold_metrics(is_anomaly: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and share of normal images flagged, at the detector's threshold."""
    hits = int(np.sum(flagged & is_anomaly))
    precision = hits / flagged.sum() if flagged.any() else 0.0
    recall = hits / is_anomaly.sum()
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "flag_rate_normal": float(flagged[~is_anomaly].mean())}


def pair_metrics(is_anomaly: np.ndarray, scores: np.ndarray, flagged: np.ndarray,
                 levels: np.ndarray, resamples: int, seed: int) -> dict:
    """Every metric of one (representation, detector) pair, with a per-level breakdown when
    the anomalies span several noise levels."""
    if is_anomaly.all() or not is_anomaly.any():
        raise StageError(f"{SCORES}: the test split needs both normal and anomalous images; "
                         "check noise.fraction and data.limit")
    metrics = {
        "auroc": auroc(is_anomaly, scores),
        "aupr": float(average_precision_score(is_anomaly, scores)),
        "aupr_normal": float(average_precision_score(~is_anomaly, -scores)),
        "fpr95": fpr_at_tpr(is_anomaly, scores),
        "precision_at_n": precision_at_n(is_anomaly, scores),
        **threshold_metrics(is_anomaly, flagged),
    }
    if resamples:
        metrics["auroc_low"], metrics["auroc_high"] = auroc_interval(
            is_anomaly, scores, resamples, seed)
    present = sorted(set(levels[is_anomaly].tolist()))
    if len(present) > 1:
        for level in present:
            rows = (levels == level) | ~is_anomaly
            metrics[f"level_{level}"] = {
                "auroc": auroc(is_anomaly[rows], scores[rows]),
                "recall": float(flagged[levels == level].mean())}
    return metrics


def classifier_accuracy(logits: pa.Table) -> dict[str, float | None]:
    """Test accuracy of the classifier on clean and on anomalous images."""
    test = logits.filter(pc.equal(logits.column("split"), "test"))
    correct = activation_matrix(test).argmax(axis=1) == test.column("label").to_numpy()
    anomalous = test.column("is_anomaly").to_numpy(zero_copy_only=False)
    return {"accuracy_clean": float(correct[~anomalous].mean()),
            "accuracy_anomalous": float(correct[anomalous].mean()) if anomalous.any() else None}


def curves(is_anomaly: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """ROC (fpr, tpr) and precision-recall (recall, precision) points."""
    false_positive, true_positive, _ = roc_curve(is_anomaly, scores)
    precision, recall, _ = precision_recall_curve(is_anomaly, scores)
    return {"roc": {"fpr": false_positive, "tpr": true_positive},
            "pr": {"recall": recall[::-1], "precision": precision[::-1]}}


def pairs(scores: pa.Table):
    """(representation, detector, rows) for every pair, in the order detect wrote them."""
    representations = scores.column("representation").to_numpy(zero_copy_only=False)
    detectors = scores.column("detector").to_numpy(zero_copy_only=False)
    for representation, detector in dict.fromkeys(zip(representations, detectors)):
        rows = (representations == representation) & (detectors == detector)
        yield representation, detector, scores.filter(pa.array(rows))


def write_curve_files(folder: Path, all_curves: dict) -> None:
    for (representation, detector), kinds in all_curves.items():
        for kind, columns in kinds.items():
            path = folder / kind / representation / f"{detector}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            names = list(columns)
            rows = np.column_stack([columns[name] for name in names])
            np.savetxt(path, rows, delimiter=",", header=",".join(names), comments="",
                       fmt="%.6g")


def plot_curves(all_curves: dict, kind: str, target: Path) -> None:
    """One panel per representation, one line per detector."""
    import matplotlib.pyplot as plt

    representations = list(dict.fromkeys(rep for rep, _ in all_curves))
    x_name, y_name = ("fpr", "tpr") if kind == "roc" else ("recall", "precision")
    figure, axes = plt.subplots(1, len(representations), squeeze=False,
                                figsize=(3.6 * len(representations), 3.6))
    for axis, representation in zip(axes[0], representations):
        for (rep, detector), kinds in all_curves.items():
            if rep == representation:
                axis.plot(kinds[kind][x_name], kinds[kind][y_name], label=detector, lw=1.2)
        if kind == "roc":
            axis.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        axis.set(title=representation, xlabel=x_name, ylabel=y_name, xlim=(0, 1), ylim=(0, 1.02))
        axis.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    figure.tight_layout()
    figure.savefig(target, format="png", dpi=90, metadata={"Software": None})
    plt.close(figure)


def plot_histograms(samples: dict, target: Path) -> None:
    """Score histograms, normal against anomalous, one panel per (representation, detector)."""
    import matplotlib.pyplot as plt

    columns = min(4, len(samples))
    rows = math.ceil(len(samples) / columns)
    figure, axes = plt.subplots(rows, columns, squeeze=False,
                                figsize=(3.2 * columns, 2.6 * rows))
    for axis, ((representation, detector), (is_anomaly, scores)) in zip(axes.flat,
                                                                      samples.items()):
        bins = np.histogram_bin_edges(scores, bins=40)
        axis.hist(scores[~is_anomaly], bins=bins, alpha=0.6, density=True, label="normal")
        axis.hist(scores[is_anomaly], bins=bins, alpha=0.6, density=True, label="anomalous")
        axis.set_title(f"{detector} on {representation}", fontsize=8)
        axis.tick_params(labelsize=6)
    for axis in axes.flat[len(samples):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(target, format="png", dpi=80, metadata={"Software": None})
    plt.close(figure)


def main() -> None:
    params = params_module.load("evaluate", "seed")
    scores = read_table(SCORES, SCORES_SCHEMA)
    logits = read_table(LOGITS_TABLE, ACTIVATION_KEYS)

    detection: dict[str, dict[str, dict]] = {}
    all_curves, samples = {}, {}
    for representation, detector, rows in pairs(scores):
        is_anomaly = rows.column("is_anomaly").to_numpy(zero_copy_only=False)
        values = rows.column("score").to_numpy()
        flagged = rows.column("flagged").to_numpy(zero_copy_only=False)
        detection.setdefault(representation, {})[detector] = pair_metrics(
            is_anomaly, values, flagged, rows.column("noise_level").to_numpy(),
            params.evaluate.bootstrap, params.seed)
        all_curves[representation, detector] = curves(is_anomaly, values)
        samples[representation, detector] = (is_anomaly, values)
        print(f"evaluate: {detector} on {representation}: "
              f"AUROC {detection[representation][detector]['auroc']:.3f}")
    metrics = {"classifier": classifier_accuracy(logits), "detection": detection}

    import matplotlib

    matplotlib.use("Agg")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with atomic_directory(OUTPUT / "plots") as folder:
        write_curve_files(folder, all_curves)
        plot_curves(all_curves, "roc", folder / "roc.png")
        plot_curves(all_curves, "pr", folder / "pr.png")
        plot_histograms(samples, folder / "histograms.png")
    with atomic_path(OUTPUT / "metrics.json") as temporary:
        temporary.write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
