"""The runner: the one place that wires Kafka, the stream logic and the models together.

Its loop is poll → apply rebalance → process → checkpoint. What happens at the end of a
batch (outputs, offsets, commit, snapshots) is written down once, in
:mod:`streamwise.checkpoint`, because every delivery guarantee rests on its order.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamwise import gc_tuning
from streamwise.checkpoint import Checkpoint
from streamwise.connectors import make_admin, make_sink, make_source
from streamwise.connectors.base import Admin, Sink, Source, StateStore, TopicPartition
from streamwise.connectors.records import ConsumedRecord
from streamwise.connectors.redis_state import open_state_store
from streamwise.core.errors import ConfigError, ServiceUnavailableError, StreamwiseError
from streamwise.core.sensors import CountingSensor, Sensor, SensorSet
from streamwise.core.stages import ModelFault
from streamwise.core.settings import Settings
from streamwise.models.prequential import peek
from streamwise.partitions import PartitionStates
from streamwise.pipeline_config import PipelineConfig
from streamwise.processor import PartitionStageProcessor, PipelineProcessor
from streamwise.stream.pipeline import split_steps
from streamwise.transfer import resolve_transfers

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
        source_factory: Callable[[str], Source] | None = None,
    ) -> None:
        # sink_factory builds a producer for a transactional id (None: not
        # transactional) whenever one is needed: at the start unless ``sink`` is given,
        # and again after a fatal error. Default: the configured Kafka client's.
        # source_factory builds a consumer for a group id (the learner's, with scope:
        # global); default: the configured client's. ``source`` is the input stage's.
        self.worker_index = worker_index
        self.config = config
        self.settings = settings
        self.counts = CountingSensor()
        self.prometheus: Any = None
        if settings.metrics.port:  # 0: no /metrics
            from streamwise.connectors.prometheus import PrometheusSensor

            self.prometheus = PrometheusSensor(
                config.name, [m.name for m in config.models], config.input.topic,
                rules={r.name: r.decision or "override" for r in config.rules},
            )
        self._shared_sensors: list[Sensor] = [*sensors, *filter(None, [self.prometheus])]
        # The learner's own counts with scope: global (predictions are counted there).
        self.learner_counts: CountingSensor | None = None
        # Built in run(), with their source and store: until then, nothing is owned.
        # ``partitions`` is the stage that holds the models (the learner, with scope: global).
        self.partitions: Any = _NoPartitions()
        self.stages: list[StageLoop] = []
        # Where init_from models start from (streamwise/transfer.py); read in run().
        self._transfers: dict[str, Any] = {}
        self.global_scope = False
        # The dead-letter topic's max.message.bytes, read at start (None: not known).
        self.dead_letter_max_bytes: int | None = None
        self.source_partitions: tuple[int, int] | None = None
        self._source = source
        self._sink = sink
        self._admin = admin
        self._store = store
        self._sink_factory = sink_factory
        self._source_factory = source_factory
        self._stop = threading.Event()

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
        for ``until_idle_s`` seconds, or until ``max_events`` records were processed.

        With ``scope: global`` on an input of several partitions, two stages run, each in
        its own thread with its own consumer group and producer: the partition stage
        (every worker shares the input partitions) and the learner (the learn topic's
        one partition, so one worker of the group learns and the others stand by)."""
        cfg = self.config
        kafka = self.settings.kafka
        built = check_pipeline_builds(cfg)
        # Said, not fatal: the other models serve while this one answers its error.
        for problem in dry_run_problems(cfg, built):
            log.warning("%s", problem)
        store = self._store if self._store is not None else self._state_store()
        # A model's init_from source is read and checked first: a bad one stops the start
        # in one line, before anything is created or joined.
        self._transfers = resolve_transfers(cfg, store)
        admin = self._admin or make_admin(kafka)
        try:
            admin.ensure_topics([cfg.input.topic, cfg.output.topic, cfg.dead_letter_topic, cfg.alerts_topic])
            # Dead letters carry the input's bytes, and the input topic may take larger
            # records than the dead-letter topic: they are cut to fit it (processor.py).
            self.dead_letter_max_bytes = admin.max_message_bytes(cfg.dead_letter_topic)
            # A labels topic is a second input: its merge with the events is written down
            # too, so even one partition of each goes through the learn topic.
            self.global_scope = cfg.scope == "global" and (
                cfg.input.labels_topic is not None or _partition_count(admin, cfg.input.topic) > 1
            )
            if self.global_scope:
                _ensure_learn_topic(admin, cfg.learn_topic)
                events = _partition_count(admin, cfg.input.topic)
                if cfg.input.labels_topic is not None:
                    # Labels go through the learn topic: no co-partitioning needed.
                    admin.ensure_topics([cfg.input.labels_topic], partitions=events)
                    # The learner's label join waits for every partition of both (models/labels.py).
                    self.source_partitions = (events, _partition_count(admin, cfg.input.labels_topic))
            elif cfg.input.labels_topic is not None:
                _ensure_copartitioned(admin, cfg.input.topic, cfg.input.labels_topic)
        finally:
            admin.close()
        if self.global_scope:
            log.info("scope: global\n%s", explain_stages(cfg))
            self.stages = [
                self._stage("partition", self.input_topics, cfg.group_id, f"{cfg.name}.partition", store, ""),
                self._stage("learn", [cfg.learn_topic], cfg.learn_group_id, f"{cfg.name}.learn", store, ".learn"),
            ]
        else:
            self.stages = [self._stage("pipeline", self.input_topics, cfg.group_id, cfg.name, store, "")]
        metrics_server = self._serve_metrics()
        started = time.perf_counter()
        try:
            if len(self.stages) == 1:
                self.stages[0].run(self._stop, until_idle_s, max_events)
            else:
                self._run_stages(until_idle_s, max_events)
        finally:
            if metrics_server is not None:
                metrics_server.close()
        return self.summary(time.perf_counter() - started)

    def _stage(
        self, kind: str, topics: list[str], group_id: str, state_name: str, store: StateStore | None, suffix: str
    ) -> StageLoop:
        worker_id = self.worker_id + suffix
        kafka = self.settings.kafka.model_copy(
            update={
                "group_instance_id": worker_id if self.settings.kafka.static_membership else None,
                "assignor": "range" if len(topics) > 1 else self.settings.kafka.assignor,
            }
        )
        # The source given to the runner is the first stage's; the learner's is built.
        source = self._source if kind != "learn" and self._source is not None else None
        if source is None:
            source = self._source_factory(group_id) if self._source_factory else make_source(kafka, group_id)
        transactional_id = worker_id if kafka.guarantee == "exactly_once" else None
        given_sink = self._sink if kind != "learn" else None
        sink_factory = self._sink_factory

        def make_sink_() -> Sink:
            nonlocal given_sink
            if given_sink is not None:
                sink, given_sink = given_sink, None
                return sink
            if sink_factory is not None:
                return sink_factory(transactional_id)
            return make_sink(kafka, transactional_id)

        counts = self.counts
        if kind == "learn":
            counts = self.learner_counts = CountingSensor()
        sensor = SensorSet([counts, *self._shared_sensors])

        def make_processor(s: Sensor) -> Any:
            if kind == "partition":
                processor: Any = PartitionStageProcessor(self.config, s)
            else:
                processor = PipelineProcessor(self.config, s, stage="learn" if kind == "learn" else "pipeline")
            processor.dead_letter_max_bytes = self.dead_letter_max_bytes
            if kind == "learn":
                processor.source_partitions = self.source_partitions
            return processor

        partitions = PartitionStates(
            self.config, self.settings.snapshot, sensor, source, store,
            refence_after_s=kafka.session_timeout_ms / 1000.0, state_name=state_name, make_processor=make_processor,
            # The models' stage (not the partition stage) starts init_from models.
            transfers=self._transfers if kind != "partition" else None,
        )
        if kind != "partition":
            self.partitions = partitions
        return StageLoop(kind, kafka, topics, source, make_sink_, partitions, sensor, counts, self)

    def _run_stages(self, until_idle_s: float | None, max_events: int | None) -> None:
        """Both stages of ``scope: global``, each on its own thread. The learner may go
        idle only once the partition stage has finished (it writes what the learner reads);
        an error in either stops both and is raised here."""
        partition_stage, learner = self.stages
        errors: list[tuple[float, BaseException]] = []
        done = threading.Event()
        # With only max_events, the learner stops once it has drained what was written.
        learner_idle_s = until_idle_s if until_idle_s is not None or max_events is None else 1.0

        # A stage that dies of something no ``except Exception`` catches (the process is
        # going down) takes the other with it, without a last commit or snapshot.
        abort = threading.Event()

        def run(stage: StageLoop, **kw: Any) -> None:
            try:
                stage.run(self._stop, abort=abort, **kw)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                errors.append((stage.died_at, e))
                if not isinstance(e, Exception):
                    abort.set()
                self._stop.set()
            finally:
                if stage is partition_stage:
                    done.set()

        threads = [
            threading.Thread(target=run, args=(partition_stage,), name="streamwise-partition-stage",
                             kwargs={"until_idle_s": until_idle_s, "max_events": max_events}),
            threading.Thread(target=run, args=(learner,), name="streamwise-learner",
                             kwargs={"until_idle_s": learner_idle_s, "may_stop_idle": done.is_set}),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise min(errors, key=lambda te: te[0])[1]

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

    def _model_metrics(self) -> dict[str, dict[str, Any]]:
        """Each model's prequential metric; with several partitions, one entry per
        partition replica, named ``model[p]``."""
        seen = self.partitions.all_processors()
        out = {}
        for p, processor in seen.items():
            for m in processor.models:
                name = m.name if len(seen) == 1 else f"{m.name}[{p}]"
                out[name] = {"metric": type(m.metric).__name__, "value": peek(m.metric), "learned": m.n_learned}
        return out

    def summary(self, wall_seconds: float) -> RunSummary:
        c, learner = self.counts, self.learner_counts
        return RunSummary(
            events_in=c.events_in,
            predictions=c.predictions + (learner.predictions if learner else 0),
            dead_letters=dict(c.dead_letters + learner.dead_letters) if learner else dict(c.dead_letters),
            metrics=self._model_metrics(),
            wall_seconds=wall_seconds,
            busy_seconds=c.busy_seconds + (learner.busy_seconds if learner else 0.0),
        )


class StageLoop:
    """One stage's consumer, producer, partition states and checkpoint, and its loop:
    poll → apply rebalance → process → checkpoint."""

    def __init__(
        self,
        kind: str,
        kafka: Any,
        topics: list[str],
        source: Source,
        make_sink: Callable[[], Sink],
        partitions: PartitionStates,
        sensor: Sensor,
        counts: CountingSensor,
        runner: Runner,
    ) -> None:
        self.kind = kind
        self.kafka = kafka
        self.topics = topics
        self.source = source
        self.make_sink = make_sink
        self.partitions = partitions
        self.sensor = sensor
        self.counts = counts
        self.runner = runner
        self._next_report = 0.0
        self.died_at = float("inf")

    def run(
        self,
        stop: threading.Event,
        until_idle_s: float | None = None,
        max_events: int | None = None,
        may_stop_idle: Callable[[], bool] | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        kafka, source, sensor = self.kafka, self.source, self.sensor
        checkpoint = Checkpoint(
            source,
            self.make_sink,
            self.partitions,
            sensor,
            commit_interval_s=kafka.commit_interval_ms / 1000.0,
            commit_in_background=kafka.commit_in_background,
            retry_backoff_max_s=kafka.retry_backoff_max_ms / 1000.0,
            stale_member_after_s=kafka.session_timeout_ms / 1000.0,
        )
        source.subscribe(self.topics, on_assigned=self.partitions.on_assigned, on_revoked=self.partitions.on_revoked)
        last_activity = time.perf_counter()
        poll_size = kafka.max_poll_records
        # A batch slower than this shrinks the next poll: the group must hear from this
        # worker within max.poll.interval.ms, whatever the model costs per event.
        slow_batch_s = kafka.max_poll_interval_ms / 4000.0
        backoff = _Backoff(kafka.retry_backoff_max_ms / 1000.0)
        gave_up: ServiceUnavailableError | None = None
        gc_tuning.acquire()  # see streamwise/gc_tuning.py: ~8 µs of CPU per event
        try:
            while not stop.is_set():
                self._report()
                try:
                    records = source.poll(kafka.poll_timeout_ms, poll_size)
                except ServiceUnavailableError as e:
                    # A restarting broker, a coordinator move, a timeout: the client
                    # reconnects by itself; wait a little and poll again.
                    sensor.on_fault("kafka")
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
                        if self._drained() and (may_stop_idle is None or may_stop_idle()):
                            break
                        # Idle, but not drained, because the state store cannot be
                        # reached: plain `run` waits for it (docs/faults.md), but a run
                        # told to end once idle ends, rather than wait for ever, and
                        # says so (a demo or a test on a down Redis hung before).
                        gave_up = self._store_unreachable(until_idle_s)
                        if gave_up is not None:
                            break
                    continue
                t0 = time.perf_counter()
                outputs, offsets = self.partitions.process(records)
                if checkpoint.add(outputs, offsets) and checkpoint.due():
                    checkpoint.commit(wait=False)
                now = time.perf_counter()
                elapsed = now - t0
                sensor.on_batch(len(records), elapsed)
                if elapsed > slow_batch_s and poll_size > 1:
                    poll_size = max(1, len(records) // 2)
                    log.warning("a batch took %.1f s; polling at most %d records next", elapsed, poll_size)
                elif elapsed < slow_batch_s / 4 and poll_size < kafka.max_poll_records:
                    poll_size = min(kafka.max_poll_records, poll_size * 2)
                last_activity = now
                if max_events is not None and self.counts.events_in >= max_events:
                    break
            if abort is not None and abort.is_set():
                return
            self._report(force=True)
            # Graceful stop: the open work commits, then every partition is snapshotted.
            checkpoint.close()
        except BaseException:
            # Read before the cleanup below runs: of two stages that die, the one that died
            # first is the cause (the other died of its consequence).
            self.died_at = time.monotonic()
            raise
        finally:
            gc_tuning.release()
            source.close()
            checkpoint._close_sink()
        if gave_up is not None:
            # After the graceful stop above: what the ready partitions did is committed.
            self.died_at = time.monotonic()
            raise gave_up

    def _store_unreachable(self, idle_s: float) -> ServiceUnavailableError | None:
        """Why an idle run ends though not drained: partitions held for ``idle_s`` seconds
        or more because the state store cannot be reached (None: it is not that)."""
        held = self.partitions.held_by_store(idle_s)
        if not held:
            return None
        store = self.partitions.store
        where = getattr(store, "where", None)
        down_s = time.monotonic() - (self.partitions.health.down_since or time.monotonic())
        return ServiceUnavailableError(
            f"{f'Redis at {where}' if where else 'the state store'} was unreachable for {down_s:.0f} s"
            f" (--until-idle {idle_s:g} s): partition{'s' if len(held) > 1 else ''} {', '.join(map(str, held))}"
            f"{'' if self.kind == 'pipeline' else f' of the {self.kind} stage'} could not be restored or snapshotted"
        )

    def _drained(self) -> bool:
        """Nothing left to read: every assigned partition ready and at the end of its log.
        A standby learner (no partition assigned) counts as drained."""
        lag = self._lag()
        if lag is None or any(lag.values()) or self.partitions.waiting:
            return False
        return bool(self.partitions.states) or (self.kind == "learn" and not self.source.assignment())

    def _lag(self) -> dict[TopicPartition, int] | None:
        """The lag, or None when the broker does not answer: a report, never a reason to stop."""
        try:
            return self.source.lag()
        except Exception as e:  # noqa: BLE001 - any client error; the loop must go on
            self.sensor.on_fault("lag")
            log.debug("lag not read: %s: %s", type(e).__name__, e)
            return None

    def _report(self, force: bool = False) -> None:
        """Feeds the sensors the figures that are read rather than counted, at most once a
        second: the lag costs a broker round trip."""
        now = time.monotonic()
        if not force and now < self._next_report:
            return
        self._next_report = now + 1.0
        sensor = self.sensor
        sensor.on_report()
        lag = self._lag()
        if lag is not None:  # all assigned partitions each time: a revoked one's lag goes away
            sensor.on_lag(lag, stage=self.kind)
        sensor.on_partitions_waiting(len(self.partitions.waiting), stage=self.kind)
        sensor.on_stage_partitions(self.kind, len(self.partitions.states))
        for partition, processor in self.partitions.processors().items():
            for m in processor.models:
                metric = type(m.metric).__name__
                # The pipeline's metric with River's exact semantics, then the evaluation
                # set (that metric over the rolling window, and any extra ones).
                sensor.on_model_metric(m.name, metric, "cumulative", peek(m.metric), partition)
                evaluation = processor.learners.evaluations.get(m.name)
                for window, values in (evaluation.report() if evaluation else {}).items():
                    for name, value in values.items():
                        if not (window == "cumulative" and name == metric):
                            sensor.on_model_metric(m.name, name, window, value, partition)
                if m.search is not None:
                    est = m.estimator
                    values = dict(zip(est.labels, est.summary()["metrics"], strict=True))
                    sensor.on_search(m.name, metric, values, est.best_label, len(est.running), partition)
                if m.self_training is not None:
                    sensor.on_self_training(m.name, m.self_training.active, partition)
            if processor.champion is None:
                continue
            # The first sighting sets the partition's series; changes are reported by the
            # processor as they happen, and any other (a promoted challenger's name
            # becoming its model's) here.
            if processor.champion != processor.reported_champion:
                sensor.on_champion_change(processor.reported_champion, processor.champion, partition)
                processor.reported_champion = processor.champion


def check_pipeline_builds(config: PipelineConfig) -> PipelineProcessor:
    """Builds what each partition will build (steps, models, scoreboard, rules) once,
    before any service is touched. The config's own checks catch what they know of; this
    catches the rest, so a pipeline that cannot be built stops the start with one line
    naming the model, instead of a traceback after the worker has joined its group.
    Returns what it built, for :func:`dry_run_problems`."""
    try:
        return PipelineProcessor(config)
    except StreamwiseError:
        raise
    except Exception as whole:  # noqa: BLE001 - anything a River or torch constructor raises
        # Which model? Build each alone; a failure none of them has alone is the pipeline's.
        for i, spec in enumerate(config.models):
            try:
                PipelineProcessor(config.model_copy(update={"models": [spec]}))
            except Exception as e:  # noqa: BLE001
                raise ConfigError(
                    f"pipeline {config.name}: models[{i}] ({spec.name}): cannot be built: {type(e).__name__}: {e}"
                ) from None
        raise ConfigError(f"pipeline {config.name}: cannot be built: {type(whole).__name__}: {whole}") from None


def made_up_records(config: PipelineConfig, n: int = 64) -> list[ConsumedRecord]:
    """``n`` events that the schema accepts, with labels (inline, or on the labels topic
    after the events): every feature inside its bounds and categories, values varied so
    that scalers see a spread and classifiers both classes. For :func:`dry_run_problems`.

    Examples
    --------
    >>> from streamwise.pipeline_config import load_pipeline_config
    >>> record = made_up_records(load_pipeline_config("examples/phishing.yaml"), 4)[1]
    >>> record.topic, json.loads(record.value)["https"], json.loads(record.value)["label"]
    ('phishing.events', 0.3333333333333333, False)
    """
    schema = config.event_schema
    now = time.time()
    labels_topic = config.input.labels_topic
    classes = list(schema.classes or [])

    def label(i: int) -> Any:
        if classes:
            return classes[i % len(classes)]
        if schema.label_min is not None or schema.label_max is not None:  # a numeric label's range
            low = schema.label_min if schema.label_min is not None else schema.label_max - 2  # type: ignore[operator]
            high = schema.label_max if schema.label_max is not None else low + 2
            if schema.label_type == "int":
                low, high = math.ceil(low), max(math.ceil(low), math.floor(high))
                return low + i % (high - low + 1)
            return low + (high - low) * (i % 3) / 2
        return {"bool": i % 2 == 0, "int": i % 2, "float": float(i % 3), "category": "ab"[i % 2]}[schema.label_type]

    def feature(spec: Any, i: int) -> Any:
        if spec.categories:
            return spec.categories[i % len(spec.categories)]
        if spec.type in ("float", "int"):
            low = spec.min if spec.min is not None else (spec.max - 3 if spec.max is not None else 0.0)
            high = spec.max if spec.max is not None else low + 3
            if spec.type == "int":
                low, high = math.ceil(low), math.floor(high)
                return low + i % (high - low + 1)
            return low + (high - low) * (i % 4) / 3
        return {"bool": i % 2 == 0, "category": "ab"[i % 2], "text": f"made up {'ab'[i % 2]}"[: spec.string_limit],
                "timestamp": now - n + i}[spec.type]

    events, label_records = [], []
    for i in range(n):
        event: dict[str, Any] = {schema.id: f"made-up-{i}"}
        event.update({name: feature(spec, i) for name, spec in schema.features.items()})
        if schema.key is not None and schema.key not in event:
            event[schema.key] = f"k{i % 2}"
        if schema.event_time is not None:
            event[schema.event_time] = now - n + i
        if schema.label is not None and labels_topic is None:
            event[schema.label] = label(i)
        events.append(ConsumedRecord(config.input.topic, 0, i, None, json.dumps(event).encode(), int(now * 1000)))
        if labels_topic is not None:
            body = {config.labels.id_field or schema.id: event[schema.id], config.labels.label_field: label(i)}
            label_records.append(ConsumedRecord(labels_topic, 0, i, None, json.dumps(body).encode(), int(now * 1000)))
    return events + label_records


def dry_run_problems(config: PipelineConfig, fresh: PipelineProcessor | None = None) -> list[str]:
    """What goes wrong when the pipeline, built afresh (``fresh``, the one
    :func:`check_pipeline_builds` built, else a new one), runs :func:`made_up_records`:
    one line per model that raised predicting or learning (a parameter River takes when
    built and refuses at the first event, such as an ARF's ``max_features: sqr``).
    Touches no service; a forecast, whose events are a series, is not run."""
    if config.forecast is not None:
        return []
    processor = fresh if fresh is not None else PipelineProcessor(config)
    processor.process(made_up_records(config))
    index = {spec.name: i for i, spec in enumerate(config.models)}
    # Which of the two: a model that fails only to learn answers every record as if
    # untrained, with no error in it; one that fails to predict answers its error.
    doing = {(True, False): "predicting", (False, True): "learning", (True, True): "predicting and learning"}
    return [
        f"pipeline {config.name}: models[{index[m.name]}] ({m.name}): raises "
        f"{doing[bool(m.faults[ModelFault.PREDICT.value]), bool(m.faults[ModelFault.LEARN.value])]} "
        "on events made up from the schema: " + " ".join(str(m.last_error).split())
        for m in processor.models
        if m.name in index and (m.faults[ModelFault.PREDICT.value] or m.faults[ModelFault.LEARN.value])
    ]


def _partition_count(admin: Admin, topic: str) -> int:
    # A topic just created may take a moment to show in the metadata.
    deadline = time.monotonic() + 10.0
    while (count := admin.partition_counts([topic]).get(topic)) is None:
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(f"Kafka: topic {topic} did not show in the metadata within 10 s")
        time.sleep(0.1)
    return count


def _ensure_learn_topic(admin: Admin, topic: str) -> None:
    """The learn topic of ``scope: global`` has one partition: that is what makes its
    order the one order the learner learns in. Refuses one made otherwise."""
    admin.ensure_topics([topic], partitions=1)
    count = _partition_count(admin, topic)
    if count != 1:
        raise ConfigError(f"scope: global: the learn topic {topic} has {count} partitions; it must have exactly 1")


def explain_stages(config: PipelineConfig) -> str:
    """Which steps run where, in one line (``streamwise run --explain`` and the start-up log).

    Examples
    --------
    >>> from streamwise.pipeline_config import parse_pipeline_config
    >>> cfg = parse_pipeline_config({"name": "p", "input": {"topic": "in"}, "output": {"topic": "out"},
    ...     "schema": {"id": "id", "key": "card", "event_time": "ts", "label": "y", "features": {"amount": "float"}},
    ...     "cleaners": ["dedup", "impute"], "features": [{"kind": "standard_scale"}],
    ...     "models": [{"name": "lr", "steps": ["linear_model.LogisticRegression"]}]})
    >>> print(explain_stages(cfg))
    partition stage (each input partition): decode, validate, dedup
      -> p.learn (1 partition: the order the learner learns in)
    learner (one per pipeline): impute, standard_scale, models: lr
    """
    route, learn = split_steps(config.cleaners, config.features, config.event_schema)
    first = ", ".join(["decode", "validate", *(s.kind for s in route)])
    second = ", ".join([*(s.kind for s in learn), "models: " + " ".join(m.name for m in config.models)])
    return (
        f"partition stage (each input partition): {first}\n"
        f"  -> {config.learn_topic} (1 partition: the order the learner learns in)\n"
        f"learner (one per pipeline): {second}"
    )


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
