import csv
import io
import itertools
import json
import math
import statistics
import subprocess
import sys
import time

import matplotlib
import matplotlib.image
import pytest

from stages import report
from stages.errors import run
from stages.report import (ARTICLE_HIT_RATES, Run, Stats, auroc_by_level, best_detector,
                           detection_pairs, flatten, group_runs, hit_rate_table, hit_rates,
                           named_revisions, render_summary, runs_csv, sort_runs, summarize,
                           summary_table, to_run, unique, varying_keys)
from tests.repository import ROOT, dvc, make_repository

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(name, seed, level=2, aurocs=None, recall=0.5, flag_rate=0.1, levels=None,
             kind="gaussian", accuracy=0.9):
    """A run with iforest (and any other detectors in `aurocs`) on pixels and dense."""
    aurocs = aurocs or {("pixels", "iforest"): 0.9, ("dense", "iforest"): 0.6}
    metrics = {"classifier.accuracy_clean": accuracy, "classifier.accuracy_anomalous": None}
    for (representation, detector), value in aurocs.items():
        prefix = f"detection.{representation}.{detector}"
        metrics |= {f"{prefix}.auroc": value, f"{prefix}.recall": recall,
                    f"{prefix}.flag_rate_normal": flag_rate}
        for breakdown_level, level_recall in (levels or {}).items():
            metrics[f"{prefix}.level_{breakdown_level}.recall"] = level_recall
    params = {"seed": seed, "noise.kind": kind, "noise.level": level, "data.path": None,
              "detect.detectors": '["iforest"]'}
    return Run(name, name[:7], params, metrics)


def parse_table(markdown: str, after: str = "") -> list[dict[str, str]]:
    """The first markdown table (after the text `after`), as one dict per row."""
    lines = (markdown.split(after, 1)[1] if after else markdown).splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    block = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in block]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def parse_stats(cell: str) -> tuple[float, float]:
    """'0.912 ± 0.013' or '91.2% ± 1.3%' -> (mean, std) as shares; std 0 for a lone mean."""
    scale = 100 if "%" in cell else 1
    parts = [float(part.strip().rstrip("%")) / scale for part in cell.split("±")]
    return parts[0], parts[1] if len(parts) > 1 else 0.0


class TestCollect:
    def test_flatten_dots_nested_keys_and_writes_lists_as_json(self):
        tree = {"seed": 1, "noise": {"level": "all", "ladders": {"gaussian": [0.1, 0.2]}},
                "data": {"path": None}}
        assert flatten(tree) == {"seed": 1, "noise.level": "all",
                                 "noise.ladders.gaussian": "[0.1, 0.2]", "data.path": None}

    def exp_show_entries(self, workspace_metrics):
        def data(seed, metrics):
            return {"params": {"params.yaml": {"data": {"seed": seed, "noise": {"level": 2}}}},
                    **({"metrics": {"data/evaluation/metrics.json": {"data": metrics}}}
                       if metrics else {})}

        def experiment(name, rev, seed, metrics):
            return {"name": name, "executor": None,
                    "revs": [{"rev": rev, "name": name, "data": data(seed, metrics)}]}

        baseline_metrics = {"classifier": {"accuracy_clean": 0.9}}
        return [
            {"rev": "workspace", "name": None, "data": data(42, workspace_metrics)},
            {"rev": "a" * 40, "name": "main", "data": data(42, baseline_metrics),
             "experiments": [
                 experiment("done-run", "b" * 40, 0, {"classifier": {"accuracy_clean": 0.8}}),
                 experiment("queued-run", "c" * 40, 1, None),
                 {"name": "failed-run", "revs": [{"rev": "d" * 40, "name": "failed-run",
                                                  "error": {"msg": "failed"}}]},
             ]},
        ]

    def collect(self, entries):
        return unique(found for found in (to_run(*each) for each in named_revisions(entries))
                      if found)

    def test_skips_runs_without_metrics_and_a_workspace_equal_to_the_baseline(self):
        runs = self.collect(self.exp_show_entries({"classifier": {"accuracy_clean": 0.9}}))
        assert [(each.name, each.rev) for each in runs] == [("main", "aaaaaaa"),
                                                           ("done-run", "bbbbbbb")]
        assert runs[1].params == {"seed": 0, "noise.level": 2}
        assert runs[1].metrics == {"classifier.accuracy_clean": 0.8}

    def test_keeps_a_workspace_that_differs(self):
        runs = self.collect(self.exp_show_entries({"classifier": {"accuracy_clean": 0.5}}))
        assert [each.name for each in runs] == ["main", "done-run", "workspace"]

    def test_sort_orders_runs_by_params_with_mixed_levels(self):
        runs = [make_run("c", 0, level="all"), make_run("b", 1, level=2),
                make_run("a", 0, level=2), make_run("d", 0, level=1)]
        assert [each.name for each in sort_runs(runs)] == ["d", "a", "b", "c"]


