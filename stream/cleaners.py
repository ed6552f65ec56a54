"""Streaming cleaners: repair or refuse each event with what the stream has taught so far.

Each cleaner is a River transformer (see :mod:`streamwise.stream.base`). Used by the
service, every cleaner transforms an event with its state from *before* the event and
then learns from it, the way River evaluates models prequentially; a refused event
raises :class:`~streamwise.stream.schema.RejectedEvent` with stage ``"clean"`` and is
dead-lettered, never silently dropped.

Memory is bounded by construction: a fixed number of statistics per declared field,
and a fixed-size window of event ids.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from river import stats
from streamwise.core.ids import join_id
from streamwise.core.stages import CleanerAction, DeadLetterStage
from streamwise.stream.base import (
    RejectedEvent,
    StreamComponent,
    finite_or,
    is_finite_number,
)
from streamwise.stream.schema import event_seconds

__all__ = ["TypeCoercer", "RunningImputer", "RunningQuantileClipper", "Deduplicator", "LatenessPolicy"]

# Spellings of "no value" seen in CSV exports and hand-written producers.
_MISSING_TEXT = frozenset({"", "na", "n/a", "nan", "null", "none", "nil", "-", "?"})
_TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE_TEXT = frozenset({"false", "f", "no", "n", "0", "off"})


class TypeCoercer(StreamComponent):
    """Turns numeric strings into numbers and yes/no spellings into booleans.

    It runs on the raw JSON object, before schema validation, so that ``"12.50"``
    reaches a ``float`` field as ``12.5``; text that only says "no value" (``""``,
    ``"NA"``, ``"null"``) removes the field, so that an imputer can fill it or the schema
    rejects it when the field is required. Anything it cannot coerce is left for the
    schema to reject with a precise reason. Stateless.

    Parameters
    ----------
    types
        Field name to declared type: ``float``, ``int``, ``bool``, ``category``,
        ``text`` or ``timestamp``.

    Examples
    --------
    >>> coerce = TypeCoercer({"amount": "float", "n": "int", "online": "bool", "city": "category"})
    >>> coerce.transform_one({"amount": " 12.50", "n": "3", "online": "yes", "city": "NA", "other": "7"})
    {'amount': 12.5, 'n': 3, 'online': True, 'other': '7'}
    >>> coerce.transform_one({"amount": "twelve", "n": "3.5", "online": 0})
    {'amount': 'twelve', 'n': '3.5', 'online': False}
    >>> coerce.transform_one({"amount": "1_000", "n": "١٢"})  # Python reads them; JSON does not
    {'amount': '1_000', 'n': '١٢'}
    """

    stage: ClassVar[str] = DeadLetterStage.CLEAN

    def __init__(self, types: Mapping[str, str]) -> None:
        self.types = dict(types)

    def transform_one(self, x: Any) -> Any:
        if not isinstance(x, dict):
            return x  # the schema rejects non-objects with the right message
        out = dict(x)
        for name, kind in self.types.items():
            if name not in out:
                continue
            value = out[name]
            if isinstance(value, str) and value.strip().lower() in _MISSING_TEXT:
                del out[name]
                continue
            out[name] = _coerce(value, kind)
        return out


def _coerce(value: Any, kind: str) -> Any:
    if isinstance(value, str) and kind in ("float", "timestamp", "int") and (not value.isascii() or "_" in value):
        # Python's float() and int() also read "1_000" and non-ASCII digits ("١٢"): a
        # number written as JSON text is ASCII without separators; the rest stays text.
        return value
    if kind in ("float", "timestamp") and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if kind == "int" and isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return value
        return int(number) if math.isfinite(number) and number.is_integer() else value
    if kind == "int" and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if kind == "bool":
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _TRUE_TEXT:
                return True
            if text in _FALSE_TEXT:
                return False
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)
    return value


class _BoundedMode:
    """The most frequent value, approximately, in ``capacity`` counters (Misra–Gries).

    Exact while fewer than ``capacity`` distinct values were seen; afterwards any value
    more frequent than 1/capacity of the stream is still kept.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.counts: dict[Any, int] = {}

    def update(self, value: Any) -> None:
        counts = self.counts
        if value in counts:
            counts[value] += 1
        elif len(counts) < self.capacity:
            counts[value] = 1
        else:
            for k in list(counts):
                counts[k] -= 1
                if counts[k] == 0:
                    del counts[k]

    def get(self) -> Any:
        # Ties go to the value seen first: dicts keep insertion order, so this is deterministic.
        return max(self.counts, key=self.counts.__getitem__) if self.counts else None


