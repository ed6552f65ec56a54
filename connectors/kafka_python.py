"""Source, sink and admin on kafka-python 3.x, the default Kafka client.

Consumers run in a consumer group with auto-commit off and ``read_committed``
isolation: offsets move only when the runner says its outputs are safe.
"""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kafka
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import (
    CommitFailedError,
    InvalidSessionTimeoutError,
    InvalidTransactionTimeoutError,
    KafkaConfigurationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    UnsupportedCodecError,
)
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KTopicPartition
from streamwise.core.errors import ConfigError, DeliveryError, GroupMetadataRefused, ServiceUnavailableError, StreamwiseError
from streamwise.core.settings import KafkaSettings, split_bootstrap_entry

from . import kafka_config
from .base import RebalanceCallback, TopicPartition
from .records import ConsumedRecord, OutgoingRecord

log = logging.getLogger(__name__)


# What kafka-python raises when it cannot bootstrap within its bootstrap timeout.
_NO_BROKER = (KafkaTimeoutError, KafkaConnectionError)
# The generation id of a member that is not (or no longer) in a group.
_NO_GENERATION = -1


def _host_port(server: str) -> tuple[str, int]:
    """One bootstrap entry as the clients read it: an optional listener prefix, a host
    (an IPv6 one in brackets), and a port that defaults to Kafka's 9092.

    >>> [_host_port(s) for s in ("b1:9093", " localhost", "PLAINTEXT://10.0.0.1:9094", "[::1]:9095", "[::1]")]
    [('b1', 9093), ('localhost', 9092), ('10.0.0.1', 9094), ('::1', 9095), ('::1', 9092)]
    """
    host, port = split_bootstrap_entry(server)  # the settings' own reading of it
    return host.strip("[]"), int(port if port is not None else 9092)


def _require_broker(settings: KafkaSettings) -> None:
    """Fails in seconds, with one line, when no bootstrap server accepts a connection;
    kafka-python itself would retry until its bootstrap timeout and then raise."""
    for server in settings.bootstrap_servers.split(","):
        try:
            with socket.create_connection(_host_port(server), timeout=3.0):
                return
        except (OSError, ValueError):
            continue
    raise ServiceUnavailableError(f"Kafka: no broker answered at {settings.bootstrap_servers}")


def _with_markers(
    offsets: dict[TopicPartition, int], markers: Mapping[TopicPartition, str] | None
) -> dict[KTopicPartition, OffsetAndMetadata]:
    markers = markers or {}
    return {KTopicPartition(t, p): OffsetAndMetadata(o, markers.get((t, p), ""), -1) for (t, p), o in offsets.items()}
