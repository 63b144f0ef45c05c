from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.errors import StageError
from stages.params import DetectParams, Params, load, parse

REPO_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
DETECTOR_NAMES = ["iforest", "lof", "knn", "ocsvm", "pca", "ecod", "copod", "hbos",
                  "mahalanobis", "deep_knn", "msp", "energy", "off_grid", "ink"]


def nested(key: str, value: Any) -> dict[str, Any]:
    """{'a': {'b': value}} for key 'a.b'."""
    raw: Any = value
    for part in reversed(key.split(".")):
        raw = {part: raw}
    return raw


def stage_error(raw: dict[str, Any]) -> str:
    with pytest.raises(StageError) as error:
        parse(raw)
    return str(error.value)


def test_defaults_validate():
    assert parse({}) == Params()
    assert parse(Params().model_dump()) == Params()


def test_repo_params_yaml_parses_to_the_defaults():
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    assert parse(raw).model_dump() == Params().model_dump()
    assert set(raw) == set(Params.model_fields)


def test_load_reads_only_the_listed_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"seed": 7, "noise": {"level": 4}, "train": {"epochs": 0}}))
    params = load("noise", "seed", path=path)
    assert params.seed == 7
    assert params.noise.level == 4
    with pytest.raises(StageError, match="train.epochs"):
        load("train", path=path)


@pytest.mark.parametrize("text, fragment", [
    ("seed: [1\n", "not valid YAML"),
    ("- 1\n- 2\n", "mapping"),
    ("nosie: {level: 2}\n", "unknown section 'nosie'"),
])
def test_load_refuses_unreadable_files_in_one_line(tmp_path, text, fragment):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(StageError) as error:
        load("noise", path=path)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_load_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(StageError, match="params.yaml: not found"):
        load("noise", path=tmp_path / "params.yaml")


def test_level_all_spreads_over_every_level():
    assert parse({"noise": {"level": "all"}}).noise.levels == (1, 2, 3, 4)
    assert parse({"noise": {"level": 3}}).noise.levels == (3,)


def test_every_detector_has_settings_that_the_defaults_validate():
    detect = DetectParams(detectors=DETECTOR_NAMES)
    for name in DETECTOR_NAMES:
        assert "contamination" in detect.settings(name)


@pytest.mark.parametrize("key, value", [
    ("noise.level", 5),
    ("noise.level", 0),
    ("noise.level", "2"),
    ("noise.level", True),
    ("noise.fraction", 1.5),
    ("noise.fraction", 0),
    ("noise.kind", "speckle"),
    ("data.source", "cifar"),
    ("data.limit", 0),
    ("data.test_size", 1),
    ("train.epochs", 0),
    ("train.epochs", 2.5),
    ("train.include_anomalies", "yes"),
    ("train.learning_rate", 2),
    ("detect.setting", "transductive"),
    ("detect.iforest.contamination", 0.6),
    ("extract.batch_size", -1),
    ("evaluate.bootstrap", -1),
    ("seed", -1),
    ("seed", 2**32),
])
def test_invalid_value_is_one_line_naming_key_and_value(key, value):
    message = stage_error(nested(key, value))
    assert message.startswith(f"params.yaml: {key} = {value!r}: ")
    assert "\n" not in message


@pytest.mark.parametrize("key, value", [
    ("detect.pca.n_components", -1),
    ("detect.pca.n_components", 1.5),
])
def test_union_branch_labels_stay_out_of_the_key(key, value):
    message = stage_error(nested(key, value))
    assert message.startswith(f"params.yaml: {key} = {value!r}: ")


@pytest.mark.parametrize("key, value, allowed", [
    ("detect.iforest.max_samples", 0, "greater than 0"),
    ("detect.ocsvm.gamma", -1, "greater than 0"),
])
def test_union_errors_say_every_allowed_form(key, value, allowed):
    assert allowed in stage_error(nested(key, value))


def test_sequence_items_are_named_by_position():
    message = stage_error({"detect": {"detectors": ["iforest", "isolation"]}})
    assert message.startswith("params.yaml: detect.detectors[1] = 'isolation': ")
    assert "'iforest'" in message and "'ink'" in message


def test_repeated_detectors_are_refused():
    assert "detect.detectors" in stage_error({"detect": {"detectors": ["knn", "knn"]}})


