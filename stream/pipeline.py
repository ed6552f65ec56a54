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

Each kind is one class registered in :data:`STEPS`: a pydantic model of its
parameters (an unknown kind or parameter fails at start with its key path,
``features[2].windows[0]: expected a duration like "1h"``), which checks itself against
the event schema (a field that does not exist, a window without an event time), names
the fields it adds for later steps, builds its components, and gives the examples the
contract suite (:mod:`streamwise.stream.checks`) runs it with. Each component reports
its own activity (imputed, clipped, deduplicated, late) for the sensors. Adding a kind,
or a bound on one, touches its class and nothing else.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag
from streamwise.core.stages import DeadLetterStage
from streamwise.stream.base import (
    StreamComponent,
    is_finite_number,
    parse_duration,
)
from streamwise.stream.batch_decode import BatchDecoder
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
    "build_learner_steps",
    "split_steps",
    "check_stream_steps",
]

_NUMERIC = ("float", "int")
# A one_hot field outputs one feature per declared category on every event, so its
# per-event cost grows with the list; beyond this many, hash the field instead
# (docs: bench/one_hot_scale.py measures where the time goes).
MAX_ONE_HOT_CATEGORIES = 1000


def _checked_duration(value: Any) -> Any:
    _duration(value)
    return value


# A duration kept as written, for feature names: windows: [24h] makes "...mean.24h".
DurationText = Annotated[str | float, BeforeValidator(_checked_duration)]

Loc = tuple[str | int, ...]


class _Checks:
    """What one pass of :func:`check_stream_steps` knows: the schema, the fields a step
    may read so far (growing with each step's outputs), and the problems found."""

    def __init__(self, schema: EventSchema) -> None:
        self.schema = schema
        self.declared = dict(schema.features)
        self.raw = set(self.declared) | {schema.id} | ({schema.key} if schema.key else set())
        self.available = set(self.raw) | ({schema.event_time} if schema.event_time else set())
        self.problems: list[tuple[Loc, str]] = []

    def problem(self, loc: Loc, reason: str) -> None:
        self.problems.append((loc, reason))

    def known(self, loc: Loc, name: str, pool: set[str] | None = None) -> bool:
        """Whether ``name`` is in ``pool`` (default: every field available so far)."""
        if name in (self.available if pool is None else pool):
            return True
        self.problem(loc, f"unknown field {name!r}; known here: {', '.join(sorted(self.available))}")
        return False

    def numeric(self, loc: Loc, name: str, pool: set[str] | None = None) -> None:
        """Checks that ``name`` exists and, if declared, is a number."""
        if self.known(loc, name, pool) and name in self.declared and self.declared[name].type not in _NUMERIC:
            self.problem(loc, f"{name!r} is {self.declared[name].type}, not a number")

    def needs_time(self, loc: Loc) -> None:
        if self.schema.event_time is None:
            self.problem(loc, "needs an event time: set schema.event_time")


