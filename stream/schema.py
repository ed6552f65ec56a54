"""Event schema: from the pipeline config to a pydantic model that validates each event.

An event is a JSON object. The schema names the id field, the optional key, label and
event-time fields, and the features with their types. :class:`EventDecoder` turns the
raw bytes of a Kafka record into a :class:`DecodedEvent` or raises
:class:`RejectedEvent`, whose ``stage`` and ``reason`` the runner writes into the
dead-letter headers. Nothing else may escape it: a malformed record must never stop
the service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from streamwise.core.stages import DeadLetterStage

FieldType = Literal["float", "int", "bool", "category", "text", "timestamp"]
LabelType = Literal["bool", "int", "float", "category"]


class FieldSpec(BaseModel):
    """How one event field is typed and bounded. ``"float"`` alone is a shorthand."""

    model_config = ConfigDict(extra="forbid")

    type: FieldType = "float"
    required: bool = True
    min: float | None = None
    max: float | None = None
    categories: list[str | int | bool] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value


class EventSchema(BaseModel):
    """The fields of one pipeline's events (the ``schema:`` block of its YAML)."""

    model_config = ConfigDict(extra="forbid")

    id: str = "id"
    key: str | None = None
    label: str | None = None
    label_type: LabelType = "bool"
    event_time: str | None = None
    features: dict[str, FieldSpec] = Field(min_length=1)
    # Larger events are dead-lettered before JSON parsing: a bound on per-event work.
    max_event_bytes: int = Field(1_048_576, ge=64)

    @model_validator(mode="after")
    def _distinct_roles(self) -> EventSchema:
        for role in ("id", "label", "event_time"):
            name = getattr(self, role)
            if name is not None and name in self.features:
                raise ValueError(f"{role} field {name!r} is also listed under features")
        return self


class RejectedEvent(Exception):
    """A record that cannot become an event. ``stage`` is a
    :class:`~streamwise.core.stages.DeadLetterStage`: ``decode`` or ``validate`` from the
    schema, ``clean`` from a cleaner, ``features`` from a feature extractor."""

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




def _python_type(spec: FieldSpec) -> Any:
    bounds: dict[str, Any] = {}
    if spec.min is not None:
        bounds["ge"] = spec.min
    if spec.max is not None:
        bounds["le"] = spec.max
    if spec.categories is not None:
        return Literal[tuple(spec.categories)]
    match spec.type:
        case "float":
            # Strict mode still accepts a JSON integer for a float, never a string.
            return Annotated[float, Field(allow_inf_nan=False, **bounds)]
        case "int":
            return Annotated[int, Field(**bounds)]
        case "bool":
            return StrictBool
        case "category" | "text":
            return str
        case "timestamp":
            # Seconds since the epoch, or an ISO-8601 string.
            return float | str
    raise AssertionError(spec.type)


def _label_type(label_type: LabelType) -> Any:
    return {
        "bool": StrictBool,
        "int": int,
        "float": Annotated[float, Field(allow_inf_nan=False)],
        "category": str | int | bool,
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

        add(schema.id, str | int, True)
        if schema.key is not None and schema.key != schema.id and schema.key not in schema.features:
            add(schema.key, str | int, True)
        if schema.label is not None:
            add(schema.label, _label_type(schema.label_type), False)
        if schema.event_time is not None:
            add(schema.event_time, float | str, False)
        self._feature_fields = []
        for name, spec in schema.features.items():
            add(name, _python_type(spec), spec.required)
            self._feature_fields.append((f"f{len(fields) - 1}", name))
        self._by_alias = dict((alias, internal) for internal, alias in self._names)
        self._model = pydantic.create_model(  # type: ignore[call-overload]
            "Event",
            __config__=ConfigDict(strict=True, extra="ignore", populate_by_name=False),
            **fields,
        )

    def decode(self, value: bytes | None) -> DecodedEvent:
        return self.validate(self.parse(value))

    def parse(self, value: bytes | None) -> Any:
        """The JSON value in a record's bytes, before validation; :class:`RejectedEvent` if none."""
        schema = self.schema
        if value is None:
            raise RejectedEvent(DeadLetterStage.DECODE, "record has no value (tombstone)")
        if len(value) > schema.max_event_bytes:
            raise RejectedEvent(
                DeadLetterStage.DECODE, f"event of {len(value)} bytes exceeds max_event_bytes={schema.max_event_bytes}"
            )
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RejectedEvent(DeadLetterStage.DECODE, f"not UTF-8: {e}") from None
        try:
            # orjson: a quarter of json's time per event (measured), and strict JSON:
            # NaN and Infinity are refused, nesting is bounded.
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise RejectedEvent(DeadLetterStage.DECODE, f"not JSON: {e}") from None
        return obj

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
        s = self.schema
        key = obj.get(s.key) if s.key is not None else None
        y = values[self._by_alias[s.label]] if s.label is not None else None
        t = values[self._by_alias[s.event_time]] if s.event_time is not None else None
        return DecodedEvent(id=values["f0"], x=x, y=y, key=None if key is None else str(key), event_time=t)


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
