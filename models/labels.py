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
from dataclasses import dataclass
from typing import Any

from streamwise.core.ids import join_id
from streamwise.core.jsonbytes import UnreadableRecord, loads_bounded
from streamwise.core.sensors import LABEL_MISS_OUTCOMES


class LabelRecordError(ValueError):
    """A record on the labels topic that is not ``{"<id>": ..., "<label>": ...}``."""


# Ids longer than this, or integers beyond int64, are refused as the event schema
# refuses them (stream/schema.py), so no state keyed by id grows with a label's size.
_INT64 = 2**63

__all__ = ["LabelRecordError", "PendingLabels", "decode_label_record", "in_join_window", "join_id"]


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
        if label_type == "int" and isinstance(y, float) and math.isfinite(y) and abs(y) >= 2.0**63:
            # The JSON reader gives an integer past 2**64 as a float: say what is wrong with it.
            raise LabelRecordError("label beyond int64")
        article = "an" if label_type == "int" else "a"
        raise LabelRecordError(f"label must be {article} {label_type}, got {type(y).__name__}")
    if isinstance(y, (str, int)) and not isinstance(y, bool) and not _bounded_id(y, max_id_length):
        raise LabelRecordError(f"label longer than {max_id_length} characters or beyond int64")
    if label_type == "float":
        y = float(y)
    return event_id, y


def _bounded_id(value: Any, max_length: int) -> bool:
    if isinstance(value, str):
        return len(value) <= max_length
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64


@dataclass
class LabelStats:
    joined: int = 0
    joined_early: int = 0  # the label was read first and waited for its event
    evicted_ttl: int = 0  # a prediction whose label did not come within ttl_s
    evicted_capacity: int = 0
    early_expired: int = 0  # a label whose event did not come within early_hold_s, or held past max_early
    duplicates: int = 0  # a label for an event already learned, or held twice
    late: int = 0  # a label more than ttl_s after its event: not learned
    duplicate_events: int = 0  # an event id already waiting or learned: predicted, never learned again
    delay_sum_s: float = 0.0
    delay_max_s: float = 0.0

    untimed: int = 0  # joins of a record without a time: no delay known

    def record_delay(self, delay_s: float | None) -> None:
        self.joined += 1
        if delay_s is None:
            self.untimed += 1
            return
        self.delay_sum_s += delay_s
        self.delay_max_s = max(self.delay_max_s, delay_s)

    @property
    def delay_mean_s(self) -> float:
        timed = self.joined - self.untimed
        return self.delay_sum_s / timed if timed else 0.0

    def misses(self) -> dict[str, int]:
        """What the join did not learn, by outcome (:data:`LABEL_MISS_OUTCOMES`): the
        counts behind the ``streamwise_label_join_misses_total`` metric."""
        counts = (self.evicted_ttl, self.evicted_capacity, self.late, self.early_expired, self.duplicates,
                  self.duplicate_events)
        return dict(zip(LABEL_MISS_OUTCOMES, counts, strict=True))


def in_join_window(event_t: float, label_t: float, ttl_s: float, early_hold_s: float) -> bool:
    """The join rule: a label stamped at most ``ttl_s`` after its event and at most
    ``early_hold_s`` before it (the service's join and the report both use it). A record
    without a time (``t <= 0``: Kafka's -1, or 0) is in any window.

    >>> in_join_window(100.0, 103.0, 10.0, 5.0), in_join_window(100.0, 200.0, 10.0, 5.0), in_join_window(-0.001, 200.0, 10.0, 5.0)
    (True, False, True)
    """
    if event_t <= 0.0 or label_t <= 0.0:
        return True
    return -early_hold_s <= label_t - event_t <= ttl_s


def label_delay(event_t: float, label_t: float) -> float | None:
    """Seconds from an event's record time to its label's (0 for a label stamped first),
    or None when either record has no time (``t <= 0``: Kafka's -1, or 0).

    >>> label_delay(100.0, 103.5), label_delay(100.0, 99.0), label_delay(-0.001, 99.0)
    (3.5, 0.0, None)
    """
    if event_t <= 0.0 or label_t <= 0.0:
        return None
    return max(0.0, label_t - event_t)


