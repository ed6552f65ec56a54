"""The pipeline YAML: what one streamwise pipeline reads, validates, learns and writes.

:func:`load_pipeline_config` validates the whole file at start. Every error names the
key path that is wrong (``models[0].steps: unknown River estimator ...``), so a bad
config fails before the first event instead of in the middle of a stream.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from river.compose import Pipeline as RiverPipeline
from streamwise.core.errors import ConfigError
from streamwise.models.catalog import ModelSpec, build_estimator
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
from streamwise.models.scoreboard import metric_fits
from streamwise.stream.pipeline import STEP_KINDS, CleanerSpec, FeatureSpec, check_stream_steps, model_fields
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
        # Every problem is collected with its key path, so one start shows them all and
        # each line names the key to fix (not "<root>").
        problems = self._check_forecast() + self._check_topics()
        for loc, name in ((("metric",), self.metric), (("champion", "metric"), self.champion.metric)):
            if name is not None:
                try:
                    make_metric(name)
                except ValueError as e:
                    problems.append((loc, str(e)))
        for i, spec in enumerate(self.models):
            if spec.init_from is not None and spec.init_from.pipeline == self.name:
                problems.append(
                    (("models", i, "init_from", "pipeline"),
                     f"{spec.name!r} init_from names this pipeline; name another one")
                )
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append((("models",), f"model names must be unique, repeated: {', '.join(dupes)}"))
        problems += self._check_learning_extras()
        problems += check_stream_steps(self.event_schema, self.cleaners, self.features) + self._check_rules()
        if not any(loc[:1] in {("metric",), ("champion",)} for loc, _ in problems):
            problems += self._check_metric_fits()
        if problems:
            # Raised as a ValidationError so each problem keeps its own key path.
            raise pydantic.ValidationError.from_exception_data(
                "PipelineConfig",
                [
                    InitErrorDetails(type=PydanticCustomError("pipeline", "{reason}", {"reason": reason}),
                                     loc=loc, input=None)
                    for loc, reason in problems
                ],
            )
        return self

    def _check_topics(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Each topic has one role: the service reads its own predictions back as events,
        or mixes dead letters into the predictions, if two roles share one."""
        roles: list[tuple[tuple[str, ...], str]] = [
            (("input", "topic"), self.input.topic),
            (("input", "labels_topic"), self.input.labels_topic or ""),
            (("output", "topic"), self.output.topic),
            (("output", "dead_letter_topic"), self.dead_letter_topic),
            (("output", "alerts_topic"), self.alerts_topic),
            (("name",), self.learn_topic if self.scope == "global" else ""),
        ]
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for j, (loc, topic) in enumerate(roles):
            for earlier, other in roles[:j]:
                if topic and topic == other:
                    what = "the learn topic of scope: global" if loc == ("name",) else f"topic {topic!r}"
                    problems.append((loc, f"{what} is also {_key_path(earlier)}; each topic has one role"))
                    break
        # A name Kafka refuses would otherwise fail only when the worker creates or
        # subscribes to it, after joining the group. A default name is reported at the
        # key it is made from: (key, name, what the name is when it is made from the key).
        named: list[tuple[tuple[str, ...], str, str | None]] = [(loc, t, None) for loc, t in roles[:3]]
        named.append((("output", "dead_letter_topic"), self.dead_letter_topic, None) if self.output.dead_letter_topic
                     else (("input", "topic"), self.dead_letter_topic, "the dead letter topic"))
        named.append((("output", "alerts_topic"), self.alerts_topic, None) if self.output.alerts_topic
                     else (("name",), self.alerts_topic, "the alerts topic"))
        named.append((("name",), roles[5][1], "the learn topic of scope: global"))
        for loc, topic, made in named:
            reason = kafka_topic_problem(topic) if topic else None
            if reason is not None:
                problems.append((loc, f"{made} it makes, {topic[:60]!r}, {reason}" if made else reason))
        return problems

    def _check_metric_fits(self) -> list[tuple[tuple[str | int, ...], str]]:
        # Found here rather than when the first partition builds its models, which would
        # be a traceback after the worker has joined the group.
        if self.forecast is not None:
            return []
        wanted = [("metric", self.metric)]
        if self.champion.metric is not None:
            wanted.append(("champion.metric", self.champion.metric))
        problems: list[tuple[tuple[str | int, ...], str]] = []
        fields = model_fields(self.event_schema, self.cleaners, self.features)
        for i, spec in enumerate(self.models):
            estimator = build_estimator(spec.steps)
            # A learner that picks its inputs by name (the torch learners' features):
            # a name no event carries would be an input that is always missing.
            for step in estimator.steps.values() if isinstance(estimator, RiverPipeline) else [estimator]:
                named = getattr(step, "features", None) if type(step).__module__.startswith("streamwise.") else None
                unknown = [f for f in named or [] if f not in fields]
                if unknown:
                    problems.append((("models", i, "steps"), f"{type(step).__name__}: features: unknown field "
                                     f"{unknown[0]!r}; known here: {', '.join(sorted(fields))}"))
            for key, name in wanted:
                if not metric_fits(name, estimator):
                    problems.append(
                        (("models", i, "steps"), f"{key} {name} cannot score model {spec.name!r}'s predictions")
                    )
        return problems

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

    def _check_learning_extras(self) -> list[tuple[tuple[str | int, ...], str]]:
        """``search`` and ``self_training`` where they can work (models/search.py,
        models/self_training.py); each problem names the model's key."""
        from streamwise.models.search import build_search

        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, spec in enumerate(self.models):
            if spec.search is not None:
                if self.task not in ("classification", "regression"):
                    problems.append((("models", i, "search"), "only for task classification or regression"))
                else:
                    try:
                        build_search(build_estimator(spec.steps), spec.search, self.metric)
                    except ValueError as e:
                        # The message starts with its key under the model ("search.space.x: ...").
                        key, _, reason = str(e).partition(": ")
                        if not key.startswith("search") or not reason:
                            key, reason = "search", str(e)
                        problems.append((("models", i, *key.split(".")), reason))
            if spec.self_training is not None:
                if self.task != "classification":
                    problems.append((("models", i, "self_training"), "only for task classification"))
                elif self.input.labels_topic is not None:
                    problems.append((
                        ("models", i, "self_training"),
                        "needs inline labels; with input.labels_topic any event's label may still come"
                        " (models/self_training.py)",
                    ))
        return problems

    def _check_forecast(self) -> list[tuple[tuple[str | int, ...], str]]:
        if (self.task == "forecast") != (self.forecast is not None):
            return [(("forecast",), "task: forecast and a forecast: block go together")]
        if self.forecast is None:
            return []
        problems: list[tuple[tuple[str | int, ...], str]] = []
        target = self.event_schema.features.get(self.forecast.target)
        if target is None or target.type not in ("float", "int"):
            problems.append(
                (("forecast", "target"), f"{self.forecast.target!r} must be a numeric feature of the schema")
            )
        if self.input.labels_topic is not None:
            problems.append((("input", "labels_topic"), "a forecast learns from the series itself: no labels topic"))
        from streamwise.models.forecast import ForecastModel

        for i, spec in enumerate(self.models):
            try:
                ForecastModel(spec.name, spec.steps, self.forecast.metric)
            except ValueError as e:
                problems.append((("models", i, "steps"), str(e)))
        return problems

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


# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_TOPIC_MAX_LENGTH = 249


def kafka_topic_problem(topic: str) -> str | None:
    """Why Kafka would refuse ``topic`` as a topic name, or None.

    Examples
    --------
    >>> kafka_topic_problem("payments.events-v2"), kafka_topic_problem("my topic")
    (None, "has characters Kafka refuses in a topic name (' '); it allows ASCII letters, digits, '.', '_' and '-'")
    >>> kafka_topic_problem("x" * 250)
    'is 250 characters long; Kafka allows at most 249'
    """
    if topic in (".", ".."):
        return "is not a name Kafka allows for a topic"
    if not _TOPIC_CHARS.fullmatch(topic):
        bad = "".join(sorted(set(_TOPIC_CHARS.sub("", topic))))
        return (f"has characters Kafka refuses in a topic name ({bad[:10]!r}); "
                "it allows ASCII letters, digits, '.', '_' and '-'")
    if len(topic) > _TOPIC_MAX_LENGTH:
        return f"is {len(topic)} characters long; Kafka allows at most {_TOPIC_MAX_LENGTH}"
    return None


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


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error:
    plain YAML keeps the last one silently, so a second ``models:`` or ``metric:`` would
    quietly replace the first. And plain scalars are typed as in YAML 1.2 (its core
    schema) and JSON, not as PyYAML's YAML 1.1: ``1e-7`` is a number (1.1 reads a float
    without a dot as a string, which a River estimator would take as its ``delta`` and
    fail on at the first event), while ``NO``, ``yes``, ``off``, ``12:30``, ``2026-01-01``
    stay strings and ``010`` is ten (1.1 reads them as False, True, False, 750, a date
    and 8: a category list of country codes ``[SE, NO, DK]`` would declare ``False``,
    and every event from Norway be refused).

    Examples
    --------
    >>> yaml.load("{delta: 1e-7, n: -2E3, v: 1.5, id: 12e, name: e5}", Loader=ConfigLoader)
    {'delta': 1e-07, 'n': -2000.0, 'v': 1.5, 'id': '12e', 'name': 'e5'}
    >>> yaml.load("[SE, NO, yes, On, 12:30, 2026-01-01, 010, 0x1F, 0o17, 1_000, true, False, .5, -.inf, ~]",
    ...           Loader=ConfigLoader)
    ['SE', 'NO', 'yes', 'On', '12:30', '2026-01-01', 10, 31, 15, 1000, True, False, 0.5, -inf, None]
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base" then overriding a key is what merges are for
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:
                continue  # unhashable: the base constructor says so
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        # YAML 1.2: decimal whatever the leading zeros, 0o octal, 0x hex (1.1 reads 010 as 8).
        text = str(self.construct_scalar(node)).replace("_", "")
        try:
            if text.startswith("0o"):
                return int(text[2:], 8)
            if text.startswith("0x"):
                return int(text[2:], 16)
            return int(text, 10)
        except ValueError:  # past Python's limit on digits read as an int (4,300)
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(text)} digits is past any limit a setting has", node.start_mark
            ) from None


