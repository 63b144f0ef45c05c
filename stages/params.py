"""The typed, validated view of params.yaml that every stage reads.

Each section of params.yaml has a model here: its keys, their types, ranges and allowed
values live in one place. Unknown keys are errors, so a misspelt key cannot be silently
ignored. `load` reads only the sections a stage lists in dvc.yaml and turns the first
invalid value into a `StageError`: one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from stages.errors import StageError

PARAMS_FILE = Path("params.yaml")
NOISE_LEVELS = (1, 2, 3, 4)
SHOULD_BE = "Input should be "

PositiveInt = Annotated[StrictInt, Field(gt=0)]
Probability = Annotated[Union[StrictFloat, StrictInt], Field(gt=0, lt=1)]
Contamination = Annotated[Union[StrictFloat, StrictInt], Field(gt=0, le=0.5)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    source: Literal["mnist-5k", "mnist", "npz"] = "mnist-5k"
    path: StrictStr | None = None
    limit: PositiveInt | None = None
    test_size: Probability = 0.2


class NoiseLadders(Section):
    gaussian: Annotated[list[Annotated[Union[StrictFloat, StrictInt], Field(gt=0, le=1)]],
                        Field(min_length=4, max_length=4)] = [0.02, 0.05, 0.10, 0.25]
    salt_pepper: Annotated[list[Annotated[Union[StrictFloat, StrictInt], Field(gt=0, le=1)]],
                           Field(min_length=4, max_length=4)] = [0.005, 0.01, 0.03, 0.09]


class NoiseParams(Section):
    kind: Literal["gaussian", "salt_pepper", "article"] = "gaussian"
    level: Union[Literal[1, 2, 3, 4], Literal["all"]] = 2
    fraction: Probability = 0.1
    ladders: NoiseLadders = NoiseLadders()

    @field_validator("level", mode="before")
    @classmethod
    def _strict_level(cls, value: Any) -> Any:
        if not (type(value) is int and value in NOISE_LEVELS or value == "all"):
            raise ValueError("must be 1, 2, 3, 4 or 'all'")
        return value

    @property
    def levels(self) -> tuple[int, ...]:
        """The noise levels the anomalous images are spread over."""
        return NOISE_LEVELS if self.level == "all" else (self.level,)


class TrainParams(Section):
    include_anomalies: StrictBool = True
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 32
    learning_rate: Annotated[Union[StrictFloat, StrictInt], Field(gt=0, le=1)] = 0.001
    conv_filters: Annotated[StrictInt, Field(ge=0)] = 32
    dense_units: Annotated[list[PositiveInt], Field(min_length=1)] = [32]


class ExtractParams(Section):
    layers: Annotated[list[StrictStr], Field(min_length=1)] = ["dense", "dense_1"]
    batch_size: PositiveInt = 1024

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, layers: list[str]) -> list[str]:
        if len(set(layers)) != len(layers):
            raise ValueError("must name each layer once")
        return layers


class IForestParams(Section):
    n_estimators: PositiveInt = 100
    max_samples: Union[Literal["auto"], PositiveInt, Probability] = "auto"
    contamination: Contamination = 0.1


class NeighboursParams(Section):
    n_neighbors: PositiveInt = 20
    contamination: Contamination = 0.1


class KnnParams(NeighboursParams):
    n_neighbors: PositiveInt = 5
    method: Literal["largest", "mean", "median"] = "largest"


class OcsvmParams(Section):
    kernel: Literal["rbf", "linear", "poly", "sigmoid"] = "rbf"
    nu: Annotated[Union[StrictFloat, StrictInt], Field(gt=0, le=1)] = 0.5
    gamma: Union[Literal["auto", "scale"], Annotated[Union[StrictFloat, StrictInt], Field(gt=0)]] = "scale"
    contamination: Contamination = 0.1


class PcaParams(Section):
    n_components: Union[PositiveInt, Probability, None] = None
    contamination: Contamination = 0.1


class HbosParams(Section):
    n_bins: Annotated[StrictInt, Field(ge=2)] = 10
    contamination: Contamination = 0.1


class ContaminationOnly(Section):
    contamination: Contamination = 0.1


class DeepKnnParams(Section):
    k: PositiveInt = 50
    contamination: Contamination = 0.1


class TemperatureParams(Section):
    temperature: Annotated[Union[StrictFloat, StrictInt], Field(gt=0)] = 1.0
    contamination: Contamination = 0.1


DetectorName = Literal[
    "iforest", "lof", "knn", "ocsvm", "pca", "ecod", "copod", "hbos",
    "mahalanobis", "deep_knn", "msp", "energy", "off_grid", "ink",
]


class DetectParams(Section):
    setting: Literal["outlier", "novelty"] = "outlier"
    representations: Annotated[list[StrictStr], Field(min_length=1)] = ["pixels", "dense", "dense_1"]
    detectors: Annotated[list[DetectorName], Field(min_length=1)] = ["iforest"]
    max_fit_samples: PositiveInt = 10_000
    iforest: IForestParams = IForestParams()
    lof: NeighboursParams = NeighboursParams()
    knn: KnnParams = KnnParams()
    ocsvm: OcsvmParams = OcsvmParams()
    pca: PcaParams = PcaParams()
    ecod: ContaminationOnly = ContaminationOnly()
    copod: ContaminationOnly = ContaminationOnly()
    hbos: HbosParams = HbosParams()
    mahalanobis: ContaminationOnly = ContaminationOnly()
    deep_knn: DeepKnnParams = DeepKnnParams()
    msp: TemperatureParams = TemperatureParams()
    energy: TemperatureParams = TemperatureParams()
    off_grid: ContaminationOnly = ContaminationOnly()
    ink: ContaminationOnly = ContaminationOnly()

    @field_validator("representations")
    @classmethod
    def _well_formed(cls, representations: list[str]) -> list[str]:
        for representation in representations:
            parts = representation.split("+")
            if any(not part for part in parts) or len(set(parts)) != len(parts):
                raise ValueError(
                    f"{representation!r} must be a layer name or distinct names joined by '+'")
        if len(set(representations)) != len(representations):
            raise ValueError("must name each representation once")
        return representations

    @field_validator("detectors")
    @classmethod
    def _unique_detectors(cls, detectors: list[str]) -> list[str]:
        if len(set(detectors)) != len(detectors):
            raise ValueError("must name each detector once")
        return detectors

    def settings(self, detector: str) -> dict[str, Any]:
        """The keyword settings of one detector, as written under `detect.<detector>`."""
        return getattr(self, detector).model_dump()


class EvaluateParams(Section):
    bootstrap: Annotated[StrictInt, Field(ge=0, le=100_000)] = 200


class Params(Section):
    seed: Annotated[StrictInt, Field(ge=0, lt=2**32)] = 42
    data: DataParams = DataParams()
    noise: NoiseParams = NoiseParams()
    train: TrainParams = TrainParams()
    extract: ExtractParams = ExtractParams()
    detect: DetectParams = DetectParams()
    evaluate: EvaluateParams = EvaluateParams()


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Raw params `base` with `changes` written over it, section by section (as `dvc exp run
    -S` does); used by the tests and benchmarks to derive params files."""
    result = dict(base)
    for key, value in changes.items():
        result[key] = (merged(base.get(key) or {}, value) if isinstance(value, dict)
                       else value)
    return result