class TestAggregate:
    def test_summarize_gives_mean_sample_std_and_count(self):
        stats = summarize([0.2, 0.4, 0.6])
        assert stats.mean == pytest.approx(0.4) and stats.std == pytest.approx(0.2)
        assert stats.count == 3

    def test_summarize_skips_missing_values(self):
        assert summarize([None, 0.5, math.nan]) == Stats(0.5, 0.0, 1)
        assert summarize([None]) is None

    def test_groups_ignore_seed_and_keep_every_other_param(self):
        runs = [make_run("a", 0, level=1), make_run("b", 1, level=1), make_run("c", 0, level="all"),
                make_run("d", 0, level=1, kind="article")]
        groups = group_runs(runs, ignored=("seed",))
        assert [[each.name for each in members] for members in groups.values()] == [
            ["d"], ["a", "b"], ["c"]]
        assert varying_keys(groups) == ["noise.kind", "noise.level"]

    def test_best_detector_has_the_highest_mean_auroc_over_levels(self):
        runs = [make_run("a", 0, level=1,
                         aurocs={("dense", "iforest"): 0.6, ("dense", "knn"): 0.9}),
                make_run("b", 0, level=2,
                         aurocs={("dense", "iforest"): 0.7, ("dense", "knn"): 0.5})]
        curves = auroc_by_level(runs, detection_pairs(runs))
        assert curves["dense", "knn"][1] == Stats(0.9, 0.0, 1)
        assert best_detector(curves, "dense") == "knn"

    def test_hit_rates_take_recall_per_level_and_the_level_breakdown_of_all(self):
        runs = [make_run("a", 0, level=1, recall=0.2, flag_rate=0.1),
                make_run("b", 0, level="all", recall=0.9, flag_rate=0.3,
                         levels={1: 0.4, 2: 0.6, 3: 0.8, 4: 1.0})]
        rates = hit_rates(runs, "pixels")
        assert rates["normal"].mean == pytest.approx(0.2)
        assert rates[1].mean == pytest.approx(0.3) and rates[1].count == 2
        assert rates[2] == Stats(0.6, 0.0, 1)
        assert hit_rates(runs, "dense_1")[1] is None


