"""The per-batch core of a pipeline: records in, prediction and dead-letter records out.

No I/O happens here; the runner feeds it what the source polled and hands what it
returns to the sink. Keeping it pure lets tests drive it with plain lists.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import orjson

from streamwise.connectors.records import ConsumedRecord, OutgoingRecord
from streamwise.core.sensors import Sensor
from streamwise.core.stages import DeadLetterStage
from streamwise.models.forecast import ForecastSet
from streamwise.models.config import LabelsConfig
from streamwise.models.labels import LabelRecordError, PendingLabels, decode_label_record, join_id
from streamwise.models.model import Model
from streamwise.models.model_set import ModelSet, Outcome
from streamwise.models.prequential import Prediction
from streamwise.models.rules import Verdict
from streamwise.models.state import SnapshotFormatError, decode_state, encode_state
from streamwise.pipeline_config import PipelineConfig
from streamwise.stream.base import to_epoch_seconds
from streamwise.reconcile import reconcile
from streamwise.stream.pipeline import EventPipeline, build_event_pipeline, build_learner_steps, split_steps
from streamwise.stream.schema import (
    DecodedEvent,
    EventDecoder,
    EventSchema,
    RejectedEvent,
    check_not_future,
    event_seconds,
)

# Header names follow Kafka Connect's dead-letter convention under our own prefix.
H_STAGE = "streamwise.error.stage"
H_CLASS = "streamwise.error.class"
H_MESSAGE = "streamwise.error.message"
H_TOPIC = "streamwise.source.topic"
H_PARTITION = "streamwise.source.partition"
H_OFFSET = "streamwise.source.offset"
# Set only when the value was cut: the size of the original value, in bytes.
H_SIZE = "streamwise.source.size"
_MAX_HEADER_MESSAGE = 1000

log = logging.getLogger(__name__)


class RollbackPoint:
    """Where the last-resort guard takes a processor's state back to when a batch raises:
    an encoded checkpoint and the batches processed since it, which a roll-back replays
    (silently: their outputs are already written) to reach the failed batch's start.

    Encoding the state before every batch cost as much as the model itself for a large
    state (a 1.2 MB Hoeffding tree: 11 ms per 500-event batch, 23 µs per event, where
    River's own predict and learn take 28). So a checkpoint is taken only once the work
    done since the last one is ``WORK_RATIO`` times what the next is expected to cost
    (encoding the state and taking the decoded copy, see ``_GuardedProcessor.refresh``):
    what the last one cost, times how much it grew over the one before (a young forest's
    state grows from 18 KB to 8 MB in its first 3,000 events, and the last cost alone
    then let checkpoints take 12% of the time); or once ``MAX_EVENTS`` events have gone
    by, which bounds what a roll-back replays and what this keeps in memory. Replaying gives the same state as
    the first pass: processing a batch is deterministic given the state (models keep
    their random generators in it, and a batch's outcome does not depend on its cuts).
    """

    __slots__ = ("payload", "since", "events_since", "cost_s", "expected_s", "work_s")
    WORK_RATIO = 50.0
    MAX_EVENTS = 50_000

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """No checkpoint: the next batch takes one (a new lineage, or after a roll-back)."""
        self.payload: bytes | None = None
        self.since: list[Sequence[ConsumedRecord]] = []
        self.events_since = 0
        self.cost_s = 0.0
        self.expected_s = 0.0
        self.work_s = 0.0

    def due(self) -> bool:
        return (
            self.payload is None
            or self.work_s >= self.WORK_RATIO * self.expected_s
            or self.events_since >= self.MAX_EVENTS
        )

    def checkpoint(self, payload: bytes, cost_s: float) -> None:
        """The state as it is now, encoded in ``cost_s`` seconds."""
        growth = cost_s / self.cost_s if self.cost_s > 0.0 else 1.0
        self.payload, self.cost_s, self.expected_s = payload, cost_s, cost_s * max(1.0, growth)
        self.since, self.events_since, self.work_s = [], 0, 0.0

    def processed(self, records: Sequence[ConsumedRecord], seconds: float) -> None:
        self.since.append(records)
        self.events_since += len(records)
        self.work_s += seconds


class _HeldSensorCalls:
    """Stands in for the sensor while a batch is attempted: records each call, which
    :meth:`replay` makes on the real sensor once the attempt has succeeded."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        calls = self.calls

        def hold(*args: Any, **kwargs: Any) -> None:
            calls.append((name, args, kwargs))

        return hold

    def replay(self, sensor: Sensor) -> None:
        for name, args, kwargs in self.calls:
            getattr(sensor, name)(*args, **kwargs)


def dead_letter(
    record: ConsumedRecord,
    topic: str,
    stage: str,
    error_class: str,
    message: str,
    max_value_bytes: int | None = None,
    max_record_bytes: int | None = None,
) -> OutgoingRecord:
    """The original bytes, untouched, with headers saying where they came from and why.

    Bytes beyond ``max_value_bytes`` (the schema's ``max_event_bytes``: only a record
    refused for its size has more), or beyond what leaves the whole record within
    ``max_record_bytes`` (the dead-letter topic's ``max.message.bytes``, which may be
    smaller than the input topic's), are cut, with the original size in a header: a dead
    letter larger than the topic accepts would fail its batch on every retry, the very
    crash loop the dead-letter topic exists to prevent. The headers say where the whole
    record is: its topic, partition and offset.

    >>> r = ConsumedRecord("in", 0, 7, b"k", b"x" * 5000, 0)
    >>> d = dead_letter(r, "in.dlq", "decode", "JSONDecodeError", "bad", 1_048_576, max_record_bytes=2000)
    >>> dict(d.headers)["streamwise.source.size"], len(d.value) + sum(len(k) + len(v) for k, v in d.headers) < 2000 - 86
    (b'5000', True)
    """
    value = record.value if record.value is not None else b""
    headers = [
        (H_STAGE, stage.encode()),
        (H_CLASS, error_class.encode()),
        (H_MESSAGE, message[:_MAX_HEADER_MESSAGE].encode("utf-8", "replace")),
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
    ]
    key = record.key
    room = max_value_bytes
    if max_record_bytes is not None:
        # A key too large for the topic is cut too (the headers still name the record).
        # The headers, and the size header this may add (its value 20 digits at most).
        fixed = _BATCH_OVERHEAD + sum(len(k) + len(v) + _HEADER_OVERHEAD for k, v in headers)
        fixed += len(H_SIZE) + 20 + _HEADER_OVERHEAD
        if key is not None and len(key) > (max_record_bytes - fixed) // 2:
            key = key[: max(0, (max_record_bytes - fixed) // 2)]
        fits = max(0, max_record_bytes - fixed - (len(key) if key is not None else 0))
        room = fits if room is None else min(room, fits)
    if room is not None and len(value) > room:
        headers.insert(0, (H_SIZE, str(len(value)).encode()))
        value = value[:room]
    return OutgoingRecord(topic=topic, key=key, value=value, headers=headers)


# What a one-record batch adds to its record's key, value and headers on the wire, with
# room to spare (record batch header 61 bytes, the record's own varints up to ~25), and
# what each header adds to its key and value (two varint lengths).
_BATCH_OVERHEAD = 128
_HEADER_OVERHEAD = 10


class _GuardedProcessor:
    """What every stage's processor shares: the input read once per poll (events decoded
    and validated, labels checked), the last-resort guard around a batch, and snapshots
    of whatever the subclass learns."""

    # Records processed together through every phase (see process()).
    CHUNK = 256
    # Whether category labels are held to one JSON type per class here: not in the
    # partition stage of scope: global, which leaves that to the learner.
    CHECKS_LABEL_FORMS = True
    # The dead-letter topic's max.message.bytes, when the runner could read it.
    dead_letter_max_bytes: int | None = None
    # The learner of scope: global: how many partitions the events and the labels topic
    # have, set by the runner; a delayed label's join needs every one's progress.
    source_partitions: tuple[int, int] | None = None

    config: PipelineConfig
    sensor: Sensor
    events: EventPipeline
    epoch: int
    # Rebuilt from the config, or set by the owner of the partition (the snapshot epoch
    # the state descends from, shown in every record): not learned, left out of snapshots.
    _NOT_STATE = frozenset(
        {"config", "sensor", "epoch", "_fields", "forecasting", "stage", "rules", "reported_champion", "_rollback",
         "dead_letter_max_bytes", "source_partitions"}
    )
    # The champion the sensors last heard of for this partition (None: not yet): not
    # learned, and rebuilt empty with the processor.
    reported_champion: str | None = None
    # The guard's checkpoint and the batches since it (RollbackPoint); made at the first batch.
    _rollback: RollbackPoint | None = None

    def snapshot_state(self) -> dict[str, Any]:
        """Everything this processor has learned, as a picklable dict. New learning
        attributes are included automatically; only what the config rebuilds is left out."""
        return {k: v for k, v in self.__dict__.items() if k not in self._NOT_STATE}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Takes a snapshot's state, after checking it has the shape this code builds: a
        snapshot written by an older streamwise whose objects lack what the current code
        reads (the model set was split into one object per model, for one) is refused,
        as one that cannot be read, instead of failing at the first event."""
        fresh = self.snapshot_state()
        missing = sorted(set(fresh) - set(state))
        for name in sorted(set(fresh) & set(state)):
            want, got = fresh[name], state[name]
            if type(want) is not type(got):
                missing.append(f"{name} ({type(got).__name__} where {type(want).__name__} is built)")
            elif hasattr(want, "__dict__") and hasattr(got, "__dict__"):
                missing.extend(f"{name}.{a}" for a in sorted(set(vars(want)) - set(vars(got))))
        if missing:
            raise SnapshotFormatError(
                f"snapshot state lacks what this streamwise builds: {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        self.__dict__.update(state)
        # The config may have changed since the snapshot was written: it wins for what
        # it says, and the snapshot keeps what was learned under an unchanged one.
        for note in reconcile(self, fresh):
            log.warning("%s: config changed since the snapshot: %s", self.config.name, note)
        if self._rollback is not None:
            self._rollback.forget()

    def refresh(self, payload: bytes) -> None:
        """Takes the state decoded from ``payload``, which was just encoded from it: the
        same learned state, in objects whose attributes are stored inline again, which
        encoding had undone (models/state.py says why that costs a quarter of a tree's
        speed). Should the payload not decode, the state stays as it is."""
        try:
            state = decode_state(payload)
        except SnapshotFormatError as e:
            log.warning("state kept as it is after a checkpoint that does not decode: %s", e)
            return
        self.__dict__.update(state)

    def process(self, records: Sequence[ConsumedRecord]) -> list[OutgoingRecord]:
        """Output records (predictions, alerts, dead letters; or the learn topic's records)
        for one partition's batch.

        The last-resort guard: should anything escape the per-event handling (a model
        raising in ``end_batch``, a value no writer can encode), the state goes back to
        a checkpoint taken before the batch, and the batch is retried in halves down to
        the one record that fails, which is dead-lettered with stage ``process``. No
        record can stop the stream, so no restart can read it again and crash again.
        Retrying in parts changes nothing for the good records: a batch's outcome does
        not depend on how it is cut (models/model_set.py steps torch learners at fixed
        row counts). The checkpoint is not taken before every batch but as often as its
        cost allows (:class:`RollbackPoint`); going back replays the batches since.

        A poll is processed ``CHUNK`` records at a time, each chunk through every phase
        (decode, models, records) before the next: a poll of 5,000 events goes through
        each phase with its objects out of the CPU's cache by the next one (measured in
        memory, Phishing, collector tuned: 9.4 µs per event with the no-op model in one
        piece against 7.8 in chunks of 256; LogisticRegression 21.7 against 18.8).
        """
        labels_topic = self.config.input.labels_topic
        if labels_topic is not None:
            records = arrival_order(records, labels_topic)
        chunk = self.CHUNK
        if len(records) <= chunk:
            return self._guarded(records)
        out: list[OutgoingRecord] = []
        for start in range(0, len(records), chunk):
            out.extend(self._guarded(records[start : start + chunk]))
        return out

    def _guarded(self, records: Sequence[ConsumedRecord]) -> list[OutgoingRecord]:
        point = self._rollback
        if point is None:
            point = self._rollback = RollbackPoint()
        if point.due():
            started = time.perf_counter()
            payload = encode_state(self.snapshot_state())
            self.refresh(payload)
            point.checkpoint(payload, time.perf_counter() - started)
        started = time.perf_counter()
        try:
            out = self._attempt(records)
        except Exception as e:
            log.error("a batch of %d records raised %s: %s; retrying it in parts", len(records), type(e).__name__, e)
            return self._isolate(records, self._roll_back(point), e)
        point.processed(records, time.perf_counter() - started)
        return out

    def _attempt(self, records: Sequence[ConsumedRecord]) -> list[OutgoingRecord]:
        """``_process_batch``, with what it tells the sensors held until it returns: an
        attempt that raises is retried, and must not be counted twice."""
        sensor = self.sensor
        held = self.sensor = _HeldSensorCalls()  # type: ignore[assignment]
        try:
            out = self._process_batch(records)
        finally:
            self.sensor = sensor
        held.replay(sensor)
        return out

    def _roll_back(self, point: RollbackPoint) -> bytes:
        """Takes the state back to the checkpoint, then forward through the batches
        processed since (sensors muted and outputs dropped: both already happened), to the
        start of the batch that raised; returns that state encoded. Should a replay raise,
        processing was not deterministic after all: that error goes up, the stage stops
        and the worker restarts from what Kafka and Redis hold (the open transaction,
        with this batch's outputs, is aborted)."""
        assert point.payload is not None
        replay, payload = point.since, point.payload
        self.restore_state(decode_state(payload))  # which also forgets the point
        sensor, self.sensor = self.sensor, Sensor()
        try:
            for batch in replay:
                self._process_batch(batch)
        finally:
            self.sensor = sensor
        return encode_state(self.snapshot_state())

    def _process_batch(self, records: Sequence[ConsumedRecord]) -> list[OutgoingRecord]:  # pragma: no cover
        raise NotImplementedError

    def _isolate(self, records: Sequence[ConsumedRecord], checkpoint: bytes, error: Exception) -> list[OutgoingRecord]:
        """Processes ``records``, whose processing from ``checkpoint`` (the current state)
        raised ``error``, dead-lettering only the records that raise on their own."""
        if len(records) == 1:
            return [self._guard_dead_letter(records[0], error)]
        mid = len(records) // 2
        out: list[OutgoingRecord] = []
        for i, part in enumerate((records[:mid], records[mid:])):
            before = checkpoint if i == 0 else encode_state(self.snapshot_state())
            try:
                out.extend(self._attempt(part))
            except Exception as e:
                self.restore_state(decode_state(before))
                out.extend(self._isolate(part, before, e))
        return out

    def _guard_dead_letter(self, record: ConsumedRecord, error: Exception) -> OutgoingRecord:
        stage = DeadLetterStage.PROCESS
        log.error("record %s/%s@%s dead-lettered: %s: %s", record.topic, record.partition, record.offset,
                  type(error).__name__, error)
        # Read like every other record (its attempts' counts were dropped with them).
        self.sensor.on_events_in(record.topic, record.partition, 1)
        self.sensor.on_dead_letter(record.topic, stage)
        return self._letter(record, stage, type(error).__name__, str(error))

    def _read_input(
        self, records: Sequence[ConsumedRecord], out: list[OutgoingRecord]
    ) -> Iterator[tuple[ConsumedRecord, DecodedEvent | RejectedEvent | Label]]:
        """Each input record with what it is: an event, a refused event, or a checked label
        (a label that fails its checks is dead-lettered here, into ``out``)."""
        sensor = self.sensor
        labels_topic = self.config.input.labels_topic
        # The sensors hear about the poll once, not once per event.
        for (topic, partition), n in _per_partition(records).items():
            sensor.on_events_in(topic, partition, n)
        # The whole poll is decoded and validated at once (stream/batch_decode.py).
        events = [r for r in records if r.topic != labels_topic]
        forms = "inline" if self.CHECKS_LABEL_FORMS else None
        decoded = iter(
            self.events.decode_many([r.value for r in events], [r.timestamp_ms / 1000.0 for r in events], forms)
        )
        valid: dict[tuple[str, int], int] = {}
        for record in records:
            if record.topic == labels_topic:
                label = self._decode_label(record, out)
                if label is not None:
                    yield record, label
                continue
            event = next(decoded)
            if not isinstance(event, RejectedEvent):
                where = (record.topic, record.partition)
                valid[where] = valid.get(where, 0) + 1
            yield record, event
        for (topic, partition), n in valid.items():
            sensor.on_events_valid(topic, partition, n)

    def _decode_label(self, record: ConsumedRecord, out: list[OutgoingRecord]) -> Label | None:
        cfg = self.config
        schema = cfg.event_schema
        try:
            event_id, y = decode_label_record(
                record.value,
                cfg.labels.id_field or schema.id,
                cfg.labels.label_field,
                schema.label_type,
                max_bytes=schema.max_event_bytes,
                max_id_length=schema.max_id_length,
            )
            decoder = self.events.decoder
            decoder.check_label(y)
            check_not_future(schema.max_future, record.timestamp_ms / 1000.0, None, time.time(), DeadLetterStage.LABEL)
            forms = self.CHECKS_LABEL_FORMS and decoder.checks_forms
            if forms:
                decoder.check_form(y, "labels")
        except (LabelRecordError, RejectedEvent) as e:
            self._dead_letter(record, DeadLetterStage.LABEL, e, out)
            return None
        if forms:
            decoder.note_form(y, "labels")
        return Label(event_id, y, record.timestamp_ms / 1000.0)

    def _dead_letter(self, record: ConsumedRecord, stage: str, error: Exception, out: list[OutgoingRecord]) -> None:
        message = error.reason if isinstance(error, RejectedEvent) else str(error)
        error_class = "RejectedEvent" if isinstance(error, RejectedEvent) else type(error).__name__
        out.append(self._letter(record, stage, error_class, message))
        self.sensor.on_dead_letter(record.topic, stage)

    def _letter(self, record: ConsumedRecord, stage: str, error_class: str, message: str) -> OutgoingRecord:
        """The dead letter of ``record``, within the schema's and the topic's size limits."""
        return dead_letter(record, self.config.dead_letter_topic, stage, error_class, message,
                           self.config.event_schema.max_event_bytes, self.dead_letter_max_bytes)


@dataclass(slots=True)
class Label:
    """A checked label for an event id, with the time it arrived (seconds)."""

    event_id: Any
    y: Any
    t: float


class PartitionStageProcessor(_GuardedProcessor):
    """The partition stage of ``scope: global``: decodes, validates and runs the steps
    whose state is per event or per key (:func:`~streamwise.stream.pipeline.split_steps`),
    then writes each accepted event and each checked label to the learn topic, in the
    order they are processed. Bad records are dead-lettered here, as in one stage."""

    stage = "partition"
    models: list[Model] = []
    champion = None
    CHECKS_LABEL_FORMS = False

    def __init__(self, config: PipelineConfig, sensor: Sensor | None = None) -> None:
        self.config = config
        self.sensor = sensor or Sensor()
        route, _ = split_steps(config.cleaners, config.features, config.event_schema)
        self.events = build_event_pipeline(config.event_schema, route)
        self.epoch = 0
        # The rules run in the learner, on the features as the event declared them: those
        # travel with the event when this stage's steps changed them.
        self._declared = bool(config.rules)

    def _process_batch(self, records: Sequence[ConsumedRecord]) -> list[OutgoingRecord]:
        out: list[OutgoingRecord] = []
        topic = self.config.learn_topic
        for record, item in self._read_input(records, out):
            if isinstance(item, RejectedEvent):
                self._dead_letter(record, item.stage, item, out)
            else:
                out.append(OutgoingRecord(topic, record.key, encode_learn_record(record, item, self._declared)))
        for action, n in self.events.drain_activity().items():
            self.sensor.on_clean(action, n)
        return out


def encode_learn_record(record: ConsumedRecord, item: DecodedEvent | Label, declared: bool = False) -> bytes:
    """A learn-topic record: an event as the partition stage left it (its features, label,
    id, key and event time) or a label, with the input record's position and timestamp.
    With ``declared``, an event whose features the steps changed also carries them as
    validated (``"v"``), for the business rules.

    Examples
    --------
    >>> r = ConsumedRecord("events", 2, 40, b"k", b"{}", 1_700_000_000_000)
    >>> value = encode_learn_record(r, DecodedEvent(7, {"amount": 1.5}, True, "k", None))
    >>> value
    b'{"e":[7,{"amount":1.5},true,"k",null],"src":["events",2,40],"ts":1700000000000}'
    >>> origin, item = decode_learn_record(ConsumedRecord("p.learn", 0, 9, b"k", value, 0))
    >>> origin.topic, origin.offset, item.x
    ('events', 40, {'amount': 1.5})
    """
    body: dict[str, Any] = {}
    if isinstance(item, Label):
        body["l"] = [item.event_id, item.y]
    else:
        body["e"] = [item.id, item.x, item.y, item.key, item.event_time]
        if declared and item.validated is not None:
            body["v"] = item.validated
    body["src"] = [record.topic, record.partition, record.offset]
    body["ts"] = record.timestamp_ms
    # Floats are written in their shortest form that reads back to the same double, so
    # the learner sees the very features the partition stage made.
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)


def decode_learn_record(record: ConsumedRecord) -> tuple[ConsumedRecord, DecodedEvent | Label]:
    """The input record a learn-topic record stands for (its topic, partition, offset,
    key and timestamp; its value is the learn record) and the event or label it carries."""
    body = orjson.loads(record.value or b"")
    topic, partition, offset = body["src"]
    origin = ConsumedRecord(topic, partition, offset, record.key, record.value, body["ts"])
    if "l" in body:
        event_id, y = body["l"]
        return origin, Label(event_id, y, body["ts"] / 1000.0)
    event_id, x, y, key, event_time = body["e"]
    return origin, DecodedEvent(event_id, x, y, key, event_time, body.get("v"))


@dataclass(slots=True)
class LearnedEvent:
    """One event of a learn topic and when the learner learned its label."""

    position: int  # of the event's record in the learn topic
    origin: ConsumedRecord  # the input record it stands for
    event: DecodedEvent
    y: Any = None
    # Where in the learn topic's order its label was learned: the label record's position,
    # or position + 0.5 (right after the prediction) for an inline label or one that came
    # before its event. None: never labelled.
    learned_at: float | None = None
    label_timestamp_ms: int | None = None


def learn_order(
    records: Iterable[ConsumedRecord],
    labels: LabelsConfig | None = None,
    partitions: tuple[int, int] | None = None,
    schema: EventSchema | None = None,
) -> list[LearnedEvent]:
    """The learn topic's events in its order, each with the moment the learner of
    ``scope: global`` learned its label, as :class:`~streamwise.models.model_set.ModelSet`
    does, by the same join (models/labels.py, with the pipeline's ``labels`` settings):
    a label joins when the two record times are within the window, whichever was read
    first; an event id already waiting or learned is predicted but not learned again; an
    inline label is learned with every copy of its event. ``partitions``: how many the
    events and labels topics have (by default, how many each side's records came from).
    The one reading of that order, for River's check (streamwise.testing) and the report.
    With the ``schema``, a record whose category label the learner refuses for its form
    (EventDecoder.check_form) is left out, as the learner dead-letters it.

    Examples
    --------
    >>> recs = [ConsumedRecord("p.learn", 0, k, None, encode_learn_record(
    ...     ConsumedRecord("in", 0, k, None, b"", 1000 * k), item), 0) for k, item in enumerate([
    ...     Label(2, True, 0.0), DecodedEvent(1, {}, None, None, None), DecodedEvent(2, {}, None, None, None),
    ...     Label(1, False, 0.0), DecodedEvent(1, {}, None, None, None)])]
    >>> [(e.event.id, e.y, e.learned_at) for e in learn_order(recs)]
    [(1, False, 3.0), (2, True, 2.5), (1, None, None)]
    """
    lc = labels or LabelsConfig()
    pending = PendingLabels(lc.max_pending, lc.ttl_s, lc.early_hold_s, lc.max_early)
    decoded = [decode_learn_record(record) for record in records]
    if schema is not None and schema.label_type == "category":
        forms, kept = EventDecoder(schema), []
        for origin, item in decoded:
            if item.y is not None:
                try:
                    forms.check_form(item.y, "learn")
                except RejectedEvent:
                    continue
                forms.note_form(item.y, "learn")
            kept.append((origin, item))
        decoded = kept
    if partitions is None:
        sides: tuple[set[int], set[int]] = (set(), set())
        for origin, item in decoded:
            sides[isinstance(item, Label)].add(origin.partition)
        partitions = (len(sides[0]), len(sides[1]))
    pending.expect(*partitions)
    order: list[LearnedEvent] = []
    for k, (origin, item) in enumerate(decoded):
        if isinstance(item, Label):
            waiting = pending.on_label(join_id(item.event_id), item.y, item.t, origin.partition)
            if waiting is not None:
                event = waiting[1]
                event.y, event.learned_at, event.label_timestamp_ms = item.y, float(k), origin.timestamp_ms
            continue
        event = LearnedEvent(k, origin, item)
        order.append(event)
        labelled = item.y is not None
        early = pending.on_event(join_id(item.id), event, origin.timestamp_ms / 1000.0, origin.partition, labelled)
        if labelled:
            event.y, event.learned_at = item.y, k + 0.5
        elif early is not None:
            event.y, event.learned_at, event.label_timestamp_ms = early[1], k + 0.5, round(early[0] * 1000)
    return order


class PipelineProcessor(_GuardedProcessor):
    """Decode, steps, models, prediction records: the whole pipeline for one partition
    (``stage="pipeline"``), or, with ``stage="learn"``, the learner of ``scope: global``,
    which reads the learn topic: events the partition stage accepted, labels it checked,
    and runs the steps with global statistics before the models."""

    def __init__(self, config: PipelineConfig, sensor: Sensor | None = None, stage: str = "pipeline") -> None:
        self.config = config
        self.sensor = sensor or Sensor()
        self.stage = stage
        # Cleaners and feature extractors (stream/pipeline.py); they learn from every valid
        # event, labelled or not, and without any configured they return the decoded event as is.
        if stage == "learn":
            _, learn = split_steps(config.cleaners, config.features, config.event_schema)
            self.events = build_learner_steps(config.event_schema, learn)
        else:
            self.events = build_event_pipeline(config.event_schema, config.cleaners, config.features)
        schema = config.event_schema
        self.epoch = 0
        self._fields = frozenset(config.output.fields)
        # Applied to every record after the models (models/rules.py); rebuilt from the config.
        self.rules = config.build_rules()
        self.forecasting = config.forecast is not None
        if config.forecast is not None:  # task: forecast, driven by models/forecast.py
            self.learners: ModelSet | ForecastSet = ForecastSet(config.models, config.forecast)
            return
        self.learners = ModelSet(
            config.models,
            task=config.task,
            metric=config.metric,
            label_type=schema.label_type,
            numeric_features=[n for n, f in schema.features.items() if f.type in ("float", "int", "bool")],
            delayed_labels=config.input.labels_topic is not None,
            labels=config.labels,
            evaluation=config.evaluation,
            drift=config.drift,
            champion=config.champion,
            explain=config.explain,
        )

    @property
    def models(self) -> list[Model]:
        """Every model, challengers included, in config order."""
        return self.learners.models

    @property
    def champion(self) -> str:
        """The model whose prediction is the record's ``prediction``."""
        return self.learners.champion

    def _process_batch(self, records: Sequence[ConsumedRecord]) -> list[OutgoingRecord]:
        out: list[OutgoingRecord] = []
        sensor = self.sensor
        if self.source_partitions is not None and isinstance(self.learners, ModelSet):
            # Each batch: a restored snapshot brings learners of its own.
            self.learners.pending.expect(*self.source_partitions)
        items = self._read_learn_topic(records) if self.stage == "learn" else self._read_input(records, out)
        predicted: list[tuple[ConsumedRecord, DecodedEvent, Outcome]] = []
        for record, item in items:
            if isinstance(item, Label):
                self.learners.on_label(item.event_id, item.y, item.t, record.partition)
                continue
            if isinstance(item, RejectedEvent):
                self._dead_letter(record, item.stage, item, out)
                continue
            key = item.key if item.key is not None else _entity(record.key)
            if self.forecasting:
                try:
                    out.append(self._forecast_record(record, item, key))
                except Exception as e:  # a model bug must not stop the stream
                    out.append(self._letter(record, DeadLetterStage.PREDICT, type(e).__name__, str(e)))
                    sensor.on_dead_letter(record.topic, DeadLetterStage.PREDICT)
                continue
            try:
                # River models predict (and learn from an inline label) now; torch
                # learners predict the whole batch in end_batch().
                outcome = self.learners.on_event(
                    item.id, item.x, item.y, record.timestamp_ms / 1000.0, key, record.partition
                )
            except Exception as e:  # a model bug must not stop the stream
                out.append(self._letter(record, DeadLetterStage.PREDICT, type(e).__name__, str(e)))
                sensor.on_dead_letter(record.topic, DeadLetterStage.PREDICT)
                continue
            predicted.append((record, item, outcome))
        for action, n in self.events.drain_activity().items():
            sensor.on_clean(action, n)
        if isinstance(self.learners, ForecastSet):
            for model, n in self.learners.end_batch().items():
                sensor.on_learn(model, n)
            return out
        result = self.learners.end_batch()
        self._prediction_records(predicted, out)
        self._report_learning(result, records, out)
        return out

    def _read_learn_topic(
        self, records: Sequence[ConsumedRecord]
    ) -> Iterator[tuple[ConsumedRecord, DecodedEvent | RejectedEvent | Label]]:
        """The learn topic's events and labels, each with the input record it stands for;
        the steps with global statistics run on each event here."""
        for (topic, partition), n in _per_partition(records).items():
            self.sensor.on_events_in(topic, partition, n)
        schema = self.config.event_schema
        decoder = self.events.decoder
        for record in records:
            origin, item = decode_learn_record(record)
            # The partition stages leave the label forms to the learner: only here do
            # the labels of every partition meet, in the learn topic's one order.
            labelled = item.y is not None and decoder.checks_forms
            try:
                if labelled:
                    decoder.check_form(item.y, "learn")
                if isinstance(item, DecodedEvent) and self.events.steps:
                    t = None if schema.event_time is None else event_seconds(item.event_time, schema.event_time)
                    self.events.apply_steps(item, t)
            except RejectedEvent as e:
                yield origin, e
                continue
            if labelled:
                decoder.note_form(item.y, "learn")
            yield origin, item

    def _report_learning(self, result: Any, records: Sequence[ConsumedRecord], out: list[OutgoingRecord]) -> None:
        sensor = self.sensor
        for model, n in result.learned.items():
            sensor.on_learn(model, n)
        for model, n in result.pseudo_learned.items():
            sensor.on_pseudo_labels(model, n)
        for model, faults in result.faults.items():
            for kind, n in faults.items():
                sensor.on_model_fault(model, kind, n)
        for delay in result.label_delays:
            sensor.on_label(delay)
        for model, seconds, batch_size, device in result.torch_steps:
            sensor.on_torch_step(model, seconds, batch_size, device)
        if self.learners.delayed_labels:
            sensor.on_pending_labels(len(self.learners.pending))
            if result.label_misses:
                sensor.on_label_misses(result.label_misses)
        partition = records[0].partition if records else None
        for alert in result.alerts:
            if alert["type"] == "drift":
                sensor.on_drift(alert["model"], alert["detector"])
            elif alert["type"] == "champion":
                # Counted where it happens, not by the once-a-second report, which would
                # miss a change made before it first saw the partition.
                if self.reported_champion is None:
                    sensor.on_champion_change(None, alert["previous"], partition)
                sensor.on_champion_change(alert["previous"], alert["champion"], partition)
                self.reported_champion = alert["champion"]
            body = {"pipeline": self.config.name, "partition": partition, **alert}
            out.append(
                OutgoingRecord(
                    topic=self.config.alerts_topic,
                    key=str(alert.get("model") or alert.get("champion")).encode(),
                    value=json.dumps(body, separators=(",", ":"), default=str).encode(),
                )
            )

    def _forecast_record(self, record: ConsumedRecord, event: DecodedEvent, key: str | None) -> OutgoingRecord:
        """The next ``horizon`` values of the event's series, per model, each with its event time."""
        assert isinstance(self.learners, ForecastSet)
        if event.event_time is not None:
            t: float | None = to_epoch_seconds(event.event_time)
        else:  # the record's time, or none known (Kafka's -1, or 0)
            t = record.timestamp_ms / 1000.0 if record.timestamp_ms > 0 else None
        target = self.config.forecast.target if self.config.forecast else ""
        body = {
            "id": event.id,
            "key": event.key if event.key is not None else _text(record.key),
            "value": event.x.get(target),
            "forecasts": self.learners.on_event(key, event.x, t),
            "epoch": self.epoch,
            "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
            "event_timestamp_ms": record.timestamp_ms,
        }
        if event.event_time is not None:
            body["event_time"] = event.event_time
        # A record without a time (-1 or 0): its latency is unknown.
        self.sensor.on_prediction(max(0.0, time.time() - record.timestamp_ms / 1000.0) if record.timestamp_ms > 0 else None)
        return OutgoingRecord(topic=self.config.output.topic, key=record.key, value=orjson.dumps(body, default=str))

    def _prediction_records(
        self, predicted: list[tuple[ConsumedRecord, DecodedEvent, Outcome]], out: list[OutgoingRecord]
    ) -> None:
        """One prediction record per predicted event, in order, written straight from the
        outcomes: each model's entry is built once and shared by ``models`` and the
        champion's top-level fields, and what ``output.fields`` leaves out is never built."""
        if not predicted:
            return
        fields = self._fields
        with_key, with_models, with_source = "key" in fields, "models" in fields, "source" in fields
        with_champion, with_epoch = "champion" in fields, "epoch" in fields
        with_prediction, with_latency = "prediction" in fields, "latency_s" in fields
        with_ts = "event_timestamp_ms" in fields
        with_time, with_explanation = "event_time" in fields, "explanation" in fields
        with_search, with_pseudo = "search" in fields, "pseudo_labels" in fields
        topic = self.config.output.topic
        epoch = self.epoch
        dumps, options = orjson.dumps, orjson.OPT_NON_STR_KEYS
        rules = self.rules
        with_decision = "decision" in fields
        # Per poll, not per event: firings of each rule, and decisions by (rule, decision).
        fired: Counter[str] = Counter()
        decided: Counter[tuple[str, str]] = Counter()
        # One clock read for the poll: its records are all written now.
        now_ms = time.time() * 1000.0
        latencies: list[float | None] = []
        for record, event, outcome in predicted:
            latency_s: float | None
            if record.timestamp_ms > 0:
                latency_s = (now_ms - record.timestamp_ms) / 1000.0
                if latency_s < 0.0:
                    latency_s = 0.0
            else:  # a record without a time (Kafka's -1, or 0): its latency is unknown
                latency_s = None
            latencies.append(latency_s)
            body: dict[str, Any] = {"id": event.id}
            if with_key:
                body["key"] = event.key if event.key is not None else _text(record.key)
            predictions = outcome.predictions
            if with_models:
                entries = {name: _entry(p) for name, p in predictions.items()}
                answer = entries[outcome.champion] if with_prediction else None
            else:
                answer = _entry(predictions[outcome.champion]) if with_prediction else None
            verdict = self._judge(event, predictions[outcome.champion], fired, decided) if rules else None
            if answer is not None:
                if verdict is not None and verdict.overrides:
                    # The rule's answer is the record's; the champion's stays beside it.
                    body["prediction"] = verdict.prediction
                    body["model_prediction"] = answer
                else:
                    body.update(answer)
            if verdict is not None and with_decision:
                body["decision"] = verdict.decision
                body["rule"] = verdict.rule
                body["reason"] = verdict.reason
                body["fired"] = verdict.fired
            if with_champion:
                body["champion"] = outcome.champion
            if with_models:
                body["models"] = entries
            if with_epoch:
                body["epoch"] = epoch
            if with_source:
                body["source"] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            if with_ts:
                body["event_timestamp_ms"] = record.timestamp_ms
            if with_latency:
                # To the microsecond; round(x, 6) costs 0.4 µs per event, this a tenth of it.
                body["latency_s"] = None if latency_s is None else int(latency_s * 1e6 + 0.5) / 1e6
            if with_time and event.event_time is not None:
                body["event_time"] = event.event_time
            if with_explanation and outcome.explanation is not None:
                body["explanation"] = outcome.explanation
            if with_search and outcome.search is not None:
                body["search"] = outcome.search
            if with_pseudo and outcome.pseudo is not None:
                body["pseudo_labels"] = outcome.pseudo
            # orjson writes the record in a tenth of json's time (measured); the class keys
            # of probabilities (True, 3) become "true", "3"; a value it cannot encode is
            # written as its str(), as an id of an unusual type may be. Its result lives in
            # the 1 KiB buffer orjson wrote it in, which the C allocator gives each record
            # anew while the batch holds them all: a right-sized copy, made while that
            # buffer is still warm and freed at once, costs less than keeping it (measured
            # on Phishing: 2.4 µs per event less, LogisticRegression and no-op alike).
            value = memoryview(dumps(body, default=str, option=options)).tobytes()
            out.append(OutgoingRecord(topic, record.key, value))
        self.sensor.on_predictions(latencies)
        if fired:
            outcomes = rules.outcomes()
            for rule, n in fired.items():
                self.sensor.on_rule_fired(rule, outcomes[rule], n)
            for (rule, decision), n in decided.items():
                self.sensor.on_rule_decided(rule, decision, n)

    def _judge(
        self, event: DecodedEvent, answer: Prediction, fired: Counter[str], decided: Counter[tuple[str, str]]
    ) -> Verdict:
        """The rules' verdict on one event, given the champion's answer (unknown to the
        rules when the champion failed or answered NaN); counts what fired."""
        x = event.validated if event.validated is not None else event.x
        if answer.scorable:
            verdict = self.rules.apply(x, answer.value, answer.proba)
        else:
            verdict = self.rules.apply(x, None, None)
        if verdict.rule is not None:
            fired.update(verdict.fired)
            decided[verdict.rule, verdict.decision or "override"] += 1
        return verdict


def _entry(p: Prediction) -> dict[str, Any]:
    """One model's part of a record: its prediction and probabilities, its error, or the
    flag that it answered NaN or infinity."""
    if p.error is not None:
        return {"error": p.error}
    if not p.finite:
        return {"prediction": None, "not_finite": True}
    if p.proba is None:
        return {"prediction": p.value}
    return {"prediction": p.value, "probabilities": p.proba}


def _per_partition(records: Sequence[ConsumedRecord]) -> dict[tuple[str, int], int]:
    """Records per (topic, partition); a poll comes grouped by partition, so by runs."""
    counts: dict[tuple[str, int], int] = {}
    for (topic, partition), run in groupby(records, key=lambda r: (r.topic, r.partition)):
        counts[topic, partition] = counts.get((topic, partition), 0) + sum(1 for _ in run)
    return counts


def arrival_order(records: Sequence[ConsumedRecord], labels_topic: str) -> list[ConsumedRecord]:
    """Events and labels of one poll, interleaved by record timestamp as they arrived.

    A poll returns records grouped by partition, so without this every label of the
    batch would be applied after every event of it. Each partition's own order is kept
    (a merge, not a sort); on equal timestamps a label goes first, as River's
    ``simulate_qa`` reveals an answer before the question asked at the same moment.
    A record without a timestamp (-1 or 0) comes as soon as its partition's turn does:
    it joins whatever the order (models/labels.py).
    """
    runs = [list(run) for _, run in groupby(records, key=lambda r: (r.topic, r.partition))]
    if len(runs) < 2:
        return list(records)
    runs.sort(key=lambda run: run[0].topic != labels_topic)
    return list(heapq.merge(*runs, key=lambda r: r.timestamp_ms))


def _entity(key: bytes | None) -> str | None:
    r"""The entity a record key names, when the schema names no key field: whose per-key
    state (sequence learners, forecasters) its event belongs to. Text for a UTF-8 key; a
    byte that is not UTF-8 becomes a lone surrogate (``surrogateescape``), which no
    UTF-8 key decodes to, so distinct keys stay distinct entities. Replacing such bytes
    with U+FFFD made a Java LongSerializer's 254 and 255 one entity; writing them as
    ``\xNN`` made ``b"\xfe"`` the text key ``\xfe``.

    >>> [_entity(k) for k in (bytes([0, 254]), b"\\xfe", "é".encode(), None)]
    ['\x00\udcfe', '\\xfe', 'é', None]
    """
    return None if key is None else key.decode("utf-8", "surrogateescape")


def _text(key: bytes | None) -> str | None:
    r"""A record key as the record's ``key`` shows it: UTF-8 text, with any byte that is
    not UTF-8 written as ``\xNN`` (JSON cannot carry :func:`_entity`'s lone surrogates).

    >>> [_text(k) for k in (bytes([0, 254]), bytes([0, 255]), "é".encode(), None)]
    ['\x00\\xfe', '\x00\\xff', 'é', None]
    """
    return None if key is None else key.decode("utf-8", "backslashreplace")