class _Step(BaseModel):
    """One step kind of the ``cleaners:`` or ``features:`` list: its parameters (the
    pydantic fields), what it checks against the schema, what it builds, and the names
    it adds to the event. Registering a subclass with :func:`_kind` is all it takes to
    make a new kind parse, check, build and run under the contract suite."""

    model_config = ConfigDict(extra="forbid")

    section: ClassVar[str]
    # Runs on the raw JSON object, before schema validation (coercion).
    before_validation: ClassVar[bool] = False
    # Parameters for the contract suite (streamwise.stream.checks), by variant name,
    # aimed at the fields of its sample rows and with bounds small enough to see hold.
    examples: ClassVar[dict[str, dict[str, Any]]] = {"": {}}
    # What the step's state depends on (see :meth:`placement`).
    state: ClassVar[str] = "event"

    def placement(self) -> str:
        """``event`` (no state: each event on its own), ``key`` (state per key or per
        event id: every event of a key is on one input partition, so the partition's
        replica sees all of it) or ``global`` (statistics over the whole stream:
        running means, quantiles, scales, a vocabulary). With ``scope: global`` the
        first two run on the input partitions, before the internal topic, and a
        global step runs with the models (:func:`split_steps`)."""
        return self.state

    # Whether the step reads the event time / the id (beyond the fields it names).
    reads_time: ClassVar[bool] = False
    reads_id: ClassVar[bool] = False

    def reads(self, schema: EventSchema) -> set[str]:
        """Every field this step may read: each name among its parameters (a superset:
        a parameter that is no field name matches nothing), the event time or the id when
        it uses them, and, for a step that defaults to many fields, all of them."""
        names: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, str):
                names.add(value)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(k)
                    walk(v)

        walk(self.model_dump())
        if self.reads_time and schema.event_time is not None:
            names.add(schema.event_time)
        if self.reads_id:
            names.add(schema.id)
        if "fields" in type(self).model_fields and getattr(self, "fields", None) is None:
            names.update(schema.features)  # the default: every (numeric, or optional) feature
        return names

    def writes(self, c: _Checks) -> set[str]:
        """Every field this step may change or add: its outputs, and for a step with
        global statistics the fields it transforms in place."""
        out = set(self.outputs(c))
        if self.placement() == "global":
            fields = getattr(self, "fields", None)
            out.update(fields if fields is not None else c.schema.features)
            if isinstance(getattr(self, "field", None), str):
                out.add(self.field)  # type: ignore[attr-defined]
        return out

    def check(self, c: _Checks, loc: Loc) -> None:
        """Records what is wrong with this step given the schema and the steps before it."""

    def outputs(self, c: _Checks) -> set[str]:
        """Names this step adds to the event, for the steps after it to read."""
        return set()

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:  # pragma: no cover - abstract
        raise NotImplementedError


STEPS: dict[str, type[_Step]] = {}


def _kind(section: str) -> Any:
    def register(cls: type[_Step]) -> type[_Step]:
        cls.section = section
        STEPS[cls.model_fields["kind"].default] = cls
        return cls

    return register


def _numeric_features(schema: EventSchema) -> list[str]:
    return [n for n, s in schema.features.items() if s.type in _NUMERIC]


# ---- cleaners ----------------------------------------------------------------------


@_kind("cleaners")
class CoerceStep(_Step):
    """Numeric strings to numbers, yes/no to booleans, "NA" to missing; runs before validation."""

    kind: Literal["coerce"] = "coerce"
    fields: list[str] | None = None  # default: every declared field, the event time and the label

    before_validation: ClassVar[bool] = True
    examples: ClassVar[dict[str, dict[str, Any]]] = {"": {"fields": ["amount", "n", "online", "city"]}}

    def check(self, c: _Checks, loc: Loc) -> None:
        for j, name in enumerate(self.fields or []):
            c.known((*loc, "fields", j), name)

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        types = {name: spec.type for name, spec in schema.features.items()}
        if schema.event_time is not None:
            types[schema.event_time] = "timestamp"
        if schema.label is not None:
            types[schema.label] = schema.label_type
        if self.fields is not None:
            types = {k: v for k, v in types.items() if k in self.fields}
        return [TypeCoercer(types)]


@_kind("cleaners")
class ImputeStep(_Step):
    kind: Literal["impute"] = "impute"
    state: ClassVar[str] = "global"
    fields: list[str] | None = None  # default: every optional feature
    strategy: Literal["mean", "median", "mode"] | None = None  # default: mean for numbers, mode otherwise
    indicator: bool = False

    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "mean": {"fields": ["amount", "price"], "strategy": "mean", "indicator": True},
        "median": {"fields": ["amount"], "strategy": "median"},
        "mode": {"fields": ["city"], "strategy": "mode", "indicator": True},
    }

    def _fields(self, schema: EventSchema) -> list[str]:
        if self.fields is not None:
            return self.fields
        return [name for name, spec in schema.features.items() if not spec.required]

    def check(self, c: _Checks, loc: Loc) -> None:
        for j, name in enumerate(self.fields or []):
            if c.known((*loc, "fields", j), name, set(c.declared)) and c.declared[name].required:
                c.problem(
                    (*loc, "fields", j),
                    f"{name!r} is required, so an event without it is rejected before imputation; "
                    "declare it with required: false",
                )
            elif name in c.declared and self.strategy in ("mean", "median") and c.declared[name].type not in _NUMERIC:
                c.problem(
                    (*loc, "strategy"), f"{self.strategy} needs numbers, {name!r} is {c.declared[name].type}; use mode"
                )

    def outputs(self, c: _Checks) -> set[str]:
        return {f"{n}_was_missing" for n in self._fields(c.schema)} if self.indicator else set()

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        fields = self._fields(schema)
        if self.strategy is not None:
            return [RunningImputer(fields, self.strategy, self.indicator)] if fields else []
        nums = [n for n in fields if n not in schema.features or schema.features[n].type in _NUMERIC]
        others = [n for n in fields if n not in nums]
        return [
            RunningImputer(names, strategy, self.indicator)
            for names, strategy in ((nums, "mean"), (others, "mode"))
            if names
        ]


