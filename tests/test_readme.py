"""The README documents what the code does: every params key, every detector, the CI command."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from stages.detectors import DETECTORS
from stages.params import DetectParams, Params

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += leaf_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def table_row(first_cell: str) -> str:
    rows = [line for line in README.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, f"README has {len(rows)} table rows for {first_cell}"
    return rows[0]


def test_every_params_key_has_a_row_in_the_params_reference():
    detector_keys = {f"detect.{name}." for name in DETECTORS}
    keys = [key for key in leaf_keys(Params)
            if not any(key.startswith(prefix) for prefix in detector_keys)]
    for key in keys:
        table_row(f"`{key}`")


def test_every_detector_has_a_row_naming_its_settings():
    for name in DETECTORS:
        row = table_row(f"`{name}`")
        for setting in DetectParams().settings(name):
            assert f"`{setting}`" in row, f"README's {name} row lacks {setting}"


def test_every_documented_detector_exists():
    documented = re.findall(r"^\| `(\w+)` \| .* \| (?:any|`pixels`|`logits`) \|", README, re.M)
    assert sorted(documented) == sorted(DETECTORS)


def test_ci_runs_the_readme_test_command():
    command = re.search(r"pip install -e \"\.\[test\]\" && (python -m pytest[^\n`]*)", README)
    assert command, "README lacks the test command"
    assert command.group(1).strip() in (ROOT / ".ci/run").read_text()
