"""The runner: the one place that wires Kafka, the stream logic and the models together.

Its loop is poll → apply rebalance → process → checkpoint. What happens at the end of a
batch (outputs, offsets, commit, snapshots) is written down once, in
:mod:`streamwise.checkpoint`, because every delivery guarantee rests on its order.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamwise.checkpoint import Checkpoint
from streamwise.connectors import make_admin, make_sink, make_source
from streamwise.connectors.base import Admin, Sink, Source, StateStore, TopicPartition
from streamwise.connectors.redis_state import open_state_store
from streamwise.core.errors import ConfigError, ServiceUnavailableError
from streamwise.core.sensors import CountingSensor, Sensor, SensorSet
from streamwise.core.settings import Settings
from streamwise.partitions import PartitionStates
from streamwise.pipeline_config import PipelineConfig
from streamwise.processor import PipelineProcessor

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    events_in: int
    predictions: int
    dead_letters: dict[str, int]
    metrics: dict[str, dict[str, Any]]
    wall_seconds: float
    busy_seconds: float


class Runner:
    def __init__(
        self,
        config: PipelineConfig,
        settings: Settings,
        sensors: Sequence[Sensor] = (),
        source: Source | None = None,
        sink: Sink | None = None,
        worker_index: int = 0,
        admin: Admin | None = None,
        store: StateStore | None = None,
        sink_factory: Callable[[str | None], Sink] | None = None,
    ) -> None:
        # sink_factory builds a producer for a transactional id (None: not
        # transactional) whenever one is needed: at the start unless ``sink`` is given,
        # and again after a fatal error. Default: the configured Kafka client's.
        self.worker_index = worker_index
        self.config = config
        self.settings = settings
        self.counts = CountingSensor()
        self.prometheus: Any = None
        if settings.metrics.port:  # 0: no /metrics
            from streamwise.connectors.prometheus import PrometheusSensor

            self.prometheus = PrometheusSensor(config.name, [m.name for m in config.models], config.input.topic)
        self.sensor = SensorSet([self.counts, *sensors, *filter(None, [self.prometheus])])
        # Built in run(), with their source and store: until then, nothing is owned.
        self.partitions: Any = _NoPartitions()
        self._source = source
        self._sink = sink
        self._admin = admin
        self._store = store
        self._sink_factory = sink_factory
        self._stop = threading.Event()
        self._next_report = 0.0
        # The champion last reported for each partition: each has its own.
        self._champions: dict[int, str] = {}

    @property
    def worker_id(self) -> str:
        """Stable per (group, instance, worker slot); the instance is ``instance_id``
        (STREAMWISE_INSTANCE_ID, e.g. a StatefulSet pod name) or else the host name. Used
        as the transactional id, so a restarted worker's init_transactions aborts what its
        predecessor left open, and as the static group instance id, so it gets its
        partitions back at once."""
        instance = self.settings.instance_id or socket.gethostname()
        return f"{self.config.group_id}.{instance}.{self.worker_index}"

    @property
    def input_topics(self) -> list[str]:
        labels = self.config.input.labels_topic
        return [self.config.input.topic, *([labels] if labels else [])]

    @property
    def processors(self) -> dict[int, PipelineProcessor]:
        """The learning state of each partition this worker owns."""
        return self.partitions.processors()

    def _state_store(self) -> StateStore | None:
        try:
            return open_state_store(self.settings.redis, self.settings.snapshot)
        except ServiceUnavailableError as e:
            # The same rule as a Redis outage mid-run: the worker starts, and each
            # partition waits, paused, until its state can be read. Wrong credentials
            # or certificates are a ConfigError instead, and stop the start.
            log.warning("%s; starting anyway: partitions wait until their state can be read", e)
            return open_state_store(self.settings.redis, self.settings.snapshot, ping=False)

    def stop(self) -> None:
        """Asks the loop to finish the batch in hand, commit it and return. Signal-safe."""
        self._stop.set()

    def run(self, until_idle_s: float | None = None, max_events: int | None = None) -> RunSummary:
        """Runs until :meth:`stop`, or until the input has been drained and stayed idle
        for ``until_idle_s`` seconds, or until ``max_events`` records were processed."""
        cfg = self.config
        topics = self.input_topics
        kafka = self.settings.kafka.model_copy(
            update={
                "group_instance_id": self.worker_id if self.settings.kafka.static_membership else None,
                "assignor": "range" if len(topics) > 1 else self.settings.kafka.assignor,
            }
        )
        store = self._store if self._store is not None else self._state_store()
        admin = self._admin or make_admin(kafka)
        try:
            admin.ensure_topics([cfg.input.topic, cfg.output.topic, cfg.dead_letter_topic, cfg.alerts_topic])
            if cfg.input.labels_topic is not None:
                _ensure_copartitioned(admin, cfg.input.topic, cfg.input.labels_topic)
        finally:
            admin.close()
        source = self._source or make_source(kafka, cfg.group_id)
        transactional_id = self.worker_id if kafka.guarantee == "exactly_once" else None
        given_sink = self._sink

        def make_sink_() -> Sink:
            nonlocal given_sink
            if given_sink is not None:
                sink, given_sink = given_sink, None
                return sink
            if self._sink_factory is not None:
                return self._sink_factory(transactional_id)
            return make_sink(kafka, transactional_id)

        # Collaborators are built whole before the loop starts.
        self.partitions = PartitionStates(
            cfg, self.settings.snapshot, self.sensor, source, store, refence_after_s=kafka.session_timeout_ms / 1000.0
        )
        checkpoint = Checkpoint(
            source,
            make_sink_,
            self.partitions,
            self.sensor,
            commit_interval_s=kafka.commit_interval_ms / 1000.0,
            retry_backoff_max_s=kafka.retry_backoff_max_ms / 1000.0,
        )
        source.subscribe(topics, on_assigned=self.partitions.on_assigned, on_revoked=self.partitions.on_revoked)
        metrics_server = self._serve_metrics()
        started = time.perf_counter()
        last_activity = started
        poll_size = kafka.max_poll_records
        # A batch slower than this shrinks the next poll: the group must hear from this
        # worker within max.poll.interval.ms, whatever the model costs per event.
        slow_batch_s = kafka.max_poll_interval_ms / 4000.0
        backoff = _Backoff(kafka.retry_backoff_max_ms / 1000.0)
        try:
            while not self._stop.is_set():
                self._report(source)
                try:
                    records = source.poll(kafka.poll_timeout_ms, poll_size)
                except ServiceUnavailableError as e:
                    # A restarting broker, a coordinator move, a timeout: the client
                    # reconnects by itself; wait a little and poll again.
                    self.sensor.on_fault("kafka")
                    backoff.wait(f"poll failed ({type(e).__name__}: {e})")
                    continue
                backoff.reset()
                reset = checkpoint.apply_rebalance()
                if reset:
                    # Polled before their seek: fetched again from the restored position.
                    records = [r for r in records if r.partition not in reset]
                if not records:
                    # Every batch is committed by now: a snapshot due by time (or one
                    # retried after a Redis outage, which may unpause) can go.
                    checkpoint.commit()
                    if until_idle_s is not None and time.perf_counter() - last_activity >= until_idle_s:
                        lag = self._lag(source)
                        if self.partitions.states and not self.partitions.waiting and lag is not None and not any(lag.values()):
                            break
                    continue
                t0 = time.perf_counter()
                outputs, offsets = self.partitions.process(records)
                if checkpoint.add(outputs, offsets) and checkpoint.due():
                    checkpoint.commit()
                now = time.perf_counter()
                elapsed = now - t0
                self.sensor.on_batch(len(records), elapsed)
                if elapsed > slow_batch_s and poll_size > 1:
                    poll_size = max(1, len(records) // 2)
                    log.warning("a batch took %.1f s; polling at most %d records next", elapsed, poll_size)
                elif elapsed < slow_batch_s / 4 and poll_size < kafka.max_poll_records:
                    poll_size = min(kafka.max_poll_records, poll_size * 2)
                last_activity = now
                if max_events is not None and self.counts.events_in >= max_events:
                    break
            self._report(source, force=True)
            # Graceful stop: the open work commits, then every partition is snapshotted.
            checkpoint.close()
        finally:
            source.close()
            checkpoint._close_sink()
            if metrics_server is not None:
                metrics_server.close()
        return self.summary(time.perf_counter() - started)

    def _serve_metrics(self) -> Any:
        if self.prometheus is None:
            return None
        from streamwise.connectors.prometheus import MetricsServer

        m = self.settings.metrics
        auth = None
        if m.basic_auth_username is not None and m.basic_auth_password is not None:
            auth = (m.basic_auth_username, m.basic_auth_password.get_secret_value())
        return MetricsServer(
            self.prometheus.registry, m.host, m.port,
            tls_cert_file=str(m.tls_cert_file) if m.tls_cert_file else None,
            tls_key_file=str(m.tls_key_file) if m.tls_key_file else None,
            basic_auth=auth,
        )

    def _lag(self, source: Source) -> dict[TopicPartition, int] | None:
        """The lag, or None when the broker does not answer: a report, never a reason to stop."""
        try:
            return source.lag()
        except Exception as e:  # noqa: BLE001 - any client error; the loop must go on
            self.sensor.on_fault("lag")
            log.debug("lag not read: %s: %s", type(e).__name__, e)
            return None

    def _report(self, source: Source, force: bool = False) -> None:
        """Feeds the sensors the figures that are read rather than counted, at most once a
        second: the lag costs a broker round trip."""
        now = time.monotonic()
        if not force and now < self._next_report:
            return
        self._next_report = now + 1.0
        self.sensor.on_report()
        lag = self._lag(source)
        if lag is not None:  # all assigned partitions each time: a revoked one's lag goes away
            self.sensor.on_lag(lag)
        self.sensor.on_partitions_waiting(len(self.partitions.waiting))
        for partition, processor in self.processors.items():
            for m in processor.models:
                metric = type(m.metric).__name__
                # The pipeline's metric with River's exact semantics, then the evaluation
                # set (that metric over the rolling window, and any extra ones).
                self.sensor.on_model_metric(m.name, metric, "cumulative", m.metric.get(), partition)
                evaluation = processor.learners.evaluations.get(m.name)
                for window, values in (evaluation.report() if evaluation else {}).items():
                    for name, value in values.items():
                        if not (window == "cumulative" and name == metric):
                            self.sensor.on_model_metric(m.name, name, window, value, partition)
            previous = self._champions.get(partition)
            if processor.champion != previous:
                self.sensor.on_champion_change(previous, processor.champion, partition)
                self._champions[partition] = processor.champion

    def _model_metrics(self) -> dict[str, dict[str, Any]]:
        """Each model's prequential metric; with several partitions, one entry per
        partition replica, named ``model[p]``."""
        seen = self.partitions.all_processors()
        out = {}
        for p, processor in seen.items():
            for m in processor.models:
                name = m.name if len(seen) == 1 else f"{m.name}[{p}]"
                out[name] = {"metric": type(m.metric).__name__, "value": m.metric.get(), "learned": m.n_learned}
        return out

    def summary(self, wall_seconds: float) -> RunSummary:
        c = self.counts
        return RunSummary(
            events_in=c.events_in,
            predictions=c.predictions,
            dead_letters=dict(c.dead_letters),
            metrics=self._model_metrics(),
            wall_seconds=wall_seconds,
            busy_seconds=c.busy_seconds,
        )


def _partition_count(admin: Admin, topic: str) -> int:
    # A topic just created may take a moment to show in the metadata.
    deadline = time.monotonic() + 10.0
    while (count := admin.partition_counts([topic]).get(topic)) is None:
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(f"Kafka: topic {topic} did not show in the metadata within 10 s")
        time.sleep(0.1)
    return count


def _ensure_copartitioned(admin: Admin, events_topic: str, labels_topic: str) -> None:
    """Creates a missing labels topic with the events topic's partition count, and refuses
    to start on two that differ: a label is joined only by the worker that holds its
    event's partition, so with unequal counts most labels would never meet their event
    and be dropped, silently, when their hold time ran out."""
    events = _partition_count(admin, events_topic)
    admin.ensure_topics([labels_topic], partitions=events)
    labels = _partition_count(admin, labels_topic)
    if labels != events:
        raise ConfigError(
            f"input.labels_topic: {labels_topic} has {labels} partition(s) but input.topic {events_topic} has "
            f"{events}; labels are joined per partition, so both topics need the same partition count and keys"
        )


class _NoPartitions:
    """Before run(): no partition owned yet."""

    states: dict[int, Any] = {}
    waiting: dict[int, Any] = {}

    def processors(self) -> dict[int, PipelineProcessor]:
        return {}

    def all_processors(self) -> dict[int, PipelineProcessor]:
        return {}


class _Backoff:
    """Waits after a failed broker call: 0.1 s, doubling up to a bound; one log line
    when the trouble starts and one when it ends."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.delay = 0.1
        self.since: float | None = None

    def wait(self, what: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s; retrying with backoff", what)
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_s)

    def reset(self) -> None:
        if self.since is not None:
            log.warning("Kafka answers again after %.1f s", time.monotonic() - self.since)
        self.since = None
        self.delay = 0.1
