"""Source, sink and admin on confluent-kafka (librdkafka), the fast Kafka client.

Chosen with ``kafka.client: confluent`` (env ``STREAMWISE_KAFKA__CLIENT=confluent``).
They behave like the kafka-python connectors: a consumer group with manual offsets and
``read_committed`` isolation, an idempotent producer (transactional when given a
transactional id) and the same errors. librdkafka does the network work in its own
threads, in C, which is what makes this path cheap per record.

Examples
--------
The client is a setting; nothing above :mod:`streamwise.connectors` sees the difference.

>>> from streamwise.core.settings import Settings
>>> Settings(kafka={"client": "confluent"}).kafka.client
'confluent'
>>> consumer_config(KafkaSettings(bootstrap_servers="127.0.0.1:9092"), "g")["isolation.level"]
'read_committed'
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from streamwise.core.errors import ConfigError, DeliveryError, GroupMetadataRefused, ServiceUnavailableError
from streamwise.core.settings import KafkaSettings

from . import kafka_config
from .base import RebalanceCallback, TopicPartition
from .records import ConsumedRecord, OutgoingRecord

log = logging.getLogger(__name__)
# librdkafka's own log lines go through Python logging instead of straight to stderr,
# so the CLI decides what is shown.
_rdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

# How long a metadata request may take before we say no broker answered: librdkafka
# itself retries forever without telling the caller.
_PROBE_TIMEOUT_S = 5.0
# librdkafka keeps connecting in the background; each step only looks at what it logged.
_PROBE_STEP_S = 0.25
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def _on_error(err: KafkaError) -> None:
    # Transport errors are retried by librdkafka and surface as timeouts where they
    # matter; only fatal errors deserve a warning.
    (log.warning if err.fatal() else log.debug)("librdkafka: %s", err)


class _Reports:
    """librdkafka's log lines for one client: passed on to Python logging, and the ones
    about a failed connection kept, because they hold the cause (a refused password, an
    unverified certificate) that a metadata timeout does not."""

    def __init__(self, connecting: bool = False) -> None:
        self.lines: list[str] = []
        self.connecting = connecting
        # The last fatal error librdkafka logged (a consumer may say it only here).
        self.fatal: str | None = None

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        text = msg % args if args else msg
        if level >= logging.CRITICAL and "FATAL" in text:
            self.fatal = text
        if self.connecting and level >= logging.WARNING:
            self.lines.append(text)
            # Kept back while connecting: _probe turns them into one error line.
            level = logging.DEBUG
        _rdkafka_log.log(level, text, **kwargs)


def _with_callbacks(config: dict[str, Any], reports: _Reports) -> dict[str, Any]:
    return {**config, "logger": reports, "error_cb": _on_error}


def consumer_config(settings: KafkaSettings, group_id: str) -> dict[str, Any]:
    """The librdkafka consumer settings (:func:`kafka_config.confluent_consumer`) with
    this module's log and error callbacks."""
    return _with_callbacks(kafka_config.confluent_consumer(settings, group_id), _Reports())


def producer_config(settings: KafkaSettings, transactional_id: str | None) -> dict[str, Any]:
    """The librdkafka producer settings (:func:`kafka_config.confluent_producer`) with
    this module's log and error callbacks."""
    return _with_callbacks(kafka_config.confluent_producer(settings, transactional_id), _Reports())


def _unavailable(settings: KafkaSettings, exc: BaseException) -> ServiceUnavailableError:
    reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
    return ServiceUnavailableError(f"Kafka: no broker answered at {settings.bootstrap_servers} ({reason})")


def _build(factory: Any, config: dict[str, Any]) -> Any:
    """The client, or a ConfigError naming the key librdkafka refused (a typo in
    kafka.extra, or a value it cannot use)."""
    try:
        return factory(config)
    except (KafkaException, ValueError, TypeError) as e:
        reason = e.args[0].str() if e.args and isinstance(e.args[0], KafkaError) else str(e)
        raise ConfigError(f"kafka: librdkafka refused the configuration: {reason}") from None


def check_config(settings: KafkaSettings, group_id: str) -> None:
    """What librdkafka would refuse at the start (a kafka.extra name it does not have, a
    value it cannot use, a certificate file it cannot read), found without connecting:
    the consumer and producer are built without bootstrap servers and closed at once
    (``streamwise run --check``). A ConfigError names what was refused."""
    def unconnected(config: dict[str, Any]) -> dict[str, Any]:
        # No bootstrap servers, and no log saying so: not connecting is the point here.
        return {k: v for k, v in config.items() if k != "bootstrap.servers"} | {"log_level": 0}

    consumer = _build(Consumer, unconnected(kafka_config.confluent_consumer(settings, group_id)))
    consumer.close()
    _build(Producer, unconnected(kafka_config.confluent_producer(settings, None)))


