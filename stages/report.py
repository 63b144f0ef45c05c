"""report: every run of the repository in one table, a summary over seeds, and two figures.

Not a DVC stage: it reads the runs DVC keeps rather than a pipeline artifact. Run it from the
project root after a sweep, for example:

    dvc exp run --queue -S 'noise.level=1,2,3,4' -S 'seed=0,1,2'
    dvc queue start -j 1            # wait until `dvc queue status` lists none Queued/Running
    python -m stages.report         # extra arguments go to `dvc exp show`, e.g. --all-commits

Reads:  `dvc exp show --json`: params.yaml and data/evaluation/metrics.json of the workspace,
        the baseline commit and its experiments (runs without metrics are skipped, and a run
        whose params and metrics repeat an earlier one is kept once)
Writes: reports/runs.csv            one row per run: run, rev, every param and metric
        reports/summary.md          AUROC and classifier accuracy, mean ± std over seeds per
                                    params group; Isolation Forest's share flagged per anomaly
                                    type beside the article's
        reports/auroc_by_level.png  AUROC against noise.level per representation
        reports/hit_rates.png       the share-flagged table as bars, beside the article's
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.errors import StageError, run
from stages.tables import atomic_path

PARAMS_FILE = "params.yaml"
METRICS_FILE = "data/evaluation/metrics.json"
OUTPUT = Path("reports")
SEED = "seed"
LEVEL = "noise.level"
NOISE_LEVELS = (1, 2, 3, 4)
ACCURACIES = ("accuracy_clean", "accuracy_anomalous")
ARTICLE_DETECTOR = "iforest"
HIT_RATE_CATEGORIES = ("normal", *NOISE_LEVELS)
PANELS_PER_ROW = 3

# Share of images Isolation Forest flags as anomalous, as reported by Nóbrega (2024), "An
# Exploration of Model-State Data in Anomaly Detection": normal images (false positives) and
# anomaly types 1-4 (noise.kind: article, levels 1-4).
ARTICLE_HIT_RATES = {
    "dense": {"normal": 1.00, 1: 1.00, 2: 1.00, 3: 1.00, 4: 1.00},
    "dense_1": {"normal": 0.01, 1: 0.19, 2: 1.00, 3: 1.00, 4: 1.00},
    "pixels": {"normal": 0.50, 1: 0.54, 2: 0.00, 3: 0.00, 4: 0.00},
}

GroupKey = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Run:
    """One run of the pipeline: its name, commit, and flattened params and metrics."""

    name: str
    rev: str
    params: dict[str, Any]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (0 for a single value) and count of one quantity."""

    mean: float
    std: float
    count: int


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {"noise": {"level": 2}} -> {"noise.level": 2}.

    Lists become JSON text, so every value can key a group and fill one CSV cell."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


def named_revisions(entries: list[dict]) -> list[tuple[str, str, dict]]:
    """(run name, short rev, data) of every revision in `dvc exp show --json` output.

    Commits and experiments come before the workspace, so when the workspace only repeats one
    of them the named run is the one kept."""
    named, workspace = [], []
    for baseline in entries:
        if baseline["rev"] == "workspace":
            workspace.append(("workspace", "workspace", baseline.get("data") or {}))
            continue
        named.append((baseline.get("name") or baseline["rev"][:7], baseline["rev"][:7],
                      baseline.get("data") or {}))
        for experiment in baseline.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                name = revision.get("name") or experiment.get("name") or revision["rev"][:7]
                named.append((name, revision["rev"][:7], revision.get("data") or {}))
    return named + workspace


def to_run(name: str, rev: str, data: dict) -> Run | None:
    """The run a revision's data describes, or None when it has no metrics (queued, running,
    failed, or never reproduced)."""
    metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data")
    if not metrics:
        return None
    params = (data.get("params") or {}).get(PARAMS_FILE, {}).get("data") or {}
    return Run(name, rev, flatten(params), flatten(metrics))