@_kind("cleaners")
class ClipStep(_Step):
    kind: Literal["clip"] = "clip"
    state: ClassVar[str] = "global"
    fields: list[str] | None = None  # default: every numeric feature
    lower: float = Field(0.01, gt=0, lt=1)  # river.stats.Quantile takes 0 < q < 1
    upper: float = Field(0.99, gt=0, lt=1)
    warmup: int = Field(30, ge=5)

    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "": {"fields": ["amount", "price"], "lower": 0.05, "upper": 0.95, "warmup": 20}
    }

    def check(self, c: _Checks, loc: Loc) -> None:
        if self.lower >= self.upper:
            c.problem((*loc, "upper"), "must be greater than lower")
        for j, name in enumerate(self.fields or []):
            c.numeric((*loc, "fields", j), name, set(c.declared))

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        return [RunningQuantileClipper(self.fields or _numeric_features(schema), self.lower, self.upper, self.warmup)]


@_kind("cleaners")
class DedupStep(_Step):
    kind: Literal["dedup"] = "dedup"
    reads_id: ClassVar[bool] = True
    state: ClassVar[str] = "key"
    window: int = Field(100_000, ge=1)

    examples: ClassVar[dict[str, dict[str, Any]]] = {"": {"window": 1000}}

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        return [Deduplicator(schema.id, self.window)]


@_kind("cleaners")
class LatenessStep(_Step):
    kind: Literal["lateness"] = "lateness"
    reads_time: ClassVar[bool] = True
    state: ClassVar[str] = "key"
    allowed: Duration = 0.0
    policy: Literal["accept", "dead_letter", "clamp"] = "dead_letter"

    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "dead_letter": {"allowed": 300, "policy": "dead_letter"},
        "clamp": {"allowed": 300, "policy": "clamp"},
    }

    def check(self, c: _Checks, loc: Loc) -> None:
        c.needs_time((*loc, "kind"))

    def writes(self, c: _Checks) -> set[str]:
        return {c.schema.event_time} if self.policy == "clamp" and c.schema.event_time else set()

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        assert schema.event_time is not None
        return [LatenessPolicy(schema.event_time, self.allowed, self.policy)]


# ---- feature extractors ------------------------------------------------------------


class _ScaleStep(_Step):
    fields: list[str] | None = None  # default: every number in the event but the id and time

    def reads(self, schema: EventSchema) -> set[str]:
        # By default it scales whatever numbers the event carries at its turn, so no step
        # that adds a feature may move before it.
        return super().reads(schema) | ({ANY_FIELD} if self.fields is None else set())

    def check(self, c: _Checks, loc: Loc) -> None:
        for j, name in enumerate(self.fields or []):
            c.known((*loc, "fields", j), name)


@_kind("features")
class StandardScaleStep(_ScaleStep):
    kind: Literal["standard_scale"] = "standard_scale"
    state: ClassVar[str] = "global"

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        return [RunningStandardScaler(self.fields, exclude=meta)]


@_kind("features")
class MinMaxScaleStep(_ScaleStep):
    kind: Literal["minmax_scale"] = "minmax_scale"
    state: ClassVar[str] = "global"

    examples: ClassVar[dict[str, dict[str, Any]]] = {"": {"fields": ["amount", "price", "n"]}}

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        return [RunningMinMaxScaler(self.fields, exclude=meta)]