def _probe(client: Consumer | Producer | AdminClient, settings: KafkaSettings, reports: _Reports) -> None:
    """Fails in seconds, with one line, when no broker answers a metadata request; the
    line names the cause when librdkafka logged one (authentication, TLS), and then
    comes as soon as it is logged rather than at the end of the wait."""
    deadline = time.monotonic() + _PROBE_TIMEOUT_S
    while True:
        try:
            client.list_topics(timeout=_PROBE_STEP_S)
            break
        except KafkaException as e:
            # The log lines are delivered by poll(); serve them before reading them.
            client.poll(0)
            if kafka_config.explain_failure(settings, reports.lines) or time.monotonic() >= deadline:
                raise kafka_config.connect_error(settings, reports.lines, e.args[0].str()) from None
    # Connected: later warnings (a broker restarting) go to the log as usual.
    reports.connecting = False
    reports.lines.clear()


def _with_markers(
    offsets: dict[TopicPartition, int], markers: Mapping[TopicPartition, str] | None
) -> list[CTopicPartition]:
    markers = markers or {}
    return [CTopicPartition(t, p, o, metadata=markers.get((t, p), "")) for (t, p), o in offsets.items()]


def _tps(partitions: Sequence[CTopicPartition]) -> list[TopicPartition]:
    return sorted((tp.topic, tp.partition) for tp in partitions)