def unique(runs: Iterable[Run]) -> list[Run]:
    """The runs with the first of each set of identical params and metrics."""
    seen, kept = set(), []
    for candidate in runs:
        content = json.dumps([candidate.params, candidate.metrics], sort_keys=True, default=str)
        if content not in seen:
            seen.add(content)
            kept.append(candidate)
    return kept


def order(value: Any) -> tuple:
    """A sort key that orders None, then numbers, then text, so mixed columns sort."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def sort_runs(runs: list[Run]) -> list[Run]:
    """Runs ordered by their params (in key order), then by name."""
    keys = sorted({key for each in runs for key in each.params})
    return sorted(runs, key=lambda each: ([order(each.params.get(key)) for key in keys],
                                          each.name))


def group_runs(runs: list[Run], ignored: tuple[str, ...]) -> dict[GroupKey, list[Run]]:
    """Runs that share every param but the `ignored` ones, keyed by those params, sorted."""
    keys = sorted({key for each in runs for key in each.params} - set(ignored))
    groups: dict[GroupKey, list[Run]] = {}
    for each in runs:
        groups.setdefault(tuple((key, each.params.get(key)) for key in keys), []).append(each)
    return dict(sorted(groups.items(), key=lambda item: [order(value) for _, value in item[0]]))


def varying_keys(groups: Iterable[GroupKey]) -> list[str]:
    """The params whose value differs between groups: the ones that tell groups apart."""
    values: dict[str, set] = {}
    for key in groups:
        for name, value in key:
            values.setdefault(name, set()).add(value)
    return [name for name, seen in values.items() if len(seen) > 1]


def group_label(key: GroupKey, shown: list[str]) -> str:
    """The params that tell a group apart, lists (detectors, representations) left out: they
    are long, and the tables and legends name what they hold."""
    params = dict(key)
    return ", ".join(f"{name}={params[name]}" for name in shown
                     if not str(params[name]).startswith("["))


def summarize(values: Iterable[Any]) -> Stats | None:
    """Mean, sample std and count of the values present (None and NaN are missing)."""
    present = [float(value) for value in values
               if value is not None and not (isinstance(value, float) and math.isnan(value))]
    if not present:
        return None
    spread = statistics.stdev(present) if len(present) > 1 else 0.0
    return Stats(statistics.fmean(present), spread, len(present))


def detection_pairs(runs: list[Run]) -> list[tuple[str, str]]:
    """Every (representation, detector) with an AUROC in some run, in first-seen order."""
    pairs: dict[tuple[str, str], None] = {}
    for each in runs:
        for key in each.metrics:
            parts = key.split(".")
            if len(parts) == 4 and parts[0] == "detection" and parts[3] == "auroc":
                pairs[parts[1], parts[2]] = None
    return list(pairs)


def auroc_stats(runs: list[Run], representation: str, detector: str) -> Stats | None:
    return summarize(each.metrics.get(f"detection.{representation}.{detector}.auroc")
                     for each in runs)


def accuracy_stats(runs: list[Run], accuracy: str) -> Stats | None:
    return summarize(each.metrics.get(f"classifier.{accuracy}") for each in runs)


def auroc_by_level(runs: list[Run], pairs: list[tuple[str, str]]
                   ) -> dict[tuple[str, str], dict[Any, Stats | None]]:
    """AUROC over seeds at every noise.level the runs hold, for each pair."""
    levels = sorted({each.params.get(LEVEL) for each in runs}, key=order)
    return {pair: {level: auroc_stats([each for each in runs if each.params.get(LEVEL) == level],
                                      *pair)
                   for level in levels}
            for pair in pairs}


def best_detector(curves: dict[tuple[str, str], dict[Any, Stats | None]],
                  representation: str) -> str:
    """The detector with the highest mean AUROC over levels on one representation."""
    def mean_over_levels(detector: str) -> float:
        means = [stats.mean for stats in curves[representation, detector].values() if stats]
        return statistics.fmean(means) if means else -math.inf

    detectors = [detector for rep, detector in curves if rep == representation]
    return max(detectors, key=mean_over_levels)


def level_recall(each: Run, representation: str, detector: str, level: int) -> Any:
    """Share of the anomalies of one noise level a run flagged; None if it has none of them."""
    prefix = f"detection.{representation}.{detector}"
    if each.params.get(LEVEL) == "all":
        return each.metrics.get(f"{prefix}.level_{level}.recall")
    if each.params.get(LEVEL) == level:
        return each.metrics.get(f"{prefix}.recall")
    return None


def hit_rates(runs: list[Run], representation: str,
              detector: str = ARTICLE_DETECTOR) -> dict[Any, Stats | None]:
    """The article's table row: share of normal images and of each anomaly type flagged."""
    rates = {"normal": summarize(each.metrics.get(
        f"detection.{representation}.{detector}.flag_rate_normal") for each in runs)}
    for level in NOISE_LEVELS:
        rates[level] = summarize(level_recall(each, representation, detector, level)
                                 for each in runs)
    return rates