def _yaml_12_scalars() -> None:
    """Replaces, in this loader only, YAML 1.1's implicit bool, int, float and timestamp
    types with YAML 1.2 core schema's (underscores in numbers still allowed, as before)."""
    replaced = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "timestamp")}
    ConfigLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    ConfigLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    # Ints before floats: the first pattern that matches a scalar types it.
    ConfigLoader.add_implicit_resolver(
        "tag:yaml.org,2002:int",
        re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7][0-7_]*|0x[0-9a-fA-F][0-9a-fA-F_]*)$"),
        list("-+0123456789"),
    )
    ConfigLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*\.[0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+"
            r"|\.[0-9][0-9_]*[eE][-+]?[0-9]+)|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+0123456789."),
    )
    ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)


_yaml_12_scalars()


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read pipeline config: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): a pipeline config is YAML in UTF-8") from None
    try:
        data = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a pipeline config: its YAML is nested too deeply to read") from None
    return parse_pipeline_config(data, str(path))


def yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong and where, instead of its excerpt of the
    text, which takes several lines and would break the CLI's one line per error.

    Examples
    --------
    >>> try:
    ...     yaml.load("[unclosed", Loader=ConfigLoader)
    ... except yaml.YAMLError as e:
    ...     print(yaml_problem(e))
    expected ',' or ']', but got '<stream end>' at line 1, column 10
    """
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{e.problem or e.context}{where}"
    return str(e)
