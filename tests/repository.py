"""A temporary git + DVC copy of this repository with tiny params, for end-to-end tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from stages.params import merged

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("prepare", "corrupt", "train", "extract", "detect", "evaluate")
ARTIFACTS = (
    "data/prepared/train.parquet", "data/prepared/test.parquet",
    "data/corrupted/train.parquet", "data/corrupted/test.parquet", "data/corrupted/samples.png",
    "data/model/model.keras", "data/model/train/metrics.json",
    "data/activations/dense.parquet", "data/activations/dense_1.parquet",
    "data/activations/logits.parquet", "data/scores/scores.parquet",
    "data/evaluation/metrics.json", "data/evaluation/plots/roc.png",
    "data/evaluation/plots/pr.png", "data/evaluation/plots/histograms.png",
    "data/evaluation/plots/roc/pixels/iforest.csv",
)
TINY_PARAMS = {
    "data": {"limit": 300},
    "train": {"epochs": 1},
    "extract": {"batch_size": 128},
    "evaluate": {"bootstrap": 20},
}


def set_params(path: Path, changes: dict) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    (path / "params.yaml").write_text(yaml.safe_dump(merged(params, changes), sort_keys=False))


def project_files() -> list[str]:
    """The project's source files: tracked or new, without artifacts or the lock file."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.splitlines()
            if not name.startswith(("data/", "reports/")) and name != "dvc.lock"
            and (ROOT / name).is_file()]


def git(path: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)


def make_repository(path: Path, params: dict | None = None) -> Path:
    """Copy the project into `path`, set tiny params, and commit it as a fresh git repo."""
    for name in project_files():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, path / name)
    set_params(path, merged(TINY_PARAMS, params or {}))
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "-c", "user.name=test", "-c", "user.email=test@example.invalid",
        "commit", "-qm", "tiny pipeline")
    git(path, "config", "user.name", "test")
    git(path, "config", "user.email", "test@example.invalid")
    return path


def dvc(path: Path, *args: str) -> str:
    """Run a dvc command in `path`; fail the test with its output if it fails."""
    result = subprocess.run(["dvc", *args], cwd=path, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def ran_stages(output: str) -> list[str]:
    """The stages a `dvc repro` or `dvc exp run` output says it ran, in order."""
    return re.findall(r"Running stage '([^']+)'", output)
