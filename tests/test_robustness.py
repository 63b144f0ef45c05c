"""Interrupted runs, bit-for-bit reproducibility, and bad input files."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.repository import dvc, make_repository, ran_stages

COMPARED = (
    "data/prepared/train.parquet", "data/prepared/test.parquet",
    "data/corrupted/train.parquet", "data/corrupted/test.parquet",
    "data/model/model.keras",
    "data/activations/dense.parquet", "data/activations/dense_1.parquet",
    "data/activations/logits.parquet",
    "data/scores/scores.parquet", "data/evaluation/metrics.json",
)
OUTPUT_FOLDERS = ("data/prepared", "data/corrupted", "data/model", "data/activations",
                  "data/scores", "data/evaluation")


def digests(path: Path) -> dict[str, str]:
    return {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in COMPARED}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = make_repository(tmp_path_factory.mktemp("robust"),
                           {"detect": {"detectors": ["iforest", "lof"]}})
    dvc(path, "repro")
    return path, digests(path)


@pytest.mark.e2e
def test_runs_from_scratch_give_identical_bytes(repo):
    path, first = repo
    for folder in OUTPUT_FOLDERS:
        shutil.rmtree(path / folder, ignore_errors=True)
    dvc(path, "repro", "--force")
    assert digests(path) == first


@pytest.mark.e2e
def test_retraining_with_unchanged_inputs_does_not_rerun_extract(repo):
    path, first = repo
    assert ran_stages(dvc(path, "repro", "--force", "--single-item", "train")) == ["train"]
    assert digests(path)["data/model/model.keras"] == first["data/model/model.keras"]
    assert ran_stages(dvc(path, "repro")) == []


def snapshot(target: Path) -> dict[str, bytes] | None:
    """Every file of an artifact (a file or a folder) and its bytes; None if absent."""
    if not target.exists():
        return None
    files = sorted(target.rglob("*")) if target.is_dir() else [target]
    return {str(file.relative_to(target.parent)): file.read_bytes() for file in files
            if file.is_file()}


@pytest.mark.e2e
@pytest.mark.parametrize("stage, output, step", [
    ("extract", "data/activations", 1.5),
    ("detect", "data/scores/scores.parquet", 0.6),
])
def test_a_killed_stage_leaves_the_previous_artifact_or_none(repo, stage, output, step):
    """SIGKILL the stage ever later into its run until one run completes: each time, the
    artifact is the previous complete one or absent; then dvc repro restores the result."""
    path, first = repo
    previous = snapshot(path / output)
    delay, finished = step, False
    while not finished:
        process = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=path,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert snapshot(path / output) in (previous, None), f"killed after {delay:.1f}s"
        delay += step
    assert delay > 2 * step, "the stage finished before the first kill"
    dvc(path, "repro")
    assert digests(path) == first
    assert not list((path / "data").rglob(".*.tmp"))


def run_stage(path: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=path,
                          capture_output=True, text=True)


def assert_one_line_naming(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def workspace(tmp_path):
    """An empty project folder with the default params."""
    shutil.copy(Path(__file__).resolve().parent.parent / "params.yaml", tmp_path)
    (tmp_path / "data/corrupted").mkdir(parents=True)
    return tmp_path


def test_a_truncated_parquet_file_is_named(workspace):
    table = pa.table({"x": np.arange(1000)})
    pq.write_table(table, workspace / "data/corrupted/train.parquet")
    truncated = (workspace / "data/corrupted/train.parquet").read_bytes()[:-40]
    (workspace / "data/corrupted/train.parquet").write_bytes(truncated)
    assert_one_line_naming(run_stage(workspace, "train"), "data/corrupted/train.parquet",
                           "Parquet")


def test_a_file_that_is_not_parquet_is_named(workspace):
    (workspace / "data/corrupted/train.parquet").write_text("sample_id,label\n1,2\n")
    assert_one_line_naming(run_stage(workspace, "train"), "data/corrupted/train.parquet")


def test_a_table_with_the_wrong_schema_is_named(workspace):
    pq.write_table(pa.table({"sample_id": [1, 2], "label": ["a", "b"]}),
                   workspace / "data/corrupted/train.parquet")
    assert_one_line_naming(run_stage(workspace, "train"), "data/corrupted/train.parquet",
                           "column")


def test_a_model_file_that_is_not_a_keras_model_is_named(repo, tmp_path):
    path, _ = repo
    project = tmp_path / "project"
    shutil.copytree(path, project, ignore=shutil.ignore_patterns(".git", ".dvc"))
    (project / "data/model/model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_naming(run_stage(project, "extract"), "data/model/model.keras",
                           "Keras model")


def test_an_npz_with_missing_arrays_is_named(workspace):
    np.savez(workspace / "digits.npz", x_train=np.zeros((3, 28, 28), np.uint8))
    (workspace / "params.yaml").write_text(
        "data:\n  source: npz\n  path: digits.npz\n")
    assert_one_line_naming(run_stage(workspace, "prepare"), "digits.npz", "y_train")
    assert not (workspace / "data/prepared").exists()


@pytest.mark.e2e
def test_artifacts_shared_through_a_remote_need_no_recomputing(repo, tmp_path):
    path, first = repo
    remote = tmp_path / "remote"
    dvc(path, "remote", "add", "--default", "shared", str(remote))
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "results"], cwd=path, check=True)
    dvc(path, "push")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(path), str(clone)], check=True)
    dvc(clone, "pull")
    assert digests(clone) == first
    assert "up to date" in dvc(clone, "status")
    assert ran_stages(dvc(clone, "repro")) == []