class _RunningMean:
    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0

    def update(self, value: float) -> None:
        self.n += 1
        self.mean = finite_or(self.mean + (float(value) - self.mean) / self.n, self.mean)

    def get(self) -> float | None:
        return self.mean if self.n else None


class _RunningMedian:
    def __init__(self) -> None:
        # P² estimator (river.stats.Quantile): five markers, constant memory.
        self.quantile = stats.Quantile(0.5)
        self.n = 0

    def update(self, value: float) -> None:
        self.n += 1
        self.quantile.update(float(value))

    def get(self) -> float | None:
        value = self.quantile.get() if self.n else None
        return value if value is not None and math.isfinite(value) else None


class RunningImputer(StreamComponent):
    """Fills missing fields with the running mean, median or mode of the values seen so far.

    Parameters
    ----------
    fields
        The fields to fill when they are absent or ``None``.
    strategy
        ``mean`` or ``median`` (numbers), or ``mode`` (any value, e.g. categories).
    indicator
        Also output ``<field>_was_missing``: 1.0 when the value was filled, else 0.0,
        so a model can learn from missingness itself.

    Examples
    --------
    >>> impute = RunningImputer(["amount"], strategy="mean", indicator=True)
    >>> for x in [{"amount": 10.0}, {"amount": 20.0}]:
    ...     impute.learn_one(x)
    >>> impute.transform_one({"city": "Lyon"})
    {'city': 'Lyon', 'amount': 15.0, 'amount_was_missing': 1.0}
    >>> impute.transform_one({"amount": 3.0})
    {'amount': 3.0, 'amount_was_missing': 0.0}
    """

    stage: ClassVar[str] = DeadLetterStage.CLEAN

    def __init__(self, fields: Iterable[str], strategy: str = "mean", indicator: bool = False) -> None:
        if strategy not in ("mean", "median", "mode"):
            raise ValueError(f"strategy must be mean, median or mode, got {strategy!r}")
        self.fields = list(fields)
        self.strategy = strategy
        self.indicator = indicator
        make = {"mean": _RunningMean, "median": _RunningMedian, "mode": _BoundedMode}[strategy]
        self._stats = {name: make() for name in self.fields}

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        for name in self.fields:
            missing = out.get(name) is None
            if missing:
                out.pop(name, None)
                fill = self._stats[name].get()
                if fill is not None:
                    out[name] = fill
            if self.indicator:
                out[f"{name}_was_missing"] = 1.0 if missing else 0.0
        return out

    def activity(self, before: dict[str, Any], after: dict[str, Any]) -> Iterator[tuple[str, int]]:
        n = sum(1 for f in self.fields if before.get(f) is None and after.get(f) is not None)
        if n:
            yield CleanerAction.IMPUTED, n

    def learn_one(self, x: dict[str, Any]) -> None:
        numeric = self.strategy != "mode"
        for name in self.fields:
            value = x.get(name)
            if value is None or (numeric and not is_finite_number(value)):
                continue
            self._stats[name].update(value)


