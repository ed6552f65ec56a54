"""Per-partition learning state: restore on assignment, silent replay, snapshots to Redis.

Like a Kafka Streams state store, the state lives per input partition: partition ``p``
has its own :class:`PipelineProcessor` (its own replica of every model), learning from
the events keyed to it. A labels topic must be co-partitioned with the events topic
(same partition count, same key), so that label partition ``p`` meets the events of
partition ``p``.

Recovery rule. A snapshot covers the input up to its offsets ``S`` (the next record to
read); the group's committed offsets ``C`` say which outputs Kafka already holds
(``S <= C`` because a snapshot is taken only after its batch committed). On assignment
the partition's newest valid snapshot is restored and the consumer seeks to ``S``; the
records in ``[S, C)`` are re-learned *without* emitting anything, then processing goes
on as normal from ``C``. Deterministic learners thus end in exactly the state they
would have had without the crash, and no output is written twice.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamwise.connectors.base import Source, TopicPartition
from streamwise.connectors.records import ConsumedRecord, OutgoingRecord
from streamwise.connectors.redis_state import (
    FencedError,
    RedisStateStore,
    SnapshotUnavailableError,
)
from streamwise.core.errors import ServiceUnavailableError
from streamwise.models.state import fingerprint
from streamwise.pipeline_config import PipelineConfig
from streamwise.processor import PipelineProcessor
from streamwise.core.sensors import Sensor
from streamwise.core.settings import SnapshotSettings

log = logging.getLogger(__name__)


@dataclass
class PartitionState:
    partition: int
    processor: PipelineProcessor
    # Records below these offsets were already emitted: re-learn them, write nothing.
    emit_from: dict[TopicPartition, int]
    # The next offset to process, per topic-partition: what a snapshot covers.
    positions: dict[TopicPartition, int]
    epoch: int = 0
    unsnapshotted: int = 0
    last_snapshot: float = field(default_factory=time.monotonic)
    next_attempt: float = 0.0
    backoff_s: float = 0.5
    paused: bool = False
    replayed: int = 0


def _pickle_deep(obj: Any) -> bytes:
    """Pickles with a raised recursion limit: River's trees are nested node objects whose
    depth grows with the data (a Hoeffding tree regressor's default splitter on a
    steadily increasing feature goes past Python's default limit of 1,000)."""
    with _deep_recursion():
        return pickle.dumps(obj, protocol=5)


@contextlib.contextmanager
def _deep_recursion(limit: int = 50_000) -> Iterator[None]:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


class PartitionStates:
    def __init__(
        self,
        config: PipelineConfig,
        snapshot: SnapshotSettings,
        sensor: Sensor,
        store: RedisStateStore | None,
    ) -> None:
        self.config = config
        self.snapshot = snapshot
        self.sensor = sensor
        self.store = store
        self.states: dict[int, PartitionState] = {}
        # Partitions this worker gave up, kept for the run's summary and for tests.
        self.retired: dict[int, PartitionState] = {}
        self.source: Source | None = None
        self._quiet = Sensor()
        self._pending: list[TopicPartition] = []
        self._lock = threading.Lock()

    def processors(self) -> dict[int, PipelineProcessor]:
        return {p: st.processor for p, st in sorted(self.states.items())}

    def all_processors(self) -> dict[int, PipelineProcessor]:
        """The owned partitions' processors, and the last one of each partition given up."""
        merged = {**self.retired, **self.states}
        return {p: st.processor for p, st in sorted(merged.items())}

    # ----- rebalance callbacks -----------------------------------------------
    # Which thread runs them depends on the client: kafka-python 3 calls them on its
    # event-loop (network) thread, where a blocking consumer call (committed offsets)
    # would stall the heartbeat; confluent-kafka calls them inside consume(), on the
    # thread that polls. Either way on_assigned only notes the new partitions under a
    # lock, and settle() restores them on the polling thread right after the poll.

    def on_assigned(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            self._pending.extend(tps)

    def settle(self, records: list[ConsumedRecord]) -> list[ConsumedRecord]:
        """Restores newly assigned partitions and seeks them to their snapshot offsets.
        Records already polled for those partitions are dropped: after the seek they
        are fetched again, in order, from the snapshot's offsets."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return records
        by_partition: dict[int, list[TopicPartition]] = defaultdict(list)
        for tp in pending:
            by_partition[tp[1]].append(tp)
        for p, group in sorted(by_partition.items()):
            if p in self.states:
                self._attach(self.states[p], group)
            else:
                self.retired.pop(p, None)
                self.states[p] = self._restore(p, group)
        moved = set(pending)
        return [r for r in records if (r.topic, r.partition) not in moved]

    def rewind(self, tps: list[TopicPartition]) -> None:
        """Forgets the in-memory state of these partitions; the next settle() restores
        them from their snapshots and re-learns up to the committed offsets."""
        for p in {tp[1] for tp in tps}:
            self.states.pop(p, None)
        with self._lock:
            self._pending.extend(tp for tp in tps if tp not in self._pending)

    def on_revoked(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            self._pending = [tp for tp in self._pending if tp not in set(tps)]
        for p in sorted({tp[1] for tp in tps}):
            st = self.states.pop(p, None)
            if st is not None:
                self.retired[p] = st
            if st is not None and st.unsnapshotted:
                # The last batch is already committed (callbacks run between batches),
                # so the snapshot covers exactly what the next owner will not re-emit.
                self._save(st, force=True)

    def _restore(self, p: int, tps: list[TopicPartition]) -> PartitionState:
        assert self.source is not None
        processor = PipelineProcessor(self.config, self.sensor)
        st = PartitionState(p, processor, emit_from={}, positions={})
        snap = self._load_with_retry(p)
        offsets: dict[TopicPartition, int] = {}
        if snap is not None:
            with _deep_recursion():
                state = pickle.loads(snap.payload)  # verified by its HMAC in load_latest
            processor.restore_state(state["processor"])
            offsets = snap.info.offsets_by_tp()
            st.epoch = processor.epoch = snap.info.epoch
            log.info("partition %s restored from snapshot epoch %s at %s", p, snap.info.epoch, offsets)
        st.positions = dict(offsets)
        self._attach(st, tps)
        return st

    def _attach(self, st: PartitionState, tps: list[TopicPartition]) -> None:
        assert self.source is not None
        committed = self.source.committed(tps)
        seek = {}
        for tp in tps:
            # Without a snapshot, state is rebuilt from the start of the log.
            seek[tp] = st.positions.get(tp, 0)
            st.positions[tp] = seek[tp]
            st.emit_from[tp] = committed.get(tp) or 0
        self.source.seek(seek)

    def _load_with_retry(self, p: int) -> Any:
        if self.store is None:
            return None
        deadline = time.monotonic() + self.snapshot.restore_timeout_seconds
        delay = 0.5
        while True:
            try:
                return self.store.load_latest(self.config.name, p)
            except SnapshotUnavailableError as e:
                if time.monotonic() + delay > deadline:
                    raise ServiceUnavailableError(
                        f"Redis: cannot restore partition {p} of {self.config.name}: {e}"
                    ) from None
                log.warning("partition %s: Redis unavailable for restore, retrying in %.1f s", p, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ----- processing ----------------------------------------------------------

    def process(self, records: Sequence[ConsumedRecord]) -> list[OutgoingRecord]:
        by_partition: dict[int, list[ConsumedRecord]] = defaultdict(list)
        for r in records:
            by_partition[r.partition].append(r)
        out: list[OutgoingRecord] = []
        for p, recs in by_partition.items():
            st = self.states.get(p)
            if st is None:
                # Cannot happen with a consistent rebalance; if it does, never guess.
                log.error("records for partition %s without its state; skipping this poll", p)
                continue
            replay = [r for r in recs if r.offset < st.emit_from.get((r.topic, r.partition), 0)]
            live = [r for r in recs if r.offset >= st.emit_from.get((r.topic, r.partition), 0)]
            if replay:
                st.processor.sensor = self._quiet
                try:
                    st.processor.process(replay)  # outputs were emitted before the crash
                finally:
                    st.processor.sensor = self.sensor
                st.replayed += len(replay)
            if live:
                out.extend(st.processor.process(live))
            for r in recs:
                tp = (r.topic, r.partition)
                if r.offset + 1 > st.positions.get(tp, 0):
                    st.positions[tp] = r.offset + 1
            st.unsnapshotted += len(recs)
        return out

    def commit_offsets(self, records: Sequence[ConsumedRecord]) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit after this batch: one past its last record,
        but never below what the group had already committed. A batch of re-learned
        records ends below that; committing it would move the group back, and a crash
        then would emit those records' outputs a second time."""
        out: dict[TopicPartition, int] = {}
        for r in records:
            tp = (r.topic, r.partition)
            if r.offset + 1 > out.get(tp, -1):
                out[tp] = r.offset + 1
        for tp, offset in out.items():
            st = self.states.get(tp[1])
            if st is not None:
                out[tp] = max(offset, st.emit_from.get(tp, 0))
        return out

    # ----- snapshots -----------------------------------------------------------

    def after_commit(self, force: bool = False) -> None:
        """Snapshots the partitions that are due. Call only after a successful commit."""
        now = time.monotonic()
        for st in list(self.states.values()):
            due = st.unsnapshotted >= self.snapshot.every_events or (
                st.unsnapshotted and now - st.last_snapshot >= self.snapshot.every_seconds
            )
            if (force and st.unsnapshotted) or (due and now >= st.next_attempt):
                self._save(st, force=force)

    def _save(self, st: PartitionState, force: bool = False) -> bool:
        if self.store is None:
            return False
        started = time.perf_counter()
        state = st.processor.snapshot_state()
        try:
            payload = _pickle_deep({"processor": state})
        except Exception as e:  # a learner that cannot be pickled must not stop the stream
            log.error("partition %s: state cannot be snapshotted: %s: %s", st.partition, type(e).__name__, e)
            self._snapshot_failed(st, type(e).__name__)
            return False
        try:
            info = self.store.save(
                self.config.name,
                st.partition,
                payload,
                st.positions,
                generation=self._generation(),
                meta={"fingerprint": fingerprint(state), "replayed": st.replayed},
            )
        except SnapshotUnavailableError as e:
            log.warning(
                "partition %s: snapshot failed (%s); %d events not yet snapshotted, retry in %.1f s",
                st.partition, e, st.unsnapshotted, st.backoff_s,
            )
            self._snapshot_failed(st, type(e).__name__)
            return False
        except FencedError as e:
            # Another worker owns this partition now: its state is the one that counts.
            log.error("partition %s: %s; dropping local state", st.partition, e)
            self.states.pop(st.partition, None)
            return False
        st.epoch = st.processor.epoch = info.epoch
        st.unsnapshotted = 0
        st.last_snapshot = time.monotonic()
        st.backoff_s = 0.5
        st.next_attempt = 0.0
        self.sensor.on_snapshot(st.partition, info.size, time.perf_counter() - started)
        if st.paused:
            self._pause(st, False)
        return True

    def _snapshot_failed(self, st: PartitionState, reason: str) -> None:
        st.next_attempt = time.monotonic() + st.backoff_s
        st.backoff_s = min(st.backoff_s * 2, 30.0)
        self.sensor.on_snapshot_failure(st.partition, reason)
        self._apply_backpressure(st)

    def _apply_backpressure(self, st: PartitionState) -> None:
        if st.unsnapshotted >= self.snapshot.max_unsnapshotted_events and not st.paused:
            log.warning(
                "partition %s: %d events since the last snapshot, pausing consumption until Redis is back",
                st.partition, st.unsnapshotted,
            )
            self._pause(st, True)

    def _pause(self, st: PartitionState, paused: bool) -> None:
        assert self.source is not None
        tps = list(st.positions)
        (self.source.pause if paused else self.source.resume)(tps)
        st.paused = paused

    def _generation(self) -> int | None:
        assert self.source is not None
        return getattr(self.source.group_metadata(), "generation_id", None)

    def close(self) -> None:
        """Final snapshot of every partition (graceful shutdown)."""
        for st in list(self.states.values()):
            if st.unsnapshotted:
                self._save(st, force=True)
