"""The in-memory harness (streamwise.testing) keeps the rules of Kafka and the Redis
state store that the recovery tests rely on: if it were laxer than they are, those
tests would pass for the wrong reason."""

from __future__ import annotations

import pytest
from streamwise.connectors.records import OutgoingRecord
from streamwise.connectors.redis_state import FencedError, SnapshotUnavailableError
from streamwise.core.errors import DeliveryError, ServiceUnavailableError

from streamwise.testing import (
    CrashAt,
    DeliveryErrorAt,
    Faults,
    MemoryBroker,
    MemorySink,
    MemorySource,
    MemoryStateStore,
    SimulatedCrash,
    StoreDownAt,
)


def _broker(partitions: int = 2) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic("in", partitions)
    broker.create_topic("out", partitions)
    return broker


def _values(broker: MemoryBroker, topic: str, isolation: str = "read_committed") -> list[bytes]:
    return [r.value for r in broker.read(topic, isolation)]


def test_read_committed_sees_a_transaction_only_once_committed_and_nothing_past_an_open_one():
    broker = _broker(1)
    sink = MemorySink(broker, "t1")
    sink.begin_transaction()
    sink.send(OutgoingRecord("out", None, b"in-txn"))
    broker.produce("out", b"plain", partition=0)  # after the open transaction's record
    assert _values(broker, "out") == []
    assert _values(broker, "out", "read_uncommitted") == [b"in-txn", b"plain"]
    assert broker.open_transactions() == ["t1"]
    sink.commit_transaction({}, None)
    assert _values(broker, "out") == [b"in-txn", b"plain"]
    sink.begin_transaction()
    sink.send(OutgoingRecord("out", None, b"aborted"))
    sink.abort_transaction()
    broker.produce("out", b"later", partition=0)
    assert _values(broker, "out") == [b"in-txn", b"plain", b"later"]


def test_a_new_producer_with_the_same_id_aborts_the_old_transaction_and_fences_the_old_producer():
    broker = _broker(1)
    old = MemorySink(broker, "w")
    old.begin_transaction()
    old.send(OutgoingRecord("out", None, b"zombie"))
    other = MemorySink(broker, "other")  # a different id changes nothing for "w"
    assert broker.open_transactions() == ["w"] and not other.sent
    MemorySink(broker, "w")
    assert broker.open_transactions() == []
    for call in (lambda: old.send(OutgoingRecord("out", None, b"x")), lambda: old.commit_transaction({}, None)):
        with pytest.raises(DeliveryError, match="fenced"):
            call()
    assert _values(broker, "out") == []


def test_offsets_sent_in_a_transaction_commit_with_it_and_block_readers_of_them_until_then():
    broker = _broker(1)
    source = MemorySource(broker, "g")
    source.subscribe(["in"])
    source.poll(0, 10)
    sink = MemorySink(broker, "w")
    sink.begin_transaction()
    sink.send(OutgoingRecord("out", None, b"x"))
    crash = Faults(CrashAt("send_offsets", after=True))
    sink.faults = crash
    with pytest.raises(SimulatedCrash):
        sink.commit_transaction({("in", 0): 5}, source.group_metadata(), {("in", 0): "m"})
    # Kafka answers UNSTABLE_OFFSET_COMMIT while offsets wait in an open transaction.
    with pytest.raises(ServiceUnavailableError):
        source.committed([("in", 0)])
    MemorySink(broker, "w")  # the restarted producer aborts it: the offsets never land
    assert source.committed([("in", 0)]) == {("in", 0): None}
    done = MemorySink(broker, "w2")
    done.begin_transaction()
    done.commit_transaction({("in", 0): 5}, source.group_metadata(), {("in", 0): "m"})
    assert source.committed([("in", 0)]) == {("in", 0): 5}
    assert source.committed_markers([("in", 0)]) == {("in", 0): "m"}