class TestMarkdown:
    def test_summary_table_numbers_equal_the_inputs(self):
        aurocs = {(1, 0): 0.91, (1, 1): 0.93, (1, 2): 0.98, (2, 0): 0.55, (2, 1): 0.61}
        runs = [make_run(f"run-{level}-{seed}", seed, level=level,
                         aurocs={("pixels", "iforest"): value, ("dense", "lof"): 1 - value},
                         accuracy=value / 2)
                for (level, seed), value in aurocs.items()]
        rows = parse_table(summary_table(runs))
        assert [row["noise.level"] for row in rows] == ["1", "2"]
        for row in rows:
            values = [value for (level, _), value in aurocs.items()
                      if str(level) == row["noise.level"]]
            assert int(row["seeds"]) == len(values)
            for column, expected in (("AUROC pixels iforest", values),
                                     ("AUROC dense lof", [1 - value for value in values]),
                                     ("accuracy clean", [value / 2 for value in values])):
                mean, std = parse_stats(row[column])
                assert mean == pytest.approx(statistics.fmean(expected), abs=5e-4)
                assert std == pytest.approx(statistics.stdev(expected), abs=5e-4)
            assert row["accuracy anomalous"] == "–"

    def test_hit_rate_table_puts_the_article_beside_the_runs(self):
        runs = [make_run("a", 0, level=1, recall=0.25, flag_rate=0.05),
                make_run("b", 1, level=1, recall=0.35, flag_rate=0.15)]
        rows = parse_table(hit_rate_table(runs))
        article = {row["representation"]: row for row in rows if row["source"] == "Nóbrega (2024)"}
        assert {name: [parse_stats(article[name][column])[0] for column in
                       ("normal images", "type 1", "type 2", "type 3", "type 4")]
                for name in article} == {
            name: list(rates.values()) for name, rates in ARTICLE_HIT_RATES.items()}
        ours = next(row for row in rows
                    if row["representation"] == "pixels" and row["source"] != "Nóbrega (2024)")
        # Percentages are shown with one decimal: a share to within 0.0005.
        assert parse_stats(ours["type 1"]) == pytest.approx(
            (0.30, statistics.stdev([0.25, 0.35])), abs=1e-3)
        assert parse_stats(ours["normal images"]) == pytest.approx(
            (0.10, statistics.stdev([0.05, 0.15])), abs=1e-3)
        assert ours["type 2"] == "–"

    def test_summary_has_a_hit_rate_table_per_group(self):
        runs = [make_run("a", 0, kind="article"), make_run("b", 0, kind="gaussian")]
        summary = render_summary(runs)
        assert "### noise.kind=article" in summary and "### noise.kind=gaussian" in summary

    def test_runs_csv_has_one_row_per_run_and_sorted_columns(self):
        runs = [make_run("a", 0), make_run("b", 1, level="all")]
        rows = list(csv.DictReader(io.StringIO(runs_csv(runs))))
        header = list(rows[0])
        assert header[:2] == ["run", "rev"] and header[2:] == sorted(header[2:])
        assert [row["run"] for row in rows] == ["a", "b"]
        assert float(rows[0]["detection.pixels.iforest.auroc"]) == 0.9
        assert rows[1]["noise.level"] == "all" and rows[0]["data.path"] == ""


class TestMain:
    def test_plots_are_png_files(self, tmp_path):
        matplotlib.use("Agg")
        runs = [make_run(f"r{level}{seed}", seed, level=level, kind=kind)
                for level in (1, 2, "all") for seed in (0, 1) for kind in ("article", "gaussian")]
        report.plot_auroc_by_level(runs, tmp_path / "auroc.png")
        report.plot_hit_rates(runs, tmp_path / "hits.png")
        for name in ("auroc.png", "hits.png"):
            assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
        assert not list(tmp_path.glob(".*.tmp"))

    def test_no_runs_with_metrics_stops_with_one_line(self, monkeypatch, capsys, tmp_path):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(report, "exp_show", lambda arguments: [
            {"rev": "workspace", "name": None, "data": {"params": {}}}])
        with pytest.raises(SystemExit) as stopped:
            run(report.main)
        assert stopped.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("error: no run has data/evaluation/metrics.json")
        assert error.count("\n") == 1
        assert not (tmp_path / "reports").exists()

    def test_report_does_not_import_tensorflow(self):
        result = subprocess.run(
            [sys.executable, "-c", "import sys, stages.report; print('tensorflow' in sys.modules)"],
            cwd=ROOT, capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "False"


def run_queue(path, timeout=600):
    """Start the queue's worker and block until `dvc queue status` lists no queued or running
    experiment; the worker is stopped however this ends."""
    dvc(path, "queue", "start", "-j", "1")
    deadline = time.monotonic() + timeout
    try:
        while True:
            status = dvc(path, "queue", "status")
            if not any(state in status for state in ("Queued", "Running")):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"queue still busy after {timeout} s:\n{status}")
            time.sleep(3)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=path, capture_output=True)


def failure_logs(path, status):
    failed = [line.split()[1] for line in status.splitlines() if line.endswith("Failed")]
    return "\n".join(dvc(path, "queue", "logs", name) for name in failed)