@_kind("features")
class OneHotStep(_Step):
    kind: Literal["one_hot"] = "one_hot"
    fields: list[str] = Field(min_length=1)
    categories: dict[str, list[str | int | bool]] | None = None  # default: the schema's

    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "": {"fields": ["city"], "categories": {"city": ["Lyon", "Oslo", "Lima"]}}
    }

    def _categories(self, schema: EventSchema, name: str) -> list[Any]:
        given = (self.categories or {}).get(name)
        if given is not None:
            return list(given)
        spec = schema.features.get(name)
        return list(spec.categories or []) if spec is not None else []

    def check(self, c: _Checks, loc: Loc) -> None:
        for j, name in enumerate(self.fields):
            if not c.known((*loc, "fields", j), name, c.raw):
                continue
            n = len(self._categories(c.schema, name))
            if not n:
                c.problem((*loc, "categories"), f"declare the categories of {name!r} here or in the schema")
            elif n > MAX_ONE_HOT_CATEGORIES:
                c.problem(
                    (*loc, "fields", j),
                    f"{name!r} has {n} categories, more than {MAX_ONE_HOT_CATEGORIES}: every event would carry "
                    f"{n + 1} features; use kind hash",
                )

    def writes(self, c: _Checks) -> set[str]:
        return self.outputs(c) | set(self.fields)  # the source fields leave the event

    def outputs(self, c: _Checks) -> set[str]:
        return {f"{n}={v}" for n in self.fields for v in [*self._categories(c.schema, n), "__other__"]}

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        return [OneHotEncoder({name: self._categories(schema, name) for name in self.fields})]


@_kind("features")
class HashStep(_Step):
    kind: Literal["hash"] = "hash"
    fields: list[str] = Field(min_length=1)
    n_features: int = Field(1024, ge=1, le=1 << 24)
    seed: int = 0
    prefix: str = "hash"

    examples: ClassVar[dict[str, dict[str, Any]]] = {"": {"fields": ["merchant", "city"], "n_features": 64, "seed": 3}}

    def check(self, c: _Checks, loc: Loc) -> None:
        for j, name in enumerate(self.fields):
            if not c.known((*loc, "fields", j), name, c.raw):
                continue
            # A measured number hashed is one category per distinct value: the model
            # loses the number and learns nothing that recurs. Ids written as ints hash well.
            kind = c.declared[name].type if name in c.declared else None
            if kind in ("float", "timestamp"):
                c.problem(
                    (*loc, "fields", j),
                    f"{name!r} is {kind}: hashing makes each value its own category; "
                    "give it to the model as is, or declare it category or int",
                )

    def writes(self, c: _Checks) -> set[str]:
        return self.outputs(c) | set(self.fields)  # the source fields leave the event

    def outputs(self, c: _Checks) -> set[str]:
        return {f"{self.prefix}#{i}" for i in range(self.n_features)}

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        return [FeatureHasher(self.fields, self.n_features, self.seed, self.prefix)]


@_kind("features")
class WindowAggregatesStep(_Step):
    kind: Literal["window_aggregates"] = "window_aggregates"
    reads_time: ClassVar[bool] = True
    state: ClassVar[str] = "key"
    by: str | list[str] | None = None  # default: the schema's key
    # Not "on": YAML 1.1 reads a bare on as true.
    fields: list[str] = []
    windows: list[DurationText] = Field(min_length=1)
    aggregates: list[Literal["count", "sum", "mean", "min", "max", "std"]] = list(AGGREGATES)
    max_events_per_key: int = Field(1000, ge=1)
    max_keys: int = Field(100_000, ge=1)
    idle_ttl: Duration | None = None

    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "": {
            "by": "card",
            "fields": ["amount", "price"],
            "windows": ["1h", "24h"],
            "max_events_per_key": 50,
            "max_keys": 1000,
        },
        "composite": {"by": ["card", "merchant"], "windows": ["7d"], "aggregates": ["count"]},
    }

    def _by(self, schema: EventSchema) -> list[str] | None:
        by = self.by if self.by is not None else schema.key
        return None if by is None else [by] if isinstance(by, str) else by

    def check(self, c: _Checks, loc: Loc) -> None:
        c.needs_time((*loc, "windows"))
        by = self._by(c.schema)
        if by is None:
            c.problem((*loc, "by"), "name the key field(s), or set schema.key")
        else:
            for name in by:
                c.known((*loc, "by"), name, c.raw)
        for j, name in enumerate(self.fields):
            c.numeric((*loc, "fields", j), name)
        if any(parse_duration(w) <= 0 for w in self.windows):
            c.problem((*loc, "windows"), "windows must be positive durations")

    def outputs(self, c: _Checks) -> set[str]:
        by = self._by(c.schema)
        if by is None or not set(by) <= c.raw:
            return set()
        prefix = "_".join(by)
        names = {f"{prefix}.since_last"}
        for window in self.windows:
            label = _window_label(window)
            names.add(f"{prefix}.count.{label}")
            for field in self.fields:
                names.update(f"{prefix}.{field}.{agg}.{label}" for agg in self.aggregates if agg != "count")
        return names

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        by = self.by if self.by is not None else schema.key
        assert by is not None and schema.event_time is not None
        return [
            WindowedAggregates(
                by,
                self.fields,
                self.windows,
                schema.event_time,
                self.aggregates,
                self.max_events_per_key,
                self.max_keys,
                self.idle_ttl,
            )
        ]


