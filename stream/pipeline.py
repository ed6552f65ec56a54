"""From the ``cleaners:`` and ``features:`` of a pipeline YAML to an :class:`EventPipeline`.

The YAML lists steps by ``kind`` with their parameters; a bare string is a kind with
default parameters::

    cleaners:
      - coerce                                  # numeric strings -> numbers, before validation
      - {kind: dedup, window: 100000}
      - {kind: lateness, allowed: 10m, policy: dead_letter}
    features:
      - {kind: window_aggregates, by: card_id, fields: [amount], windows: [1h, 24h]}
      - {kind: ratio, numerator: amount, denominator: card_id.amount.mean.24h}

Each kind is a pydantic model, so an unknown kind or parameter fails at start with its
key path (``features[2].windows[0]: expected a duration like "1h"``); what depends on
the event schema (a field that does not exist, a window without an event time) is
checked by :func:`check_stream_steps`, which names the key path the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag
from streamwise.core.stages import DeadLetterStage
from streamwise.stream.base import (
    StreamComponent,
    is_finite_number,
    parse_duration,
)
from streamwise.stream.cleaners import (
    Deduplicator,
    LatenessPolicy,
    RunningImputer,
    RunningQuantileClipper,
    TypeCoercer,
)
from streamwise.stream.features import (
    AGGREGATES,
    CyclicTimeFeatures,
    DifferenceFeature,
    FeatureHasher,
    OneHotEncoder,
    RatioFeature,
    RunningMinMaxScaler,
    RunningStandardScaler,
    TextVectorizer,
    WindowedAggregates,
    _window_label,
)
from streamwise.stream.schema import (
    DecodedEvent,
    Duration,
    EventDecoder,
    EventSchema,
    RejectedEvent,
    _duration,
    check_not_future,
    event_seconds,
)

__all__ = [
    "EventPipeline",
    "CleanerSpec",
    "FeatureSpec",
    "STEP_KINDS",
    "build_event_pipeline",
    "check_stream_steps",
]

_NUMERIC = ("float", "int")


def _checked_duration(value: Any) -> Any:
    _duration(value)
    return value


# A duration kept as written, for feature names: windows: [24h] makes "...mean.24h".
DurationText = Annotated[str | float, BeforeValidator(_checked_duration)]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- cleaners ----------------------------------------------------------------------


class CoerceStep(_Step):
    """Numeric strings to numbers, yes/no to booleans, "NA" to missing; runs before validation."""

    kind: Literal["coerce"] = "coerce"
    fields: list[str] | None = None  # default: every declared field, the event time and the label


class ImputeStep(_Step):
    kind: Literal["impute"] = "impute"
    fields: list[str] | None = None  # default: every optional feature
    strategy: Literal["mean", "median", "mode"] | None = None  # default: mean for numbers, mode otherwise
    indicator: bool = False


class ClipStep(_Step):
    kind: Literal["clip"] = "clip"
    fields: list[str] | None = None  # default: every numeric feature
    lower: float = Field(0.01, ge=0, le=1)
    upper: float = Field(0.99, ge=0, le=1)
    warmup: int = Field(30, ge=5)


class DedupStep(_Step):
    kind: Literal["dedup"] = "dedup"
    window: int = Field(100_000, ge=1)


class LatenessStep(_Step):
    kind: Literal["lateness"] = "lateness"
    allowed: Duration = 0.0
    policy: Literal["accept", "dead_letter", "clamp"] = "dead_letter"


# ---- feature extractors ------------------------------------------------------------


class StandardScaleStep(_Step):
    kind: Literal["standard_scale"] = "standard_scale"
    fields: list[str] | None = None  # default: every number in the event but the id and time


class MinMaxScaleStep(_Step):
    kind: Literal["minmax_scale"] = "minmax_scale"
    fields: list[str] | None = None


class OneHotStep(_Step):
    kind: Literal["one_hot"] = "one_hot"
    fields: list[str] = Field(min_length=1)
    categories: dict[str, list[str | int | bool]] | None = None  # default: the schema's


class HashStep(_Step):
    kind: Literal["hash"] = "hash"
    fields: list[str] = Field(min_length=1)
    n_features: int = Field(1024, ge=1, le=1 << 24)
    seed: int = 0
    prefix: str = "hash"


class WindowAggregatesStep(_Step):
    kind: Literal["window_aggregates"] = "window_aggregates"
    by: str | list[str] | None = None  # default: the schema's key
    # Not "on": YAML 1.1 reads a bare on as true.
    fields: list[str] = []
    windows: list[DurationText] = Field(min_length=1)
    aggregates: list[Literal["count", "sum", "mean", "min", "max", "std"]] = list(AGGREGATES)
    max_events_per_key: int = Field(1000, ge=1)
    max_keys: int = Field(100_000, ge=1)
    idle_ttl: Duration | None = None


class CyclicTimeStep(_Step):
    kind: Literal["cyclic_time"] = "cyclic_time"
    field: str | None = None  # default: the event time
    utc_offset_hours: float = Field(0.0, ge=-24, le=24)


class TextStep(_Step):
    kind: Literal["text"] = "text"
    field: str
    mode: Literal["tfidf", "count"] = "tfidf"
    n_features: int = Field(4096, ge=1, le=1 << 24)


class RatioStep(_Step):
    kind: Literal["ratio"] = "ratio"
    numerator: str
    denominator: str
    name: str | None = None


class DifferenceStep(_Step):
    kind: Literal["difference"] = "difference"
    left: str
    right: str
    name: str | None = None


_CLEANERS: tuple[type[_Step], ...] = (CoerceStep, ImputeStep, ClipStep, DedupStep, LatenessStep)
_FEATURES: tuple[type[_Step], ...] = (
    StandardScaleStep,
    MinMaxScaleStep,
    OneHotStep,
    HashStep,
    WindowAggregatesStep,
    CyclicTimeStep,
    TextStep,
    RatioStep,
    DifferenceStep,
)
STEP_KINDS = frozenset(cls.model_fields["kind"].default for cls in _CLEANERS + _FEATURES)


def _shorthand(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) else value


def _kind_of(value: Any) -> str | None:
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


def _union(classes: tuple[type[_Step], ...]) -> Any:
    kinds = [cls.model_fields["kind"].default for cls in classes]
    tagged = tuple(Annotated[cls, Tag(kind)] for cls, kind in zip(classes, kinds, strict=True))
    discriminator = Discriminator(
        _kind_of,
        custom_error_type="unknown_step_kind",
        custom_error_message=f"expected a step kind, one of: {', '.join(kinds)}",
    )
    return Annotated[_make_union(tagged), discriminator, BeforeValidator(_shorthand)]


def _make_union(members: tuple[Any, ...]) -> Any:
    from typing import Union

    return Union[members]  # noqa: UP007 - a tuple of members needs the subscript form


CleanerSpec = _union(_CLEANERS)
FeatureSpec = _union(_FEATURES)


# ---- checks against the schema -----------------------------------------------------


def _window_outputs(step: WindowAggregatesStep, by: list[str]) -> set[str]:
    prefix = "_".join(by)
    names = {f"{prefix}.since_last"}
    for window in step.windows:
        label = _window_label(window)
        names.add(f"{prefix}.count.{label}")
        for field in step.fields:
            names.update(f"{prefix}.{field}.{agg}.{label}" for agg in step.aggregates if agg != "count")
    return names


def check_stream_steps(
    schema: EventSchema, cleaners: Sequence[Any], features: Sequence[Any]
) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with the steps given this schema, as ``(key path, reason)`` pairs.

    Examples
    --------
    >>> schema = EventSchema(id="id", event_time="ts", features={"amount": "float", "card": "category"})
    >>> check_stream_steps(schema, [], [WindowAggregatesStep(by="crad", fields=["amount"], windows=[3600])])
    [(('features', 0, 'by'), "unknown field 'crad'; known here: amount, card, id, ts")]
    """
    problems: list[tuple[tuple[str | int, ...], str]] = []
    declared = dict(schema.features)
    raw = set(declared) | {schema.id} | ({schema.key} if schema.key else set())
    available = set(raw) | ({schema.event_time} if schema.event_time else set())

    def known(loc: tuple[str | int, ...], name: str, pool: set[str], what: str = "field") -> bool:
        if name in pool:
            return True
        problems.append((loc, f"unknown {what} {name!r}; known here: {', '.join(sorted(available))}"))
        return False

    def needs_time(loc: tuple[str | int, ...]) -> None:
        if schema.event_time is None:
            problems.append((loc, "needs an event time: set schema.event_time"))

    for i, step in enumerate(cleaners):
        loc: tuple[str | int, ...] = ("cleaners", i)
        if isinstance(step, CoerceStep):
            for j, name in enumerate(step.fields or []):
                known((*loc, "fields", j), name, available)
        elif isinstance(step, ImputeStep):
            for j, name in enumerate(step.fields or []):
                if known((*loc, "fields", j), name, set(declared)) and declared[name].required:
                    problems.append(
                        ((*loc, "fields", j), f"{name!r} is required, so an event without it is rejected before "
                         "imputation; declare it with required: false")
                    )
                elif name in declared and step.strategy in ("mean", "median") and declared[name].type not in _NUMERIC:
                    problems.append(((*loc, "strategy"), f"{step.strategy} needs numbers, {name!r} is "
                                     f"{declared[name].type}; use mode"))
            if step.indicator:
                available.update(f"{n}_was_missing" for n in _impute_fields(schema, step))
        elif isinstance(step, ClipStep):
            if step.lower >= step.upper:
                problems.append(((*loc, "upper"), "must be greater than lower"))
            for j, name in enumerate(step.fields or []):
                if known((*loc, "fields", j), name, set(declared)) and declared[name].type not in _NUMERIC:
                    problems.append(((*loc, "fields", j), f"{name!r} is {declared[name].type}, not a number"))
        elif isinstance(step, LatenessStep):
            needs_time((*loc, "kind"))

    for i, step in enumerate(features):
        loc = ("features", i)
        if isinstance(step, (StandardScaleStep, MinMaxScaleStep)):
            for j, name in enumerate(step.fields or []):
                known((*loc, "fields", j), name, available)
        elif isinstance(step, OneHotStep):
            for j, name in enumerate(step.fields):
                if not known((*loc, "fields", j), name, raw):
                    continue
                given = (step.categories or {}).get(name)
                cats = given if given is not None else (declared[name].categories if name in declared else None)
                if not cats:
                    problems.append(((*loc, "categories"), f"declare the categories of {name!r} here or in the schema"))
                else:
                    available.update(f"{name}={c}" for c in [*cats, "__other__"])
        elif isinstance(step, HashStep):
            for j, name in enumerate(step.fields):
                known((*loc, "fields", j), name, raw)
        elif isinstance(step, WindowAggregatesStep):
            needs_time((*loc, "windows"))
            by = step.by if step.by is not None else schema.key
            if by is None:
                problems.append(((*loc, "by"), "name the key field(s), or set schema.key"))
                continue
            by_list = [by] if isinstance(by, str) else by
            ok = all(known((*loc, "by"), name, raw) for name in by_list)
            for j, name in enumerate(step.fields):
                if known((*loc, "fields", j), name, available) and name in declared and declared[name].type not in _NUMERIC:
                    problems.append(((*loc, "fields", j), f"{name!r} is {declared[name].type}, not a number"))
            if any(parse_duration(w) <= 0 for w in step.windows):
                problems.append(((*loc, "windows"), "windows must be positive durations"))
            if ok:
                available.update(_window_outputs(step, by_list))
        elif isinstance(step, CyclicTimeStep):
            if step.field is None:
                needs_time((*loc, "field"))
            else:
                known((*loc, "field"), step.field, available)
        elif isinstance(step, TextStep):
            known((*loc, "field"), step.field, raw)
        elif isinstance(step, RatioStep):
            a = known((*loc, "numerator"), step.numerator, available)
            b = known((*loc, "denominator"), step.denominator, available)
            if a and b:
                available.add(step.name or f"{step.numerator}/{step.denominator}")
        elif isinstance(step, DifferenceStep):
            a = known((*loc, "left"), step.left, available)
            b = known((*loc, "right"), step.right, available)
            if a and b:
                available.add(step.name or f"{step.left}-{step.right}")
    return problems