@pytest.mark.parametrize("representation", ["dense+", "+dense", "dense+dense", "a++b"])
def test_malformed_representations_are_refused(representation):
    message = stage_error({"detect": {"representations": ["pixels", representation]}})
    assert message.startswith("params.yaml: detect.representations = ")
    assert repr(representation) in message


@pytest.mark.parametrize("raw, key, section, an_allowed_key", [
    ({"noise": {"levle": 2}}, "noise.levle", "noise", "level"),
    ({"detect": {"iforest": {"n_trees": 5}}}, "detect.iforest.n_trees", "detect.iforest",
     "n_estimators"),
    ({"noise": {"ladders": {"speckle": [1, 2, 3, 4]}}}, "noise.ladders.speckle", "noise.ladders",
     "salt_pepper"),
    ({"sed": 1}, "sed", "params.yaml", "seed"),
])
def test_unknown_keys_are_errors_naming_the_key(raw, key, section, an_allowed_key):
    message = stage_error(raw)
    assert f"unknown key {key!r} in {section}" in message
    assert an_allowed_key in message.split("allowed:")[1]
    assert "\n" not in message


def test_an_unknown_key_is_reported_before_an_invalid_value():
    message = stage_error({"noise": {"level": 9, "fraktion": 0.1}})
    assert "'noise.fraktion'" in message


def test_a_section_that_is_not_a_mapping_is_named():
    assert stage_error({"noise": 3}).startswith("params.yaml: noise = 3: ")


def test_parse_refuses_a_non_mapping():
    with pytest.raises(StageError, match="mapping"):
        parse([1, 2])  # type: ignore[arg-type]


not_a_number = st.one_of(st.text(max_size=8), st.none(), st.lists(st.integers(), max_size=2),
                         st.booleans())
integers_below_1 = st.integers(max_value=0)
probabilities_outside = st.one_of(
    st.floats(max_value=0), st.floats(min_value=1), st.integers(max_value=0),
    st.integers(min_value=1), st.just(float("nan")))

INVALID = {
    "noise.level": st.one_of(
        st.integers().filter(lambda value: value not in (1, 2, 3, 4)),
        st.text(max_size=6).filter(lambda value: value != "all"),
        st.floats().filter(lambda value: value not in (1, 2, 3, 4)), st.booleans(), st.none()),
    "noise.fraction": st.one_of(probabilities_outside, not_a_number),
    "noise.kind": st.text(max_size=12).filter(
        lambda value: value not in ("gaussian", "salt_pepper", "article")),
    "data.source": st.one_of(
        st.text(max_size=12).filter(lambda value: value not in ("mnist-5k", "mnist", "npz")),
        st.integers(), st.none()),
    "data.limit": st.one_of(integers_below_1, st.floats(), st.text(max_size=4), st.booleans()),
    "data.test_size": probabilities_outside,
    "detect.detectors": st.lists(
        st.text(min_size=1, max_size=10).filter(lambda name: name not in DETECTOR_NAMES),
        min_size=1, max_size=3),
    "detect.setting": st.text(max_size=10).filter(lambda value: value not in ("outlier", "novelty")),
    "detect.iforest.contamination": st.one_of(st.floats(max_value=0), st.floats(min_value=0.5001)),
    "detect.knn.n_neighbors": st.one_of(integers_below_1, not_a_number),
    "train.epochs": st.one_of(integers_below_1, st.floats(), not_a_number),
    "train.batch_size": st.one_of(integers_below_1, st.floats()),
    "train.conv_filters": st.integers(max_value=-1),
    "train.dense_units": st.one_of(st.just([]), st.lists(integers_below_1, min_size=1, max_size=3)),
    "extract.layers": st.one_of(st.just([]), st.lists(st.integers(), min_size=1, max_size=2)),
    "evaluate.bootstrap": st.one_of(st.integers(max_value=-1), st.integers(min_value=100_001)),
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), st.floats()),
}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_invalid_value_gives_one_line_naming_its_key(data):
    key = data.draw(st.sampled_from(sorted(INVALID)))
    value = data.draw(INVALID[key])
    with pytest.raises(StageError) as error:
        parse(nested(key, value))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"params.yaml: {key}")
    assert f"{key} = " in message or f"{key}." in message or f"{key}[" in message