@_kind("features")
class CyclicTimeStep(_Step):
    kind: Literal["cyclic_time"] = "cyclic_time"
    reads_time: ClassVar[bool] = True
    field: str | None = None  # default: the event time
    utc_offset_hours: float = Field(0.0, ge=-24, le=24)

    examples: ClassVar[dict[str, dict[str, Any]]] = {"": {"utc_offset_hours": 2}}

    def check(self, c: _Checks, loc: Loc) -> None:
        if self.field is None:
            c.needs_time((*loc, "field"))
        else:
            c.known((*loc, "field"), self.field)

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        field = self.field or schema.event_time
        assert field is not None
        return [CyclicTimeFeatures(field, self.utc_offset_hours)]


@_kind("features")
class TextStep(_Step):
    kind: Literal["text"] = "text"
    field: str
    mode: Literal["tfidf", "count"] = "tfidf"
    n_features: int = Field(4096, ge=1, le=1 << 24)

    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "tfidf": {"field": "memo", "mode": "tfidf", "n_features": 256},
        "count": {"field": "memo", "mode": "count", "n_features": 256},
    }

    def check(self, c: _Checks, loc: Loc) -> None:
        c.known((*loc, "field"), self.field, c.raw)

    def writes(self, c: _Checks) -> set[str]:
        return {self.field}  # it leaves the event; the hashed buckets are named at run time

    def placement(self) -> str:
        # TF-IDF weighs by document frequencies over the stream; counts need no state.
        return "global" if self.mode == "tfidf" else "event"

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        return [TextVectorizer(self.field, self.mode, self.n_features)]


class _BinaryStep(_Step):
    """A feature computed from two others, named ``name`` or after them."""

    name: str | None = None
    _operands: ClassVar[tuple[str, str]]
    _symbol: ClassVar[str]
    _component: ClassVar[type[StreamComponent]]

    def check(self, c: _Checks, loc: Loc) -> None:
        for operand in self._operands:
            c.known((*loc, operand), getattr(self, operand))

    def outputs(self, c: _Checks) -> set[str]:
        left, right = (getattr(self, o) for o in self._operands)
        return {self.name or f"{left}{self._symbol}{right}"} if {left, right} <= c.available else set()

    def build(self, schema: EventSchema, meta: list[str]) -> list[StreamComponent]:
        return [self._component(*(getattr(self, o) for o in self._operands), self.name)]


@_kind("features")
class RatioStep(_BinaryStep):
    kind: Literal["ratio"] = "ratio"
    numerator: str
    denominator: str

    _operands = ("numerator", "denominator")
    _symbol = "/"
    _component = RatioFeature
    examples: ClassVar[dict[str, dict[str, Any]]] = {"": {"numerator": "amount", "denominator": "price"}}


@_kind("features")
class DifferenceStep(_BinaryStep):
    kind: Literal["difference"] = "difference"
    left: str
    right: str

    _operands = ("left", "right")
    _symbol = "-"
    _component = DifferenceFeature
    examples: ClassVar[dict[str, dict[str, Any]]] = {
        "": {"left": "amount", "right": "price", "name": "amount_minus_price"}
    }