def _impute_fields(schema: EventSchema, step: ImputeStep) -> list[str]:
    if step.fields is not None:
        return step.fields
    return [name for name, spec in schema.features.items() if not spec.required]


# ---- building ----------------------------------------------------------------------


def _build_cleaner(schema: EventSchema, step: Any) -> list[StreamComponent]:
    numeric = [n for n, s in schema.features.items() if s.type in _NUMERIC]
    if isinstance(step, ImputeStep):
        fields = _impute_fields(schema, step)
        if step.strategy is not None:
            return [RunningImputer(fields, step.strategy, step.indicator)] if fields else []
        nums = [n for n in fields if n not in schema.features or schema.features[n].type in _NUMERIC]
        others = [n for n in fields if n not in nums]
        out: list[StreamComponent] = []
        if nums:
            out.append(RunningImputer(nums, "mean", step.indicator))
        if others:
            out.append(RunningImputer(others, "mode", step.indicator))
        return out
    if isinstance(step, ClipStep):
        return [RunningQuantileClipper(step.fields or numeric, step.lower, step.upper, step.warmup)]
    if isinstance(step, DedupStep):
        return [Deduplicator(schema.id, step.window)]
    if isinstance(step, LatenessStep):
        assert schema.event_time is not None
        return [LatenessPolicy(schema.event_time, step.allowed, step.policy)]
    raise AssertionError(step)