class RunningQuantileClipper(StreamComponent):
    """Clips numeric fields to running quantiles, e.g. the 1st and 99th percentile so far.

    Quantiles come from River's P² estimator, five markers per bound: constant memory
    whatever the stream's length. Until ``warmup`` values of a field were seen it is
    passed through untouched, because early estimates would clip the ordinary.

    Parameters
    ----------
    fields
        Numeric fields to clip.
    lower, upper
        The quantiles to clip at, ``0 <= lower < upper <= 1``.
    warmup
        Values of a field to learn before clipping it.

    Examples
    --------
    >>> clip = RunningQuantileClipper(["amount"], lower=0.05, upper=0.95, warmup=20)
    >>> for i in range(100):
    ...     clip.learn_one({"amount": float(i)})
    >>> clip.transform_one({"amount": 1e6, "other": 1e6})
    {'amount': 94.0..., 'other': 1000000.0}
    >>> clip.transform_one({"amount": 50.0})
    {'amount': 50.0}
    """

    stage: ClassVar[str] = DeadLetterStage.CLEAN

    def __init__(self, fields: Iterable[str], lower: float = 0.01, upper: float = 0.99, warmup: int = 30) -> None:
        if not 0.0 <= lower < upper <= 1.0:
            raise ValueError(f"need 0 <= lower < upper <= 1, got lower={lower}, upper={upper}")
        self.fields = list(fields)
        self.lower = lower
        self.upper = upper
        self.warmup = max(int(warmup), 5)  # P² needs five values for its markers
        self._bounds = {name: (stats.Quantile(lower), stats.Quantile(upper)) for name in self.fields}
        self._seen = dict.fromkeys(self.fields, 0)

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        out = dict(x)
        for name in self.fields:
            value = out.get(name)
            if not is_finite_number(value) or self._seen[name] < self.warmup:
                continue
            lo_q, hi_q = self._bounds[name]
            lo, hi = lo_q.get(), hi_q.get()
            if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
                continue
            if value < lo:
                out[name] = lo
            elif value > hi:
                out[name] = hi
        return out

    def activity(self, before: dict[str, Any], after: dict[str, Any]) -> Iterator[tuple[str, int]]:
        n = sum(1 for f in self.fields if f in before and after.get(f) != before[f])
        if n:
            yield CleanerAction.CLIPPED, n

    def learn_one(self, x: dict[str, Any]) -> None:
        for name in self.fields:
            value = x.get(name)
            if is_finite_number(value):
                lo_q, hi_q = self._bounds[name]
                lo_q.update(float(value))
                hi_q.update(float(value))
                self._seen[name] += 1


class Deduplicator(StreamComponent):
    """Refuses an event whose id was seen among the last ``window`` ids.

    Producers that retry, and sources replayed at least once, repeat events; a model
    that learns twice from one event is biased toward it. The window is a bound on
    memory: an id older than the last ``window`` distinct ids is forgotten. Each id is
    kept as a 16-byte digest, never as itself, so the window costs about 150 bytes per
    entry however long the ids are (bench/dedup_memory.py: 1,000,000 distinct 1 KiB ids
    through the default window of 100,000 add ~17 MB of memory, not 100 MB).

    Parameters
    ----------
    id_field
        The field holding the event id.
    window
        How many distinct recent ids to remember.

    Examples
    --------
    >>> dedup = Deduplicator("id", window=2)
    >>> for i in (1, 2):
    ...     dedup.learn_one({"id": i})
    >>> try:
    ...     dedup.transform_one({"id": 2})
    ... except RejectedEvent as e:
    ...     print(e.stage, e.reason)
    clean duplicate event: id 2 was seen among the last 2 ids
    >>> try:
    ...     dedup.transform_one({"id": "2"})  # the same id, as the label join reads it
    ... except RejectedEvent as e:
    ...     print(e.reason)
    duplicate event: id '2' was seen among the last 2 ids
    >>> dedup.learn_one({"id": 3})  # id 1 leaves the window
    >>> dedup.transform_one({"id": 1})
    {'id': 1}
    """

    stage: ClassVar[str] = DeadLetterStage.CLEAN
    refused_action: ClassVar[str | None] = CleanerAction.DEDUPLICATED

    def __init__(self, id_field: str = "id", window: int = 100_000) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.id_field = id_field
        self.window = window
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        event_id = x.get(self.id_field)
        if event_id is not None and _hashable(event_id) in self._seen:
            raise RejectedEvent(
                self.stage, f"duplicate event: {self.id_field} {event_id!r} was seen among the last {self.window} ids"
            )
        return dict(x)

    def learn_one(self, x: dict[str, Any]) -> None:
        event_id = x.get(self.id_field)
        if event_id is None:
            return
        key = _hashable(event_id)
        if key in self._seen:
            self._seen.move_to_end(key)
            return
        self._seen[key] = None
        if len(self._seen) > self.window:
            self._seen.popitem(last=False)