STEP_KINDS = frozenset(STEPS)


def _shorthand(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) else value


def _kind_of(value: Any) -> str | None:
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


def _union(section: str) -> Any:
    kinds = [kind for kind, cls in STEPS.items() if cls.section == section]
    tagged = tuple(Annotated[STEPS[kind], Tag(kind)] for kind in kinds)
    discriminator = Discriminator(
        _kind_of,
        custom_error_type="unknown_step_kind",
        custom_error_message=f"expected a step kind, one of: {', '.join(kinds)}",
    )
    return Annotated[_make_union(tagged), discriminator, BeforeValidator(_shorthand)]


def _make_union(members: tuple[Any, ...]) -> Any:
    from typing import Union

    return Union[members]  # noqa: UP007 - a tuple of members needs the subscript form


CleanerSpec = _union("cleaners")
FeatureSpec = _union("features")


def check_stream_steps(schema: EventSchema, cleaners: Sequence[Any], features: Sequence[Any]) -> list[tuple[Loc, str]]:
    """What is wrong with the steps given this schema, as ``(key path, reason)`` pairs.

    Examples
    --------
    >>> schema = EventSchema(id="id", event_time="ts", features={"amount": "float", "card": "category"})
    >>> check_stream_steps(schema, [], [WindowAggregatesStep(by="crad", fields=["amount"], windows=[3600])])
    [(('features', 0, 'by'), "unknown field 'crad'; known here: amount, card, id, ts")]
    """
    return _run_checks(schema, cleaners, features).problems


def model_fields(schema: EventSchema, cleaners: Sequence[Any], features: Sequence[Any]) -> set[str]:
    """Every field an event may carry to the models: the schema's and what the steps add.

    >>> schema = EventSchema(id="id", event_time="ts", features={"amount": "float", "card": "category"})
    >>> sorted(model_fields(schema, [], [WindowAggregatesStep(by="card", fields=["amount"], windows=[3600])]))[:4]
    ['amount', 'card', 'card.amount.max.1h', 'card.amount.mean.1h']
    """
    return _run_checks(schema, cleaners, features).available


def _run_checks(schema: EventSchema, cleaners: Sequence[Any], features: Sequence[Any]) -> _Checks:
    c = _Checks(schema)
    # The label is no input of the steps, but a feature named after it would be taken
    # out of every event with the label (stream/schema.py): never seen by a model.
    label = {schema.label} if schema.label is not None else set()
    for section, steps in (("cleaners", cleaners), ("features", features)):
        for i, step in enumerate(steps):
            step.check(c, (section, i))
            added = step.outputs(c)
            # A name written twice means the later step silently replaces the earlier
            # value (or a field of the event) for every model: refused, with the names.
            clash = sorted(added & (c.available | label))
            if clash:
                shown = ", ".join(map(repr, clash[:5])) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
                c.problem((section, i), f"writes {shown}, already a field of the event or of an earlier step; rename it")
            c.available.update(added)
    return c


def with_defaults(model: Any) -> Any:
    """``model`` (a pydantic config object unpickled from a snapshot), with each field it
    lacks, because the snapshot was written before the field existed, at its default;
    nested config objects too. Without it, reading such a field raises AttributeError and
    the whole snapshot is refused (the restored processor then takes the config's own,
    streamwise/reconcile.py)."""
    if isinstance(model, BaseModel):
        for name, field in type(model).model_fields.items():
            if name not in model.__dict__:
                model.__dict__[name] = field.get_default(call_default_factory=True)
        for value in model.__dict__.values():
            with_defaults(value)
    elif isinstance(model, dict):
        for value in model.values():
            with_defaults(value)
    elif isinstance(model, list):
        for value in model:
            with_defaults(value)
    return model


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
    meta = _meta_fields(schema)
    coercers: list[StreamComponent] = []
    steps: list[StreamComponent] = []
    for step in [*cleaners, *features]:
        # Coercion must see the raw JSON, before the schema rejects "12.5" for a float.
        (coercers if step.before_validation else steps).extend(step.build(schema, meta))
    return EventPipeline(schema, coercers, steps)


# In a step's reads: it reads every field the event has when its turn comes.
ANY_FIELD = "*"


