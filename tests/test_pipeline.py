"""End to end: the DVC pipeline in a temporary git + DVC copy of the repository, tiny params."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from stages.detectors import DETECTORS
from tests.repository import ARTIFACTS, STAGES, dvc, make_repository, ran_stages, set_params

pytestmark = pytest.mark.e2e
PAIR_METRICS = {"auroc", "auroc_low", "auroc_high", "aupr", "aupr_normal", "fpr95",
                "precision_at_n", "precision", "recall", "f1", "flag_rate_normal"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = make_repository(tmp_path_factory.mktemp("pipeline"))
    first = dvc(path, "repro")
    commit_all(path, "first results")
    return path, first


def commit_all(path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=path, check=True)


def test_repro_runs_every_stage_and_writes_every_artifact(repo):
    path, first = repo
    assert ran_stages(first) == list(STAGES)
    for artifact in ARTIFACTS:
        assert (path / artifact).exists(), artifact
    metrics = json.loads((path / "data/evaluation/metrics.json").read_text())
    for representation in ("pixels", "dense", "dense_1"):
        pair = metrics["detection"][representation]["iforest"]
        assert set(pair) >= {"auroc", "aupr", "fpr95", "precision", "recall", "f1",
                             "flag_rate_normal"}
        assert 0 <= pair["auroc"] <= 1
    assert 0 <= metrics["classifier"]["accuracy_clean"] <= 1
    scores = pq.read_table(path / "data/scores/scores.parquet")
    test_rows = pq.read_table(path / "data/corrupted/test.parquet").num_rows
    assert scores.num_rows == 3 * test_rows


def test_second_repro_runs_nothing(repo):
    path, _ = repo
    assert ran_stages(dvc(path, "repro")) == []


def test_detect_change_reruns_only_detect_and_evaluate(repo):
    path, _ = repo
    set_params(path, {"detect": {"iforest": {"n_estimators": 50}}})
    assert ran_stages(dvc(path, "repro")) == ["detect", "evaluate"]
    commit_all(path, "fewer trees")


def test_every_detector_on_every_representation_writes_its_metrics(repo):
    path, _ = repo
    representations = ["pixels", "dense", "dense_1", "logits", "pixels+dense"]
    params = (path / "params.yaml").read_text()
    set_params(path, {"detect": {"detectors": list(DETECTORS),
                                 "representations": representations}})
    assert ran_stages(dvc(path, "repro")) == ["detect", "evaluate"]
    (path / "params.yaml").write_text(params)
    detection = json.loads((path / "data/evaluation/metrics.json").read_text())["detection"]
    for representation in representations:
        applicable = [name for name, spec in DETECTORS.items()
                      if spec.applies_to(representation)]
        assert sorted(detection[representation]) == sorted(applicable)
        for name in applicable:
            assert set(detection[representation][name]) == PAIR_METRICS
    dvc(path, "repro")


def test_exp_run_noise_level_reruns_from_corrupt_and_metrics_diff_shows_it(repo):
    path, _ = repo
    output = dvc(path, "exp", "run", "-S", "noise.level=4")
    assert ran_stages(output) == ["corrupt", "train", "extract", "detect", "evaluate"]
    diff = json.loads(dvc(path, "metrics", "diff", "--json"))
    changed = {key: change for file in diff.values() for key, change in file.items()}
    assert any(key.startswith("detection.") and change["old"] is not None
               and change["new"] != change["old"] for key, change in changed.items()), diff


def test_bad_param_stops_with_one_line_and_leaves_outputs_alone(repo):
    path, _ = repo
    before = (path / "data/corrupted/test.parquet").read_bytes()
    params = yaml.safe_load((path / "params.yaml").read_text())
    set_params(path, {"noise": {"level": 7}})
    try:
        result = subprocess.run([sys.executable, "-m", "stages.corrupt"], cwd=path,
                                capture_output=True, text=True)
    finally:
        (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "noise.level" in result.stderr and "7" in result.stderr
    assert "Traceback" not in result.stderr
    assert (path / "data/corrupted/test.parquet").read_bytes() == before
    assert not list((path / "data/corrupted").glob(".*.tmp"))


@pytest.mark.parametrize("stage", ["prepare", "corrupt", "detect", "evaluate"])
def test_stages_without_a_network_never_import_tensorflow(repo, stage):
    path, _ = repo
    probe = ("import runpy, sys; runpy.run_module('stages.%s', run_name='__main__'); "
             "sys.exit('tensorflow' in sys.modules)" % stage)
    result = subprocess.run([sys.executable, "-c", probe], cwd=path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
