"""The pipeline YAML: what one streamwise pipeline reads, validates, learns and writes.

:func:`load_pipeline_config` validates the whole file at start. Every error names the
key path that is wrong (``models[0].steps: unknown River estimator ...``), so a bad
config fails before the first event instead of in the middle of a stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from streamwise.core.errors import ConfigError
from streamwise.models.catalog import ModelSpec
from streamwise.models.config import (
    ChampionConfig,
    DriftConfig,
    EvaluationConfig,
    ExplainConfig,
    LabelsConfig,
)
from streamwise.models.forecast import ForecastConfig
from streamwise.models.prequential import make_metric
from streamwise.models.rules import RuleError, RuleSet, RuleSpec
from streamwise.stream.pipeline import STEP_KINDS, CleanerSpec, FeatureSpec, check_stream_steps
from streamwise.stream.schema import EventSchema


class InputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1)
    # Consumer group; defaults to "streamwise-<pipeline name>".
    group_id: str | None = None
    # Delayed labels, {"<id>": ..., "<label>": ...}, joined to predictions by event id.
    # With scope: partition it must be co-partitioned with the events topic (same
    # partition count and key); with scope: global labels go through the learn topic.
    labels_topic: str | None = Field(None, min_length=1)


# The fields of a prediction record, in the order they are written. ``prediction`` stands
# for the champion's answer: its prediction and probabilities, or its error.
RecordField = Literal[
    "id", "key", "prediction", "champion", "models", "epoch", "source", "event_timestamp_ms", "latency_s",
    "event_time", "explanation", "decision", "search", "pseudo_labels",
]
RECORD_FIELDS: tuple[str, ...] = RecordField.__args__  # type: ignore[attr-defined]


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1)
    # What each prediction record holds; all of it by default. Leaving out "models"
    # (every model's own prediction) or "source" makes every record smaller and cheaper
    # to write. The event id is always written: it is what joins a record to its event.
    fields: list[RecordField] = Field(default_factory=lambda: list(RECORD_FIELDS))

    @field_validator("fields")
    @classmethod
    def _with_id(cls, fields: list[str]) -> list[str]:
        if "id" not in fields:
            raise ValueError("the record's fields must include 'id'")
        return fields
    # Defaults to "<input topic>.dlq".
    dead_letter_topic: str | None = Field(None, min_length=1)
    # Drift detections and champion changes; defaults to "<pipeline name>.alerts".
    alerts_topic: str | None = Field(None, min_length=1)


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    input: InputConfig
    output: OutputConfig
    event_schema: EventSchema = Field(alias="schema")
    task: Literal["classification", "regression", "anomaly", "forecast"] = "classification"
    # global: one learning state learns from every partition of the input, in the order
    # the partition stage writes to the internal topic "<name>.learn" (README, Model
    # scope). partition: each input partition has its own replica of every model.
    scope: Literal["global", "partition"] = "global"
    metric: str = "Accuracy"
    models: list[ModelSpec] = Field(min_length=1)
    # Stream steps between validation and the models (stream/pipeline.py); none by default,
    # and then the models see exactly the validated event.
    cleaners: list[CleanerSpec] = []
    features: list[FeatureSpec] = []
    # Learning around the models (models/config.py): delayed labels, metrics, drift,
    # champion selection, explanations.
    labels: LabelsConfig = LabelsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    drift: DriftConfig = DriftConfig()
    champion: ChampionConfig = ChampionConfig()
    explain: ExplainConfig = ExplainConfig()
    # With task: forecast, what to forecast and how far (models/forecast.py).
    forecast: ForecastConfig | None = None
    # Business rules applied to every record after the models (models/rules.py): each
    # a name, a condition, a decision and/or a prediction override, and a reason.
    rules: list[RuleSpec] = []

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        self._check_forecast()
        make_metric(self.metric)
        if self.champion.metric is not None:
            make_metric(self.champion.metric)
        if self.input.labels_topic is not None and self.input.labels_topic == self.input.topic:
            raise ValueError("input.labels_topic must differ from input.topic")
        for spec in self.models:
            if spec.init_from is not None and spec.init_from.pipeline == self.name:
                raise ValueError(f"models: {spec.name!r} init_from names this pipeline; name another one")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {', '.join(dupes)}")
        self._check_learning_extras()
        problems = check_stream_steps(self.event_schema, self.cleaners, self.features) + self._check_rules()
        if problems:
            # Raised as a ValidationError so each problem keeps its own key path.
            raise pydantic.ValidationError.from_exception_data(
                "PipelineConfig",
                [
                    InitErrorDetails(type=PydanticCustomError("stream_step", "{reason}", {"reason": reason}),
                                     loc=loc, input=None)
                    for loc, reason in problems
                ],
            )
        return self

    def _check_rules(self) -> list[tuple[tuple[str | int, ...], str]]:
        """(key path, reason) for each rule whose condition or outcome is wrong: every rule
        is checked, so one start shows every mistake, each with its column and token."""
        if not self.rules:
            return []
        if self.task == "forecast":
            return [(("rules",), "rules apply to predictions of events; a forecast has none")]
        features, label = self._rule_inputs()
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, spec in enumerate(self.rules):
            try:
                RuleSet.compile([spec], features, label)
            except RuleError as e:
                problems.append((("rules", i, *([e.field] if e.field else [])), str(e)))
        if not problems:
            try:
                RuleSet.compile(self.rules, features, label)
            except RuleError as e:
                problems.append((("rules",), str(e)))
        return problems

    def _rule_inputs(self) -> tuple[dict[str, str], str]:
        """The features' types, and the type of the answer the rules read: an anomaly
        detector answers a score, whatever the label's type."""
        features = {name: f.type for name, f in self.event_schema.features.items()}
        return features, "float" if self.task == "anomaly" else self.event_schema.label_type

    def build_rules(self) -> RuleSet:
        """The compiled rules (checked at load, so this does not fail)."""
        return RuleSet.compile(self.rules, *self._rule_inputs())

    def _check_learning_extras(self) -> None:
        """``search`` and ``self_training`` where they can work (models/search.py,
        models/self_training.py); the error names the model's key."""
        for i, spec in enumerate(self.models):
            where = f"models[{i}]"
            if spec.search is not None:
                if self.task not in ("classification", "regression"):
                    raise ValueError(f"{where}.search: only for task classification or regression")
                from streamwise.models.catalog import build_estimator
                from streamwise.models.search import build_search

                try:
                    build_search(build_estimator(spec.steps), spec.search, self.metric)
                except ValueError as e:
                    raise ValueError(f"{where}.{e}") from None
            if spec.self_training is not None:
                if self.task != "classification":
                    raise ValueError(f"{where}.self_training: only for task classification")
                if self.input.labels_topic is not None:
                    raise ValueError(
                        f"{where}.self_training: needs inline labels; with input.labels_topic any event's label may"
                        " still come (models/self_training.py)"
                    )

    def _check_forecast(self) -> None:
        if (self.task == "forecast") != (self.forecast is not None):
            raise ValueError("task: forecast and a forecast: block go together")
        if self.forecast is None:
            return
        target = self.event_schema.features.get(self.forecast.target)
        if target is None or target.type not in ("float", "int"):
            raise ValueError(f"forecast.target {self.forecast.target!r} must be a numeric feature of the schema")
        if self.input.labels_topic is not None:
            raise ValueError("a forecast learns from the series itself: no input.labels_topic")
        from streamwise.models.forecast import ForecastModel

        for spec in self.models:
            ForecastModel(spec.name, spec.steps, self.forecast.metric)

    @property
    def alerts_topic(self) -> str:
        return self.output.alerts_topic or f"{self.name}.alerts"

    @property
    def group_id(self) -> str:
        return self.input.group_id or f"streamwise-{self.name}"

    @property
    def learn_topic(self) -> str:
        """The internal 1-partition topic of ``scope: global``: accepted events and labels,
        in the one order the learner learns them."""
        return f"{self.name}.learn"

    @property
    def learn_group_id(self) -> str:
        return f"{self.group_id}.learn"

    @property
    def dead_letter_topic(self) -> str:
        return self.output.dead_letter_topic or f"{self.input.topic}.dlq"


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def parse_pipeline_config(data: Any, source: str = "pipeline") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except pydantic.ValidationError as e:
        lines = []
        for err in e.errors(include_url=False):
            # Drop pydantic's union-branch tags (e.g. "str", "dict[str,any]") from the path.
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in {"str", "dict"})))
            # ...and the step kind that tags each cleaners[i] / features[i] entry.
            loc = tuple(p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in STEP_KINDS))
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {_key_path(loc)}: {msg}")
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read pipeline config: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_pipeline_config(data, str(path))