def split_steps(
    cleaners: Sequence[Any], features: Sequence[Any], schema: EventSchema | None = None
) -> tuple[list[Any], list[Any]]:
    """The steps that run on the input partitions and those that run with the models,
    for ``scope: global``, each list in config order.

    A step whose state is per event or per key (:meth:`_Step.placement`) runs on the
    partitions, unless a step with global statistics before it writes a field it reads,
    or reads a field it writes: then it runs with the models, after them, as in one
    pipeline. Every step with global statistics runs with the models, so they see
    features computed over every event. Coercion, which needs the raw JSON, always runs
    on the partitions. Without a schema, the partitions take only the leading run of
    per-event and per-key steps.

    Examples
    --------
    >>> schema = EventSchema(id="id", key="card", event_time="ts", label="y",
    ...                      features={"amount": "float", "channel": {"type": "category", "required": False}})
    >>> route, learn = split_steps(
    ...     [CoerceStep(), ImputeStep(fields=["channel"]), DedupStep(), ClipStep(fields=["amount"])],
    ...     [WindowAggregatesStep(fields=["amount"], windows=["1h"]), CyclicTimeStep()], schema)
    >>> [s.kind for s in route], [s.kind for s in learn]
    (['coerce', 'dedup', 'cyclic_time'], ['impute', 'clip', 'window_aggregates'])
    """
    c = _Checks(schema) if schema is not None else None
    route: list[Any] = []
    learn: list[Any] = []
    later_reads: set[str] = set()
    later_writes: set[str] = set()
    for step in [*cleaners, *features]:
        local = step.before_validation or step.placement() != "global"
        if local and learn:
            writes = step.writes(c) if c is not None else set()
            if c is None or step.reads(c.schema) & later_writes or writes & later_reads:
                local = False
            elif writes and ANY_FIELD in later_reads:
                local = False
        if local:
            route.append(step)
        else:
            learn.append(step)
            if c is not None:
                later_reads |= step.reads(c.schema)
                later_writes |= step.writes(c)
        if c is not None:
            c.available.update(step.outputs(c))
    return route, learn