def _user_key(loc: tuple[Any, ...]) -> str:
    """The dotted key a user wrote, from pydantic's error location, which also names the
    branch of a Union that failed (e.g. 'literal['auto']', 'constrained-int')."""
    parts: list[str] = []
    model: Any = Params
    for part in loc:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        elif isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            parts.append(part)
            model = model.model_fields[part].annotation
    return ".".join(parts)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Params
    for part in loc:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return list(model.model_fields)


def _describe(errors: list[dict[str, Any]]) -> str:
    """One line for the first bad key; a key that takes several forms lists them all."""
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    if first["type"] == "extra_forbidden":
        section = _user_key(first["loc"][:-1])
        key = ".".join(filter(None, [section, str(first["loc"][-1])]))
        return (f"params.yaml: unknown key {key!r} in {section or 'params.yaml'}; allowed: "
                + ", ".join(_allowed_keys(first["loc"][:-1])))
    key = _user_key(first["loc"])
    messages = dict.fromkeys(e["msg"].removeprefix("Value error, ").removeprefix(SHOULD_BE)
                             for e in errors if _user_key(e["loc"]) == key)
    should = SHOULD_BE if any(e["msg"].startswith(SHOULD_BE) for e in errors) else ""
    return f"params.yaml: {key} = {first['input']!r}: {should}" + " or ".join(messages)


def parse(raw: dict[str, Any]) -> Params:
    """Validate a params mapping; raise StageError with one line on the first bad key."""
    if not isinstance(raw, dict):
        raise StageError(f"params.yaml: must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise StageError(_describe(error.errors())) from None


def load(*sections: str, path: Path = PARAMS_FILE) -> Params:
    """Read params.yaml and validate the sections a stage reads (missing keys take defaults)."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the stage from the project root") from None
    except yaml.YAMLError as error:
        raise StageError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise StageError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(Params.model_fields))
    if unknown:
        raise StageError(f"{path}: unknown section {unknown[0]!r}; allowed: "
                         + ", ".join(Params.model_fields))
    return parse({name: raw[name] for name in sections if name in raw})