class _Watermark:
    """The time a stream side has reached: the smallest, over its partitions, of the
    newest record time read in each. A side read unevenly (one partition ahead of
    another) is only as far as its slowest partition, and until each of its
    ``partitions`` has been read from, it has reached no time at all."""

    def __init__(self) -> None:
        self.newest: dict[int, float] = {}
        self.partitions = 1
        self.value = -math.inf

    def advance(self, partition: int, t: float) -> float:
        newest = self.newest
        before = newest.get(partition)
        if before is None:
            newest[partition] = t
            self._update()
        elif t > before:
            newest[partition] = t
            if before == self.value:
                self._update()
        return self.value

    def expect(self, partitions: int) -> None:
        if partitions != self.partitions:
            self.partitions = partitions
            self._update()

    def _update(self) -> None:
        newest = self.newest
        self.value = min(newest.values()) if len(newest) >= self.partitions else -math.inf


# PendingLabels' attributes added after its first release, each with how it starts:
# the ids whose prediction was dropped (True: past ttl_s, False: over max_pending), so
# that their label is not held as if read before its event; each side's progress; and
# LabelStats.misses() when new_misses() last ran.
_ADDED: dict[str, Any] = {
    "_dropped": OrderedDict,
    "_events_read": lambda: _Watermark(),
    "_labels_read": lambda: _Watermark(),
    "_misses_reported": dict,
}


