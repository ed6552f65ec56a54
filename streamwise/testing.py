"""An in-memory Kafka and state store with fault markers, to test pipelines and recovery.

For tests only: the service never uses this module. It lets a test (ours, or a user's
testing their own pipeline) run :class:`~streamwise.runner.Runner` without Kafka or
Redis, crash it at a chosen point of the checkpoint, start it again on the same broker
and store (as a restarted process would), and check what a ``read_committed`` reader
sees, in seconds.

- :class:`MemoryBroker` holds topics (partitions as lists of records with timestamps),
  consumer groups (members, generation, committed offsets with their markers) and
  transactions (records visible to ``read_committed`` readers only once committed).
- :class:`MemorySource`, :class:`MemorySink` and :class:`MemoryAdmin` are its clients,
  with the connectors' protocols (:mod:`streamwise.connectors.base`).
- :class:`MemoryStateStore` keeps snapshots with the owner-claim fencing rules of
  :class:`~streamwise.connectors.redis_state.RedisStateStore`.
- :class:`Faults` holds markers in the spirit of Bytewax's ``TestingSource`` ``ABORT``:
  :class:`CrashAt` raises :class:`SimulatedCrash` at the n-th call of a step or client
  call; :class:`DeliveryErrorAt`, :class:`StoreDownAt` and :class:`FencedAt` make a
  call fail the way Kafka or Redis would; :class:`StallAt` stops the process for a
  while, and its group may drop it meanwhile (a zombie).

A crash is a :class:`BaseException`, so no ``except Exception`` in the service swallows
it: it leaves :meth:`Runner.run` as a ``kill -9`` ends a process. From then on the
clients that share its :class:`Faults` are dead: their ``close`` does nothing (an open
transaction stays open until a producer with the same transactional id starts, as in
Kafka), and the source leaves its group without committing, as its session would time
out.

The checkpoint steps (:mod:`streamwise.checkpoint`) and the calls that mark them:

====  ======================================  =============================================
step  exactly_once                            at_least_once
====  ======================================  =============================================
1     ``send`` (each output record)           ``send``
2     ``send_offsets`` (in the transaction)   ``flush``
3     ``commit_transaction``                  ``commit`` (the source's offset commit)
4     ``on_commit`` (the sensor hook; needs   ``on_commit``
      :attr:`Faults.sensor` among the runner's
      sensors, as :func:`memory_runner` does)
5     ``save`` (the snapshot write)           ``save``
====  ======================================  =============================================

Examples
--------
A crash after the second commit, then a restart that delivers the rest exactly once:

>>> from streamwise.pipeline_config import parse_pipeline_config
>>> from streamwise.core.settings import Settings
>>> cfg = parse_pipeline_config({
...     "name": "demo", "input": {"topic": "demo.events"}, "output": {"topic": "demo.out"},
...     "schema": {"id": "id", "label": "y", "label_type": "bool", "features": {"x": "float"}},
...     "models": [{"name": "lr", "steps": ["linear_model.LogisticRegression"]}],
... })
>>> settings = Settings()
>>> settings.kafka.poll_timeout_ms, settings.kafka.max_poll_records = 10, 10
>>> settings.kafka.commit_interval_ms = 0
>>> broker, store = MemoryBroker(), MemoryStateStore()
>>> broker.create_topic("demo.events", partitions=2)
>>> for i in range(60):
...     event = {"id": i, "x": i % 7, "y": i % 2 == 1}
...     _ = broker.produce("demo.events", json.dumps(event).encode(), key=str(i).encode())
>>> crashing = memory_runner(cfg, settings, broker, store, Faults(crash_after_step=3, n=2))
>>> try:
...     crashing.run(until_idle_s=0.05)
... except SimulatedCrash as crash:
...     print(crash)
crash after commit_transaction (step 3) #2
>>> _ = memory_runner(cfg, settings, broker, store).run(until_idle_s=0.05)
>>> ids = [json.loads(r.value)["id"] for r in broker.read("demo.out")]
>>> sorted(ids) == list(range(60))
True
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamwise.connectors.base import RebalanceCallback, TopicPartition
from streamwise.connectors.records import ConsumedRecord, OutgoingRecord
from streamwise.connectors.redis_state import FencedError, Snapshot, SnapshotInfo, SnapshotUnavailableError
from streamwise.core.errors import DeliveryError, GroupMetadataRefused, ServiceUnavailableError
from streamwise.core.sensors import Sensor

if TYPE_CHECKING:
    from streamwise.core.settings import Settings
    from streamwise.pipeline_config import PipelineConfig
    from streamwise.runner import Runner

__all__ = [
    "CrashAt",
    "DeliveryErrorAt",
    "FencedAt",
    "Faults",
    "GroupMetadata",
    "MemoryAdmin",
    "MemoryBroker",
    "MemorySink",
    "MemorySource",
    "MemoryStateStore",
    "SimulatedCrash",
    "StallAt",
    "StoreDownAt",
    "memory_runner",
]

# The client call that marks each checkpoint step, per guarantee (see the module's table).
STEP_CALLS: dict[int, dict[str, str]] = {
    1: {"exactly_once": "send", "at_least_once": "send"},
    2: {"exactly_once": "send_offsets", "at_least_once": "flush"},
    3: {"exactly_once": "commit_transaction", "at_least_once": "commit"},
    4: {"exactly_once": "on_commit", "at_least_once": "on_commit"},
    5: {"exactly_once": "save", "at_least_once": "save"},
}
_STEP_OF_CALL = {call: step for step, calls in STEP_CALLS.items() for call in calls.values()}


# ----- fault markers ------------------------------------------------------------------


class SimulatedCrash(BaseException):
    """The process dies here. A :class:`BaseException`, as ``KeyboardInterrupt`` is, so
    that no ``except Exception`` in the service catches it: like ``kill -9``, it leaves
    no chance to commit, abort or snapshot.

    Examples
    --------
    >>> try:
    ...     raise SimulatedCrash("crash before send #1")
    ... except Exception:
    ...     print("swallowed")
    ... except BaseException as e:
    ...     print("process ended:", e)
    process ended: crash before send #1
    """


def _call_name(at: str | int) -> str:
    if isinstance(at, int):
        if at not in STEP_CALLS:
            raise ValueError(f"checkpoint steps are 1 to 5, not {at}")
        return f"step{at}"
    return at


@dataclass(frozen=True)
class CrashAt:
    """Crash at the ``n``-th call of ``at``: before it does anything, or with ``after``,
    once it has done all it does (a send appended, a commit visible, a snapshot written).

    ``at`` is a call name (``send``, ``begin_transaction``, ``send_offsets``,
    ``commit_transaction``, ``abort_transaction``, ``flush``, ``commit``, ``poll``,
    ``on_commit``, ``claim``, ``save``, ``load_latest``) or a checkpoint step number 1–5,
    which stands for that step's call under either guarantee.

    Examples
    --------
    >>> CrashAt(3, n=2, after=True)
    CrashAt(at=3, n=2, after=True)
    >>> CrashAt("save").describe()
    'crash before save #1'
    """

    at: str | int
    n: int = 1
    after: bool = False

    def describe(self, call: str | None = None) -> str:
        name = call or (self.at if isinstance(self.at, str) else f"step {self.at}")
        step = f" (step {self.at})" if isinstance(self.at, int) and call else ""
        return f"crash {'after' if self.after else 'before'} {name}{step} #{self.n}"


@dataclass(frozen=True)
class DeliveryErrorAt:
    """The ``n``-th call of ``at`` raises :class:`~streamwise.core.errors.DeliveryError`
    before doing anything, as a broker that refuses or times out would. A transaction
    stays open and can be aborted, as after Kafka's abortable errors.

    Examples
    --------
    >>> DeliveryErrorAt("commit_transaction", n=2)
    DeliveryErrorAt(at='commit_transaction', n=2, error=<class 'streamwise.core.errors.DeliveryError'>)

    ``error`` may name another exception, e.g. one a client library raises from a
    fatal state instead of the connector's DeliveryError.
    """

    at: str | int = "commit_transaction"
    n: int = 1
    error: type[Exception] = DeliveryError


@dataclass(frozen=True)
class StoreDownAt:
    """From the ``n``-th call of ``at`` on, the state store answers every call with
    :class:`~streamwise.connectors.redis_state.SnapshotUnavailableError` for ``seconds``
    (every client of it: Redis is down, not one connection).

    Examples
    --------
    >>> StoreDownAt("save", n=3, seconds=0.5)
    StoreDownAt(at='save', n=3, seconds=0.5)
    """

    at: str | int = "save"
    n: int = 1
    seconds: float = 1.0


@dataclass(frozen=True)
class FencedAt:
    """Just before the ``n``-th snapshot write, another worker claims the partition (a
    zombie's successor, or a forged claim), so the write is refused with
    :class:`~streamwise.connectors.redis_state.FencedError` by the store's own rule.

    Examples
    --------
    >>> FencedAt(n=2)
    FencedAt(n=2)
    """

    n: int = 1


@dataclass(frozen=True)
class StallAt:
    """The process stops for ``seconds`` at the ``n``-th call of ``at`` (a long GC
    pause, a SIGSTOP). With ``expire``, its group drops its source meanwhile, as a
    session timeout would: it comes back a zombie, its partitions given to others.

    ``told_after_polls`` is how kafka-python learns it: its heartbeat thread finds the
    member unknown and resets the generation to -1 at once, but the loss reaches the
    rebalance callback only that many polls later. Meanwhile the source still lists
    its partitions, fetches them, and its group metadata (member unknown, generation
    -1) is the kind a broker does not check a transaction's offsets against.

    With ``metadata_kept``, the source's metadata keeps its old member and generation
    meanwhile, which the broker refuses: kafka-python seen with a stalled heartbeat,
    never told at all for a ``told_after_polls`` as large as the test's stream.

    Examples
    --------
    >>> StallAt("poll", n=5, seconds=0.5)
    StallAt(at='poll', n=5, seconds=0.5, expire=True, told_after_polls=0, metadata_kept=False)
    """

    at: str | int
    n: int = 1
    seconds: float = 1.0
    expire: bool = True
    told_after_polls: int = 0
    metadata_kept: bool = False


Marker = CrashAt | DeliveryErrorAt | StoreDownAt | FencedAt | StallAt


class Faults:
    """The fault markers of one simulated process, shared by its clients.

    Each client reports its calls here; a marker fires at the ``n``-th call of its kind
    (calls are counted per name, and per checkpoint step). Once a :class:`CrashAt` has
    fired, the process is dead: every later call raises :class:`SimulatedCrash` again
    and ``close`` calls do nothing.

    Parameters
    ----------
    *markers
        :class:`CrashAt`, :class:`DeliveryErrorAt`, :class:`StoreDownAt`, :class:`FencedAt`,
        :class:`StallAt`.
    crash_after_step, crash_before_step
        Shorthand for ``CrashAt(step, n, after=True)`` / ``CrashAt(step, n)``.
    n
        Which occurrence of the step the shorthand crashes at.

    Examples
    --------
    >>> faults = Faults(crash_after_step=3, n=2)
    >>> _ = faults.before("commit_transaction"); faults.after("commit_transaction")
    >>> _ = faults.before("commit_transaction")
    >>> try:
    ...     faults.after("commit_transaction")
    ... except SimulatedCrash as e:
    ...     print(e)
    crash after commit_transaction (step 3) #2
    >>> faults.crashed, faults.fired
    (True, ['crash after commit_transaction (step 3) #2'])
    """

    def __init__(
        self,
        *markers: Marker,
        crash_after_step: int | None = None,
        crash_before_step: int | None = None,
        n: int = 1,
    ) -> None:
        self.markers: list[Marker] = list(markers)
        if crash_after_step is not None:
            self.markers.append(CrashAt(crash_after_step, n=n, after=True))
        if crash_before_step is not None:
            self.markers.append(CrashAt(crash_before_step, n=n))
        for m in self.markers:
            if not isinstance(m, FencedAt):
                _call_name(m.at)  # refuses a step number that does not exist
        self.calls: Counter[str] = Counter()
        # Every call, in order: a dry run's log tells a test which occurrence to aim at.
        self.log: list[str] = []
        self.fired: list[str] = []
        self.crashed = False
        self._crash_message: str | None = None
        self.sensor = _FaultSensor(self)
        # The process's group members, for StallAt(expire=True).
        self.sources: list[MemorySource] = []
        self._lock = threading.Lock()

    def _matching(self, call: str) -> list[tuple[Marker, str]]:
        """Markers whose call (or step) has just reached its n-th occurrence."""
        out = []
        step = _STEP_OF_CALL.get(call)
        for m in self.markers:
            at = "save" if isinstance(m, FencedAt) else _call_name(m.at)
            if at == call or (step is not None and at == f"step{step}"):
                if self.calls[at] == m.n:
                    out.append((m, at))
        return out

    def before(self, call: str) -> list[Marker]:
        """Counts a call about to happen; raises what fires now. Returns the store's
        markers (:class:`StoreDownAt`, :class:`FencedAt`) for the caller to apply."""
        with self._lock:
            if self.crashed:
                # The one crash, whichever thread meets it first: a transaction that
                # commits in the background crashes on its thread while the worker's
                # own thread is polling.
                raise SimulatedCrash(self._crash_message or f"{call}: this process has crashed")
            self.calls[call] += 1
            self.log.append(call)
            step = _STEP_OF_CALL.get(call)
            if step is not None:
                self.calls[f"step{step}"] += 1
            found = self._matching(call)
        apply: list[Marker] = []
        for m, _ in found:
            if isinstance(m, CrashAt) and not m.after:
                self._crash(m, call)
            elif isinstance(m, DeliveryErrorAt):
                self.fired.append(f"delivery error at {call} #{m.n}")
                raise m.error(f"simulated: {call} #{m.n} failed")
            elif isinstance(m, StoreDownAt | FencedAt):
                self.fired.append(f"{type(m).__name__} at {call} #{m.n}")
                apply.append(m)
            elif isinstance(m, StallAt):
                self.fired.append(f"stall at {call} #{m.n}")
                if m.expire:
                    for source in self.sources:
                        source.broker.expire(source, m.told_after_polls, m.metadata_kept)
                time.sleep(m.seconds)
        return apply

    def after(self, call: str) -> None:
        """The call has done its work; raises a :class:`CrashAt` ``after`` marker."""
        with self._lock:
            found = [m for m, _ in self._matching(call) if isinstance(m, CrashAt) and m.after]
        for m in found:
            self._crash(m, call)

    def _crash(self, marker: CrashAt, call: str) -> None:
        self.crashed = True
        message = self._crash_message = marker.describe(call)
        self.fired.append(message)
        raise SimulatedCrash(message)


class _FaultSensor(Sensor):
    """Marks checkpoint step 4 (progress counted), which makes no client call."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    def on_commit(self, n_partitions: int) -> None:
        self._faults.before("on_commit")
        self._faults.after("on_commit")


# ----- the broker ---------------------------------------------------------------------


@dataclass
class _Transaction:
    transactional_id: str
    state: str = "open"  # open, committed, aborted
    # Offsets sent into the transaction: committed with it, dropped if it aborts.
    offsets: dict[TopicPartition, tuple[int, str]] = field(default_factory=dict)
    group_id: str | None = None


@dataclass
class _Entry:
    record: ConsumedRecord
    transaction: _Transaction | None = None

    def visible(self) -> bool:
        return self.transaction is None or self.transaction.state == "committed"


@dataclass(frozen=True)
class GroupMetadata:
    """What a source hands its sink with the offsets: who it is in which generation.
    The broker refuses the offsets of a member it no longer counts or of an old
    generation, as Kafka does with KIP-447's group metadata."""

    group_id: str
    # None and -1: a member that knows it fell out of the group and has not joined again.
    member_id: int | None
    generation: int


@dataclass
class _Group:
    group_id: str
    generation: int = 0
    members: list[MemorySource] = field(default_factory=list)
    committed: dict[TopicPartition, tuple[int, str]] = field(default_factory=dict)
    # Every offset commit in order, (topic-partition, offset): a test can check that
    # the group's progress never went back.
    history: list[tuple[TopicPartition, int]] = field(default_factory=list)
    # Partitions each member holds (told, or about to be told): only the holder's own
    # revocation callback, once returned, frees one for another member.
    held: dict[int, set[TopicPartition]] = field(default_factory=dict)


class MemoryBroker:
    """An in-memory Kafka: topics, consumer groups and transactions.

    Records produced without a timestamp get consecutive milliseconds from
    ``start_ms``, so two brokers fed the same records hold the same timestamps and a
    pipeline run on each learns the same thing.

    Examples
    --------
    >>> broker = MemoryBroker()
    >>> broker.create_topic("events", partitions=2)
    >>> broker.produce("events", b"a", key=b"k1"), broker.produce("events", b"b", partition=0)
    ((1, 0), (0, 0))
    >>> [r.value for r in broker.read("events")]
    [b'b', b'a']
    >>> sink = MemorySink(broker, transactional_id="w0")
    >>> sink.begin_transaction(); sink.send(OutgoingRecord("events", None, b"c"))
    >>> len(broker.read("events")), len(broker.read("events", isolation="read_uncommitted"))
    (2, 3)
    >>> sink.commit_transaction({}, None); len(broker.read("events"))
    3
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.topics: dict[str, list[list[_Entry]]] = {}
        self.groups: dict[str, _Group] = {}
        # Transactional id -> (producer epoch, its open transaction or None).
        self._producers: dict[str, tuple[int, _Transaction | None]] = {}
        self._clock = itertools.count(start_ms)
        self._round_robin: Counter[str] = Counter()
        self._member_ids = itertools.count(1)
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)

    # ----- topics -----------------------------------------------------------------

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Creates ``topic`` if it does not exist (an existing one keeps its partitions)."""
        with self._lock:
            if topic not in self.topics:
                self.topics[topic] = [[] for _ in range(partitions)]
                for group in self.groups.values():
                    self._rebalance(group)

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> tuple[int, int]:
        """Appends one committed record (a plain, non-transactional producer). The
        partition is the key's CRC32 modulo the partition count, or round-robin for
        records without a key. Returns ``(partition, offset)``."""
        return self._append(topic, OutgoingRecord(topic, key, value, list(headers)), partition, timestamp_ms, None)

    def produce_many(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Appends ``(key, value)`` pairs, as ``streamwise replay`` publishes them.
        Returns how many."""
        return sum(1 for key, value in records if self.produce(topic, value, key=key))

    def _append(
        self,
        topic: str,
        record: OutgoingRecord,
        partition: int | None,
        timestamp_ms: int | None,
        transaction: _Transaction | None,
    ) -> tuple[int, int]:
        with self._lock:
            if topic not in self.topics:
                raise DeliveryError(f"unknown topic {topic}")
            partitions = self.topics[topic]
            if partition is None:
                if record.key is None:
                    partition = self._round_robin[topic] % len(partitions)
                    self._round_robin[topic] += 1
                else:
                    partition = zlib.crc32(record.key) % len(partitions)
            log = partitions[partition]
            consumed = ConsumedRecord(
                topic=topic,
                partition=partition,
                offset=len(log),
                key=record.key,
                value=record.value,
                timestamp_ms=next(self._clock) if timestamp_ms is None else timestamp_ms,
                headers=tuple(record.headers),
            )
            log.append(_Entry(consumed, transaction))
            self._arrived.notify_all()
            return partition, consumed.offset

    def _stable_end(self, tp: TopicPartition) -> int:
        """The last stable offset: a read_committed reader stops at the first record of
        a transaction still open, as Kafka's LSO does."""
        log = self.topics[tp[0]][tp[1]]
        for entry in log:
            if entry.transaction is not None and entry.transaction.state == "open":
                return entry.record.offset
        return len(log)

    def _fetch(
        self, tp: TopicPartition, position: int, limit: int, committed_only: bool
    ) -> tuple[list[ConsumedRecord], int]:
        """Records from ``position`` on, and the position after them (aborted records
        are skipped but still move the position, as their offsets stay used)."""
        log = self.topics[tp[0]][tp[1]]
        end = self._stable_end(tp) if committed_only else len(log)
        out = []
        while position < end and len(out) < limit:
            entry = log[position]
            if not committed_only or entry.visible():
                out.append(entry.record)
            position += 1
        return out, position

    def read(self, topic: str, isolation: str = "read_committed") -> list[ConsumedRecord]:
        """Every record of ``topic`` a reader with this isolation sees, partition by
        partition, in offset order. ``read_committed`` shows no record of an open or
        aborted transaction, and nothing past an open one."""
        with self._lock:
            out: list[ConsumedRecord] = []
            for p in range(len(self.topics.get(topic, []))):
                out.extend(self._fetch((topic, p), 0, 1 << 62, isolation == "read_committed")[0])
            return out

    def open_transactions(self) -> list[str]:
        """Transactional ids whose transaction is open (one a crash left behind blocks
        read_committed readers until a producer with the same id starts)."""
        with self._lock:
            return sorted(t for t, (_, txn) in self._producers.items() if txn is not None and txn.state == "open")

    def time_out_transactions(self, prefix: str = "") -> list[str]:
        """Aborts the open transactions of the transactional ids starting with ``prefix``,
        as Kafka does once ``transaction.timeout.ms`` passes with no word from a producer
        that died (when no new producer with its id comes to abort them sooner).
        Returns the ids whose transaction was aborted."""
        with self._lock:
            aborted = []
            for tid, (_, txn) in sorted(self._producers.items()):
                if tid.startswith(prefix) and txn is not None and txn.state == "open":
                    txn.state = "aborted"
                    aborted.append(tid)
            self._arrived.notify_all()
            return aborted

    # ----- groups -----------------------------------------------------------------

    def group(self, group_id: str) -> _Group:
        with self._lock:
            return self.groups.setdefault(group_id, _Group(group_id))

    def committed(self, group_id: str) -> dict[TopicPartition, int]:
        """The group's committed offsets (the next record to read), per topic-partition."""
        with self._lock:
            return {tp: offset for tp, (offset, _) in self.group(group_id).committed.items()}

    def offsets_went_back(self, group_id: str) -> list[tuple[TopicPartition, int, int]]:
        """Each commit that moved a partition's offset below an earlier one:
        ``(topic-partition, before, after)``. Empty when the group's progress only grew."""
        with self._lock:
            high: dict[TopicPartition, int] = {}
            back = []
            for tp, offset in self.group(group_id).history:
                if offset < high.get(tp, 0):
                    back.append((tp, high[tp], offset))
                high[tp] = max(high.get(tp, 0), offset)
            return back

    def expire(self, source: MemorySource, told_after_polls: int = 0, metadata_kept: bool = False) -> None:
        """Drops ``source`` from its group as if its session had timed out (a worker
        paused too long: a zombie). Its partitions go to the other members at once; its
        later commits are refused; its next poll tells it and it joins again. With
        ``told_after_polls`` (see :class:`StallAt`), its metadata turns to an unknown
        member of generation -1 now, and it is told that many polls later."""
        with self._lock:
            group = self.group(source.group_id)
            if source in group.members:
                group.members.remove(source)
                group.held.pop(source.member_id, None)
                source._expired = True
                source._told_in_polls = told_after_polls
                source._lost = told_after_polls > 0 and not metadata_kept
                self._rebalance(group)

    def _join(self, source: MemorySource) -> None:
        with self._lock:
            group = self.group(source.group_id)
            group.members.append(source)
            group.held[source.member_id] = set()
            self._rebalance(group)

    def _leave(self, source: MemorySource) -> None:
        with self._lock:
            group = self.group(source.group_id)
            if source in group.members:
                group.members.remove(source)
                group.held.pop(source.member_id, None)
                self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """A new generation and a new target: partition ``p`` of every subscribed topic
        goes to member ``p % len(members)``, which keeps co-partitioned topics together.
        A member first gives up what it loses (its next poll); a partition moves to its
        new member only once its holder's revocation callback has returned."""
        group.generation += 1
        for member in group.members:
            member._target = set()
        for i, member in enumerate(group.members):
            for topic in member._topics:
                for p in range(len(self.topics.get(topic, []))):
                    if p % len(group.members) == i:
                        member._target.add((topic, p))
        for member in group.members:
            lost = group.held[member.member_id] - member._target
            # Granted but not yet delivered: taken back silently, the member never knew.
            undelivered = lost & member._to_assign
            member._to_assign -= undelivered
            group.held[member.member_id] -= undelivered
            member._to_revoke |= lost - undelivered
        self._grant(group)

    def _grant(self, group: _Group) -> None:
        held_by_anyone = set().union(*group.held.values()) if group.held else set()
        for member in group.members:
            free = member._target - held_by_anyone
            if free:
                group.held[member.member_id] |= free
                member._to_assign |= free
                held_by_anyone |= free
        # Wakes polls waiting for records: they have rebalance news to deliver.
        self._arrived.notify_all()

    def _release(self, source: MemorySource, tps: set[TopicPartition]) -> None:
        with self._lock:
            group = self.group(source.group_id)
            if source.member_id in group.held:
                group.held[source.member_id] -= tps
                self._grant(group)

    def _check_member(self, metadata: object) -> None:
        if not isinstance(metadata, GroupMetadata):
            raise DeliveryError(f"offsets sent without the source's group metadata ({metadata!r})")
        if metadata.member_id is None and metadata.generation == -1:
            # As Kafka does with a transaction's offsets sent without a member and
            # generation (clients before KIP-447): they are not checked at all.
            return
        group = self.group(metadata.group_id)
        alive = any(m.member_id == metadata.member_id for m in group.members)
        if not alive or metadata.generation != group.generation:
            raise GroupMetadataRefused(
                f"fenced: member {metadata.member_id} of generation {metadata.generation} is not in group"
                f" {metadata.group_id}'s generation {group.generation}"
            )

    def _pending_offsets(self, group_id: str, tps: Sequence[TopicPartition]) -> list[TopicPartition]:
        """Partitions with offsets sent into a transaction still open (Kafka answers
        UNSTABLE_OFFSET_COMMIT for them until it ends)."""
        pending = set()
        for _, txn in self._producers.values():
            if txn is not None and txn.state == "open" and txn.group_id == group_id:
                pending |= set(txn.offsets) & set(tps)
        return sorted(pending)

    # ----- transactions -------------------------------------------------------------

    def _init_transactions(self, transactional_id: str) -> int:
        """A new producer for this id: the previous one's open transaction is aborted
        and the previous producer is fenced (its epoch is no longer current)."""
        with self._lock:
            epoch, txn = self._producers.get(transactional_id, (0, None))
            if txn is not None and txn.state == "open":
                txn.state = "aborted"
            self._producers[transactional_id] = (epoch + 1, None)
            self._arrived.notify_all()
            return epoch + 1


class MemorySource:
    """A consumer in a :class:`MemoryBroker` group, reading ``read_committed``.

    Rebalance callbacks run inside :meth:`poll`, revocations before assignments, as
    confluent-kafka calls them. As in Kafka, a revoked partition is free for another
    member as soon as the revocation callback has returned: whatever the worker does
    with it after that (commit its open work, snapshot it) races the new owner. A
    source made with the same ``faults`` as its process's sink and store dies with them.

    Examples
    --------
    >>> broker = MemoryBroker()
    >>> broker.create_topic("events", partitions=2)
    >>> _ = broker.produce("events", b"x", partition=0); _ = broker.produce("events", b"y", partition=1)
    >>> a, b = MemorySource(broker, "g"), MemorySource(broker, "g")
    >>> a.subscribe(["events"], on_assigned=lambda tps: print("a gets", tps))
    >>> sorted(r.value for r in a.poll(0, 10))
    a gets [('events', 0), ('events', 1)]
    [b'x', b'y']
    >>> b.subscribe(["events"], on_assigned=lambda tps: print("b gets", tps))
    >>> _ = b.poll(0, 10)                      # nothing yet: a still holds partition 1
    >>> _ = a.poll(0, 10); _ = b.poll(0, 10)   # a gives it up, then b gets it
    b gets [('events', 1)]
    >>> a.assignment(), b.assignment()
    ([('events', 0)], [('events', 1)])
    """

    def __init__(self, broker: MemoryBroker, group_id: str, faults: Faults | None = None) -> None:
        self.broker = broker
        self.group_id = group_id
        self.faults = faults or Faults()
        self.faults.sources.append(self)
        self.member_id = next(broker._member_ids)
        self.generation = 0
        self._topics: list[str] = []
        self._target: set[TopicPartition] = set()
        self._to_revoke: set[TopicPartition] = set()
        self._to_assign: set[TopicPartition] = set()
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._on_assigned: RebalanceCallback | None = None
        self._on_revoked: RebalanceCallback | None = None
        self._expired = False
        # Expired and not yet told (StallAt.told_after_polls): polls left until it is,
        # and whether its metadata already says it is out of the group.
        self._told_in_polls = 0
        self._lost = False
        self._closed = False
        self._turn = 0

    def subscribe(
        self,
        topics: Sequence[str],
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> None:
        self.faults.before("subscribe")
        self._topics = list(topics)
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self.broker._join(self)

    def _rebalance_news(self) -> tuple[list[TopicPartition], list[TopicPartition], bool]:
        """(revoked, assigned, dropped): ``dropped`` when this poll tells an expired member it was
        dropped. It loses everything, and joins again only once its revocation callback
        has returned (poll): joined before, it could be granted a partition it is still
        giving up, and its release would then take that grant back from the group."""
        broker = self.broker
        told = False
        with broker._lock:
            if self._expired and self._told_in_polls > 0:
                self._told_in_polls -= 1
            elif self._expired:
                self._expired = False
                self._lost = False
                self._to_revoke = set(self._assigned)
                self._to_assign = set()
                told = True
            revoked = sorted(self._to_revoke & self._assigned)
            assigned = sorted(self._to_assign)
            self._to_revoke, self._to_assign = set(), set()
            self._assigned -= set(revoked)
            group = broker.group(self.group_id)
            for tp in assigned:
                self._assigned.add(tp)
                self._positions[tp] = group.committed.get(tp, (0, ""))[0]
                self._paused.discard(tp)
            for tp in revoked:
                self._positions.pop(tp, None)
                self._paused.discard(tp)
            if not self._lost:
                self.generation = group.generation
        return revoked, assigned, told

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumedRecord]:
        self.faults.before("poll")
        broker = self.broker
        revoked, assigned, dropped = self._rebalance_news()
        if revoked:
            if self._on_revoked:
                self._on_revoked(revoked)
            # The callback has returned: the group goes on and gives them to others.
            broker._release(self, set(revoked))
        if dropped:
            broker._join(self)  # what it is granted comes with the next poll
            with broker._lock:
                self.generation = broker.group(self.group_id).generation
        if assigned and self._on_assigned:
            self._on_assigned(assigned)
        deadline = time.monotonic() + timeout_ms / 1000.0
        with broker._arrived:
            while True:
                records = self._take(max_records)
                left = deadline - time.monotonic()
                told = self._expired and not self._told_in_polls
                if records or left <= 0 or self._to_assign or self._to_revoke or told:
                    break
                broker._arrived.wait(left)
        self.faults.after("poll")
        return records

    def _take(self, max_records: int) -> list[ConsumedRecord]:
        """Up to ``max_records``, a share from each fetchable partition in turn, starting
        with a different partition each poll so that none waits behind the others."""
        tps = sorted(tp for tp in self._assigned if tp not in self._paused)
        if not tps:
            return []
        self._turn += 1
        tps = tps[self._turn % len(tps) :] + tps[: self._turn % len(tps)]
        share = max(1, -(-max_records // len(tps)))
        out: list[ConsumedRecord] = []
        for tp in tps:
            records, self._positions[tp] = self.broker._fetch(
                tp, self._positions[tp], min(share, max_records - len(out)), committed_only=True
            )
            out.extend(records)
            if len(out) >= max_records:
                break
        return out

    def commit(self, offsets: dict[TopicPartition, int], markers: Mapping[TopicPartition, str] | None = None) -> None:
        self.faults.before("commit")
        if offsets and self._lost:
            # kafka-python commits only in a stable generation (CommitFailedError).
            raise DeliveryError("commit refused: this member fell out of its group and has not joined again")
        if offsets:
            with self.broker._lock:
                self.broker._check_member(self.group_metadata())
                group = self.broker.group(self.group_id)
                markers = markers or {}
                for tp, offset in offsets.items():
                    group.committed[tp] = (offset, markers.get(tp, ""))
                    group.history.append((tp, offset))
        self.faults.after("commit")

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._assigned)

    def lag(self) -> dict[TopicPartition, int]:
        self.faults.before("lag")
        with self.broker._lock:
            return {tp: max(0, self.broker._stable_end(tp) - self._positions[tp]) for tp in sorted(self._assigned)}

    def group_metadata(self) -> object:
        if self._lost:
            return GroupMetadata(self.group_id, None, -1)
        return GroupMetadata(self.group_id, self.member_id, self.generation)

    def rejoin(self, why: str) -> None:
        """Gives up every partition (the revocation callback) and joins as a new member.
        A ``DeliveryErrorAt("rejoin", error=ServiceUnavailableError)`` makes it fail first
        (no broker answered the new consumer), as kafka-python's source does, unchanged."""
        self.faults.before("rejoin")
        broker = self.broker
        with broker._lock:
            lost = sorted(self._assigned)
            self._assigned, self._to_assign, self._to_revoke = set(), set(), set()
            self._positions.clear()
            self._paused.clear()
            self._expired, self._lost, self._told_in_polls = False, False, 0
        if lost and self._on_revoked:
            self._on_revoked(lost)
        broker._leave(self)
        with broker._lock:
            self.member_id = next(broker._member_ids)
        broker._join(self)

    def in_group(self, metadata: object = None) -> bool:
        found = metadata if metadata is not None else self.group_metadata()
        return isinstance(found, GroupMetadata) and found.generation != -1

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if tp in self._assigned:
                self._positions[tp] = offset

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: (found[0] if found else None) for tp, found in self._committed(partitions).items()}

    def committed_markers(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        return {tp: (found[1] if found else "") for tp, found in self._committed(partitions).items()}

    def _committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, str] | None]:
        self.faults.before("committed")
        with self.broker._lock:
            pending = self.broker._pending_offsets(self.group_id, partitions)
            if pending:
                raise ServiceUnavailableError(f"memory broker: offsets of {pending} are in a transaction still open")
            group = self.broker.group(self.group_id)
            return {tp: group.committed.get(tp) for tp in partitions}

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._paused |= set(partitions) & self._assigned

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._paused -= set(partitions)

    def close(self) -> None:
        """Leaves the group. After a crash this is what the session timeout does: the
        partitions go to others, nothing more is committed."""
        if not self._closed:
            self._closed = True
            self.broker._leave(self)


class MemorySink:
    """A producer on a :class:`MemoryBroker`; transactional when given a transactional id.

    Starting a sink with a transactional id aborts whatever transaction an earlier
    producer with that id left open and fences that producer, as Kafka's
    ``init_transactions`` does.

    Examples
    --------
    >>> broker = MemoryBroker(); broker.create_topic("out")
    >>> old = MemorySink(broker, "w0")
    >>> old.begin_transaction(); old.send(OutgoingRecord("out", None, b"lost"))
    >>> new = MemorySink(broker, "w0")       # a restarted worker: the old transaction aborts
    >>> broker.read("out"), len(broker.read("out", isolation="read_uncommitted"))
    ([], 1)
    >>> try:
    ...     old.commit_transaction({}, None)
    ... except DeliveryError as e:
    ...     print(e)
    producer fenced: a newer producer with transactional id w0 started
    """

    # As confluent's: the checkpoint may commit on another thread (the fault tests run
    # both ways, kafka.commit_in_background).
    commits_in_background = True

    def __init__(self, broker: MemoryBroker, transactional_id: str | None = None, faults: Faults | None = None) -> None:
        self.broker = broker
        self.faults = faults or Faults()
        self.transactional_id = transactional_id
        self.transactional = transactional_id is not None
        self._epoch = broker._init_transactions(transactional_id) if transactional_id is not None else 0
        self._transaction: _Transaction | None = None
        self.sent = 0

    def _check_fenced(self) -> None:
        if self.transactional_id is None:
            return
        epoch, _ = self.broker._producers[self.transactional_id]
        if epoch != self._epoch:
            raise DeliveryError(
                f"producer fenced: a newer producer with transactional id {self.transactional_id} started"
            )

    def begin_transaction(self) -> None:
        self.faults.before("begin_transaction")
        with self.broker._lock:
            self._check_fenced()
            if self._transaction is not None and self._transaction.state == "open":
                raise DeliveryError("a transaction is already open")
            assert self.transactional_id is not None, "begin_transaction on a sink without a transactional id"
            self._transaction = _Transaction(self.transactional_id)
            self.broker._producers[self.transactional_id] = (self._epoch, self._transaction)
        self.faults.after("begin_transaction")

    def send(self, record: OutgoingRecord) -> None:
        self.faults.before("send")
        with self.broker._lock:
            self._check_fenced()
            txn = None
            if self.transactional:
                txn = self._transaction
                if txn is None or txn.state != "open":
                    raise DeliveryError("send outside a transaction")
            self.broker._append(record.topic, record, None, None, txn)
            self.sent += 1
        self.faults.after("send")

    def commit_transaction(
        self,
        offsets: dict[TopicPartition, int],
        group_metadata: object,
        markers: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        """Sends the offsets into the transaction (step 2, call ``send_offsets``), then
        commits it (step 3, call ``commit_transaction``)."""
        broker = self.broker
        self.faults.before("send_offsets")
        with broker._lock:
            self._check_fenced()
            txn = self._transaction
            if txn is None or txn.state != "open":
                raise DeliveryError("commit_transaction without an open transaction")
            if offsets:
                broker._check_member(group_metadata)
                assert isinstance(group_metadata, GroupMetadata)
                txn.group_id = group_metadata.group_id
                markers = markers or {}
                txn.offsets.update({tp: (o, markers.get(tp, "")) for tp, o in offsets.items()})
        self.faults.after("send_offsets")
        self.faults.before("commit_transaction")
        with broker._lock:
            self._check_fenced()
            txn.state = "committed"
            if txn.group_id is not None:
                group = broker.group(txn.group_id)
                group.committed.update(txn.offsets)
                group.history.extend((tp, offset) for tp, (offset, _) in txn.offsets.items())
            broker._arrived.notify_all()
        self.faults.after("commit_transaction")

    def abort_transaction(self) -> None:
        self.faults.before("abort_transaction")
        with self.broker._lock:
            self._check_fenced()
            if self._transaction is not None and self._transaction.state == "open":
                self._transaction.state = "aborted"
                self.broker._arrived.notify_all()
        self.faults.after("abort_transaction")

    def flush(self) -> None:
        self.faults.before("flush")
        self.faults.after("flush")

    def close(self) -> None:
        """Closes the producer. An open transaction stays open, as in Kafka, until a
        producer with the same transactional id starts."""


class MemoryAdmin:
    """Creates and describes topics on a :class:`MemoryBroker`.

    Examples
    --------
    >>> broker = MemoryBroker(); admin = MemoryAdmin(broker)
    >>> admin.ensure_topics(["a", "b"], partitions=3); admin.partition_counts(["a", "c"])
    {'a': 3}
    """

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def ensure_topics(self, topics: Sequence[str], partitions: int = 1) -> None:
        for topic in topics:
            self.broker.create_topic(topic, partitions)

    def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        with self.broker._lock:
            return {t: len(self.broker.topics[t]) for t in topics if t in self.broker.topics}

    def max_message_bytes(self, topic: str) -> int | None:
        return None  # the memory broker takes records of any size

    def close(self) -> None:
        pass


# ----- the state store -----------------------------------------------------------------


@dataclass
class _StoreData:
    """What the store's server holds; shared by every client (:meth:`MemoryStateStore.connect`)."""

    snapshots: dict[tuple[str, int], list[Snapshot]] = field(default_factory=lambda: defaultdict(list))
    epochs: Counter[tuple[str, int]] = field(default_factory=Counter)
    claims: Counter[tuple[str, int]] = field(default_factory=Counter)
    owners: dict[tuple[str, int], int] = field(default_factory=dict)
    down_until: float = 0.0
    lock: threading.RLock = field(default_factory=threading.RLock)


class MemoryStateStore:
    """Snapshots in memory, with :class:`~streamwise.connectors.redis_state.RedisStateStore`'s
    rules: a claim per assignment, a save refused with ``FencedError`` unless its owner
    holds the newest claim, epochs that only increase, the last ``keep`` snapshots kept.
    Payload bytes are kept as they are (no signature: nothing here crosses a trust
    boundary).

    Examples
    --------
    >>> store = MemoryStateStore()
    >>> mine = store.claim("demo", 0)
    >>> store.save("demo", 0, b"state", {("events", 0): 42}, owner=mine).epoch
    1
    >>> snap = store.load_latest("demo", 0)
    >>> snap.payload, snap.info.offsets_by_tp()
    (b'state', {('events', 0): 42})
    >>> _ = store.steal("demo", 0)            # another worker claims the partition
    >>> try:
    ...     store.save("demo", 0, b"stale", {("events", 0): 50}, owner=mine)
    ... except FencedError as e:
    ...     print("refused")
    refused
    >>> store.go_down(60); store.load_latest("demo", 0)
    Traceback (most recent call last):
    ...
    streamwise.connectors.redis_state.SnapshotUnavailableError: memory store: down (simulated)
    """

    def __init__(self, faults: Faults | None = None, keep: int = 3, data: _StoreData | None = None) -> None:
        self.faults = faults or Faults()
        self.keep = keep
        self._data = data or _StoreData()

    def connect(self, faults: Faults | None = None) -> MemoryStateStore:
        """Another client of the same store (a restarted process), with its own faults."""
        return MemoryStateStore(faults, keep=self.keep, data=self._data)

    # ----- simulated outages ---------------------------------------------------------

    def go_down(self, seconds: float) -> None:
        """Every call of every client fails with SnapshotUnavailableError for ``seconds``."""
        self._data.down_until = time.monotonic() + seconds

    def steal(self, pipeline: str, partition: int) -> int:
        """Another worker claims the partition; the current owner's next save is fenced."""
        with self._data.lock:
            key = (pipeline, partition)
            self._data.claims[key] += 1
            self._data.owners[key] = self._data.claims[key]
            return self._data.claims[key]

    def flushall(self) -> None:
        """The store loses every snapshot, as Redis does after FLUSHALL or a restart
        without persistence (claims and epochs too)."""
        with self._data.lock:
            for name in ("snapshots", "epochs", "claims", "owners"):
                getattr(self._data, name).clear()

    def _enter(self, call: str) -> None:
        for m in self.faults.before(call):
            if isinstance(m, StoreDownAt):
                self.go_down(m.seconds)
        if time.monotonic() < self._data.down_until:
            raise SnapshotUnavailableError("memory store: down (simulated)")

    # ----- the StateStore protocol ---------------------------------------------------

    def claim(self, pipeline: str, partition: int) -> int:
        self._enter("claim")
        claim = self.steal(pipeline, partition)
        self.faults.after("claim")
        return claim

    def save(
        self,
        pipeline: str,
        partition: int,
        payload: bytes,
        offsets: dict[TopicPartition, int],
        owner: int | None,
        meta: dict[str, Any] | None = None,
    ) -> SnapshotInfo:
        for m in self.faults.before("save"):
            if isinstance(m, StoreDownAt):
                self.go_down(m.seconds)
            elif isinstance(m, FencedAt):
                self.steal(pipeline, partition)
        if time.monotonic() < self._data.down_until:
            raise SnapshotUnavailableError("memory store: down (simulated)")
        key = (pipeline, partition)
        with self._data.lock:
            current = self._data.owners.get(key)
            if owner is not None and current != owner:
                raise FencedError(
                    f"snapshot of {pipeline}/{partition} refused: the partition is claimed by "
                    f"{'nobody' if current is None else current}, this worker holds claim {owner}"
                )
            self._data.epochs[key] += 1
            epoch = self._data.epochs[key]
            info = SnapshotInfo(
                epoch=epoch,
                offsets={f"{t}:{p}": o for (t, p), o in sorted(offsets.items())},
                size=len(payload),
                chunks=1,
                hmac="",
                created=time.time(),
                blob=str(epoch),
                meta=dict(meta or {}),
                owner=-1 if owner is None else owner,
            )
            kept = self._data.snapshots[key]
            kept.insert(0, Snapshot(info, bytes(payload)))
            del kept[self.keep :]
        self.faults.after("save")
        return info

    def load_latest(self, pipeline: str, partition: int) -> Snapshot | None:
        self._enter("load_latest")
        with self._data.lock:
            kept = self._data.snapshots.get((pipeline, partition))
            snap = kept[0] if kept else None
        self.faults.after("load_latest")
        return snap

    def list(self, pipeline: str, partition: int) -> list[SnapshotInfo]:
        """The kept snapshots' infos, newest first."""
        self._enter("list")
        with self._data.lock:
            return [s.info for s in self._data.snapshots.get((pipeline, partition), [])]

    def partitions(self, pipeline: str) -> list[int]:
        self._enter("partitions")
        with self._data.lock:
            return sorted(p for (name, p), kept in self._data.snapshots.items() if name == pipeline and kept)

    def close(self) -> None:
        pass


# ----- wiring ---------------------------------------------------------------------------


def memory_runner(
    config: PipelineConfig,
    settings: Settings,
    broker: MemoryBroker,
    store: MemoryStateStore | None,
    faults: Faults | None = None,
    worker_index: int = 0,
    sensors: Sequence[Sensor] = (),
) -> Runner:
    """A :class:`~streamwise.runner.Runner` on the memory services: one simulated
    process whose source, sinks and store client share ``faults``. Its sinks'
    transactional id is the runner's worker id (with ``exactly_once``), so a runner
    made again with the same ``worker_index`` is the same worker restarted; the
    first sink is made when :meth:`~streamwise.runner.Runner.run` starts.
    ``store=None`` runs without snapshots."""
    from streamwise.runner import Runner

    faults = faults or Faults()
    return Runner(
        config,
        settings,
        sensors=[faults.sensor, *sensors],
        source=MemorySource(broker, config.group_id, faults),
        worker_index=worker_index,
        admin=MemoryAdmin(broker),
        store=store.connect(faults) if store is not None else None,
        # Made when the run starts and again after a fatal error, with the runner's
        # worker id: each one aborts what the one before it left open.
        sink_factory=lambda transactional_id: MemorySink(broker, transactional_id, faults),
        # The learner's consumer, with scope: global on an input of several partitions.
        source_factory=lambda group_id: MemorySource(broker, group_id, faults),
    )


def output_ids(broker: MemoryBroker, topic: str, id_field: str = "id") -> Counter[Any]:
    """How many times each event id appears in ``topic``'s read_committed view.

    Examples
    --------
    >>> broker = MemoryBroker(); broker.create_topic("out")
    >>> for i in (1, 2, 2):
    ...     _ = broker.produce("out", json.dumps({"id": i}).encode())
    >>> output_ids(broker, "out")
    Counter({2: 2, 1: 1})
    """
    return Counter(json.loads(r.value)[id_field] for r in broker.read(topic))


def river_on_learn_order(config: PipelineConfig, records: Iterable[ConsumedRecord]) -> dict[str, float]:
    """Each model's metric from ``river.evaluate.progressive_val_score``, run in memory on
    the order a ``scope: global`` pipeline wrote to its learn topic: the check that the
    service's metric equals River's on the order it learned in.

    The learn topic's events and labels become River's questions and answers: event
    ``k`` (its position in the topic) is asked at moment ``k``; its answer comes at the
    position of its label record, or right after the question for an inline label or a
    label that arrived before its event (the service learns such a label as soon as the
    event is predicted). Events never labelled are left out (they teach nothing), as are
    repeated labels (learned once). The models see the features the learn records
    carry, so the pipeline must have no step that runs with the models.
    """
    from river import evaluate

    from streamwise.models.catalog import build_estimator
    from streamwise.models.prequential import make_metric
    from streamwise.processor import learn_order
    from streamwise.stream.pipeline import split_steps

    if split_steps(config.cleaners, config.features, config.event_schema)[1]:
        raise ValueError("river_on_learn_order: the pipeline has steps that run with the models")
    labelled = [e for e in learn_order(records, config.labels, schema=config.event_schema) if e.learned_at is not None]
    dataset = [(e.event.x, e.y) for e in labelled]
    moment = {id(e.event.x): float(e.position) for e in labelled}
    due = {id(e.event.x): e.learned_at for e in labelled}
    out = {}
    for spec in config.models:
        metric = make_metric(config.metric)
        evaluate.progressive_val_score(
            dataset, build_estimator(spec.steps), metric,
            moment=lambda x: moment[id(x)], delay=lambda x, _y: due[id(x)] - moment[id(x)],
        )
        out[spec.name] = metric.get()
    return out