def build_learner_steps(schema: EventSchema, steps: Sequence[Any]) -> EventPipeline:
    """The steps that run with the models (:func:`split_steps`), as a pipeline that
    takes rows the partition stage made (:meth:`EventPipeline.process_row`)."""
    meta = _meta_fields(schema)
    return EventPipeline(schema, [], [c for step in steps for c in step.build(schema, meta)])


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
        self._batch = BatchDecoder(self.schema, self.decoder)
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
        # The decoder holds a pydantic model created at run time, which cannot pickle;
        # of it only the label classes seen are learned (EventDecoder.check_label).
        return {"schema": self.schema, "coercers": self.coercers, "steps": self.steps,
                "label_forms": self.decoder.label_forms}

    def __setstate__(self, state: dict[str, Any]) -> None:
        forms = state.pop("label_forms", {})  # none in snapshots written before it was kept
        state["schema"] = with_defaults(state["schema"])
        self.__dict__.update(state)
        self._init_derived()
        self.decoder.label_forms = forms

    @property
    def is_identity(self) -> bool:
        return not self.coercers and not self.steps

    def decode(
        self, value: bytes | None, record_time_s: float | None = None, label_source: str | None = None
    ) -> DecodedEvent:
        """A record's bytes to an event with its features; :class:`RejectedEvent` otherwise.

        ``record_time_s`` is the Kafka record's timestamp, held with the event time to
        the schema's ``max_future`` before any step (a watermark, a window) sees them.
        ``label_source``: the source whose category label forms the event's label is
        checked against (EventDecoder.check_form), before any step; None: not checked.
        """
        return self.process_json(self.decoder.parse(value), record_time_s, label_source)

    def decode_many(
        self,
        values: Sequence[bytes | None],
        record_times_s: Sequence[float | None] | None = None,
        label_source: str | None = None,
    ) -> list[DecodedEvent | RejectedEvent]:
        """:meth:`decode` for a whole poll: one event or rejection per value, in order.

        Validation runs over the poll at once (stream/batch_decode.py); the future check
        and the steps then run event by event in order, transform then learn, exactly as
        :meth:`decode` would have (the wall clock is read once for the poll). Coercers
        need the raw JSON, so a pipeline with coercion decodes one record at a time.
        """
        times = list(record_times_s) if record_times_s is not None else [None] * len(values)
        forms = label_source if self.decoder.checks_forms else None
        if self.coercers:
            return [self._decode_or_rejection(v, t, forms) for v, t in zip(values, times, strict=True)]
        results = self._batch.decode_many(values)
        schema = self.schema
        now = self.clock()
        if schema.event_time is None and not self.steps and forms is None:
            # The usual poll: only record timestamps to hold to the clock. A cheap bound
            # first (a second short of the limit, below any rounding), the exact rule then.
            latest = math.inf if schema.max_future is None else now + schema.max_future - 1.0
            for i, event in enumerate(results):
                t_record = times[i]
                if t_record is not None and t_record > latest and not isinstance(event, RejectedEvent):
                    try:
                        check_not_future(schema.max_future, t_record, None, now)
                    except RejectedEvent as e:
                        results[i] = e
            return results
        check_form, note_form = self.decoder.check_form, self.decoder.note_form
        for i, event in enumerate(results):
            if isinstance(event, RejectedEvent):
                continue
            # Event by event, in order: a label's form is judged against the events
            # accepted before it, and counts only once its event is accepted.
            labelled = forms is not None and event.y is not None
            try:
                if labelled:
                    check_form(event.y, forms)  # type: ignore[arg-type]
                t = None if schema.event_time is None else event_seconds(event.event_time, schema.event_time)
                check_not_future(schema.max_future, times[i], t, now)
                self.apply_steps(event, t)
            except RejectedEvent as e:
                results[i] = e
                continue
            if labelled:
                note_form(event.y, forms)  # type: ignore[arg-type]
        return results

    def _decode_or_rejection(
        self, value: bytes | None, record_time_s: float | None, label_source: str | None = None
    ) -> DecodedEvent | RejectedEvent:
        try:
            return self.decode(value, record_time_s, label_source)
        except RejectedEvent as e:
            return e

    def process_json(
        self, obj: Any, record_time_s: float | None = None, label_source: str | None = None
    ) -> DecodedEvent:
        """A parsed JSON value to an event with its features; :class:`RejectedEvent` otherwise."""
        for coercer in self.coercers:
            obj = coercer.transform_one(obj)
        event = self.decoder.validate(obj)
        labelled = label_source is not None and event.y is not None and self.decoder.checks_forms
        if labelled:
            self.decoder.check_form(event.y, label_source)  # type: ignore[arg-type]
        schema = self.schema
        t = None if schema.event_time is None else event_seconds(event.event_time, schema.event_time)
        check_not_future(schema.max_future, record_time_s, t, self.clock())
        self.apply_steps(event, t)
        if labelled:
            self.decoder.note_form(event.y, label_source)  # type: ignore[arg-type]
        return event

    def apply_steps(self, event: DecodedEvent, t: float | None) -> None:
        """Runs the steps on a validated event (``t``: its event time in seconds), in place."""
        if self.steps:
            # Kept once: the learner of scope: global steps an event the partition stage
            # already stepped, and the rules read the features as declared.
            if event.validated is None:
                event.validated = event.x
            event.x = self.process_row(self._row(event, t))

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
                if step.refused_action is not None:
                    self._activity[step.refused_action] += 1
                raise
            except ArithmeticError as e:
                raise RejectedEvent(step.stage, f"{type(step).__name__}: {type(e).__name__}: {e}") from None
        features = {k: v for k, v in x.items() if k not in self._meta}
        for name, value in features.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not is_finite_number(value):
                raise RejectedEvent(DeadLetterStage.FEATURES, f"{name} is not a finite number: {value!r}"[:200])
        outputs = [*inputs[1:], x]
        for step, seen, made in zip(self.steps, inputs, outputs, strict=True):
            for action, n in step.activity(seen, made):
                self._activity[action] += n
            try:
                step.learn_one(seen)
            except ArithmeticError as e:
                raise RejectedEvent(step.stage, f"{type(step).__name__}: {type(e).__name__}: {e}") from None
        return features
