"""The Source/Sink/Admin contract of connectors/base.py, on the real broker, for each client.

Every test runs once with kafka-python and once with confluent-kafka (the ``settings``
fixture is parametrised over both), so the two implementations are held to the same
observable behaviour. Where a test needs an outside view it uses plain kafka-python
from tests/support.py, never streamwise's own connectors.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from streamwise.connectors import OutgoingRecord, make_admin, make_sink, make_source
from streamwise.connectors.base import Source
from streamwise.connectors.records import ConsumedRecord
from streamwise.core.errors import ConfigError, DeliveryError, ServiceUnavailableError
from streamwise.core.settings import KafkaSettings
from streamwise.partitions import epoch_of_marker, marker
from support import consume, produce


def _topic(settings: Any, name: str, partitions: int = 1) -> str:
    admin = make_admin(settings.kafka)
    try:
        admin.ensure_topics([name], partitions=partitions)
    finally:
        admin.close()
    return name


def _poll_until(source: Source, n: int, timeout_s: float = 60.0) -> list[ConsumedRecord]:
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out.extend(source.poll(200, 500))
    return out


def test_the_chosen_client_is_the_one_in_use(settings, unique):
    _topic(settings, f"{unique}.in")
    source = make_source(settings.kafka, unique)
    sink = make_sink(settings.kafka)
    try:
        expected = {"kafka-python": "KafkaPython", "confluent": "Confluent"}[settings.kafka.client]
        assert type(source).__name__ == f"{expected}Source" and type(sink).__name__ == f"{expected}Sink"
    finally:
        source.close()
        sink.close()


def test_records_round_trip_with_keys_headers_and_offsets(settings, bootstrap, unique):
    topic = _topic(settings, f"{unique}.in")
    sink = make_sink(settings.kafka)
    # Records with and without keys and headers, interleaved: the kafka-python sink
    # takes a different way into its producer for a record without headers.
    sent = [
        OutgoingRecord(
            topic,
            f"k{i}".encode() if i % 3 else None,
            f'{{"i": {i}}}'.encode(),
            [("h", str(i).encode()), ("e", b"")] if i % 2 == 0 else [],
        )
        for i in range(20)
    ] + [OutgoingRecord(topic, None, b"no key, no headers")]
    for record in sent:
        sink.send(record)
    sink.flush()
    sink.close()

    source = make_source(settings.kafka, unique)
    source.subscribe([topic])
    got = _poll_until(source, len(sent))
    # A rejoin right after the topic's creation (its metadata arriving) may still be
    # settling: keep polling, as the runner does, until the assignment is back.
    deadline = time.monotonic() + 20
    while not source.assignment() and time.monotonic() < deadline:
        assert source.poll(100, 10) == []
    assert source.assignment() == [(topic, 0)]
    assert source.lag() == {(topic, 0): 0}
    source.close()
    assert [r.offset for r in got] == list(range(len(sent)))
    assert [(r.key, r.value, list(r.headers)) for r in got] == [(s.key, s.value, s.headers) for s in sent]
    assert all(r.topic == topic and r.partition == 0 and r.timestamp_ms > 1e12 for r in got)
    # An independent client reads the same headers.
    outside = consume(bootstrap, topic, len(sent))
    assert [list(r.headers) for r in outside] == [s.headers for s in sent]


def test_offsets_move_only_when_committed(settings, bootstrap, unique):
    topic = _topic(settings, f"{unique}.in")
    produce(bootstrap, topic, [(None, str(i).encode()) for i in range(10)])

    source = make_source(settings.kafka, unique)
    source.subscribe([topic])
    assert len(_poll_until(source, 10)) == 10
    assert source.committed([(topic, 0)]) == {(topic, 0): None}
    source.commit({(topic, 0): 4})
    assert source.committed([(topic, 0)]) == {(topic, 0): 4}
    # seek: the next poll starts where we say, and lag counts from there.
    source.seek({(topic, 0): 7})
    assert [r.offset for r in _poll_until(source, 3)] == [7, 8, 9]
    source.close()

    # A new member of the group resumes at the committed offset, not where the last one read to.
    again = make_source(settings.kafka, unique)
    again.subscribe([topic])
    assert [r.offset for r in _poll_until(again, 6)] == [4, 5, 6, 7, 8, 9]
    again.close()


def test_a_snapshot_marker_one_client_committed_is_read_by_the_other(settings, bootstrap, unique):
    # A worker moved from one client to the other (STREAMWISE_KAFKA__CLIENT) reads the
    # snapshot epoch the first committed: librdkafka stores it with a trailing NUL.
    topic = _topic(settings, f"{unique}.in")
    produce(bootstrap, topic, [(None, b"0")])
    source = make_source(settings.kafka, unique)
    source.subscribe([topic])
    assert len(_poll_until(source, 1)) == 1
    source.commit({(topic, 0): 1}, {(topic, 0): marker(7)})
    source.close()
    other = "confluent" if settings.kafka.client == "kafka-python" else "kafka-python"
    reader = make_source(settings.kafka.model_copy(update={"client": other}), unique)
    try:
        assert epoch_of_marker(reader.committed_markers([(topic, 0)])[topic, 0]) == 7
    finally:
        reader.close()


def test_a_bootstrap_server_with_a_listener_prefix_is_reached(settings, bootstrap, unique):
    # The settings accept PLAINTEXT://host:port; kafka-python's start-up check read the
    # prefix as part of the host and said that no broker answered.
    topic = _topic(settings, f"{unique}.in")
    produce(bootstrap, topic, [(None, b"0")])
    source = make_source(settings.kafka.model_copy(update={"bootstrap_servers": f"PLAINTEXT://{bootstrap}"}), unique)
    try:
        source.subscribe([topic])
        assert len(_poll_until(source, 1)) == 1
    finally:
        source.close()


def test_a_transaction_timeout_the_broker_refuses_is_one_line_with_the_key_to_fix(settings, unique):
    # Above the broker's transaction.max.timeout.ms (15 min by default): a traceback on
    # kafka-python before.
    too_long = settings.kafka.model_copy(update={"transaction_timeout_ms": 3_600_000})
    with pytest.raises(ConfigError, match="^kafka.transaction_timeout_ms: the broker at .* refuses 3600000 ms"):
        make_sink(too_long, transactional_id=f"{unique}.tx")


def test_a_session_timeout_the_broker_refuses_stops_with_the_key_to_fix(settings, bootstrap, unique):
    # Below the broker's group.min.session.timeout.ms (6 s by default) every join is
    # refused: retried as an outage, the worker waited for ever and learned nothing.
    topic = _topic(settings, f"{unique}.in")
    source = make_source(settings.kafka.model_copy(update={"session_timeout_ms": 4000}), unique)
    source.subscribe([topic])
    try:
        with pytest.raises(ConfigError, match="^kafka.session_timeout_ms: the broker at .* refuses 4000 ms"):
            _poll_until(source, 1, timeout_s=30)
    finally:
        source.close()


def test_a_seek_after_the_assignment_decides_where_reading_starts(settings, bootstrap, unique):
    """What a restore does: the callback only notes the partition (it runs on the
    client's own thread with kafka-python); the polling thread then seeks it to the
    snapshot's offsets, and reading goes on from there."""
    topic = _topic(settings, f"{unique}.in")
    produce(bootstrap, topic, [(None, str(i).encode()) for i in range(10)])
    source = make_source(settings.kafka, unique)
    assigned: list[list[tuple[str, int]]] = []
    source.subscribe([topic], on_assigned=lambda tps: tps and assigned.append(tps))
    deadline = time.monotonic() + 30
    while not assigned:
        assert time.monotonic() < deadline, "no assignment"
        source.poll(100, 10)  # records polled before the seek are stale, as in the runner
    source.seek({tp: 6 for tp in assigned[0]})
    assert [r.offset for r in _poll_until(source, 4)] == [6, 7, 8, 9]
    assert assigned == [[(topic, 0)]]
    source.close()


def test_rebalance_callbacks_hand_partitions_over_between_members(settings, bootstrap, unique):
    topic = _topic(settings, f"{unique}.in", partitions=2)
    events: dict[str, list[tuple[str, tuple[str, int]]]] = {"a": [], "b": []}

    def member(name: str) -> Source:
        s = make_source(settings.kafka, unique)
        s.subscribe(
            [topic],
            on_assigned=lambda tps: events[name].extend(("+", tp) for tp in tps),
            on_revoked=lambda tps: events[name].extend(("-", tp) for tp in tps),
        )
        return s

    def owned(name: str) -> set[tuple[str, int]]:
        held: set[tuple[str, int]] = set()
        for sign, tp in events[name]:
            (held.add if sign == "+" else held.discard)(tp)
        return held

    a = member("a")
    deadline = time.monotonic() + 30
    while owned("a") != {(topic, 0), (topic, 1)} and time.monotonic() < deadline:
        a.poll(100, 10)
    assert a.assignment() == [(topic, 0), (topic, 1)]
    b = member("b")
    while not (owned("a") and owned("b")) and time.monotonic() < deadline:
        a.poll(100, 10)
        b.poll(100, 10)
    # Each partition has exactly one owner, and the callbacks told each member which.
    assert owned("a") | owned("b") == {(topic, 0), (topic, 1)}
    assert not owned("a") & owned("b")
    assert set(a.assignment()) == owned("a") and set(b.assignment()) == owned("b")
    assert any(sign == "-" for sign, _ in events["a"])
    b.close()
    a.close()


def test_a_two_megabyte_record_gets_through(settings, bootstrap, unique):
    topic = _topic(settings, f"{unique}.in")
    big = b"x" * 2_000_000
    sink = make_sink(settings.kafka)
    sink.send(OutgoingRecord(topic, b"k", big))
    sink.flush()
    sink.close()
    source = make_source(settings.kafka, unique)
    source.subscribe([topic])
    got = _poll_until(source, 1)
    source.close()
    assert [r.value for r in got] == [big]


def test_transactions_commit_outputs_and_offsets_together_or_not_at_all(settings, bootstrap, unique):
    src_topic = _topic(settings, f"{unique}.in")
    out_topic = _topic(settings, f"{unique}.out")
    produce(bootstrap, src_topic, [(None, str(i).encode()) for i in range(6)])
    source = make_source(settings.kafka, unique)
    source.subscribe([src_topic])
    sink = make_sink(settings.kafka, transactional_id=f"{unique}.tx")
    assert sink.transactional
    records = _poll_until(source, 6)

    sink.begin_transaction()
    for r in records[:3]:
        sink.send(OutgoingRecord(out_topic, None, b"aborted-" + r.value))
    sink.abort_transaction()

    sink.begin_transaction()
    for r in records:
        sink.send(OutgoingRecord(out_topic, None, b"out-" + r.value))
    sink.commit_transaction({(src_topic, 0): 6}, source.group_metadata())
    sink.close()

    assert source.committed([(src_topic, 0)]) == {(src_topic, 0): 6}
    source.close()
    # read_committed readers see the committed transaction only.
    assert [r.value for r in consume(bootstrap, out_topic, 6)] == [b"out-%d" % i for i in range(6)]
    # And so does streamwise's own source, which must skip the aborted records.
    reader = make_source(settings.kafka, f"{unique}.reader")
    reader.subscribe([out_topic])
    assert [r.value for r in _poll_until(reader, 6)] == [b"out-%d" % i for i in range(6)]
    reader.close()



def test_offsets_refused_for_a_stale_generation_are_not_committed_by_the_next_transaction(settings, bootstrap, unique):
    # The checkpoint may send a transaction's offsets with the group metadata taken when
    # it began; after a rebalance the broker refuses them and the transaction is
    # aborted. Nothing of it may land later: kafka-python 3.0.12 kept the refused
    # offsets and sent them with the next transaction's.
    src_topic = _topic(settings, f"{unique}.in", partitions=2)
    out_topic = _topic(settings, f"{unique}.out")
    tps = [(src_topic, 0), (src_topic, 1)]

    def member() -> Source:
        source = make_source(settings.kafka, unique)
        source.subscribe([src_topic])
        deadline = time.monotonic() + 60
        while len(source.assignment()) < 2 and time.monotonic() < deadline:
            source.poll(100, 10)
        assert source.assignment() == tps
        return source

    first = member()
    stale = first.group_metadata()
    first.close()  # leaves the group: the next member joins a newer generation
    second = member()
    sink = make_sink(settings.kafka, transactional_id=f"{unique}.tx")
    sink.begin_transaction()
    sink.send(OutgoingRecord(out_topic, None, b"aborted"))
    with pytest.raises(DeliveryError):
        sink.commit_transaction({(src_topic, 0): 5, (src_topic, 1): 5}, stale)
    sink.abort_transaction()
    sink.begin_transaction()
    sink.send(OutgoingRecord(out_topic, None, b"committed"))
    sink.commit_transaction({(src_topic, 0): 1}, second.group_metadata())
    sink.close()
    assert second.committed(tps) == {(src_topic, 0): 1, (src_topic, 1): None}
    second.close()


def test_lag_counts_committed_records_only(settings, bootstrap, unique):
    topic = _topic(settings, f"{unique}.in")
    produce(bootstrap, topic, [(None, str(i).encode()) for i in range(5)])
    open_txn = make_sink(settings.kafka, transactional_id=f"{unique}.tx")
    open_txn.begin_transaction()
    for _i in range(3):
        open_txn.send(OutgoingRecord(topic, None, b"uncommitted"))
    open_txn.flush()  # on the broker, but its transaction stays open
    source = make_source(settings.kafka, unique)
    source.subscribe([topic])
    assert [r.value for r in _poll_until(source, 5)] == [str(i).encode() for i in range(5)]
    assert source.poll(300, 10) == []
    # read_committed: the open transaction's records are neither read nor owed.
    assert source.lag() == {(topic, 0): 0}
    source.close()
    open_txn.abort_transaction()
    open_txn.close()


def test_a_record_the_broker_refuses_raises_delivery_error_on_flush(settings, bootstrap, unique):
    topic = f"{unique}.small"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "2000"})])
    admin.close()
    sink = make_sink(settings.kafka)
    sink.send(OutgoingRecord(topic, None, b"y" * 50_000))
    with pytest.raises(DeliveryError, match="not delivered"):
        sink.flush()
    sink.close()


