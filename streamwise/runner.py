"""The runner: the one place that wires Kafka, the stream logic and the models together.

Its loop is poll → process → commit. The order inside a commit is written down once,
in :meth:`Runner._commit`, because every delivery guarantee rests on it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamwise.connectors import make_admin, make_sink, make_source
from streamwise.connectors.base import Admin, Sink, Source
from streamwise.connectors.records import OutgoingRecord
from streamwise.connectors.redis_state import RedisStateStore
from streamwise.core.errors import ConfigError, DeliveryError, ServiceUnavailableError
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
    ) -> None:
        self.worker_index = worker_index
        self.config = config
        self.settings = settings
        self.counts = CountingSensor()
        self.prometheus: Any = None
        if settings.metrics.port:  # 0: no /metrics
            from streamwise.connectors.prometheus import PrometheusSensor

            self.prometheus = PrometheusSensor(config.name, [m.name for m in config.models], config.input.topic)
        self.sensor = SensorSet([self.counts, *sensors, *filter(None, [self.prometheus])])
        self.partitions = PartitionStates(config, settings.snapshot, self.sensor, store=None)
        self._source = source
        self._sink = sink
        self._stop = threading.Event()
        self._next_report = 0.0
        self._champion: str | None = None

    @property
    def worker_id(self) -> str:
        """Stable per (group, host, worker slot). Used as the transactional id, so a
        restarted worker's init_transactions aborts what its predecessor left open, and
        as the static group instance id, so it gets its partitions back at once."""
        return f"{self.config.group_id}.{socket.gethostname()}.{self.worker_index}"

    @property
    def input_topics(self) -> list[str]:
        labels = self.config.input.labels_topic
        return [self.config.input.topic, *([labels] if labels else [])]

    @property
    def processors(self) -> dict[int, PipelineProcessor]:
        """The learning state of each partition this worker owns."""
        return self.partitions.processors()

    def _state_store(self) -> RedisStateStore | None:
        snap = self.settings.snapshot
        if not snap.enabled:
            return None
        if snap.signing_key is None or not snap.signing_key.get_secret_value():
            raise ConfigError(
                "snapshot.signing_key: required to sign snapshots (set STREAMWISE_SNAPSHOT__SIGNING_KEY),"
                " or turn snapshots off with STREAMWISE_SNAPSHOT__ENABLED=false"
            )
        store = RedisStateStore(
            self.settings.redis.url.get_secret_value(),
            snap.signing_key.get_secret_value().encode(),
            keep=snap.keep,
            chunk_bytes=snap.chunk_bytes,
        )
        store.ping()
        return store

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
        store = self._state_store()
        admin = make_admin(kafka)
        try:
            admin.ensure_topics([cfg.input.topic, cfg.output.topic, cfg.dead_letter_topic, cfg.alerts_topic])
            if cfg.input.labels_topic is not None:
                _ensure_copartitioned(admin, cfg.input.topic, cfg.input.labels_topic)
        finally:
            admin.close()
        source = self._source or make_source(kafka, cfg.group_id)
        sink = self._sink or make_sink(kafka, self.worker_id if kafka.guarantee == "exactly_once" else None)
        self.partitions.store = store
        self.partitions.source = source
        source.subscribe(topics, on_assigned=self.partitions.on_assigned, on_revoked=self.partitions.on_revoked)
        metrics_server = self._serve_metrics()
        started = time.perf_counter()
        last_activity = started
        try:
            while not self._stop.is_set():
                self._report(source)
                records = self.partitions.settle(source.poll(kafka.poll_timeout_ms, kafka.max_poll_records))
                if not records:
                    # Every batch is committed by now: a snapshot due by time (or one
                    # retried after a Redis outage, which may unpause) can go.
                    self.partitions.after_commit()
                    if until_idle_s is not None and time.perf_counter() - last_activity >= until_idle_s:
                        if source.assignment() and not any(source.lag().values()):
                            break
                    continue
                t0 = time.perf_counter()
                outputs = self.partitions.process(records)
                try:
                    self._commit(source, sink, outputs, self.partitions.commit_offsets(records))
                except DeliveryError as e:
                    # The models learned from a batch whose outputs did not land (the
                    # transaction was aborted): rewind this worker's partitions to their
                    # snapshots, as a restart would, and go on.
                    log.warning("batch not committed (%s); restoring partitions from snapshots", e)
                    self.partitions.rewind(source.assignment())
                    continue
                self.partitions.after_commit()
                now = time.perf_counter()
                self.sensor.on_batch(len(records), now - t0)
                last_activity = now
                if max_events is not None and self.counts.events_in >= max_events:
                    break
            self._report(source, force=True)
            # Graceful stop: every partition's state is snapshotted before leaving.
            self.partitions.close()
        finally:
            source.close()
            sink.close()
            if metrics_server is not None:
                metrics_server.close()
        return self.summary(time.perf_counter() - started)

    def _serve_metrics(self) -> Any:
        if self.prometheus is None:
            return None
        from streamwise.connectors.prometheus import MetricsServer

        m = self.settings.metrics
        return MetricsServer(self.prometheus.registry, m.host, m.port)

    def _report(self, source: Source, force: bool = False) -> None:
        """Feeds the sensors the figures that are read rather than counted, at most once a
        second: the lag costs a broker round trip."""
        now = time.monotonic()
        if not force and now < self._next_report:
            return
        self._next_report = now + 1.0
        self.sensor.on_lag(source.lag())
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
            if processor.champion != self._champion:
                self.sensor.on_champion_change(self._champion, processor.champion)
                self._champion = processor.champion

    def _commit(
        self,
        source: Source,
        sink: Sink,
        outputs: list[OutgoingRecord],
        offsets: dict[tuple[str, int], int],
    ) -> None:
        """The commit order, in one place because every delivery guarantee rests on it.

        Exactly once (a transactional sink):
          1. begin a transaction;
          2. send every prediction and dead letter of the batch into it;
          3. add the consumed offsets, with the consumer's group metadata so a fenced
             zombie cannot commit, and commit. Outputs and progress become visible to
             read_committed readers together, or not at all.

        At least once:
          1. send every prediction and dead letter;
          2. flush the producer, which returns once the broker acknowledged all of
             them (acks=all, idempotent) or raises, so nothing below runs for a lost write;
          3. only then commit the consumed offsets. A crash between 2 and 3 re-reads
             the batch and writes its outputs again.
        """
        if sink.transactional:
            sink.begin_transaction()
            try:
                for record in outputs:
                    sink.send(record)
                sink.commit_transaction(offsets, source.group_metadata())
            except BaseException:
                sink.abort_transaction()
                raise
        else:
            for record in outputs:
                sink.send(record)
            sink.flush()
            source.commit(offsets)
        self.sensor.on_commit(len(offsets))

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