def format_stats(stats: Stats | None, percent: bool = False) -> str:
    """'mean ± std' (just the mean for one value; '–' for none), as a share or a percentage."""
    if stats is None:
        return "–"
    scale, digits, unit = (100, 1, "%") if percent else (1, 3, "")
    text = f"{stats.mean * scale:.{digits}f}{unit}"
    return text if stats.count == 1 else f"{text} ± {stats.std * scale:.{digits}f}{unit}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary_table(runs: list[Run]) -> str:
    """AUROC of every pair and classifier accuracy, mean ± std over seeds, per params group."""
    groups = group_runs(runs, ignored=(SEED,))
    shown = varying_keys(groups)
    pairs = detection_pairs(runs)
    header = [*shown, "seeds", *(f"AUROC {rep} {detector}" for rep, detector in pairs),
              *(accuracy.replace("_", " ") for accuracy in ACCURACIES)]
    rows = []
    for key, members in groups.items():
        params = dict(key)
        rows.append([*(str(params[name]) for name in shown), str(len(members)),
                     *(format_stats(auroc_stats(members, *pair)) for pair in pairs),
                     *(format_stats(accuracy_stats(members, name)) for name in ACCURACIES)])
    return markdown_table(header, rows)


def detector_tables(runs: list[Run]) -> str:
    """Per params group, the AUROC table a reader scans: a row per detector, a column per
    representation (mean ± std over seeds), and the classifier's accuracy beneath."""
    groups = group_runs(runs, ignored=(SEED,))
    shown = varying_keys(groups)
    parts = []
    for key, members in groups.items():
        pairs = detection_pairs(members)
        representations = list(dict.fromkeys(rep for rep, _ in pairs))
        detectors = list(dict.fromkeys(detector for _, detector in pairs))
        rows = [[detector, *(format_stats(auroc_stats(members, rep, detector))
                             for rep in representations)] for detector in detectors]
        accuracy = ", ".join(
            f"{name.replace('_', ' ')} {format_stats(accuracy_stats(members, name))}"
            for name in ACCURACIES)
        parts.append(f"### {group_label(key, shown) or 'all runs'} ({len(members)} seeds)\n\n"
                     + markdown_table(["detector", *representations], rows)
                     + f"\nClassifier: {accuracy}.\n")
    return "\n".join(parts)


def hit_rate_table(runs: list[Run]) -> str:
    """The article's table with this project's rows beside it."""
    header = ["representation", "source", "normal images",
              *(f"type {level}" for level in NOISE_LEVELS)]
    rows = []
    for representation, article in ARTICLE_HIT_RATES.items():
        rows.append([representation, "Nóbrega (2024)",
                     *(f"{article[category] * 100:.0f}%" for category in HIT_RATE_CATEGORIES)])
        ours = hit_rates(runs, representation)
        rows.append([representation, f"this project ({len(runs)} runs)",
                     *(format_stats(ours[category], percent=True)
                       for category in HIT_RATE_CATEGORIES)])
    return markdown_table(header, rows)