def _build_feature(schema: EventSchema, step: Any, meta: list[str]) -> StreamComponent:
    if isinstance(step, StandardScaleStep):
        return RunningStandardScaler(step.fields, exclude=meta)
    if isinstance(step, MinMaxScaleStep):
        return RunningMinMaxScaler(step.fields, exclude=meta)
    if isinstance(step, OneHotStep):
        cats = {}
        for name in step.fields:
            given = (step.categories or {}).get(name)
            cats[name] = given if given is not None else list(schema.features[name].categories or [])
        return OneHotEncoder(cats)
    if isinstance(step, HashStep):
        return FeatureHasher(step.fields, step.n_features, step.seed, step.prefix)
    if isinstance(step, WindowAggregatesStep):
        by = step.by if step.by is not None else schema.key
        assert by is not None and schema.event_time is not None
        return WindowedAggregates(
            by, step.fields, step.windows, schema.event_time, step.aggregates,
            step.max_events_per_key, step.max_keys, step.idle_ttl,
        )
    if isinstance(step, CyclicTimeStep):
        field = step.field or schema.event_time
        assert field is not None
        return CyclicTimeFeatures(field, step.utc_offset_hours)
    if isinstance(step, TextStep):
        return TextVectorizer(step.field, step.mode, step.n_features)
    if isinstance(step, RatioStep):
        return RatioFeature(step.numerator, step.denominator, step.name)
    if isinstance(step, DifferenceStep):
        return DifferenceFeature(step.left, step.right, step.name)
    raise AssertionError(step)


