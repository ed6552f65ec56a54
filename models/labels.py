"""Delayed labels: predictions waiting for their label, and labels waiting for their event.

Events are joined to labels by event id. Both sides are bounded in count and in time,
where time is the *stream's* (record timestamps in seconds), so that replaying a
stream after a crash evicts exactly what the first run evicted. Everything is counted:
evictions, labels that came too late or twice, and the delay of every label joined.
An id whose label was learned is remembered (boundedly) so that a repeated label is
never learned twice.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from streamwise.core.jsonbytes import UnreadableRecord, loads_bounded


class LabelRecordError(ValueError):
    """A record on the labels topic that is not ``{"<id>": ..., "<label>": ...}``."""


# Ids longer than this, or integers beyond int64, are refused as the event schema
# refuses them (stream/schema.py), so no state keyed by id grows with a label's size.
_INT64 = 2**63


def decode_label_record(
    value: bytes | None,
    id_field: str,
    label_field: str,
    label_type: str,
    *,
    max_bytes: int = 1_048_576,
    max_id_length: int = 1024,
) -> tuple[Any, Any]:
    """``(event id, label)`` from a label record's JSON bytes, within the event limits.

    The record is read by the same bounded reader as events (size before parsing,
    nesting by the parser), and its id and a category label are held to the schema's
    ``max_id_length``.

    Examples
    --------
    >>> decode_label_record(b'{"id": 3, "label": true}', "id", "label", "bool")
    (3, True)
    >>> try:
    ...     decode_label_record(b'{"id": 3, "label": "yes"}', "id", "label", "bool")
    ... except LabelRecordError as e:
    ...     print(e)
    label must be a bool, got str
    >>> try:
    ...     decode_label_record(b'[' * 100_000 + b']' * 100_000, "id", "label", "bool", max_bytes=10**6)
    ... except LabelRecordError as e:
    ...     print(str(e)[:30])
    not JSON: depth limit exceeded
    """
    try:
        obj = loads_bounded(value, max_bytes, "label record")
    except UnreadableRecord as e:
        raise LabelRecordError(str(e)) from None
    if not isinstance(obj, dict):
        raise LabelRecordError(f"label record must be a JSON object, got {type(obj).__name__}")
    event_id = obj.get(id_field)
    if not _bounded_id(event_id, max_id_length):
        raise LabelRecordError(
            f"label record needs a string (at most {max_id_length} characters) or int64 {id_field!r}"
        )
    if label_field not in obj:
        raise LabelRecordError(f"label record has no {label_field!r}")
    y = obj[label_field]
    ok = {
        "bool": isinstance(y, bool),
        "int": isinstance(y, int) and not isinstance(y, bool),
        "float": isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y),
        "category": isinstance(y, (str, int, bool)),
    }[label_type]
    if not ok:
        raise LabelRecordError(f"label must be a {label_type}, got {type(y).__name__}")
    if isinstance(y, (str, int)) and not isinstance(y, bool) and not _bounded_id(y, max_id_length):
        raise LabelRecordError(f"label longer than {max_id_length} characters or beyond int64")
    if label_type == "float":
        y = float(y)
    return event_id, y


def _bounded_id(value: Any, max_length: int) -> bool:
    if isinstance(value, str):
        return len(value) <= max_length
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64


def join_id(event_id: Any) -> Any:
    """The id an event and its label are joined by: the id itself, except that a string
    written as an integer is that integer. A label service often writes an event's id 42
    as "42"; the two name one event, and a strict join would hold every such label until
    it expired, the model never learning. Only the canonical form counts ("042", "+42"
    and "-0" stay strings), within int64. The prediction record keeps the event's own id.

    Examples
    --------
    >>> [join_id(v) for v in (42, "42", "-7", "042", "-0", "4e2", "abc", "٣", str(2**63))]
    [42, 42, -7, '042', '-0', '4e2', 'abc', '٣', '9223372036854775808']
    """
    if type(event_id) is not str or not event_id or len(event_id) > 20:
        return event_id
    digits = event_id[1:] if event_id[0] == "-" else event_id
    if not (digits.isascii() and digits.isdigit()):
        return event_id
    number = int(event_id)
    return number if str(number) == event_id and -_INT64 <= number < _INT64 else event_id


@dataclass
class LabelStats:
    joined: int = 0
    joined_early: int = 0  # the label came first and waited for its event
    evicted_ttl: int = 0
    evicted_capacity: int = 0
    early_expired: int = 0
    duplicates: int = 0
    delay_sum_s: float = 0.0
    delay_max_s: float = 0.0
    last_delays_s: list[float] = field(default_factory=list)

    def record_delay(self, delay_s: float) -> None:
        self.joined += 1
        self.delay_sum_s += delay_s
        self.delay_max_s = max(self.delay_max_s, delay_s)

    @property
    def delay_mean_s(self) -> float:
        return self.delay_sum_s / self.joined if self.joined else 0.0


class PendingLabels:
    """Examples
    --------
    >>> pending = PendingLabels(max_pending=2, ttl_s=10.0)
    >>> pending.add_event(1, "prediction of 1", t=0.0)
    >>> pending.add_event(2, "prediction of 2", t=1.0)
    >>> pending.add_event(3, "prediction of 3", t=2.0)  # over capacity: 1 is evicted
    >>> pending.pop_event(1), pending.pop_event(2)
    (None, 'prediction of 2')
    >>> pending.stats.evicted_capacity
    1
    >>> pending.expire(now=13.0)  # 3 waited more than 10 s
    >>> pending.pop_event(3), pending.stats.evicted_ttl
    (None, 1)
    """

    def __init__(
        self,
        max_pending: int = 100_000,
        ttl_s: float = 86_400.0,
        early_hold_s: float = 60.0,
        max_early: int = 10_000,
    ) -> None:
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        self.early_hold_s = early_hold_s
        self.max_early = max_early
        # id -> (t, entry), oldest first.
        self._events: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        # id -> (t, label), oldest first.
        self._early: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._learned: OrderedDict[Any, None] = OrderedDict()
        self.stats = LabelStats()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def n_early(self) -> int:
        return len(self._early)

    def add_event(self, event_id: Any, entry: Any, t: float) -> None:
        self._events[event_id] = (t, entry)
        self._events.move_to_end(event_id)
        while len(self._events) > self.max_pending:
            self._events.popitem(last=False)
            self.stats.evicted_capacity += 1

    def pop_event(self, event_id: Any) -> Any | None:
        item = self._events.pop(event_id, None)
        return None if item is None else item[1]

    def event_time(self, event_id: Any) -> float | None:
        item = self._events.get(event_id)
        return None if item is None else item[0]

    def already_learned(self, event_id: Any) -> bool:
        return event_id in self._learned

    def mark_learned(self, event_id: Any) -> None:
        self._learned[event_id] = None
        while len(self._learned) > self.max_pending:
            self._learned.popitem(last=False)

    def hold_label(self, event_id: Any, label: Any, t: float) -> None:
        """Keeps a label whose event has not arrived yet, for up to ``early_hold_s``."""
        if event_id in self._early:
            self.stats.duplicates += 1
            return
        self._early[event_id] = (t, label)
        while len(self._early) > self.max_early:
            self._early.popitem(last=False)
            self.stats.early_expired += 1

    def take_early_label(self, event_id: Any) -> tuple[float, Any] | None:
        return self._early.pop(event_id, None)

    def expire(self, now: float) -> None:
        while self._events:
            _, (t, _entry) = next(iter(self._events.items()))
            if now - t <= self.ttl_s:
                break
            self._events.popitem(last=False)
            self.stats.evicted_ttl += 1
        while self._early:
            _, (t, _label) = next(iter(self._early.items()))
            if now - t <= self.early_hold_s:
                break
            self._early.popitem(last=False)
            self.stats.early_expired += 1