def test_a_group_moves_a_partition_only_after_its_holder_was_told():
    broker = _broker(2)
    seen: list[tuple[str, str, list]] = []

    def member(name: str) -> MemorySource:
        source = MemorySource(broker, "g")
        source.subscribe(
            ["in"],
            on_assigned=lambda tps: seen.append((name, "assigned", tps)),
            on_revoked=lambda tps: seen.append((name, "revoked", tps)),
        )
        return source

    a = member("a")
    a.poll(0, 1)
    b = member("b")
    b.poll(0, 1)  # nothing yet: a still holds partition 1
    assert b.assignment() == []
    a.poll(0, 1)  # a is told to give it up: once its callback returned, b may have it
    b.poll(0, 1)
    assert seen == [
        ("a", "assigned", [("in", 0), ("in", 1)]),
        ("a", "revoked", [("in", 1)]),
        ("b", "assigned", [("in", 1)]),
    ]
    a.close()
    b.poll(0, 1)
    assert b.assignment() == [("in", 0), ("in", 1)]


def test_a_stale_or_expired_member_is_fenced_on_commit_then_rejoins():
    broker = _broker(2)
    a = MemorySource(broker, "g")
    a.subscribe(["in"])
    a.poll(0, 1)
    before = a.group_metadata()
    b = MemorySource(broker, "g")
    b.subscribe(["in"])  # a new generation: a's metadata is stale until a polls
    with pytest.raises(DeliveryError, match="fenced"):
        a.commit({("in", 0): 1})
    a.poll(0, 1)
    a.commit({("in", 0): 1})
    sink = MemorySink(broker, "w")
    sink.begin_transaction()
    with pytest.raises(DeliveryError, match="fenced"):
        sink.commit_transaction({("in", 0): 2}, before)  # work consumed before the rebalance
    sink.abort_transaction()
    broker.expire(a)
    with pytest.raises(DeliveryError, match="fenced"):
        a.commit({("in", 0): 3})
    revoked: list = []
    a._on_revoked = revoked.extend
    a.poll(0, 1)  # told it was dropped: everything revoked, and it joins again
    assert revoked == [("in", 0)]
    a.poll(0, 1)
    a.commit({("in", 0): 3})
    assert broker.committed("g") == {("in", 0): 3}
    assert broker.offsets_went_back("g") == []
    a.commit({("in", 0): 2})
    assert broker.offsets_went_back("g") == [(("in", 0), 3, 2)]


def test_the_store_fences_an_older_claim_keeps_the_newest_snapshots_and_goes_down_when_told():
    store = MemoryStateStore(keep=2)
    first = store.claim("p", 0)
    for offset in (10, 20, 30):
        store.save("p", 0, b"s%d" % offset, {("in", 0): offset}, owner=first)
    assert [i.epoch for i in store.list("p", 0)] == [3, 2]
    second = store.connect().claim("p", 0)  # another process
    assert second > first
    with pytest.raises(FencedError):
        store.save("p", 0, b"stale", {("in", 0): 40}, owner=first)
    assert store.save("p", 0, b"s50", {("in", 0): 50}, owner=second).epoch == 4
    assert store.load_latest("p", 0).payload == b"s50"
    client = store.connect(Faults(StoreDownAt("load_latest", n=2, seconds=0.2)))
    client.load_latest("p", 0)
    with pytest.raises(SnapshotUnavailableError):
        client.load_latest("p", 0)
    with pytest.raises(SnapshotUnavailableError):
        store.claim("p", 0)  # down for every client, not one connection
    store.flushall()
    store.go_down(0)
    assert store.load_latest("p", 0) is None and store.partitions("p") == []


def test_faults_fire_at_the_nth_call_of_a_step_and_a_crashed_process_stays_dead():
    faults = Faults(DeliveryErrorAt(3, n=2), crash_before_step=5, n=1)
    faults.before("commit")  # at_least_once's step 3
    with pytest.raises(DeliveryError):
        faults.before("commit_transaction")  # exactly_once's step 3: the second step-3 call
    with pytest.raises(SimulatedCrash, match="before save"):
        faults.before("save")
    # Dead: every later call, on any thread, meets the same crash.
    with pytest.raises(SimulatedCrash, match="before save"):
        faults.before("poll")
    assert faults.fired == ["delivery error at commit_transaction #2", "crash before save (step 5) #1"]
    with pytest.raises(ValueError, match="steps are 1 to 5"):
        Faults(CrashAt(6))