def test_a_record_the_broker_refuses_in_a_transaction_fails_its_commit(settings, bootstrap, unique):
    topic = f"{unique}.small"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "2000"})])
    admin.close()
    sink = make_sink(settings.kafka, transactional_id=f"{unique}.tx")
    sink.begin_transaction()
    sink.send(OutgoingRecord(topic, None, b"fits"))
    sink.send(OutgoingRecord(topic, None, b"y" * 50_000))
    with pytest.raises(DeliveryError):
        sink.commit_transaction({}, None)
    sink.close()
    assert consume(bootstrap, topic, 1, timeout_s=2.0) == []


def test_the_kafka_python_sink_appends_directly_on_the_kafka_python_it_was_written_for(services, unique):
    """The kafka-python sink's direct way into its producer (``_direct_append``, ~5 µs
    less per record) reads kafka-python's private attributes, and turns itself off on a
    version it was not written for: this says so, rather than letting an upgrade make
    the sink slower unnoticed."""
    import kafka
    from streamwise.connectors.kafka_python import KafkaPythonSink, _direct_append

    bootstrap = services["STREAMWISE_KAFKA__BOOTSTRAP_SERVERS"]
    sink = KafkaPythonSink(KafkaSettings(bootstrap_servers=bootstrap), f"{unique}.tx")
    try:
        assert _direct_append(sink._producer) is not None, f"kafka-python {kafka.__version__}: no direct append"
    finally:
        sink.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("make", [make_admin, lambda k: make_source(k, "g")], ids=["admin", "source"])