def render_summary(runs: list[Run]) -> str:
    """The whole of reports/summary.md."""
    parts = [
        "# Experiment report\n",
        f"Written by `python -m stages.report` from {len(runs)} runs of `dvc exp show`: "
        + ", ".join(f"`{each.name}`" for each in runs)
        + ". Every param and metric of every run is in `runs.csv`.\n",
        "## Detection AUROC and classifier accuracy\n",
        "Runs are grouped by every param except `seed`; a cell is the mean ± sample standard "
        "deviation over the group's seeds (the mean alone for one seed). The columns before "
        "`seeds` are the params that differ between groups.\n",
        summary_table(runs),
        "## AUROC per detector and representation\n",
        "The same AUROCs, one table per params group.\n",
        detector_tables(runs),
        "## Share flagged by Isolation Forest, against the article\n",
        "Share of normal images (false positives) and of each anomaly type the `iforest` "
        "detector flags at its own threshold: `flag_rate_normal`, and `recall` of the runs at "
        "that `noise.level` (`level_<k>.recall` of runs at level `all`). The article's types "
        "are `noise.kind: article`, levels 1-4; for other kinds a type is that kind's level. "
        "Runs are grouped by every param except `seed` and `noise.level`.\n",
    ]
    groups = group_runs(runs, ignored=(SEED, LEVEL))
    shown = varying_keys(groups)
    for key, members in groups.items():
        if shown:
            parts.append(f"### {group_label(key, shown)}\n")
        parts.append(hit_rate_table(members))
    return "\n".join(parts)


def runs_csv(runs: list[Run]) -> str:
    """One row per run: run, rev, then every param and metric in sorted column order."""
    columns = sorted({key for each in runs for key in (*each.params, *each.metrics)})
    text = io.StringIO()
    writer = csv.DictWriter(text, ["run", "rev", *columns], lineterminator="\n")
    writer.writeheader()
    for each in runs:
        writer.writerow({"run": each.name, "rev": each.rev, **each.params, **each.metrics})
    return text.getvalue()


