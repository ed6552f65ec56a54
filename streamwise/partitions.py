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

A partition is *ready* when its state is in memory. Otherwise it *waits*, paused, and
none of its records is processed or committed:

- its snapshot cannot be read (Redis down): the restore is retried with backoff;
- its snapshot write was refused because another worker claimed it (a zombie, or a
  forged owner): its state is dropped; if Kafka still assigns it to this worker after
  a session timeout, this worker claims it again and restores it;
- Redis lost its snapshots and ``snapshot.on_missing`` is ``refuse``.

Everything here runs on the polling thread; the rebalance callbacks only note what
changed (see :meth:`PartitionStates.on_assigned`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamwise.connectors.base import Source, StateStore, TopicPartition
from streamwise.connectors.records import ConsumedRecord, OutgoingRecord
from streamwise.connectors.redis_state import FencedError, SnapshotUnavailableError
from streamwise.core.errors import ServiceUnavailableError
from streamwise.core.sensors import Sensor
from streamwise.core.settings import SnapshotSettings
from streamwise.models.state import SnapshotFormatError, decode_state, encode_state, fingerprint
from streamwise.pipeline_config import PipelineConfig
from streamwise.processor import PipelineProcessor
from streamwise.transfer import Transfer, pipeline_signature

log = logging.getLogger(__name__)

# Written with each committed offset: the epoch of the partition's newest snapshot at
# that moment. A restore that finds no snapshot (or an older one) in Redis while Kafka
# says this epoch existed knows the store lost data, instead of silently re-learning.
MARKER_PREFIX = "sw1:epoch="


def marker(epoch: int) -> str:
    return f"{MARKER_PREFIX}{epoch}"


def epoch_of_marker(text: str) -> int:
    r"""The epoch a committed offset's metadata names; 0 when it names none.

    librdkafka stores the metadata with a C string's trailing NUL, which kafka-python
    reads back as part of it: a worker switched from one client to the other must still
    read what the first one committed.

    >>> epoch_of_marker("sw1:epoch=12"), epoch_of_marker("sw1:epoch=12\x00"), epoch_of_marker(""), epoch_of_marker("sw1:epoch=x")
    (12, 12, 0, 0)
    """
    if not text.startswith(MARKER_PREFIX):
        return 0
    digits = text[len(MARKER_PREFIX) :].rstrip("\x00").strip()
    return int(digits) if digits.isdigit() else 0


@dataclass
class PartitionState:
    partition: int
    processor: PipelineProcessor
    # Records below these offsets were already emitted: re-learn them, write nothing.
    emit_from: dict[TopicPartition, int]
    # The next offset to process, per topic-partition: what a snapshot covers.
    positions: dict[TopicPartition, int]
    # The claim under which this worker may write the partition's snapshots.
    owner: int | None = None
    epoch: int = 0
    # The snapshot epoch Kafka's committed offsets last carried for this partition.
    marked_epoch: int = 0
    # Events processed since the last snapshot, and how many of them are committed.
    unsnapshotted: int = 0
    committed_positions: dict[TopicPartition, int] = field(default_factory=dict)
    last_snapshot: float = field(default_factory=time.monotonic)
    paused: bool = False
    replayed: int = 0
    # The newest snapshot this worker restored or wrote under its claim (payload and
    # SnapshotInfo): a restore while the store is down starts from it (see
    # PartitionStates._restore_locally). It costs one encoded state of memory per partition.
    saved: tuple[bytes, Any] | None = None
    # Restored without any snapshot (none in the store, none named by Kafka, no warm
    # start): until the first one is written, an empty state re-learning from offset 0
    # is this partition's restore, which needs no store either.
    from_scratch: bool = False


def _behind(committed: Mapping[TopicPartition, int | None], snapshot: Mapping[TopicPartition, int]) -> dict[Any, Any]:
    """Where Kafka's committed offsets read behind the snapshot. A snapshot covers
    committed work only, so they never are, unless the read is stale or someone moved
    the group's offsets back by hand."""
    return {tp: (committed.get(tp), at) for tp, at in snapshot.items() if (committed.get(tp) or 0) < at}


@dataclass
class Waiting:
    """A partition assigned to this worker whose state is not in memory."""

    tps: list[TopicPartition]
    reason: str
    retry_at: float
    backoff_s: float


class StoreHealth:
    """One backoff for the whole store: after a failed call, no snapshot is attempted
    until it passes. P partitions due at once then cost one socket timeout per backoff
    period, not P of them per poll, so an unreachable Redis never stalls the loop for
    long (the issue measured 5·P s per cycle before)."""

    def __init__(self, max_backoff_s: float = 30.0) -> None:
        self.next_try = 0.0
        self.backoff_s = 0.5
        self.max_backoff_s = max_backoff_s
        self.down_since: float | None = None

    def available(self) -> bool:
        return time.monotonic() >= self.next_try

    def failed(self) -> None:
        now = time.monotonic()
        self.down_since = self.down_since or now
        self.next_try = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, self.max_backoff_s)

    def ok(self) -> None:
        if self.down_since is not None:
            log.info("state store reachable again after %.1f s", time.monotonic() - self.down_since)
        self.down_since = None
        self.next_try = 0.0
        self.backoff_s = 0.5