class _Reports(logging.Handler):
    """Keeps kafka-python's connection-failure log lines while a client is built: they
    hold the cause (a refused password, an unverified certificate) that its bootstrap
    timeout does not. ``decisive`` is set by the first line that shows the settings are
    wrong, since retrying cannot help then."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(logging.WARNING)
        self.settings = settings
        self.lines: list[str] = []
        self.decisive = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        if kafka_config.explain_failure(self.settings, [line]):
            self.decisive.set()


def _connect(settings: KafkaSettings, build: Callable[[], Any]) -> Any:
    """``build()``: a client, or one line naming why it cannot connect.

    kafka-python retries a refused password or an unverified certificate until its
    bootstrap timeout and then reports only the timeout. So the client is built on a
    helper thread while this one reads its log: a line that shows the settings are
    wrong ends the wait at once (the helper, a daemon, gives up on its own later).
    Meanwhile kafka-python's log lines are held back (one failure, retried, logs a
    dozen); the cause goes into the error instead.
    """
    _require_broker(settings)
    root = logging.getLogger("kafka")
    reports = _Reports(settings)
    propagate = root.propagate
    root.addHandler(reports)
    root.propagate = False
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def attempt() -> None:
        try:
            outcome["client"] = build()
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e
        finally:
            root.removeHandler(reports)
            root.propagate = propagate
            done.set()

    threading.Thread(target=attempt, name="streamwise-kafka-connect", daemon=True).start()
    while not done.wait(0.05) and not reports.decisive.is_set():
        pass
    if "client" in outcome:
        return outcome["client"]
    error = outcome.get("error")
    if isinstance(error, KafkaConfigurationError):
        raise ConfigError(f"kafka: {error}") from None
    if error is None or isinstance(error, _NO_BROKER):
        reason = type(error).__name__ if error is not None else "refused"
        raise kafka_config.connect_error(settings, list(reports.lines), reason) from None
    raise error


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        on_assigned: RebalanceCallback | None,
        on_revoked: RebalanceCallback | None,
        held: dict[TopicPartition, int | None],
    ):
        self._held = held
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    def on_partitions_assigned(self, assigned: Any) -> None:
        if self._on_assigned:
            self._on_assigned(sorted((tp.topic, tp.partition) for tp in assigned))

    def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self._held.pop((tp.topic, tp.partition), None)
        if self._on_revoked:
            self._on_revoked(sorted((tp.topic, tp.partition) for tp in revoked))


class KafkaPythonSource:
    def __init__(self, settings: KafkaSettings, group_id: str) -> None:
        self._settings = settings
        self._config = config = kafka_config.kafka_python_consumer(settings, group_id)
        self._consumer = _connect(settings, lambda: KafkaConsumer(**config))
        # Held partitions -> the offset of the first record dropped while held.
        self._held: dict[TopicPartition, int | None] = {}
        self._listener: _Listener | None = None
        self._topics: list[str] = []

    def subscribe(
        self,
        topics: Sequence[str],
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> None:
        # kafka-python's sticky assignor gives a topic it has no partition metadata for
        # no partitions at all, and a topic created a moment ago may not be in the
        # consumer's metadata yet: wait (bounded) until every topic's partitions are known.
        deadline = time.monotonic() + 10.0
        for topic in topics:
            while not self._consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
                time.sleep(0.1)
        self._topics = list(topics)
        self._listener = _Listener(on_assigned, on_revoked, self._held)
        self._consumer.subscribe(self._topics, listener=self._listener)

    def rejoin(self, why: str) -> None:
        # Seen after a two-minute Redis pause with a member lost meanwhile: the broker
        # answered every TxnOffsetCommit "unknown member" for minutes while kafka-python
        # neither heartbeated that news nor joined again. A new consumer does.
        log.warning("the group does not count this consumer as a member (%s); joining again", why)
        config = self._config
        # Built first: where no broker answers, this raises ServiceUnavailableError with
        # the old consumer still in place, and the caller tries again later.
        fresh = _connect(self._settings, lambda: KafkaConsumer(**config))
        listener = self._listener
        lost = self._consumer.assignment()
        if listener is not None and lost:
            listener.on_partitions_revoked(lost)  # the same path as a revocation by the group
        self._held.clear()
        try:
            self._consumer.close(autocommit=False)
        except KafkaError:
            pass  # it is being replaced either way
        self._consumer = fresh
        if self._topics and listener is not None:
            self._consumer.subscribe(self._topics, listener=listener)

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumedRecord]:
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except UnsupportedCodecError as e:
            # Not a fault that passes: every poll of this topic fails the same way until
            # the codec's library is installed, so stop with the fix instead of retrying.
            raise StreamwiseError(
                f"Kafka: the input is compressed with a codec kafka-python cannot read here ({e}); "
                "install streamwise's dependencies (lz4, zstandard, python-snappy) or set kafka.client: confluent"
            ) from None
        except InvalidSessionTimeoutError:
            raise kafka_config.session_timeout_refused(self._settings) from None
        except KafkaError as e:
            raise ServiceUnavailableError(f"Kafka at {self._settings.bootstrap_servers}: {type(e).__name__}: {e}") from e
        out: list[ConsumedRecord] = []
        held = self._held
        for tp, records in batches.items():
            key = (tp.topic, tp.partition)
            if key in held:
                # Held (paused): dropped, and fetched again from the first one on resume.
                if records and held[key] is None:
                    held[key] = records[0].offset
                continue
            topic, partition = tp.topic, tp.partition
            # Positional, and no new tuple for the usual record without headers: this
            # loop runs once per consumed record.
            out += [
                ConsumedRecord(
                    topic, partition, r.offset, r.key, r.value, r.timestamp, tuple(r.headers) if r.headers else ()
                )
                for r in records
            ]
        return out

    def commit(self, offsets: dict[TopicPartition, int], markers: Mapping[TopicPartition, str] | None = None) -> None:
        if offsets:
            try:
                self._consumer.commit(_with_markers(offsets, markers))
            except KafkaError as e:
                raise DeliveryError(f"offsets not committed: {type(e).__name__}: {e}") from e

    def assignment(self) -> list[TopicPartition]:
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def lag(self) -> dict[TopicPartition, int]:
        tps = list(self._consumer.assignment())
        if not tps:
            return {}
        ends = self._consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): max(0, ends[tp] - self._consumer.position(tp)) for tp in tps}

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def in_group(self, metadata: object = None) -> bool:
        # kafka-python's reset_generation() (a heartbeat or join answered "unknown member"
        # or "illegal generation") sets -1, before any callback has run.
        found = metadata if metadata is not None else self._consumer.group_metadata()
        return getattr(found, "generation_id", _NO_GENERATION) != _NO_GENERATION

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        for (t, p), o in offsets.items():
            if (t, p) in self._held:
                self._held[(t, p)] = None  # the seek says where to start after the hold
            try:
                self._consumer.seek(KTopicPartition(t, p), o)
            except (ValueError, KafkaError) as e:
                # E.g. the partition was taken away meanwhile: retried once it is settled.
                raise ServiceUnavailableError(f"Kafka: cannot seek {t}[{p}]: {e}") from None

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {tp: (found.offset if found is not None else None) for tp, found in self._committed(partitions).items()}

    def committed_markers(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        return {tp: (found.metadata or "") if found is not None else "" for tp, found in self._committed(partitions).items()}

    def _committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, Any]:
        try:
            return {tp: self._consumer.committed(KTopicPartition(*tp), metadata=True) for tp in partitions}
        except KafkaError as e:
            raise ServiceUnavailableError(f"Kafka at {self._settings.bootstrap_servers}: {type(e).__name__}: {e}") from e

    # Pausing is done here, not with KafkaConsumer.pause(): kafka-python 3 parks the
    # fetch that was in flight when a partition is paused, and a partition seeked around
    # its resume was then never fetched again (measured: after one poll while paused,
    # seek + resume gave 0 records and a stuck position; after 15 polls it worked). A
    # held partition keeps being fetched; its records are dropped and fetched again
    # from the first dropped one when it is resumed.
    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._held.setdefault(tuple(tp), None)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            if tuple(tp) not in self._held:
                continue
            start = self._held.pop(tuple(tp))
            if start is not None:
                self._consumer.seek(KTopicPartition(*tp), start)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


# What a record adds to its size in a batch, beyond its key and value, with room to
# spare (kafka-python estimates 61 bytes of batch header and at most ~30 of record).
_RECORD_OVERHEAD = 1024


def _direct_append(producer: KafkaProducer) -> Callable[..., Any] | None:
    """The producer's record accumulator's ``append``, when this kafka-python has the
    one this sink was measured with (3.0), else None (every record goes through send()).

    ``KafkaProducer.send`` costs ~10.6 µs per record on this 2-core machine, of which
    the accumulator's append, which encodes the record into its batch, is ~5.3 µs;
    the rest re-checks per record what holds for every record this sink sends (bytes,
    no serializer since kafka.extra takes no callable, a known partition, the same
    transaction) and formats a debug log line's arguments even when it is off. For a
    record to a topic with one partition, without headers and far below the request
    size limit, the sink does once per unit of work what send() does per record (waits
    for the metadata, adds the partition to the transaction) and appends the record
    itself, waking the sender thread as send() does when a batch fills or begins.
    A failed record fails its future exactly as through send().
    """
    if not kafka.__version__.startswith("3.0."):
        return None
    accumulator = getattr(producer, "_accumulator", None)
    sender = getattr(producer, "_sender", None)
    manager = getattr(producer, "_transaction_manager", None)
    try:
        names = list(inspect.signature(accumulator.append).parameters)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return None
    if names[:5] != ["tp", "timestamp_ms", "key", "value", "headers"] or "abort_on_new_batch" not in names:
        return None
    if not callable(getattr(sender, "wakeup", None)):
        return None
    if manager is not None and not callable(getattr(manager, "maybe_add_partition_to_transaction", None)):
        return None
    return accumulator.append  # type: ignore[union-attr]


# How long past kafka.request_timeout_ms a transactional request may stay unanswered
# before its producer is given up (KafkaPythonSink._await).
_UNANSWERED_AFTER_S = 5.0


class KafkaPythonSink:
    # kafka-python's commit is Python code on its sender thread: on another thread it
    # competes with the worker's batch for the interpreter, and measured slower (50,000
    # events, LogisticRegression: 18,000-20,000 events/s against 22,600 in the foreground).
    commits_in_background = False

    def __init__(self, settings: KafkaSettings, transactional_id: str | None = None) -> None:
        config = kafka_config.kafka_python_producer(settings, transactional_id)
        self._producer = _connect(settings, lambda: KafkaProducer(**config))
        # kafka-python waits for a transactional request's answer without a timeout: with
        # the broker gone, a commit blocked the worker for ever (not even SIGTERM ended
        # it). Each wait is bounded by this; a producer whose request went unanswered is
        # given up (later calls fail at once) and the next one fences it.
        self._txn_timeout_ms = settings.request_timeout_ms + int(_UNANSWERED_AFTER_S * 1000)
        self._hung: str | None = None
        self.transactional = transactional_id is not None
        if self.transactional:
            # Also aborts whatever a previous incarnation with the same id left open,
            # so read_committed readers are not held up until its transaction times out.
            try:
                self._producer.init_transactions()
            except KafkaError as e:
                self._producer.close(timeout=0)
                # kafka-python wraps the broker's refusal in a plain KafkaError naming it.
                if isinstance(e, InvalidTransactionTimeoutError) or InvalidTransactionTimeoutError.__name__ in str(e):
                    raise kafka_config.transaction_timeout_refused(settings) from None
                where = settings.bootstrap_servers
                raise ServiceUnavailableError(f"Kafka: transactions unavailable at {where} ({type(e).__name__}: {e})") from None
        # Every record's future, checked when its unit of work ends. A failed record
        # does not always fail the transaction in kafka-python (one that ran out of
        # delivery time leaves it committable), so its future is the only sign.
        self._pending: list[Any] = []
        # Per topic, the partition to name (a topic with one) or None (the
        # partitioner's choice), read from the producer's metadata once per unit of
        # work: a lookup per record cost ~0.5 µs of the ~10 µs that send takes.
        # Forgotten when a unit begins, so that a topic that gains partitions is seen.
        self._partition_of: dict[str, KTopicPartition | None] = {}
        # The direct way in for most records (see _direct_append), when there is one.
        self._append = _direct_append(self._producer)
        self._wakeup: Callable[[], None] = self._producer._sender.wakeup
        self._direct_bytes = self._producer.config["max_request_size"] - _RECORD_OVERHEAD

    # A producer error (fenced, timed out, a broker gone) is a DeliveryError for the
    # checkpoint: it aborts, rewinds, and builds a new producer if it must.
    def _usable(self) -> None:
        if self._hung is not None:
            raise DeliveryError(f"producer given up: {self._hung}")

    def _await(self, result: Any, what: str) -> None:
        """Waits for a transactional request as kafka-python's own call would, but not
        for ever; its error, if it failed, is raised as that call raises it."""
        self._wakeup()
        if not result.wait(timeout_ms=self._txn_timeout_ms):
            self._hung = f"{what} unanswered after {self._txn_timeout_ms / 1000:.0f} s"
            raise DeliveryError(f"transaction not ended: {self._hung}")

    def begin_transaction(self) -> None:
        self._usable()
        self._partition_of.clear()
        try:
            self._producer.begin_transaction()
        except KafkaError as e:
            raise DeliveryError(f"transaction not begun: {type(e).__name__}: {e}") from e

    def commit_transaction(
        self,
        offsets: dict[TopicPartition, int],
        group_metadata: object,
        markers: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        self._usable()
        manager = self._producer._transaction_manager
        try:
            # KafkaProducer.send_offsets_to_transaction and commit_transaction, with a bound.
            if offsets:
                sent = manager.send_offsets_to_transaction(_with_markers(offsets, markers), group_metadata)
                self._await(sent, "send_offsets_to_transaction")
            self._await(manager.begin_commit(), "commit_transaction")
        except CommitFailedError as e:
            # kafka-python's word for a TxnOffsetCommit answered IllegalGeneration or
            # UnknownMemberId ("consumer group metadata mismatch").
            raise GroupMetadataRefused(f"transaction not committed: {type(e).__name__}: {e}") from e
        except KafkaError as e:
            raise DeliveryError(f"transaction not committed: {type(e).__name__}: {e}") from e
        self._check_sent()

    def abort_transaction(self) -> None:
        # The aborted records failed on purpose; they must not fail the next commit.
        self._pending.clear()
        self._usable()
        try:
            self._await(self._producer._transaction_manager.begin_abort(), "abort_transaction")
        except KafkaError as e:
            raise DeliveryError(f"transaction not aborted: {type(e).__name__}: {e}") from e
        # kafka-python 3.0.12 keeps the offsets of a TxnOffsetCommit that failed (e.g.
        # IllegalGeneration after a rebalance) in _pending_txn_offset_commits across
        # the abort, and sends them with the next transaction's offsets: that commit
        # then moves the partition past records whose outputs were aborted (measured:
        # 1,000 ids never delivered in 2 of 3 kill -9 runs). The Java client clears them
        # when a transaction ends; so do we.
        manager = getattr(self._producer, "_transaction_manager", None)
        stale = getattr(manager, "_pending_txn_offset_commits", None)
        if stale:
            log.warning("dropping %d offsets an aborted transaction left pending in kafka-python", len(stale))
            stale.clear()

    def send(self, record: OutgoingRecord) -> None:
        topic, key, value, headers = record.topic, record.key, record.value, record.headers
        try:
            tp = self._partition_of[topic]
        except KeyError:
            tp = self._choose_partition(topic)
        try:
            if (
                tp is not None
                and self._append is not None
                and not headers
                and value is not None
                and len(value) + (len(key) if key is not None else 0) <= self._direct_bytes
            ):
                future, batch_full, new_batch, _ = self._append(tp, None, key, value, headers)
                if batch_full or new_batch:
                    self._wakeup()
            else:
                partition = tp.partition if tp is not None else None
                future = self._producer.send(topic, value=value, key=key, headers=headers, partition=partition)
        except KafkaError as e:
            raise DeliveryError(f"record not sent to {topic}: {type(e).__name__}: {e}") from e
        self._pending.append(future)

    def _choose_partition(self, topic: str) -> KTopicPartition | None:
        # A topic with one partition gets it named: kafka-python's partitioner would
        # hash every key in pure Python (murmur2, ~2 µs) to reach the same answer.
        # Several partitions: the partitioner, as the Java client does.
        try:
            partitions = self._producer.partitions_for(topic)  # waits for the metadata
            tp = KTopicPartition(topic, next(iter(partitions))) if len(partitions) == 1 else None
            if tp is not None and self._append is not None and self.transactional:
                # What send() does for every record: the partition joins the
                # transaction (and a transaction in error refuses it), once per unit.
                self._producer._transaction_manager.maybe_add_partition_to_transaction(tp)
        except KafkaError as e:
            raise DeliveryError(f"record not sent to {topic}: {type(e).__name__}: {e}") from e
        self._partition_of[topic] = tp
        return tp

    def flush(self) -> None:
        self._partition_of.clear()
        self._producer.flush()
        self._check_sent()

    def _check_sent(self) -> None:
        pending, self._pending = self._pending, []
        failed = [f for f in pending if f.failed()]
        if failed:
            raise DeliveryError(f"{len(failed)} of {len(pending)} records not delivered: {failed[0].exception}")

    def close(self) -> None:
        try:
            # A producer given up is not waited for: its requests may never be answered.
            self._producer.close(timeout=0 if self._hung is not None else None)
        except KafkaError as e:  # a fenced producer may fail to close; it is gone either way
            log.debug("producer close: %s: %s", type(e).__name__, e)
        finally:
            if self._hung is not None:
                # close(timeout=0) gives up at its flush when a batch is unanswered and
                # leaves the sender thread (its sockets and buffered records) running.
                sender = getattr(self._producer, "_sender", None)
                if sender is not None:
                    sender.force_close()


class KafkaPythonAdmin:
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        config = kafka_config.kafka_python_admin(settings)
        self._admin = _connect(settings, lambda: KafkaAdminClient(**config))

    def ensure_topics(self, topics: Sequence[str], partitions: int = 1) -> None:
        existing = set(self._admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing and not self._settings.create_topics:
            raise kafka_config.missing_topic(missing[0])
        # -1: the broker's default.replication.factor (KIP-464).
        replicas = self._settings.replication_factor or -1
        new = [NewTopic(t, num_partitions=partitions, replication_factor=replicas) for t in missing]
        for topic in new:
            try:
                self._admin.create_topics([topic])
            except TopicAlreadyExistsError:
                pass  # another worker created it meanwhile
            except KafkaError as e:
                raise ServiceUnavailableError(f"Kafka: cannot create topic {topic.name}: {e}") from None

    def max_message_bytes(self, topic: str) -> int | None:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": None})
        try:
            # "all": the effective value, the broker's default when the topic sets none.
            described = self._admin.describe_configs([resource], config_filter="all")
            return int(described["topic"][topic]["max.message.bytes"]["value"])
        except (KafkaError, KeyError, TypeError, ValueError) as e:
            log.info("Kafka: max.message.bytes of %s not known (%s: %s)", topic, type(e).__name__, e)
            return None

    def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        described = self._admin.describe_topics(list(topics))
        return {t["name"]: len(t["partitions"]) for t in described if t["error_code"] == 0 and t["partitions"]}

    def close(self) -> None:
        self._admin.close()