def _hashable(value: Any) -> bytes:
    """A fixed-size digest of an id, compared as the label join compares ids
    (core/ids.py): 42 and "42" are one event (a producer that retries with the id as a
    string is not learned twice), "042" and 42.0 are others. 128 bits: a collision inside
    a window of a million ids has a probability near 1e-27."""
    value = join_id(value)
    if isinstance(value, str):
        raw = b"s" + value.encode("utf-8", "surrogatepass")
    else:
        raw = type(value).__name__.encode() + b":" + repr(value).encode()
    return hashlib.blake2b(raw, digest_size=16).digest()


_POLICIES = ("accept", "dead_letter", "clamp")


class LatenessPolicy(StreamComponent):
    """What to do with an event whose event time is far behind the newest seen so far.

    The watermark is the largest event time learned. An event more than
    ``allowed_lateness`` seconds behind it is late: ``accept`` passes it as it is,
    ``dead_letter`` refuses it (stage ``clean``), ``clamp`` moves its time up to the
    oldest time still allowed, so windowed features treat it as barely late.

    Parameters
    ----------
    time_field
        The field holding the event time, in seconds since the epoch (the service
        converts ISO 8601 text before cleaners run).
    allowed_lateness
        Seconds an event may trail the watermark and still count as on time.
    policy
        ``accept``, ``dead_letter`` or ``clamp``.

    Examples
    --------
    >>> late = LatenessPolicy("ts", allowed_lateness=60, policy="clamp")
    >>> late.learn_one({"ts": 1000.0})
    >>> late.transform_one({"ts": 900.0}), late.transform_one({"ts": 950.0})
    ({'ts': 940.0}, {'ts': 950.0})
    >>> late.policy = "dead_letter"
    >>> try:
    ...     late.transform_one({"ts": 900.0})
    ... except RejectedEvent as e:
    ...     print(e.stage, e.reason)
    clean late event: ts is 100s behind the watermark, allowed lateness is 60s
    """

    stage: ClassVar[str] = DeadLetterStage.CLEAN
    refused_action: ClassVar[str | None] = CleanerAction.LATE

    def __init__(self, time_field: str, allowed_lateness: float = 0.0, policy: str = "dead_letter") -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {', '.join(_POLICIES)}, got {policy!r}")
        self.time_field = time_field
        self.allowed_lateness = float(allowed_lateness)
        self.policy = policy
        self.watermark: float | None = None
        self.n_late = 0

    def _time(self, x: dict[str, Any]) -> float | None:
        return event_seconds(x.get(self.time_field), self.time_field)

    def is_late(self, x: dict[str, Any]) -> bool:
        """Whether ``x`` trails the watermark by more than the allowed lateness."""
        t = self._time(x)
        return t is not None and self.watermark is not None and t < self.watermark - self.allowed_lateness

    def activity(self, before: dict[str, Any], after: dict[str, Any]) -> Iterator[tuple[str, int]]:
        if self.is_late(before):  # let through by accept or clamp; refusals count as they happen
            yield CleanerAction.LATE, 1

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        t = self._time(x)
        out = dict(x)
        if t is None or self.watermark is None:
            return out
        oldest_allowed = self.watermark - self.allowed_lateness
        if t >= oldest_allowed or self.policy == "accept":
            return out
        if self.policy == "clamp":
            out[self.time_field] = oldest_allowed
            return out
        raise RejectedEvent(
            self.stage,
            f"late event: {self.time_field} is {self.watermark - t:g}s behind the watermark, "
            f"allowed lateness is {self.allowed_lateness:g}s",
        )

    def learn_one(self, x: dict[str, Any]) -> None:
        t = self._time(x)
        if t is None:
            return
        if self.watermark is not None and t < self.watermark - self.allowed_lateness:
            self.n_late += 1
        self.watermark = t if self.watermark is None else max(self.watermark, t)