class ConfluentSource:
    def __init__(self, settings: KafkaSettings, group_id: str) -> None:
        self._settings = settings
        self._reports = _Reports(connecting=True)
        self._config = _with_callbacks(kafka_config.confluent_consumer(settings, group_id), self._reports)
        # librdkafka may report a fatal consumer error only to error_cb (consume() then
        # just returns nothing): it is kept here for the next poll to act on.
        self._fatal: KafkaError | None = None
        self._config["error_cb"] = self._on_error
        self._consumer = _build(Consumer, self._config)
        self._offsets: Consumer | None = None
        # cooperative-sticky hands over partitions incrementally; range revokes and
        # reassigns everything, and librdkafka wants the matching assign call.
        self._incremental = settings.assignor == "cooperative-sticky"
        try:
            _probe(self._consumer, settings, self._reports)
        except (ServiceUnavailableError, ConfigError):
            self._consumer.close()
            raise
        self._on_assigned: RebalanceCallback | None = None
        self._on_revoked: RebalanceCallback | None = None
        self._topics: list[str] = []
        # What the group gave this consumer, as the callbacks said: a consumer in a fatal
        # state may not answer assignment() any more.
        self._held: set[TopicPartition] = set()

    def subscribe(
        self,
        topics: Sequence[str],
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._topics = list(topics)
        self._consumer.subscribe(
            list(topics), on_assign=self._assign, on_revoke=self._revoke, on_lost=self._revoke
        )

    def _on_error(self, err: KafkaError) -> None:
        _on_error(err)
        if err.fatal():
            self._fatal = err

    def _rebuild(self, why: str) -> None:
        """A fatal consumer error leaves the consumer unusable for good: after a stall
        longer than the session (a broker paused for 90 s, measured), librdkafka's static
        member rejoins and its old member id is fenced ("Static consumer fenced by other
        consumer with same group.instance.id"); every later poll returns nothing, and the
        worker would hold its partitions without ever reading them. Every partition it held
        is given up (the runner rewinds them, as after a rebalance) and a new consumer
        joins the group with the same subscription."""
        log.warning("consumer in a fatal state (%s); building a new one", why)
        self._fatal = None
        self._reports.fatal = None
        lost, self._held = sorted(self._held), set()
        if self._on_revoked is not None and lost:
            self._on_revoked(lost)
        try:
            self._consumer.close()
        except KafkaException:
            pass  # it is being replaced either way
        self._consumer = _build(Consumer, self._config)
        if self._topics:
            self._consumer.subscribe(
                self._topics, on_assign=self._assign, on_revoke=self._revoke, on_lost=self._revoke
            )

    def _assign(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        self._held.update(_tps(partitions))
        if self._on_assigned is not None:
            self._on_assigned(_tps(partitions))
        # OFFSET_INVALID: start at the committed offset (else auto.offset.reset). The
        # runner restores and seeks a new partition after the poll that assigned it.
        positioned = [CTopicPartition(tp.topic, tp.partition, OFFSET_INVALID) for tp in partitions]
        (consumer.incremental_assign if self._incremental else consumer.assign)(positioned)

    def _revoke(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        # A lost partition (the session expired) is gone just the same as a revoked one;
        # the protocol's one callback covers both, as kafka-python's listener does.
        self._held.difference_update(_tps(partitions))
        if self._on_revoked is not None:
            self._on_revoked(_tps(partitions))

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumedRecord]:
        try:
            # consume(n, timeout) waits until n records or the timeout, which adds up
            # to the whole timeout of latency on a slow stream. Wait for the first
            # record only, then take whatever else is already fetched.
            messages = self._consumer.consume(1, timeout_ms / 1000.0)
            if messages and max_records > 1:
                messages += self._consumer.consume(max_records - 1, 0)
        except KafkaException as e:
            if e.args and isinstance(e.args[0], KafkaError) and e.args[0].fatal():
                self._rebuild(e.args[0].str())
            raise _unavailable(self._settings, e) from None
        if self._fatal is not None:
            fatal = self._fatal
            self._rebuild(fatal.str())
            raise _unavailable(self._settings, KafkaException(fatal))
        if self._reports.fatal is not None:
            text = self._reports.fatal
            self._rebuild(text)
            raise ServiceUnavailableError(f"Kafka: consumer rebuilt after a fatal error: {text[:300]}")
        out: list[ConsumedRecord] = []
        append = out.append
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError.INVALID_SESSION_TIMEOUT:
                    raise kafka_config.session_timeout_refused(self._settings)
                if err.fatal():
                    self._rebuild(err.str())
                    raise _unavailable(self._settings, KafkaException(err))
                log.debug("consumer: %s", err)  # e.g. a topic not created yet; retried
                continue
            headers = m.headers()
            append(
                ConsumedRecord(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.key(),
                    m.value(),
                    m.timestamp()[1],
                    tuple(headers) if headers else (),
                )
            )
        return out

    def commit(self, offsets: dict[TopicPartition, int], markers: Mapping[TopicPartition, str] | None = None) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=_with_markers(offsets, markers), asynchronous=False)
        except KafkaException as e:
            raise DeliveryError(f"offsets not committed: {e.args[0].str()}") from e

    def assignment(self) -> list[TopicPartition]:
        return _tps(self._consumer.assignment())

    def lag(self) -> dict[TopicPartition, int]:
        assigned = self._consumer.assignment()
        if not assigned:
            return {}
        timeout = self._settings.request_timeout_ms / 1000.0
        positions = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(assigned)}
        unknown = [tp for tp, o in positions.items() if o < 0]
        committed = self.committed(unknown) if unknown else {}
        out: dict[TopicPartition, int] = {}
        for (t, p), position in positions.items():
            # The end is the last stable offset (read_committed), which only the broker
            # knows: the cached watermark is the high one and counts open transactions.
            low, high = self._offsets_client().get_watermark_offsets(CTopicPartition(t, p), timeout=timeout)
            if position < 0:
                # Nothing consumed yet: the consumer will start at the committed offset,
                # else at the beginning (auto.offset.reset=earliest).
                position = committed.get((t, p)) or low
            out[(t, p)] = max(0, high - position)
        return out

    def _offsets_client(self) -> Consumer:
        """A second handle, never subscribed, for end-offset queries. On the group
        consumer's own connection the query waits behind the outstanding fetch (0.2 to
        0.4 s measured here, per call); on its own it takes a fraction of a millisecond."""
        if self._offsets is None:
            config = {k: v for k, v in self._config.items() if k != "group.instance.id"}
            self._offsets = Consumer({**config, "group.id": f"{config['group.id']}.offsets"})
        return self._offsets

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def rejoin(self, why: str) -> None:
        self._rebuild(why)

    def in_group(self, metadata: object = None) -> bool:
        # librdkafka's metadata is opaque, and it sends its own current generation with
        # a transaction's offsets (it reports a lost assignment through the callbacks).
        return True

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            for (t, p), o in offsets.items():
                self._consumer.seek(CTopicPartition(t, p, o))
        except KafkaException as e:
            # E.g. the partition was taken away meanwhile: retried once it is settled.
            raise ServiceUnavailableError(f"Kafka: cannot seek: {e.args[0].str()}") from None

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        if not partitions:
            return {}
        found = self._consumer.committed(
            [CTopicPartition(t, p) for t, p in partitions], timeout=self._settings.request_timeout_ms / 1000.0
        )
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in found}

    def committed_markers(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        if not partitions:
            return {}
        found = self._consumer.committed(
            [CTopicPartition(t, p) for t, p in partitions], timeout=self._settings.request_timeout_ms / 1000.0
        )
        return {(tp.topic, tp.partition): (tp.metadata or "") for tp in found}

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.pause([CTopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.resume([CTopicPartition(t, p) for t, p in partitions])

    def close(self) -> None:
        self._consumer.close()
        if self._offsets is not None:
            self._offsets.close()


# How long past its own timeout a transactional call may block before the producer is
# given up (see _bounded).
_HUNG_AFTER_S = 5.0


def _bounded(call: Any, timeout_s: float, *args: Any) -> Any:
    """``call(*args, timeout_s)``, which librdkafka should end within ``timeout_s``; run
    on a thread of its own, so that the caller gets a :class:`DeliveryError` when it does
    not. librdkafka's transactional calls can block far past their timeout when the
    coordinator goes down (librdkafka issues #5456, #5511: a coordinator request whose
    timeout is never checked); seen here as a worker blocked ten minutes in one commit
    after a broker restart, past max.poll.interval.ms. The call is left running: the
    producer is abandoned (never closed under it) and a new one with the same
    transactional id fences it, which ends the call.

    Examples
    --------
    >>> _bounded(lambda a, t: a + 1, 0.1, 41)
    42
    """
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call(*args, timeout_s))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            failure.append(e)

    thread = threading.Thread(target=run, name="streamwise-txn-call", daemon=True)
    thread.start()
    thread.join(timeout_s + _HUNG_AFTER_S)
    if thread.is_alive():
        name = getattr(call, "__name__", "call")
        raise _HungCall(f"{name} still blocked {timeout_s + _HUNG_AFTER_S:.0f} s after it began")
    if failure:
        raise failure[0]
    return result[0]


class _HungCall(DeliveryError):
    """A transactional call that did not return in time: its producer is unusable."""


class ConfluentSink:
    # librdkafka waits for the broker in C, without the GIL: a commit on another thread
    # costs the worker's thread nothing (streamwise/checkpoint.py).
    commits_in_background = True

    def __init__(self, settings: KafkaSettings, transactional_id: str | None = None) -> None:
        self._timeout_s = settings.request_timeout_ms / 1000.0
        # Set once a call hung (_bounded): every later call fails at once, and close()
        # leaves the handle to the thread still inside it.
        self._hung: str | None = None
        self._failures: list[str] = []
        reports = _Reports(connecting=True)
        config = _with_callbacks(kafka_config.confluent_producer(settings, transactional_id), reports)
        # Called from flush() and commit_transaction(), only for records that failed.
        config["on_delivery"] = self._on_delivery
        self._producer = _build(Producer, config)
        _probe(self._producer, settings, reports)
        self.transactional = transactional_id is not None
        if self.transactional:
            # Also aborts whatever a previous incarnation with the same id left open,
            # so read_committed readers are not held up until its transaction times out.
            try:
                _bounded(self._producer.init_transactions, self._timeout_s)
            except KafkaException as e:
                if e.args[0].code() == KafkaError.INVALID_TRANSACTION_TIMEOUT:
                    raise kafka_config.transaction_timeout_refused(settings) from None
                raise ServiceUnavailableError(
                    f"Kafka: transactions unavailable at {settings.bootstrap_servers} ({e.args[0].str()})"
                ) from None
            except _HungCall as e:
                # Left to the thread still inside it; the next attempt builds a new one.
                where = settings.bootstrap_servers
                raise ServiceUnavailableError(f"Kafka: transactions unavailable at {where} ({e})") from None

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        # Records purged by abort_transaction() are reported after it returns, failed on
        # purpose; they must not fail the next transaction.
        if err is not None and err.code() not in _PURGED:
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def _usable(self) -> None:
        if self._hung is not None:
            raise DeliveryError(f"producer abandoned: {self._hung}")

    def _txn_call(self, call: Any, *args: Any) -> None:
        try:
            _bounded(call, self._timeout_s, *args)
        except _HungCall as e:
            self._hung = str(e)
            raise

    def begin_transaction(self) -> None:
        self._usable()
        try:
            self._producer.begin_transaction()
        except KafkaException as e:
            raise DeliveryError(f"transaction not begun: {e.args[0].str()}") from e

    def commit_transaction(
        self,
        offsets: dict[TopicPartition, int],
        group_metadata: object,
        markers: Mapping[TopicPartition, str] | None = None,
    ) -> None:
        self._usable()
        try:
            if offsets:
                offsets_call = self._producer.send_offsets_to_transaction
                self._txn_call(offsets_call, _with_markers(offsets, markers), group_metadata)
            self._txn_call(self._producer.commit_transaction)
        except KafkaException as e:
            error = e.args[0]
            if error.code() in (KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID):
                raise GroupMetadataRefused(f"transaction not committed: {error.str()}") from e
            raise DeliveryError(f"transaction not committed: {error.str()}") from e
        self._check_sent()

    def abort_transaction(self) -> None:
        self._failures.clear()
        self._usable()
        try:
            self._txn_call(self._producer.abort_transaction)
        except KafkaException as e:
            raise DeliveryError(f"transaction not aborted: {e.args[0].str()}") from e

    def send(self, record: OutgoingRecord) -> None:
        try:
            self._producer.produce(record.topic, record.value, record.key, headers=record.headers or None)
        except BufferError:
            # The local queue is full: let librdkafka deliver some, then try once more.
            self._producer.flush(self._timeout_s)
            self._producer.produce(record.topic, record.value, record.key, headers=record.headers or None)
        except KafkaException as e:
            raise DeliveryError(f"record not sent to {record.topic}: {e.args[0].str()}") from e

    def flush(self) -> None:
        # Each record either is delivered or fails within message.timeout.ms, so an
        # unbounded flush returns; what is left after it was never acknowledged.
        left = self._producer.flush()
        if left:
            raise DeliveryError(f"{left} records not delivered")
        self._check_sent()

    def _check_sent(self) -> None:
        failures, self._failures = self._failures, []
        if failures:
            raise DeliveryError(f"{len(failures)} records not delivered: {failures[0]}")

    def close(self) -> None:
        if self._hung is not None:
            # A call is still running inside this handle: flushing or closing it now
            # would block again or free it under that call. The thread keeps it alive
            # until the new producer fences it.
            log.warning("producer abandoned without closing it: %s", self._hung)
            return
        self._producer.flush(self._timeout_s)
        # Producer.close() exists from confluent-kafka 2.13; before it, dropping the last
        # reference destroys the handle (after the flush above, nothing is lost).
        close = getattr(self._producer, "close", None)
        if close is not None:
            close()


class ConfluentAdmin:
    def __init__(self, settings: KafkaSettings) -> None:
        self._timeout_s = settings.request_timeout_ms / 1000.0
        self._settings = settings
        reports = _Reports(connecting=True)
        self._admin = _build(AdminClient, _with_callbacks(kafka_config.confluent_admin(settings), reports))
        _probe(self._admin, settings, reports)

    def ensure_topics(self, topics: Sequence[str], partitions: int = 1) -> None:
        existing = set(self._admin.list_topics(timeout=self._timeout_s).topics)
        missing = [t for t in topics if t not in existing]
        if missing and not self._settings.create_topics:
            raise kafka_config.missing_topic(missing[0])
        # -1: the broker's default.replication.factor (KIP-464).
        replicas = self._settings.replication_factor or -1
        new = [NewTopic(t, num_partitions=partitions, replication_factor=replicas) for t in missing]
        if not new:
            return
        # operation_timeout: wait until the topic exists across the cluster, like
        # kafka-python's create_topics does.
        futures = self._admin.create_topics(new, operation_timeout=self._timeout_s, request_timeout=self._timeout_s)
        for topic, future in futures.items():
            try:
                future.result()
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another worker made it
                    raise ServiceUnavailableError(f"Kafka: cannot create topic {topic}: {e.args[0].str()}") from None

    def max_message_bytes(self, topic: str) -> int | None:
        try:
            futures = self._admin.describe_configs([ConfigResource("topic", topic)], request_timeout=self._timeout_s)
            entries = next(iter(futures.values())).result(timeout=self._timeout_s)
            return int(entries["max.message.bytes"].value)
        except (KafkaException, KeyError, TypeError, ValueError, StopIteration, TimeoutError) as e:
            log.info("Kafka: max.message.bytes of %s not known (%s: %s)", topic, type(e).__name__, e)
            return None

    def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        listed = self._admin.list_topics(timeout=self._timeout_s).topics
        # A topic being created can be listed with an error and no partitions yet.
        ready = {t: listed[t] for t in topics if t in listed and listed[t].error is None}
        return {t: len(meta.partitions) for t, meta in ready.items() if meta.partitions}

    def close(self) -> None:
        # AdminClient has no close(); its handle is destroyed with the object.
        pass