def test_no_broker_fails_fast_with_one_line_naming_kafka_and_the_address(kafka_client, make):
    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as raised:
        make(KafkaSettings(bootstrap_servers=address, client=kafka_client))
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert message.startswith("Kafka:") and address in message and "\n" not in message


class _OffsetsThatHang:
    """A real confluent-kafka producer whose send_offsets_to_transaction blocks until
    released, whatever its timeout: how librdkafka behaves when the group coordinator
    goes down mid-transaction (librdkafka issues #5456, #5511)."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.release = threading.Event()

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self.release.wait()
        raise KafkaException(KafkaError(KafkaError._FENCED, "fenced while hung (test)"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


@pytest.mark.parametrize("kafka_client", ["confluent"], indirect=True)
def test_a_transactional_call_hung_past_its_timeout_fails_and_the_next_producer_fences_it(
    settings, bootstrap, unique, monkeypatch
):
    from streamwise.connectors import confluent

    monkeypatch.setattr(confluent, "_HUNG_AFTER_S", 0.5)
    kafka, source, src_topic, out_topic, sink = _one_record_read_and_a_transactional_sink(settings, bootstrap, unique)
    hanging = _OffsetsThatHang(sink._producer)
    sink._producer = hanging
    # Without the bound, the commit below would block until this releases it, and fail.
    safety = threading.Timer(30.0, hanging.release.set)
    safety.start()
    sink.begin_transaction()
    sink.send(OutgoingRecord(out_topic, None, b"never"))
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="still blocked"):
        sink.commit_transaction({(src_topic, 0): 1}, source.group_metadata())
    assert time.monotonic() - started < 5.0, "the caller waits its timeout and a little more, not for ever"
    with pytest.raises(DeliveryError, match="abandoned"):
        sink.abort_transaction()
    sink.close()  # returns at once: the hung call still holds the handle
    _the_next_producer_fences_it_and_commits(kafka, f"{unique}.tx", source, src_topic, out_topic, bootstrap)
    hanging.release.set()
    safety.cancel()


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_a_kafka_python_transactional_request_left_unanswered_fails_and_the_next_producer_fences_it(
    settings, bootstrap, unique, monkeypatch
):
    # kafka-python waits for a transactional answer without a timeout: with the broker
    # gone, a worker blocked in a commit for ever (seen: 10 minutes, SIGTERM ignored).
    # Here the offsets request is never sent (its result never completes), as when the
    # coordinator is gone; the sink gives up after request_timeout_ms plus a margin.
    from kafka.producer.transaction_manager import TransactionalRequestResult
    from streamwise.connectors import kafka_python

    monkeypatch.setattr(kafka_python, "_UNANSWERED_AFTER_S", 0.5)
    kafka, source, src_topic, out_topic, sink = _one_record_read_and_a_transactional_sink(settings, bootstrap, unique)
    manager = sink._producer._transaction_manager
    monkeypatch.setattr(manager, "send_offsets_to_transaction", lambda *args: TransactionalRequestResult())
    sink.begin_transaction()
    sink.send(OutgoingRecord(out_topic, None, b"never"))
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="send_offsets_to_transaction unanswered"):
        sink.commit_transaction({(src_topic, 0): 1}, source.group_metadata())
    assert time.monotonic() - started < 5.0, "the caller waits its timeout and a little more, not for ever"
    with pytest.raises(DeliveryError, match="given up"):
        sink.abort_transaction()
    closing = time.monotonic()
    sink.close()
    assert time.monotonic() - closing < 5.0
    sink._producer._sender.join(5.0)  # stopped, not left retrying with its buffers
    assert not sink._producer._sender.is_alive()
    _the_next_producer_fences_it_and_commits(kafka, f"{unique}.tx", source, src_topic, out_topic, bootstrap)


def _one_record_read_and_a_transactional_sink(settings: Any, bootstrap: str, unique: str) -> tuple[Any, ...]:
    """A 1 s request timeout, a source that has read one record, and a transactional sink."""
    kafka = settings.kafka.model_copy(update={"request_timeout_ms": 1000})
    src_topic = _topic(settings, f"{unique}.in")
    out_topic = _topic(settings, f"{unique}.out")
    produce(bootstrap, src_topic, [(None, b"x")])
    source = make_source(kafka, unique)
    source.subscribe([src_topic])
    _poll_until(source, 1)
    return kafka, source, src_topic, out_topic, make_sink(kafka, transactional_id=f"{unique}.tx")


def _the_next_producer_fences_it_and_commits(
    kafka: KafkaSettings, transactional_id: str, source: Any, src_topic: str, out_topic: str, bootstrap: str
) -> None:
    """The next producer under the same id fences the one given up and aborts its work."""
    second = make_sink(kafka, transactional_id=transactional_id)
    second.begin_transaction()
    second.send(OutgoingRecord(out_topic, None, b"committed"))
    second.commit_transaction({(src_topic, 0): 1}, source.group_metadata())
    second.close()
    assert [r.value for r in consume(bootstrap, out_topic, 1)] == [b"committed"]
    assert source.committed([(src_topic, 0)]) == {(src_topic, 0): 1}
    source.close()