class PartitionStates:
    def __init__(
        self,
        config: PipelineConfig,
        snapshot: SnapshotSettings,
        sensor: Sensor,
        source: Source,
        store: StateStore | None,
        refence_after_s: float,
        state_name: str | None = None,
        make_processor: Callable[[Sensor], Any] | None = None,
        transfers: Mapping[str, Transfer] | None = None,
    ) -> None:
        self.config = config
        # The name the store keeps this stage's snapshots under (the pipeline's, or
        # "<name>.partition" and "<name>.learn" for the two stages of scope: global),
        # and what builds a partition's processor (the whole pipeline by default).
        self.state_name = state_name or config.name
        self.make_processor = make_processor or (lambda sensor: PipelineProcessor(config, sensor))
        # Models that start from another pipeline's snapshot where a partition has no state
        # of its own yet (streamwise/transfer.py), and what each snapshot says about this
        # pipeline's inputs, so that another pipeline can check it before starting from it.
        self.transfers = dict(transfers or {})
        self.signature = pipeline_signature(config)
        self.snapshot = snapshot
        self.sensor = sensor
        self.source = source
        self.store = store
        # How long a fenced partition waits before this worker claims it again: past a
        # session timeout, Kafka has taken it away from a zombie.
        self.refence_after_s = refence_after_s
        self.states: dict[int, PartitionState] = {}
        self.waiting: dict[int, Waiting] = {}
        # Partitions this worker gave up, kept for the run's summary and for tests.
        self.retired: dict[int, PartitionState] = {}
        # Per partition, how often it was restored from what this worker kept in memory
        # while the store was down (_restore_locally).
        self.local_restores: Counter[int] = Counter()
        self.health = StoreHealth()
        self._quiet = Sensor()
        self._assigned: list[TopicPartition] = []
        self._revoked: list[TopicPartition] = []
        # How many revocations (or losses) the callbacks have reported, cancelled or
        # not: the checkpoint compares it across a unit of work (streamwise/checkpoint.py).
        self.revocations = 0
        self._just_revoked: set[TopicPartition] | None = None
        self._lock = threading.Lock()

    def processors(self) -> dict[int, PipelineProcessor]:
        return {p: st.processor for p, st in sorted(self.states.items())}

    def all_processors(self) -> dict[int, PipelineProcessor]:
        """The owned partitions' processors, and the last one of each partition given up."""
        merged = {**self.retired, **self.states}
        return {p: st.processor for p, st in sorted(merged.items())}

    # ----- rebalance callbacks ---------------------------------------------------
    # Which thread runs them depends on the client: kafka-python 3 calls them on its
    # event-loop (network) thread, where a blocking consumer call would stall the
    # heartbeat, and possibly while the polling thread is in the middle of a batch;
    # confluent-kafka calls them inside consume(), on the polling thread. Either way
    # they only note the change under a lock; the polling thread applies it at the next
    # checkpoint (streamwise/checkpoint.py), between two batches.

    def on_assigned(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            self._assigned.extend(tps)
            self._revoked = [tp for tp in self._revoked if tp not in set(tps)]
            # An eager rebalance (the range assignor) revokes every partition and gives
            # them back in the next generation: if this assignment returns everything the
            # revocation just before it took, no other member held them in between, and
            # that revocation does not fence the open work (kafka-python rebalances like
            # this once right after a start; the first transaction was refused every time).
            if self._just_revoked is not None and self._just_revoked <= set(tps):
                self.revocations -= 1
            self._just_revoked = None

    def on_revoked(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            self.revocations += 1
            self._just_revoked = set(tps)
            self._revoked.extend(tps)
            self._assigned = [tp for tp in self._assigned if tp not in set(tps)]

    def take_rebalance(self) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """(assigned, revoked) since the last call."""
        with self._lock:
            assigned, self._assigned = self._assigned, []
            revoked, self._revoked = self._revoked, []
        return assigned, revoked

    # ----- giving up and taking on ------------------------------------------------

    def release(self, tps: Sequence[TopicPartition], snapshot: bool) -> None:
        """Forgets revoked partitions. With ``snapshot`` (their last batch committed), a
        final snapshot helps the next owner start where this worker stopped."""
        for p in sorted({tp[1] for tp in tps}):
            self.waiting.pop(p, None)
            st = self.states.pop(p, None)
            if st is None:
                continue
            self.retired[p] = st
            # Not while the store is known to be down: a socket timeout per partition
            # given up would hold the rebalance (and this worker's heartbeat) back.
            if snapshot and st.unsnapshotted and self.health.available():
                self._save(st)

    def rewind(self, partitions: Sequence[int]) -> None:
        """Forgets the in-memory state of these partitions, after a batch whose outputs
        did not land; each waits, paused, to be restored from its snapshot (re-learning
        up to the committed offsets, as a restart would) after the next poll.

        Not restored at once: a commit fails when the group has rebalanced (this worker
        was dropped as a zombie, or is losing partitions), and this worker's source may
        not know it yet (it learns at its next poll). Restoring claims the partition in
        the store, which would fence the worker that owns it now. After the next poll
        has applied the rebalance, only partitions still assigned here are restored
        (:meth:`retry_waiting`)."""
        for p in sorted(set(partitions)):
            st = self.states.pop(p, None)
            if st is not None:
                self.retired[p] = st
                # Due at once; a failed restore then backs off from 0.5 s, as any other.
                self.waiting[p] = Waiting(list(st.positions), "rewound", time.monotonic(), 0.25)
                self.source.pause(list(st.positions))

    def take_on(self, tps: Sequence[TopicPartition]) -> None:
        """Restores newly assigned partitions (or puts them to wait) and seeks them."""
        by_partition: dict[int, list[TopicPartition]] = defaultdict(list)
        for tp in tps:
            by_partition[tp[1]].append(tp)
        for p, group in sorted(by_partition.items()):
            if p in self.states:
                # Another topic of an owned partition (events and labels arrive apart).
                self._attach(self.states[p], group)
                continue
            pending = self.waiting.pop(p, None)
            # What this worker held of it before stays in self.retired: while the store is
            # down, a partition that comes back restores from it (_restore_locally).
            group = sorted(set(group) | set(pending.tps if pending else ()))
            self._restore_or_wait(p, group, pending)

    def retry_waiting(self) -> None:
        """Retries the restore of waiting partitions whose backoff has passed."""
        now = time.monotonic()
        assignment = set(self.source.assignment())
        for p, w in sorted(self.waiting.items()):
            if now < w.retry_at:
                continue
            owned = [tp for tp in w.tps if tp in assignment]
            if not owned:
                self.waiting.pop(p)
                continue
            # Still listed as waiting while the restore is tried: it replaces the entry,
            # or removes it once the partition is restored (another thread reading the
            # list, the tests' or a report's, never sees the partition vanish meanwhile).
            self._restore_or_wait(p, owned, w)

    def held_by_store(self, for_s: float) -> list[int]:
        """The partitions held only because the store has failed for ``for_s`` seconds or
        more: waiting to be restored, or paused past ``snapshot.max_unsnapshotted_events``.
        The store is first asked once more, whatever its backoff says (it may be back and
        the next try not yet due): the waiting partitions are retried, the paused ones
        snapshotted, and what it answers is no longer held. For ``--until-idle``, which
        must not wait for ever for a store that does not come back (runner.py)."""
        down_since = self.health.down_since
        if self.store is None or down_since is None or time.monotonic() - down_since < for_s:
            return []

        def held() -> list[int]:
            waiting = [p for p, w in self.waiting.items() if w.reason == "store unavailable"]
            return sorted(waiting + [p for p, st in self.states.items() if st.paused])

        if not held():
            return []
        self.health.next_try = 0.0
        for w in self.waiting.values():
            if w.reason == "store unavailable":
                w.retry_at = 0.0
        self.retry_waiting()
        for st in [st for st in self.states.values() if st.paused]:
            if self.health.available() and self._fully_committed(st):
                self._save(st)
        return held()

    def _wait(self, p: int, tps: list[TopicPartition], reason: str, after_s: float, previous: Waiting | None) -> None:
        backoff = min((previous.backoff_s * 2) if previous else after_s, max(after_s, self.snapshot.restore_retry_max_seconds))
        self.waiting[p] = Waiting(tps, reason, time.monotonic() + backoff, backoff)
        self.source.pause(tps)

    def _restore_or_wait(self, p: int, tps: list[TopicPartition], previous: Waiting | None) -> None:
        if not self.source.in_group():
            # Its assignment is stale (Source.in_group): restoring would claim, in the
            # store, a partition another worker may own now. Retried once back in the group.
            self._wait(p, tps, "out of group", 0.25, previous)
            return
        if self.store is not None and not self.health.available():
            # The store just failed: do not spend another socket timeout per partition.
            if not self._restore_locally(p, tps):
                self._wait(p, tps, "store unavailable", 0.5, previous)
            return
        try:
            st = self._restore(p, tps)
        except (SnapshotUnavailableError, ServiceUnavailableError) as e:
            reason = "store unavailable" if isinstance(e, SnapshotUnavailableError) else "kafka unavailable"
            if isinstance(e, SnapshotUnavailableError):
                self.health.failed()
                if self._restore_locally(p, tps):
                    return
            if previous is None or previous.reason != reason:
                log.warning("partition %s waits, paused: its state cannot be restored (%s)", p, e)
            self._wait(p, tps, reason, 0.5, previous)
            return
        except _MissingState as e:
            log.error("partition %s waits, paused: %s (snapshot.on_missing=refuse)", p, e)
            self._wait(p, tps, "snapshot missing", self.snapshot.restore_retry_max_seconds, previous)
            return
        if self.store is not None:
            self.health.ok()
        self.waiting.pop(p, None)
        self.states[p] = st

    def _restore(self, p: int, tps: list[TopicPartition]) -> PartitionState:
        processor = self.make_processor(self.sensor)
        st = PartitionState(p, processor, emit_from={}, positions={})
        committed = self.source.committed(tps)
        offsets: dict[TopicPartition, int] = {}
        if self.store is not None:
            # The claim first: from here on a zombie still holding the partition can no
            # longer write its snapshots.
            st.owner = self.store.claim(self.state_name, p)
            snap = self.store.load_latest(self.state_name, p)
            if snap is not None:
                try:
                    processor.restore_state(decode_state(snap.payload))
                except SnapshotFormatError as e:
                    # docs/snapshots.md: a snapshot this version cannot read counts as missing.
                    log.error("partition %s: snapshot epoch %s refused: %s", p, snap.info.epoch, e)
                    snap = None
            expected = self._named_epoch(tps)
            if snap is None and expected > 0:
                self._state_lost(p, expected)
            elif snap is None and self.transfers:
                self._warm_start(p, processor)
            if snap is not None:
                offsets = snap.info.offsets_by_tp()
                st.epoch = processor.epoch = snap.info.epoch
                st.saved = (snap.payload, snap.info)
                log.info("partition %s restored from snapshot epoch %s at %s", p, snap.info.epoch, offsets)
            else:
                st.from_scratch = not self.transfers
            # Read again, now that the claim is taken: the first read can be stale. A
            # worker stopped (SIGSTOP, a long pause) inside it got, on waking, the answer
            # from before its stop, while another worker had taken the partition over,
            # committed it to the end and snapshotted it; restoring that newer snapshot
            # with the old committed offsets wrote 689 outputs a second time.
            committed = self.source.committed(tps)
            behind = _behind(committed, offsets)
            if behind:
                log.error("partition %s: Kafka's committed offsets are behind its snapshot %s (moved back by"
                          " hand?); restoring at the snapshot, writing from the committed offsets", p, behind)
        self._start_at(st, tps, offsets, committed)
        return st

    def _start_at(
        self, st: PartitionState, tps: list[TopicPartition], offsets: dict[TopicPartition, int],
        committed: dict[TopicPartition, int | None],
    ) -> None:
        """Positions a restored partition: it re-learns from its snapshot's ``offsets``
        and writes from the ``committed`` ones on."""
        for tp in tps:
            # Without a snapshot, state is rebuilt from the start of the log.
            st.positions[tp] = offsets.get(tp, 0)
            st.emit_from[tp] = committed.get(tp) or 0
            st.committed_positions[tp] = st.emit_from[tp]
        self.source.seek({tp: st.positions[tp] for tp in tps})
        self.source.resume(tps)

    def _named_epoch(self, tps: list[TopicPartition]) -> int:
        """The newest snapshot epoch Kafka's committed offsets name for the partition (0: none)."""
        return max(map(epoch_of_marker, self.source.committed_markers(tps).values()), default=0)

    def _restore_locally(self, p: int, tps: list[TopicPartition]) -> bool:
        """While the store is down: restores a partition this worker held before (rewound
        after a failed commit, or given back to it by the group) from the restore point it
        keeps in memory, rather than holding it until the store is back. That point is
        the newest snapshot this worker restored or wrote (``saved``), or, for a partition
        never snapshotted, an empty state (``from_scratch``); either way the restore goes
        as one from the store does: re-learn from the point's offsets to Kafka's committed
        ones, write from there on. What another worker did meanwhile is thus re-learned
        from the log, and the point is refused when it cannot be the newest one: when
        Kafka's committed offsets are behind it, or their marker names a later snapshot
        epoch (another worker snapshotted the partition since). A snapshot written by
        another worker whose epoch Kafka has not heard of yet is older than the committed
        offsets, so re-learning past it ends in the same state; that worker's newer claim
        then refuses this worker's next snapshot, which drops the state and restores it
        from the store (PartitionStates.fenced). A zombie (out of its group without
        knowing) commits nothing: Kafka refuses its offsets, Source.in_group holds them."""
        old = self.retired.get(p)
        if old is None or (old.saved is None and not old.from_scratch):
            return False
        payload, info = old.saved if old.saved is not None else (None, None)
        since = info.offsets_by_tp() if info is not None else {}
        epoch = info.epoch if info is not None else 0
        try:
            committed = self.source.committed(tps)
            named = self._named_epoch(tps)
        except ServiceUnavailableError:
            return False
        if named > epoch or _behind(committed, since):
            return False  # not the newest restore point: wait for the store
        processor = self.make_processor(self.sensor)
        if payload is not None:
            processor.restore_state(decode_state(payload))
        st = PartitionState(p, processor, emit_from={}, positions={}, owner=old.owner, saved=old.saved,
                            from_scratch=old.from_scratch)
        st.epoch = processor.epoch = epoch
        self._start_at(st, tps, since, committed)
        self.waiting.pop(p, None)
        self.states[p] = st
        self.local_restores[p] += 1
        where = f"its snapshot epoch {epoch} kept in memory" if payload is not None else "an empty state (never snapshotted)"
        log.warning("partition %s restored from %s while the store is down", p, where)
        return True

    def _warm_start(self, p: int, processor: PipelineProcessor) -> None:
        """A partition that never had a snapshot: its ``init_from`` models take the source's estimator."""
        for name, transfer in self.transfers.items():
            processor.learners.model(name).estimator = transfer.estimator()
            log.info("partition %s: model %r starts from %s", p, name, transfer.describe())

    def _state_lost(self, p: int, expected: int) -> None:
        message = (
            f"the state store holds no snapshot of partition {p}, but Kafka's committed offsets were written"
            f" after its snapshot epoch {expected}: the store lost data"
        )
        self.sensor.on_snapshot_missing(p, self.snapshot.on_missing)
        if self.snapshot.on_missing == "refuse":
            raise _MissingState(message)
        log.error("%s; re-learning the partition from its earliest offset (snapshot.on_missing=replay)", message)

    def _attach(self, st: PartitionState, tps: list[TopicPartition]) -> None:
        committed = self.source.committed(tps)
        for tp in tps:
            st.positions.setdefault(tp, 0)
            st.emit_from[tp] = committed.get(tp) or 0
            st.committed_positions[tp] = st.emit_from[tp]
        self.source.seek({tp: st.positions[tp] for tp in tps})
        self.source.resume(tps)

    # ----- processing ----------------------------------------------------------

    def process(self, records: Sequence[ConsumedRecord]) -> tuple[list[OutgoingRecord], dict[TopicPartition, int]]:
        """The batch's outputs, and per topic-partition the offset to commit after it.

        Records of a partition that is not ready (waiting, or given up meanwhile) are
        neither processed nor committed: they are fetched again once it is.
        """
        by_partition: dict[int, list[ConsumedRecord]] = defaultdict(list)
        for r in records:
            by_partition[r.partition].append(r)
        out: list[OutgoingRecord] = []
        offsets: dict[TopicPartition, int] = {}
        for p, recs in by_partition.items():
            st = self.states.get(p)
            if st is None:
                continue
            # One pass: records below the committed offset are re-learned, the rest are
            # live; the highest offset of each topic-partition gives its new position.
            emit_from = st.emit_from
            replay: list[ConsumedRecord] = []
            live: list[ConsumedRecord] = []
            last: dict[TopicPartition, int] = {}
            for r in recs:
                tp = (r.topic, r.partition)
                (replay if r.offset < emit_from.get(tp, 0) else live).append(r)
                if r.offset > last.get(tp, -1):
                    last[tp] = r.offset
            if replay:
                st.processor.sensor = self._quiet
                try:
                    st.processor.process(replay)  # outputs were emitted before the crash
                finally:
                    st.processor.sensor = self.sensor
                st.replayed += len(replay)
            if live:
                out.extend(st.processor.process(live))
            for tp, offset in last.items():
                st.positions[tp] = max(st.positions.get(tp, 0), offset + 1)
                # Never commit below what the group had already committed: a batch of
                # re-learned records ends below it, and moving the group back would make
                # a crash emit those records' outputs a second time.
                offsets[tp] = max(st.positions[tp], emit_from.get(tp, 0))
            st.unsnapshotted += len(recs)
        return out, offsets

    def markers(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, str]:
        """What is committed beside each offset: the partition's snapshot epoch."""
        out = {}
        for tp in offsets:
            st = self.states.get(tp[1])
            if st is not None:
                out[tp] = marker(st.epoch)
                st.marked_epoch = st.epoch
        return out

    def stale_markers(self) -> dict[TopicPartition, int]:
        """The committed offsets of partitions snapshotted since their last commit: a
        commit of the same offsets with the new epoch lets a later restore know that
        snapshot existed, even when no record follows it."""
        out: dict[TopicPartition, int] = {}
        for st in self.states.values():
            if st.epoch > st.marked_epoch:
                out.update({tp: o for tp, o in st.committed_positions.items() if o > 0})
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Kafka holds these offsets now: state up to them may be snapshotted."""
        for tp, offset in offsets.items():
            st = self.states.get(tp[1])
            if st is not None:
                st.committed_positions[tp] = offset

    # ----- snapshots -----------------------------------------------------------

    def snapshot_due(self, force: bool = False) -> None:
        """Snapshots the partitions that are due and fully committed."""
        now = time.monotonic()
        for st in list(self.states.values()):
            if not st.unsnapshotted or not self._fully_committed(st):
                continue
            if force or self._due(st, now):
                if not self.health.available():
                    self._apply_backpressure(st)
                    continue
                self._save(st)

    def snapshot_pending(self) -> bool:
        """Whether some partition is due for a snapshot (by events or by time), which
        the next commit should be waited for to take."""
        if self.store is None:
            return False
        now = time.monotonic()
        return any(st.unsnapshotted and self._due(st, now) for st in self.states.values())

    def _due(self, st: PartitionState, now: float) -> bool:
        """Past snapshot.every_events events or snapshot.every_seconds since its last snapshot."""
        return st.unsnapshotted >= self.snapshot.every_events or now - st.last_snapshot >= self.snapshot.every_seconds

    def rebalance_noted(self) -> bool:
        """Whether a rebalance callback noted something that take_rebalance has not taken."""
        with self._lock:
            return bool(self._assigned or self._revoked)

    def snapshot_wanted(self) -> bool:
        # Without a store (snapshots off) no snapshot waits for a commit: counting events
        # since the last one would end every transaction after the first every_events,
        # whatever kafka.commit_interval_ms says.
        if self.store is None:
            return False
        every = self.snapshot.every_events
        return any(st.unsnapshotted >= every for st in self.states.values())

    @staticmethod
    def _fully_committed(st: PartitionState) -> bool:
        return all(st.committed_positions.get(tp, 0) >= pos for tp, pos in st.positions.items())

    def _save(self, st: PartitionState) -> bool:
        if self.store is None:
            return False
        started = time.perf_counter()
        state = st.processor.snapshot_state()
        try:
            payload = encode_state(state)
        except Exception as e:  # a learner that cannot be pickled must not stop the stream
            log.error("partition %s: state cannot be snapshotted: %s: %s", st.partition, type(e).__name__, e)
            self.sensor.on_snapshot_failure(st.partition, type(e).__name__)
            st.last_snapshot = time.monotonic()  # retried at the next due time, not every poll
            return False
        try:
            info = self.store.save(
                self.state_name,
                st.partition,
                payload,
                st.positions,
                owner=st.owner,
                meta={"fingerprint": fingerprint(state), "replayed": st.replayed,
                      "signature": self.signature},
            )
        except SnapshotUnavailableError as e:
            log.warning(
                "partition %s: snapshot failed (%s); %d events not yet snapshotted",
                st.partition, e, st.unsnapshotted,
            )
            self.health.failed()
            self.sensor.on_snapshot_failure(st.partition, type(e).__name__)
            self._apply_backpressure(st)
            return False
        except FencedError as e:
            self.fenced(st, str(e))
            return False
        self.health.ok()
        st.processor.refresh(payload)
        st.saved = (payload, info)
        st.epoch = st.processor.epoch = info.epoch
        st.unsnapshotted = 0
        st.last_snapshot = time.monotonic()
        self.sensor.on_snapshot(st.partition, info.size, time.perf_counter() - started)
        if st.paused:
            self.source.resume(list(st.positions))
            st.paused = False
        return True

    def fenced(self, st: PartitionState, why: str) -> None:
        """Another worker claimed this partition: this worker's state is not the one that
        counts. Its records stop here (nothing past what was committed is committed);
        if Kafka still assigns the partition to this worker after a session timeout, it
        claims it again and restores it, so a forged or stale claim cannot stall it."""
        log.error("partition %s: %s; dropping local state and pausing it", st.partition, why)
        self.sensor.on_fault("fenced")
        self.states.pop(st.partition, None)
        self.retired[st.partition] = st
        self._wait(st.partition, list(st.positions), "fenced", self.refence_after_s, None)

    def _apply_backpressure(self, st: PartitionState) -> None:
        if st.unsnapshotted >= self.snapshot.max_unsnapshotted_events and not st.paused:
            log.warning(
                "partition %s: %d events since the last snapshot, pausing consumption until the store is back",
                st.partition, st.unsnapshotted,
            )
            self.source.pause(list(st.positions))
            st.paused = True

    def close(self) -> None:
        """Final snapshot of every partition (graceful shutdown, after the last commit)."""
        self.snapshot_due(force=True)


class _MissingState(Exception):
    """Redis lost a partition's snapshots and the policy says not to re-learn it."""