def _coercion_types(schema: EventSchema, fields: list[str] | None) -> dict[str, str]:
    types = {name: spec.type for name, spec in schema.features.items()}
    if schema.event_time is not None:
        types[schema.event_time] = "timestamp"
    if schema.label is not None:
        types[schema.label] = schema.label_type
    return types if fields is None else {k: v for k, v in types.items() if k in fields}


def build_event_pipeline(
    schema: EventSchema, cleaners: Sequence[Any] = (), features: Sequence[Any] = ()
) -> EventPipeline:
    """An :class:`EventPipeline` from validated step specs (see :func:`check_stream_steps`).

    Examples
    --------
    >>> schema = EventSchema(id="id", key="card", event_time="ts", label="fraud",
    ...                      features={"amount": {"type": "float", "required": False}})
    >>> steps = [CoerceStep(), ImputeStep(indicator=True), DedupStep(window=1000)]
    >>> pipeline = build_event_pipeline(schema, steps, [WindowAggregatesStep(fields=["amount"], windows=["1h"])])
    >>> pipeline.decode(b'{"id": 1, "card": "c1", "ts": 0, "amount": "20", "fraud": "no"}').x
    {'amount': 20.0, 'amount_was_missing': 0.0, 'card.count.1h': 0.0, 'card.amount.sum.1h': 0.0, ...}
    >>> event = pipeline.decode(b'{"id": 2, "card": "c1", "ts": 60, "fraud": "yes"}')
    >>> event.y, event.x["amount"], event.x["card.count.1h"], event.x["card.since_last"]
    (True, 20.0, 1.0, 60.0)
    >>> pipeline.decode(b'{"id": 2, "card": "c1", "ts": 61}')
    Traceback (most recent call last):
    ...
    streamwise.stream.schema.RejectedEvent: duplicate event: id 2 was seen among the last 1000 ids
    """
    coercers: list[StreamComponent] = []
    steps: list[StreamComponent] = []
    for step in cleaners:
        if isinstance(step, CoerceStep):
            # Coercion must see the raw JSON, before the schema rejects "12.5" for a float.
            coercers.append(TypeCoercer(_coercion_types(schema, step.fields)))
        else:
            steps.extend(_build_cleaner(schema, step))
    meta = _meta_fields(schema)
    steps.extend(_build_feature(schema, step, meta) for step in features)
    return EventPipeline(schema, coercers, steps)


def _meta_fields(schema: EventSchema) -> list[str]:
    """Fields the steps can read but the models never see: id, event time, a key that is no feature."""
    meta = [schema.id]
    if schema.event_time is not None:
        meta.append(schema.event_time)
    if schema.key is not None and schema.key not in schema.features and schema.key not in meta:
        meta.append(schema.key)
    return meta