def plot_auroc_by_level(runs: list[Run], target: Path) -> None:
    """One panel per group of params other than seed and noise.level; per representation,
    its best detector solid and Isolation Forest dashed, with the std over seeds as bars."""
    import matplotlib.pyplot as plt

    groups = group_runs(runs, ignored=(SEED, LEVEL))
    shown = varying_keys(groups)
    pairs = detection_pairs(runs)
    columns = min(PANELS_PER_ROW, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure, axes = plt.subplots(rows, columns, squeeze=False, sharey=True,
                                figsize=(5.0 * columns, 4.0 * rows))
    for axis in axes.flat[len(groups):]:
        axis.axis("off")
    for axis, (key, members) in zip(axes.flat, groups.items()):
        curves = auroc_by_level(members, pairs)
        levels = sorted({each.params.get(LEVEL) for each in members}, key=order)
        representations = list(dict.fromkeys(rep for rep, _ in pairs))
        for index, representation in enumerate(representations):
            best = best_detector(curves, representation)
            lines = {best: "-"}
            if (representation, ARTICLE_DETECTOR) in curves:
                lines.setdefault(ARTICLE_DETECTOR, "--")
            for detector, style in lines.items():
                points = [(position, stats) for position, stats
                          in enumerate(curves[representation, detector].values()) if stats]
                if not points:
                    continue
                axis.errorbar([position for position, _ in points],
                              [stats.mean for _, stats in points],
                              yerr=[stats.std for _, stats in points], ls=style, marker="o",
                              ms=4, capsize=3, color=f"C{index % 10}",
                              label=f"{representation}: {detector}")
        axis.axhline(0.5, color="grey", lw=0.8, ls=":")
        axis.set_xticks(range(len(levels)), [str(level) for level in levels])
        axis.set(title=textwrap.fill(group_label(key, shown) or "all runs", 48),
                 xlabel=LEVEL, ylabel="AUROC",
                 ylim=(0, 1.02))
        axis.title.set_fontsize(8)
        axis.legend(fontsize=7, loc="best")
    save_figure(figure, target)


def plot_hit_rates(runs: list[Run], target: Path) -> None:
    """The article's table as bars: one row of panels per group of params other than seed and
    noise.level, one panel per representation, the article's bars beside this project's."""
    import matplotlib.pyplot as plt

    groups = group_runs(runs, ignored=(SEED, LEVEL))
    shown = varying_keys(groups)
    figure, axes = plt.subplots(len(groups), len(ARTICLE_HIT_RATES), squeeze=False,
                                sharey=True, figsize=(4.2 * len(ARTICLE_HIT_RATES),
                                                      3.2 * len(groups)))
    positions = range(len(HIT_RATE_CATEGORIES))
    labels = ["normal", *(f"type {level}" for level in NOISE_LEVELS)]
    for row, (key, members) in zip(axes, groups.items()):
        for axis, (representation, article) in zip(row, ARTICLE_HIT_RATES.items()):
            ours = hit_rates(members, representation)
            axis.bar([p - 0.2 for p in positions],
                     [article[category] for category in HIT_RATE_CATEGORIES],
                     width=0.4, color="grey", label="Nóbrega (2024)")
            axis.bar([p + 0.2 for p in positions],
                     [ours[c].mean if ours[c] else math.nan for c in HIT_RATE_CATEGORIES],
                     yerr=[ours[c].std if ours[c] else 0 for c in HIT_RATE_CATEGORIES],
                     width=0.4, color="C0", capsize=3, label="this project")
            axis.set_xticks(list(positions), labels, fontsize=7)
            title = f"{ARTICLE_DETECTOR} on {representation}"
            axis.set_title(f"{title}\n{textwrap.fill(group_label(key, shown), 48)}" if shown
                           else title,
                           fontsize=8)
            # Headroom above 100% keeps the legend off the bars.
            axis.set(ylim=(0, 1.25), ylabel="share flagged")
    axes[0][0].legend(fontsize=7, loc="upper center", ncol=2)
    save_figure(figure, target)


def save_figure(figure, target: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(target) as temporary:
        figure.savefig(temporary, format="png", dpi=90, metadata={"Software": None})
    plt.close(figure)


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")


def exp_show(arguments: list[str]) -> list[dict]:
    """The JSON of `dvc exp show`: its typed values, split by file, beat dvc.api.exp_show's
    one namespace of stringified lists, None and booleans."""
    command = ["dvc", "exp", "show", "--json", *arguments]
    print("report: " + " ".join(command))
    result = subprocess.run([sys.executable, "-m", *command],
                            capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise StageError(f"{' '.join(command)} failed: {message}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise StageError(f"{' '.join(command)}: output is not JSON") from None


def main() -> None:
    revisions = named_revisions(exp_show(sys.argv[1:]))
    with_metrics = [found for found in (to_run(*revision) for revision in revisions) if found]
    runs = sort_runs(unique(with_metrics))
    print(f"report: {len(revisions)} revisions, {len(revisions) - len(with_metrics)} without "
          f"metrics, {len(with_metrics) - len(runs)} duplicates: {len(runs)} runs")
    if not runs:
        raise StageError(f"no run has {METRICS_FILE}; run `dvc repro` or `dvc exp run` first")

    import matplotlib

    matplotlib.use("Agg")
    write_text(OUTPUT / "runs.csv", runs_csv(runs))
    write_text(OUTPUT / "summary.md", render_summary(runs))
    plot_auroc_by_level(runs, OUTPUT / "auroc_by_level.png")
    plot_hit_rates(runs, OUTPUT / "hit_rates.png")
    print(f"report: wrote {OUTPUT}/runs.csv, summary.md, auroc_by_level.png, hit_rates.png")


if __name__ == "__main__":
    run(main)
