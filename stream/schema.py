"""Event schema: from the pipeline config to a pydantic model that validates each event.

An event is a JSON object. The schema names the id field, the optional key, label and
event-time fields, and the features with their types. :class:`EventDecoder` turns the
raw bytes of a Kafka record into a :class:`DecodedEvent` or raises
:class:`RejectedEvent`, whose ``stage`` and ``reason`` the runner writes into the
dead-letter headers. Nothing else may escape it: a malformed record must never stop
the service.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError
from streamwise.core.jsonbytes import UnreadableRecord, loads_bounded
from streamwise.core.stages import DeadLetterStage

FieldType = Literal["float", "int", "bool", "category", "text", "timestamp"]
LabelType = Literal["bool", "int", "float", "category"]

# Protective defaults, each overridable in the schema. A string field costs memory in
# every state that keeps it (a de-duplicator's window, a key's window of events, a
# category's counters), so each is bounded before any state sees it.
DEFAULT_MAX_ID_LENGTH = 1024  # ids, keys and category labels, in characters
DEFAULT_MAX_CATEGORY_LENGTH = 1024
DEFAULT_MAX_TEXT_LENGTH = 65_536
# Integers beyond int64 overflow every numeric library a model uses (torch, numpy) and
# the JSON writer of prediction records; they are refused at validation.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# The event times a datetime can hold, years 1 to 9999 in UTC, in epoch seconds. A number
# of seconds outside them is refused where it is read: what formats times as dates (a
# forecast's event times) would otherwise fail on it later, and blame a model for a bad
# input. ISO 8601 text is a datetime already, so it is always one of them but for its
# zone's offset at the two ends; what formats times copes with those few hours.
FIRST_SECOND = dt.datetime.min.replace(tzinfo=dt.UTC).timestamp()
PAST_LAST_SECOND = (dt.datetime.max.replace(tzinfo=dt.UTC) - dt.timedelta(seconds=1)).timestamp() + 1.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
DURATION_HINT = 'expected a duration like "1h"'


def parse_duration(value: Any) -> float:
    """Seconds in a duration written as ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` or a number of seconds.

    Examples
    --------
    >>> parse_duration("1h"), parse_duration("1.5d"), parse_duration(30)
    (3600.0, 129600.0, 30.0)
    >>> parse_duration("an hour")
    Traceback (most recent call last):
    ...
    ValueError: expected a duration like "1h", got 'an hour'
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"{DURATION_HINT}, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{DURATION_HINT}, got {value!r}")
    return seconds


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError):
        raise ValueError(DURATION_HINT) from None


# A duration in a config file ("5m", "1h", or seconds), validated to seconds.
Duration = Annotated[float, BeforeValidator(_duration)]


def _refuse_repeats(key: str, values: list[Any]) -> None:
    # Keyed by type too: True and 1 are equal in Python but distinct labels in JSON.
    seen: set[tuple[type, Any]] = set()
    for v in values:
        if (type(v), v) in seen:
            raise ValueError(f"{key}: {v!r} is listed twice")
        seen.add((type(v), v))


def _refuse_aliases(classes: list[Any]) -> None:
    """Refuses two classes that are one: equal in Python (River keys its classes by them,
    so True and 1 become one class) or written alike as JSON object keys (the record's
    probabilities would repeat the key "1" for 1 and "1", and a JSON reader keep one)."""
    by_value: dict[Any, Any] = {}
    by_written: dict[str, Any] = {}
    for c in classes:
        written = _json_key(c)
        other = by_value.get(c, by_written.get(written, _NOT_SEEN))
        if other is not _NOT_SEEN:
            raise ValueError(
                f"classes: {other!r} and {c!r} are one class to the models or in a prediction record; "
                "send each class as one JSON type"
            )
        by_value[c] = by_written[written] = c


# What the categories of a field of each type must be: (type, but not, in words). A
# category or timestamp field takes any.
_CATEGORY_KINDS: dict[str, tuple[type | tuple[type, ...], type | tuple[type, ...], str]] = {
    "bool": (bool, (), "a bool"),
    "int": (int, bool, "an int"),
    "float": (int, bool, "a number"),
    "text": (str, (), "a string"),
}
# 2**63 as a float: the nearest float to either of int64's limits.
_TWO_63 = float(2**63)


class FieldSpec(BaseModel):
    """How one event field is typed and bounded. ``"float"`` alone is a shorthand."""

    model_config = ConfigDict(extra="forbid")

    type: FieldType = "float"
    required: bool = True
    min: float | None = None
    max: float | None = None
    categories: list[str | int | bool] | None = None
    # Longest string accepted, in characters (category and text fields); the default
    # depends on the type: DEFAULT_MAX_CATEGORY_LENGTH or DEFAULT_MAX_TEXT_LENGTH.
    max_length: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value}
        if isinstance(value, dict) and "type" not in value and isinstance(value.get("categories"), list):
            # Categories without a type: the type they are written in (before the types
            # of categories were checked, they alone decided what passed, whatever the
            # default type said; `{categories: [pos, online]}` is a category field).
            cats = value["categories"]
            if cats and all(isinstance(c, bool) for c in cats):
                kind = "bool"
            elif cats and all(isinstance(c, int) and not isinstance(c, bool) for c in cats):
                kind = "int"
            else:
                kind = "category"
            return {**value, "type": kind}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        # A bound that is NaN compares false with everything, and min > max accepts
        # nothing: either would dead-letter every event, so both are refused here.
        for side in ("min", "max"):
            bound = getattr(self, side)
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"{side}: must be a finite number, got {bound}")
        if self.type == "int":
            self._int_bounds()
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}: no value could pass")
        if self.categories is not None:
            if not self.categories:
                raise ValueError("categories: empty, so no value could pass; list them or leave the key out")
            _refuse_repeats("categories", self.categories)
            # The categories replace the type in validation (a Literal of them): one of
            # another type would let that type through, a string into a bool field.
            kind = _CATEGORY_KINDS.get(self.type)
            if kind is not None:
                wrong = [c for c in self.categories if not isinstance(c, kind[0]) or isinstance(c, kind[1])]
                if wrong:
                    raise ValueError(f"categories: {wrong[0]!r} is not {kind[2]}, and the field's type is {self.type}")
        return self

    def _int_bounds(self) -> None:
        # An int field's bound becomes an integer bound of its validator, which cannot be
        # built from 0.5 or from a number beyond int64 (the bounds are read as floats, so
        # int64's own limits round out of it too). Refused here, at the key, rather than
        # by the schema's validator when the first model is built.
        for side in ("min", "max"):
            bound = getattr(self, side)
            if bound is None:
                continue
            if not bound.is_integer():
                raise ValueError(f"{side}: {bound!r} is not a whole number, and this is an int field")
            if not -_TWO_63 < bound < _TWO_63:
                raise ValueError(
                    f"{side}: {bound!r} is beyond int64, the range of an int field; leave {side} out for int64's own limit"
                )

    @property
    def string_limit(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return DEFAULT_MAX_TEXT_LENGTH if self.type == "text" else DEFAULT_MAX_CATEGORY_LENGTH


class EventSchema(BaseModel):
    """The fields of one pipeline's events (the ``schema:`` block of its YAML)."""

    model_config = ConfigDict(extra="forbid")

    id: str = "id"
    key: str | None = None
    label: str | None = None
    label_type: LabelType = "bool"
    event_time: str | None = None
    features: dict[str, FieldSpec] = Field(min_length=1)
    # Larger events (and label records) are dead-lettered before JSON parsing: a bound
    # on per-event work. Nesting is bounded by the JSON parser (orjson: 1,024 levels).
    max_event_bytes: int = Field(1_048_576, ge=64)
    # Longest id, key or category label, in characters.
    max_id_length: int = Field(DEFAULT_MAX_ID_LENGTH, ge=1)
    # The labels a learner may see. When given, an event or label record with any other
    # label is dead-lettered (stage label) instead of reaching the models.
    classes: list[str | int | bool] | None = Field(None, min_length=2)
    # The range of a numeric label (label_type int or float); a label outside it is
    # dead-lettered (stage label): one absurd target (1e308 where prices are in the
    # thousands) pulls a regression model's weights off for good, yet its answers stay
    # finite, so nothing puts it back (models/recovery.py acts on NaN only).
    label_min: float | None = None
    label_max: float | None = None
    # How far ahead of the clock a time may be: an event time ahead of its record's
    # timestamp, or a record timestamp ahead of the wall clock. Such an event is
    # dead-lettered (stage clean) before it can move a watermark or a label-join clock.
    # None turns the check off.
    max_future: Duration | None = 3600.0

    @model_validator(mode="after")
    def _distinct_roles(self) -> EventSchema:
        if "" in self.features:
            raise ValueError("features: a field with an empty name")
        for role in ("id", "label", "event_time"):
            name = getattr(self, role)
            if name is not None and name in self.features:
                raise ValueError(f"{role} field {name!r} is also listed under features")
        # One field, two roles: every event would be refused (an id is not a bool label).
        roles = [(role, getattr(self, role)) for role in ("id", "label", "event_time")]
        for i, (role, name) in enumerate(roles):
            for other, other_name in roles[:i]:
                if name is not None and name == other_name:
                    raise ValueError(f"{role} field {name!r} is also the {other} field; each field has one role")
        # The key may be the id (one entity per event) or a feature (its value is read as
        # declared), but a label or an event time as key would make every event without
        # a label, or every time that is not an id, fail the key's validation.
        for role in ("label", "event_time"):
            if self.key is not None and self.key == getattr(self, role):
                raise ValueError(f"key field {self.key!r} is also the {role} field; each field has one role")
        for side in ("label_min", "label_max"):
            bound = getattr(self, side)
            if bound is None:
                continue
            if self.label_type not in ("int", "float"):
                raise ValueError(f"{side}: bounds a numeric label, and label_type is {self.label_type}")
            if not math.isfinite(bound):
                raise ValueError(f"{side}: must be a finite number, got {bound}")
        low, high = self.label_min, self.label_max
        if low is not None and high is not None and (
            low > high or (self.label_type == "int" and math.ceil(low) > math.floor(high))
        ):
            raise ValueError(f"label_min {low:g} and label_max {high:g}: no {self.label_type} label could pass")
        if self.classes is not None:
            kind = {"bool": bool, "int": int, "float": float, "category": (str, int, bool)}[self.label_type]
            wrong = [c for c in self.classes if not isinstance(c, kind) or (kind is int and isinstance(c, bool))]
            if wrong:
                raise ValueError(f"classes: {wrong[0]!r} is not a {self.label_type} label")
            _refuse_repeats("classes", self.classes)
            _refuse_aliases(self.classes)
        return self


class RejectedEvent(Exception):
    """A record that cannot become an event. ``stage`` is a
    :class:`~streamwise.core.stages.DeadLetterStage`: ``decode`` or ``validate`` from the
    schema, ``label`` for a label outside the declared classes, ``clean`` from a cleaner
    or the time bounds, ``features`` from a feature extractor."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclass(slots=True)
class DecodedEvent:
    id: Any
    x: dict[str, Any]
    y: Any | None
    key: str | None
    event_time: Any | None
    # The features as validated, kept when cleaners or extractors replace ``x``: business
    # rules (models/rules.py) read what the event declared, not a scaled or imputed value.
    validated: dict[str, Any] | None = None


def to_epoch_seconds(value: Any) -> float:
    """An event time as seconds since the Unix epoch: a number of seconds, or ISO 8601 text.

    Text without a zone is read as UTC, so the same event gives the same features on
    every machine.

    Examples
    --------
    >>> to_epoch_seconds(1700000000), to_epoch_seconds("2023-11-14T22:13:20Z")
    (1700000000.0, 1700000000.0)
    >>> to_epoch_seconds("yesterday")
    Traceback (most recent call last):
    ...
    ValueError: not a timestamp: 'yesterday'
    >>> to_epoch_seconds(-1e11)
    Traceback (most recent call last):
    ...
    ValueError: not a time between the years 1 and 9999 (UTC): -100000000000.0
    """
    if is_finite_number(value):
        seconds = float(value)
        if not FIRST_SECOND <= seconds < PAST_LAST_SECOND:
            # Milliseconds since the epoch (Kafka's and Java's unit) are the usual cause.
            hint = " (milliseconds? times are seconds)" if PAST_LAST_SECOND <= seconds < 1000 * PAST_LAST_SECOND else ""
            raise ValueError(f"not a time between the years 1 and 9999 (UTC): {value!r}"[:100] + hint)
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not a timestamp: {value[:64]!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp()
    else:
        raise ValueError(f"not a timestamp: {value!r}"[:100])
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite timestamp: {value!r}"[:100])
    return seconds


def event_seconds(value: Any, field: str) -> float | None:
    """The event time in ``value`` as epoch seconds; an unreadable one is refused (stage ``validate``).

    The one reader of event times: the pipeline, the time bounds and the lateness
    cleaner all go through it, so one bad time gets one answer wherever it is read.

    Examples
    --------
    >>> event_seconds("1970-01-01T00:01:00", "ts"), event_seconds(None, "ts")
    (60.0, None)
    >>> try:
    ...     event_seconds("soon", "ts")
    ... except RejectedEvent as e:
    ...     print(e.stage, e.reason)
    validate ts: not a timestamp: 'soon'
    """
    if value is None:
        return None
    try:
        return to_epoch_seconds(value)
    except ValueError as e:
        raise RejectedEvent(DeadLetterStage.VALIDATE, f"{field}: {e}") from None


def check_not_future(
    max_future: float | None,
    record_time_s: float | None,
    event_time_s: float | None,
    now: float,
    stage: str = DeadLetterStage.CLEAN,
) -> None:
    """Refuses a record timestamp more than ``max_future`` seconds ahead of ``now``, and an
    event time that far ahead of its record's timestamp (or of ``now`` without one).

    The record timestamp is held to the wall clock because a producer's clock is the
    only thing that sets it; the event time is held to the record's timestamp, which
    makes that half of the check the same on every replay.

    Examples
    --------
    >>> check_not_future(300, record_time_s=1000.0, event_time_s=1200.0, now=1000.0)
    >>> try:
    ...     check_not_future(300, record_time_s=1000.0, event_time_s=253402300799.0, now=1000.0)
    ... except RejectedEvent as e:
    ...     print(e.stage, e.reason)
    clean event time is 253402299799s ahead of its record timestamp, max_future is 300s
    >>> try:
    ...     check_not_future(300, record_time_s=1000.0, event_time_s=1e308, now=1000.0)
    ... except RejectedEvent as e:
    ...     print(e.reason)
    event time is 1e+308s ahead of its record timestamp, max_future is 300s
    >>> check_not_future(300, record_time_s=-0.001, event_time_s=900.0, now=1000.0)  # no timestamp: the clock
    """
    if max_future is None:
        return
    if record_time_s is not None and record_time_s <= 0:
        # Kafka's "no timestamp" (-1, from producers of the v0 message format) or the
        # epoch itself: no record is from then, and holding the event time to it would
        # refuse every event of such a producer; the event time is held to the clock.
        record_time_s = None
    if record_time_s is not None and record_time_s - now > max_future:
        raise RejectedEvent(
            stage, f"record timestamp is {_seconds(record_time_s - now)} ahead of the clock, max_future is {max_future:g}s"
        )
    if event_time_s is not None:
        reference, what = (now, "the clock") if record_time_s is None else (record_time_s, "its record timestamp")
        if event_time_s - reference > max_future:
            raise RejectedEvent(
                stage, f"event time is {_seconds(event_time_s - reference)} ahead of {what}, max_future is {max_future:g}s"
            )


def _seconds(s: float) -> str:
    # Whole seconds, but not 300 digits of them for a time like 1e308.
    return f"{s:.0f}s" if s < 1e15 else f"{s:.3g}s"


def _bounded_text(limit: int) -> Any:
    return Annotated[str, StringConstraints(max_length=limit)]


def _bounded_id(limit: int) -> Any:
    """An id or key: a string of at most ``limit`` characters or an int64."""
    return _bounded_text(limit) | Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


def _python_type(spec: FieldSpec) -> Any:
    bounds: dict[str, Any] = {}
    if spec.min is not None:
        bounds["ge"] = spec.min
    if spec.max is not None:
        bounds["le"] = spec.max
    if spec.categories is not None:
        return _one_of(spec)
    match spec.type:
        case "float":
            # Strict mode still accepts a JSON integer for a float, never a string.
            return Annotated[float, Field(allow_inf_nan=False, **bounds)]
        case "int":
            bounds.setdefault("ge", INT64_MIN)
            bounds.setdefault("le", INT64_MAX)
            return Annotated[int, Field(**bounds)]
        case "bool":
            return StrictBool
        case "category" | "text":
            return _bounded_text(spec.string_limit)
        case "timestamp":
            # Seconds since the epoch, or an ISO-8601 string.
            return float | _bounded_text(DEFAULT_MAX_ID_LENGTH)
    raise AssertionError(spec.type)


def _one_of(spec: FieldSpec) -> Any:
    """A field's categories, told apart by type as JSON tells them: pydantic's Literal
    compares by equality, so ``true`` passed as the category 1 (and became 1), ``1`` as
    ``True``, and an int field took ``1.0``. A float field's categories are numbers, so
    1 and 1.0 are one there. The error reads as the Literal's did.

    Examples
    --------
    >>> check = _one_of(FieldSpec(type="category", categories=["x", 1])).__metadata__[0].func
    >>> check("x"), check(1)
    ('x', 1)
    >>> check(True)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.PydanticCustomError: Input should be 'x' or 1
    """
    numbers = spec.type == "float"

    def key(v: Any) -> tuple[type, Any]:
        if numbers and type(v) in (int, float):
            return (float, float(v))
        return (type(v), v)

    allowed = {key(c): c for c in spec.categories or []}
    shown = [repr(c) for c in spec.categories or []]
    expected = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"

    def check(v: Any) -> Any:
        try:
            return allowed[key(v)]
        except (KeyError, TypeError):  # TypeError: a list or an object, which cannot be one
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected}) from None

    return Annotated[Any, PlainValidator(check)]


def _label_type(label_type: LabelType, max_length: int) -> Any:
    int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
    return {
        "bool": StrictBool,
        "int": int64,
        "float": Annotated[float, Field(allow_inf_nan=False)],
        "category": _bounded_text(max_length) | int64 | bool,
    }[label_type]


class EventDecoder:
    """Decodes and validates raw record values against an :class:`EventSchema`.

    Examples
    --------
    >>> schema = EventSchema(id="id", label="y", features={"amount": {"min": 0}, "n": "int"})
    >>> decoder = EventDecoder(schema)
    >>> event = decoder.decode(b'{"id": 7, "amount": 12.5, "n": 3, "y": true}')
    >>> event.id, event.x, event.y
    (7, {'amount': 12.5, 'n': 3}, True)
    >>> try:
    ...     decoder.decode(b'{"id": 8, "amount": -1, "n": 3}')
    ... except RejectedEvent as e:
    ...     print(e.stage, e.reason)
    validate amount: Input should be greater than or equal to 0
    """

    def __init__(self, schema: EventSchema) -> None:
        self.schema = schema
        fields: dict[str, Any] = {}
        # Field names in events need not be Python identifiers, so the model uses
        # positional names and the event's names as aliases.
        self._names: list[tuple[str, str]] = []

        def add(name: str, annotation: Any, required: bool) -> None:
            internal = f"f{len(fields)}"
            default = ... if required else None
            if not required:
                annotation = annotation | None
            fields[internal] = (annotation, Field(default, alias=name))
            self._names.append((internal, name))

        add(schema.id, _bounded_id(schema.max_id_length), True)
        if schema.key is not None and schema.key != schema.id and schema.key not in schema.features:
            add(schema.key, _bounded_id(schema.max_id_length), True)
        if schema.label is not None:
            add(schema.label, _label_type(schema.label_type, schema.max_id_length), False)
        if schema.event_time is not None:
            add(schema.event_time, float | _bounded_text(DEFAULT_MAX_ID_LENGTH), False)
        self._feature_fields = []
        for name, spec in schema.features.items():
            add(name, _python_type(spec), spec.required)
            self._feature_fields.append((f"f{len(fields) - 1}", name))
        self._by_alias = dict((alias, internal) for internal, alias in self._names)
        self._timestamps = timestamp_features(schema)
        self._classes = None if schema.classes is None else frozenset(map(label_key, schema.classes))
        # Category labels only: each class as first accepted, per source, under its
        # Python value and its JSON key (check_form). Learned state: EventPipeline pickles it.
        self.label_forms: dict[tuple[str, str, Any], Any] = {}
        self._category = schema.label_type == "category"
        self._label_range = (
            None if schema.label_min is None and schema.label_max is None
            else (-math.inf if schema.label_min is None else schema.label_min,
                  math.inf if schema.label_max is None else schema.label_max)
        )
        self._model = pydantic.create_model(  # type: ignore[call-overload]
            "Event",
            __config__=ConfigDict(strict=True, extra="ignore", populate_by_name=False),
            **fields,
        )

    def decode(self, value: bytes | None) -> DecodedEvent:
        return self.validate(self.parse(value))

    def check_label(self, y: Any) -> None:
        """Refuses (stage ``label``) a label outside the schema's declared ``classes``.

        Examples
        --------
        >>> decoder = EventDecoder(EventSchema(label_type="category", classes=["cat", "dog"], features={"w": "float"}))
        >>> decoder.check_label("dog")
        >>> try:
        ...     decoder.check_label("cow")
        ... except RejectedEvent as e:
        ...     print(e.stage, e.reason)
        label label 'cow' is not one of the declared classes ('cat', 'dog')
        """
        if self._classes is not None and label_key(y) not in self._classes:
            shown = ", ".join(map(repr, self.schema.classes or []))
            reason = f"label {y!r} is not one of the declared classes ({shown})"
            raise RejectedEvent(DeadLetterStage.LABEL, reason[:300])
        if self._label_range is not None and not self._label_range[0] <= y <= self._label_range[1]:
            low, high = self._label_range
            raise RejectedEvent(
                DeadLetterStage.LABEL, f"label {y!r} is outside schema.label_min/label_max [{low!r}, {high!r}]"[:300]
            )

    @property
    def checks_forms(self) -> bool:
        return self._category

    def check_form(self, y: Any, source: str) -> None:
        """Refuses a category label that is a class seen before from ``source``, written
        as another JSON type: ``true`` after ``1`` (River keys classes by Python equality,
        so the two would merge), or ``"1"`` after ``1`` (one JSON key in the record's
        probabilities, which a reader keeps only one of). The first label of each class
        that was accepted (:meth:`note_form`) fixes how it is written: producers that
        disagree send a bad input, not a new class. Changes nothing.

        Each source (inline labels, the labels topic, the learn topic) keeps its own
        forms, each read in its own record order: a check across two topics would
        depend on how polls interleave them, and a replay would decide otherwise.

        Examples
        --------
        >>> decoder = EventDecoder(EventSchema(label_type="category", features={"w": "float"}))
        >>> for y in (1, "cat", 1):
        ...     decoder.check_form(y, "inline"); decoder.note_form(y, "inline")
        >>> for y in ("1", True):
        ...     try:
        ...         decoder.check_form(y, "inline")
        ...     except RejectedEvent as e:
        ...         print(e.stage, e.reason)
        label label '1' (str) is the class 1 (int) seen before, written as another JSON type
        label label True (bool) is the class 1 (int) seen before, written as another JSON type
        >>> decoder.check_form("1", "labels")  # another source: its own first form
        """
        forms = self.label_forms
        for form in ((source, "value", y), (source, "json", _json_key(y))):
            seen = forms.get(form, _NOT_SEEN)
            if seen is not _NOT_SEEN and type(seen) is not type(y):
                raise RejectedEvent(
                    DeadLetterStage.LABEL,
                    f"label {y!r} ({type(y).__name__}) is the class {seen!r} ({type(seen).__name__}) seen before, "
                    "written as another JSON type"[:300],
                )

    def note_form(self, y: Any, source: str) -> None:
        """Records how an accepted label of ``source`` writes its class (see :meth:`check_form`)."""
        forms = self.label_forms
        if (source, "value", y) in forms or len(forms) >= _MAX_LABEL_FORMS:
            return
        forms[source, "value", y] = y
        forms[source, "json", _json_key(y)] = y

    def parse(self, value: bytes | None) -> Any:
        """The JSON value in a record's bytes, before validation; :class:`RejectedEvent` if none."""
        try:
            return loads_bounded(value, self.schema.max_event_bytes, "event")
        except UnreadableRecord as e:
            raise RejectedEvent(DeadLetterStage.DECODE, str(e)) from None

    def validate(self, obj: Any) -> DecodedEvent:
        if not isinstance(obj, dict):
            raise RejectedEvent(DeadLetterStage.VALIDATE, f"event must be a JSON object, got {type(obj).__name__}")
        try:
            event = self._model.model_validate(obj)
        except pydantic.ValidationError as e:
            raise RejectedEvent(DeadLetterStage.VALIDATE, _describe(e, self._names)) from None
        values = event.__dict__
        x = {}
        for internal, name in self._feature_fields:
            v = values[internal]
            if v is not None:
                x[name] = v
        if self._timestamps:
            to_seconds(x, self._timestamps)
        s = self.schema
        key = obj.get(s.key) if s.key is not None else None
        y = values[self._by_alias[s.label]] if s.label is not None else None
        if y is not None:
            self.check_label(y)
        t = values[self._by_alias[s.event_time]] if s.event_time is not None else None
        return DecodedEvent(id=values["f0"], x=x, y=y, key=None if key is None else str(key), event_time=t)


def _json_key(y: Any) -> str:
    """How a class is written as a JSON object key (the record's probabilities)."""
    return "true" if y is True else "false" if y is False else str(y)


_NOT_SEEN = object()
# Two entries per class and source: past 50,000 classes (a label that is really an id),
# new ones go unchecked rather than the state growing with the stream.
_MAX_LABEL_FORMS = 100_000


def timestamp_features(schema: EventSchema) -> list[str]:
    return [name for name, spec in schema.features.items() if spec.type == "timestamp"]


def to_seconds(x: dict[str, Any], names: list[str]) -> None:
    """Turns the event's ``timestamp`` features into epoch seconds, as event times are: the
    models and steps see one number whatever the event wrote (seconds or ISO 8601), and
    an unreadable time is refused (stage ``validate``) instead of reaching a model as text,
    on which a scaler raises at every event and the model never learns."""
    for name in names:
        v = x.get(name)
        if v is not None:
            x[name] = event_seconds(v, name)


def label_key(y: Any) -> tuple[type, Any]:
    """A label as a set member: ``True`` and ``1`` are different labels."""
    return (type(y), y)


def _describe(error: pydantic.ValidationError, names: list[tuple[str, str]]) -> str:
    aliases = dict(names)
    parts = []
    for err in error.errors(include_url=False)[:3]:
        loc = ".".join(aliases.get(str(p), str(p)) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    more = error.error_count() - 3
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def is_finite_number(v: Any) -> bool:
    """True for an int or float (not a bool) that fits a finite float64.

    Examples
    --------
    >>> is_finite_number(1.5), is_finite_number(True), is_finite_number(float("nan")), is_finite_number(10**400)
    (True, False, False, False)
    """
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float64's range
        return False