class PendingLabels:
    """Joins delayed labels to the predictions of their events, by event id.

    The rule is a function of the two records' times alone: a label joins its event when
    ``-early_hold_s <= label time - event time <= ttl_s``, whichever of the two was read
    first. How far one topic was read ahead of the other (a backlog after downtime,
    partitions fetched unevenly, labels sparser than events) never decides; it only
    decides how long the first one read waits in memory. A waiting prediction is dropped
    once the *labels* read have passed its event time + ``ttl_s`` (no label still to come
    can join it), and a held label once the *events* read have passed its time +
    ``early_hold_s``; each side's progress is its :class:`_Watermark`, which needs to
    know how many partitions the side has (:meth:`expect`; one each by default, as in
    a pipeline of ``scope: partition``). Both are bounded in count too (``max_pending``,
    ``max_early``). A record without a time (``t <= 0``: Kafka's -1, or 0) joins whatever
    the other's time, never ages and moves no clock: only the counts bound it, so no
    read order decides whether it joins. Everything is decided per record, in read
    order, so a replay of the same records ends in the same state, whatever the poll
    sizes.

    Examples
    --------
    >>> pending = PendingLabels(max_pending=2, ttl_s=10.0, early_hold_s=5.0)
    >>> pending.on_event(1, "prediction of 1", t=100.0)
    >>> pending.on_event(2, "prediction of 2", t=101.0)
    >>> pending.on_event(3, "prediction of 3", t=102.0)  # over capacity: 1 is evicted
    >>> pending.on_label(2, True, t=104.0)  # joins: 3 s after its event
    (101.0, 'prediction of 2')
    >>> pending.on_label(1, False, t=104.0), pending.stats.evicted_capacity  # its prediction was evicted
    (None, 1)
    >>> pending.on_label(7, True, t=113.0)  # labels reach 113 s: 3's label can no longer come
    >>> len(pending), pending.stats.evicted_ttl
    (0, 1)
    >>> pending.on_label(3, True, t=114.0), pending.stats.late
    (None, 1)
    >>> pending.on_event(7, "prediction of 7", t=109.0)  # 7's label was read first: 4 s later
    (113.0, True)
    >>> pending.on_event(8, "no time", t=-0.001), pending.on_label(8, True, t=500.0)  # any time joins it
    (None, (-0.001, 'no time'))
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
        # id -> (event time, entry), in read order.
        self._events: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        # id -> (label time, label), in read order.
        self._early: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._learned: OrderedDict[Any, None] = OrderedDict()
        for name, make in _ADDED.items():
            setattr(self, name, make())
        self.stats = LabelStats()

    def __getattr__(self, name: str) -> Any:
        # A snapshot written before one of these attributes existed restores without it
        # (models/state.py sets the attributes it holds): that one starts empty, alone.
        make = _ADDED.get(name)
        if make is None:
            raise AttributeError(name)
        value = make()
        setattr(self, name, value)
        return value

    def __len__(self) -> int:
        return len(self._events)

    @property
    def n_early(self) -> int:
        return len(self._early)

    def expect(self, event_partitions: int, label_partitions: int) -> None:
        """How many partitions each side is read from (the learner of ``scope: global``
        reads every partition of both topics)."""
        self._events_read.expect(max(1, event_partitions))
        self._labels_read.expect(max(1, label_partitions))

    def new_misses(self) -> dict[str, int]:
        """What the join did not learn since the last call, by outcome (the sensors' counter).
        Kept in the state, so a restore neither repeats nor loses what it had reported."""
        counts = self.stats.misses()
        before = self._misses_reported
        self._misses_reported = counts
        return {k: n - before.get(k, 0) for k, n in counts.items() if n != before.get(k, 0)}

    def joins(self, event_t: float, label_t: float) -> bool:
        """Whether a label at ``label_t`` joins an event at ``event_t``."""
        return in_join_window(event_t, label_t, self.ttl_s, self.early_hold_s)

    @staticmethod
    def _expire_oldest(waiting: OrderedDict[Any, tuple[float, Any]], now: float, window_s: float) -> list[Any]:
        """Takes out, oldest read first, the entries whose time ``now`` has passed by
        more than ``window_s``; their ids."""
        gone = []
        while waiting:
            key, (t, _) = next(iter(waiting.items()))
            # One without a time never ages (only max_pending / max_early bound it), and
            # holds back those read after it: expiry only ever frees memory early.
            if t <= 0.0 or now - t <= window_s:
                break
            waiting.popitem(last=False)
            gone.append(key)
        return gone

    def on_event(self, event_id: Any, entry: Any, t: float, partition: int = 0, labelled: bool = False) -> tuple[float, Any] | None:
        """An event read at record time ``t``: ``(label time, label)`` of a held label it
        joins now, else None, the event then waiting for its label with ``entry`` (unless
        its id is already waiting or learned: the first prediction keeps its place). An
        event that carries its label (``labelled``) is learned by the caller at once."""
        now = self._events_read.advance(partition, t) if t > 0.0 else self._events_read.value
        early = self._early
        self.stats.early_expired += len(self._expire_oldest(early, now, self.early_hold_s))
        if labelled:
            self._mark_learned(event_id)
            return None
        if event_id in self._learned or event_id in self._events:
            self.stats.duplicate_events += 1
            return None
        held = early.pop(event_id, None)
        if held is not None:
            if self.joins(t, held[0]):
                self.stats.joined_early += 1
                self._join(event_id, t, held[0])
                return held
            self._refuse(t, held[0])
        self._events[event_id] = (t, entry)
        while len(self._events) > self.max_pending:
            self._drop(self._events.popitem(last=False)[0], past_ttl=False)
            self.stats.evicted_capacity += 1
        return None

    def on_label(self, event_id: Any, label: Any, t: float, partition: int = 0) -> tuple[float, Any] | None:
        """A label read at record time ``t``: ``(event time, entry)`` of the waiting
        prediction it joins now, else None (held for its event, or counted: a repeat, too
        late, too early)."""
        now = self._labels_read.advance(partition, t) if t > 0.0 else self._labels_read.value
        events = self._events
        for gone in self._expire_oldest(events, now, self.ttl_s):
            self._drop(gone, past_ttl=True)
            self.stats.evicted_ttl += 1
        if event_id in self._learned:
            self.stats.duplicates += 1
            return None
        waiting = events.get(event_id)
        if waiting is not None:
            if self.joins(waiting[0], t):
                del events[event_id]
                self._join(event_id, waiting[0], t)
                return waiting
            self._refuse(waiting[0], t)
            return None
        dropped = self._dropped.get(event_id)
        if dropped is not None:
            self.stats.late += dropped  # one evicted for capacity was counted as that
            return None
        if event_id in self._early:
            self.stats.duplicates += 1
            return None
        self._early[event_id] = (t, label)
        while len(self._early) > self.max_early:
            self._early.popitem(last=False)
            self.stats.early_expired += 1
        return None

    def _join(self, event_id: Any, event_t: float, label_t: float) -> None:
        # A label stamped before its event (clocks of two producers) waited for nothing;
        # one of the two without a time leaves the delay unknown.
        self.stats.record_delay(label_delay(event_t, label_t))
        self._mark_learned(event_id)

    def _refuse(self, event_t: float, label_t: float) -> None:
        if label_t - event_t > self.ttl_s:
            self.stats.late += 1
        else:
            self.stats.early_expired += 1

    def _mark_learned(self, event_id: Any) -> None:
        self._learned[event_id] = None
        while len(self._learned) > self.max_pending:
            self._learned.popitem(last=False)

    def _drop(self, event_id: Any, past_ttl: bool) -> None:
        self._dropped[event_id] = past_ttl
        while len(self._dropped) > self.max_pending:
            self._dropped.popitem(last=False)

    def already_learned(self, event_id: Any) -> bool:
        return event_id in self._learned