@pytest.mark.e2e
def test_report_of_a_queued_sweep(tmp_path):
    path = make_repository(tmp_path, params={"extract": {"batch_size": 256}})
    dvc(path, "exp", "run", "--queue", "-S", "noise.level=1,2", "-S", "seed=0,1")
    status = run_queue(path)
    assert status.count("Success") == 4, status + failure_logs(path, status)

    result = subprocess.run([sys.executable, "-m", "stages.report"], cwd=path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    reports = path / "reports"
    with open(reports / "runs.csv", newline="") as file:
        runs = list(csv.DictReader(file))
    assert sorted((row["noise.level"], row["seed"]) for row in runs) == [
        ("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    for name in ("auroc_by_level.png", "hit_rates.png"):
        image = (reports / name).read_bytes()
        assert image.startswith(PNG_SIGNATURE) and len(image) > 1000
        assert matplotlib.image.imread(reports / name).ndim == 3

    def committed_metrics(rev):
        shown = subprocess.run(["git", "show", f"{rev}:data/evaluation/metrics.json"], cwd=path,
                               capture_output=True, text=True, check=True).stdout
        return json.loads(shown)

    metrics = {row["rev"]: committed_metrics(row["rev"]) for row in runs}
    for row in runs:
        pixels = metrics[row["rev"]]["detection"]["pixels"]["iforest"]
        assert float(row["detection.pixels.iforest.auroc"]) == pixels["auroc"]

    summary = (reports / "summary.md").read_text()
    table = parse_table(summary, "## Detection AUROC")
    assert [row["noise.level"] for row in table] == ["1", "2"]
    for row in table:
        members = [metrics[each["rev"]] for each in runs
                   if each["noise.level"] == row["noise.level"]]
        assert row["seeds"] == "2"
        for representation in ("pixels", "dense", "dense_1"):
            expected = [each["detection"][representation]["iforest"]["auroc"] for each in members]
            mean, std = parse_stats(row[f"AUROC {representation} iforest"])
            assert mean == pytest.approx(statistics.fmean(expected), abs=5e-4)
            assert std == pytest.approx(statistics.stdev(expected), abs=5e-4)
        accuracy = [each["classifier"]["accuracy_clean"] for each in members]
        assert parse_stats(row["accuracy clean"]) == pytest.approx(
            (statistics.fmean(accuracy), statistics.stdev(accuracy)), abs=5e-4)

    hits = parse_table(summary, "## Share flagged")
    ours = next(row for row in hits
                if row["representation"] == "pixels" and row["source"].startswith("this project"))
    for level in (1, 2):
        recalls = [metrics[each["rev"]]["detection"]["pixels"]["iforest"]["recall"]
                   for each in runs if each["noise.level"] == str(level)]
        assert parse_stats(ours[f"type {level}"]) == pytest.approx(
            (statistics.fmean(recalls), statistics.stdev(recalls)), abs=1e-3)


def test_detector_tables_show_each_groups_auroc_per_detector_and_representation():
    runs = [make_run("a", 0, level=1, aurocs={("pixels", "iforest"): 0.9, ("dense", "lof"): 0.6}),
            make_run("b", 1, level=1, aurocs={("pixels", "iforest"): 0.8, ("dense", "lof"): 0.4}),
            make_run("c", 0, level=2, aurocs={("pixels", "iforest"): 0.7, ("dense", "lof"): 0.5})]
    text = report.detector_tables(runs)
    level_one = text.split("### noise.level=2")[0]
    assert "### noise.level=1 (2 seeds)" in level_one
    rows = {row["detector"]: row for row in parse_table(level_one)}
    assert parse_stats(rows["iforest"]["pixels"]) == pytest.approx(
        (0.85, statistics.stdev([0.9, 0.8])), abs=5e-4)
    assert rows["iforest"]["dense"] == "–"
    assert parse_stats(rows["lof"]["dense"]) == pytest.approx(
        (0.5, statistics.stdev([0.6, 0.4])), abs=5e-4)
    assert "| iforest | 0.700 | – |" in text.split("### noise.level=2")[1]