class EventPipeline:
    """Decode, coerce, validate, clean and extract features, one event at a time, prequentially.

    For each event every step first transforms it with the state it had *before* the
    event; only when no step refused the event and every output is a finite number
    (or not a number at all) does each step learn from the input it was given. A
    refused event changes no state, and the runner dead-letters it with the refusing
    step's stage: ``decode`` and ``validate`` from the schema, ``clean`` from a
    cleaner, ``features`` from an extractor.

    The steps see the event's features plus its id, its event time (as seconds since
    the epoch) and its key, under their schema names; the models see the features
    only. Without steps, :meth:`decode` is exactly :meth:`EventDecoder.decode`.

    The pipeline pickles as its schema and steps: that is all of its learned state.
    """

    def __init__(
        self,
        schema: EventSchema,
        coercers: Sequence[StreamComponent] = (),
        steps: Sequence[StreamComponent] = (),
    ) -> None:
        self.schema = schema
        self.coercers = list(coercers)
        self.steps = list(steps)
        self._init_derived()

    def _init_derived(self) -> None:
        self.decoder = EventDecoder(self.schema)
        self._meta = _meta_fields(self.schema)
        # What the cleaners did since the last drain_activity(), for the sensors; not state.
        self._activity: Counter[str] = Counter()
        # The wall clock that record timestamps are held to (max_future); tests set their own.
        self.clock: Callable[[], float] = time.time

    def drain_activity(self) -> dict[str, int]:
        """Counts of ``imputed``, ``clipped``, ``deduplicated`` and ``late`` since the last call."""
        activity, self._activity = dict(self._activity), Counter()
        return activity

    def __getstate__(self) -> dict[str, Any]:
        # The decoder holds a pydantic model created at run time, which cannot pickle.
        return {"schema": self.schema, "coercers": self.coercers, "steps": self.steps}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_derived()

    @property
    def is_identity(self) -> bool:
        return not self.coercers and not self.steps

    def decode(self, value: bytes | None, record_time_s: float | None = None) -> DecodedEvent:
        """A record's bytes to an event with its features; :class:`RejectedEvent` otherwise.

        ``record_time_s`` is the Kafka record's timestamp, held with the event time to
        the schema's ``max_future`` before any step (a watermark, a window) sees them.
        """
        return self.process_json(self.decoder.parse(value), record_time_s)

    def process_json(self, obj: Any, record_time_s: float | None = None) -> DecodedEvent:
        """A parsed JSON value to an event with its features; :class:`RejectedEvent` otherwise."""
        for coercer in self.coercers:
            obj = coercer.transform_one(obj)
        event = self.decoder.validate(obj)
        schema = self.schema
        t = None if schema.event_time is None else event_seconds(event.event_time, schema.event_time)
        check_not_future(schema.max_future, record_time_s, t, self.clock())
        if self.steps:
            event.x = self.process_row(self._row(event, t))
        return event

    def _row(self, event: DecodedEvent, t: float | None) -> dict[str, Any]:
        schema = self.schema
        row = dict(event.x)
        row[schema.id] = event.id
        if schema.event_time is not None and t is not None:
            row[schema.event_time] = t
        if schema.key is not None and schema.key not in row:
            row[schema.key] = event.key
        return row

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Runs the steps on one row (features plus id, time and key): transform all, then learn all."""
        inputs = []
        x = row
        for step in self.steps:
            inputs.append(x)
            try:
                x = step.transform_one(x)
            except RejectedEvent:
                if isinstance(step, (Deduplicator, LatenessPolicy)):
                    self._activity["deduplicated" if isinstance(step, Deduplicator) else "late"] += 1
                raise
            except ArithmeticError as e:
                raise RejectedEvent(step.stage, f"{type(step).__name__}: {type(e).__name__}: {e}") from None
        features = {k: v for k, v in x.items() if k not in self._meta}
        for name, value in features.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not is_finite_number(value):
                raise RejectedEvent(DeadLetterStage.FEATURES, f"{name} is not a finite number: {value!r}"[:200])
        outputs = [*inputs[1:], x]
        for step, seen, made in zip(self.steps, inputs, outputs, strict=True):
            if step.stage == DeadLetterStage.CLEAN:
                self._count(step, seen, made)
            try:
                step.learn_one(seen)
            except ArithmeticError as e:
                raise RejectedEvent(step.stage, f"{type(step).__name__}: {type(e).__name__}: {e}") from None
        return features

    def _count(self, step: StreamComponent, before: dict[str, Any], after: dict[str, Any]) -> None:
        if isinstance(step, RunningImputer):
            n = sum(1 for f in step.fields if before.get(f) is None and after.get(f) is not None)
            self._activity["imputed"] += n
        elif isinstance(step, RunningQuantileClipper):
            self._activity["clipped"] += sum(1 for f in step.fields if f in before and after.get(f) != before[f])
        elif isinstance(step, LatenessPolicy) and step.is_late(before):
            self._activity["late"] += 1
