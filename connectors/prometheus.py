"""Prometheus metrics of a running pipeline: a :class:`~streamwise.core.sensors.Sensor` that
records into a prometheus-client registry, the ``/metrics`` HTTP endpoint that serves it,
and a small reader of that endpoint for ``streamwise top`` and the Grafana Live push.

Names follow Prometheus' conventions: a ``streamwise_`` prefix, base units (seconds,
bytes), ``_total`` on counters, histograms rather than summaries for latencies. Labels
stay bounded: ``pipeline``, ``model``, ``topic``, ``partition``, ``stage``, ``action``,
``metric``, ``window`` and ``device`` take values from the pipeline config or fixed
lists, never a record key or an event id.

Series whose label values are known up front (each model, each cleaner action, each
dead-letter stage of the input topic) are created at zero when the sensor starts, so
that dashboards show 0 rather than "No data" and ``rate()`` sees the first increment.
"""

from __future__ import annotations

import base64
import bisect
import hmac
import http.client
import math
import platform
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from streamwise.core.errors import ServiceUnavailableError
from streamwise.core.sensors import CLEANER_ACTIONS, FAULT_KINDS, LABEL_MISS_OUTCOMES, Sensor
from streamwise.core.stages import DeadLetterStage, ModelFault

# Event-to-prediction latency: a poll batch is a few milliseconds to a few hundred,
# and a consumer catching up on a backlog sees seconds to minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Up to KafkaSettings.max_poll_records (5000 by default) and a little beyond.
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SNAPSHOT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Labels arrive with the event or minutes, hours, days later.
LABEL_DELAY_BUCKETS = (0.0, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)

_DISTRIBUTIONS = ("streamwise", "river", "kafka-python", "prometheus-client", "torch")


def build_versions() -> dict[str, str]:
    """Versions of streamwise and the libraries that decide its behaviour, read without
    importing them (importing torch to learn its version would cost seconds)."""
    out = {"python": platform.python_version()}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = "none"
    return out


class _SnapshotAge:
    """Seconds of learning not yet in a snapshot, computed when scraped: since the newest
    snapshot, or since the sensor started when there is none (all of it is at risk)."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.since = time.time()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "streamwise_snapshot_age_seconds",
            "Seconds since the newest snapshot was written (since start when there is none).",
            labels=["pipeline"],
        )
        g.add_metric([self.pipeline], max(0.0, time.time() - self.since))
        yield g


class _PollHistogram:
    """A one-series histogram that takes a whole poll's observations in one call.

    prometheus-client's ``Histogram.observe`` walks the buckets in Python and takes a
    lock for every value; this counts a poll's values with ``bisect`` and takes the
    lock once. It exposes the same samples (``_bucket``, ``_count``, ``_sum``).
    """

    def __init__(self, name: str, documentation: str, pipeline: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.pipeline = pipeline
        self.bounds = [*buckets, math.inf]
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Sequence[float]) -> None:
        bounds = self.bounds
        counts = [0] * len(bounds)
        for v in values:
            counts[bisect.bisect_left(bounds, v)] += 1
        total = math.fsum(values)
        with self._lock:
            self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
            self.total += total

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self.counts), self.total
        cumulative, buckets = 0, []
        for bound, n in zip(self.bounds, counts, strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), float(cumulative)))
        family = HistogramMetricFamily(self.name, self.documentation, labels=["pipeline"])
        family.add_metric([self.pipeline], buckets, sum_value=total)
        yield family


class PrometheusSensor(Sensor):
    """Records every sensor hook into its own :class:`CollectorRegistry`.

    Examples
    --------
    >>> s = PrometheusSensor("fraud", models=["logreg"], topic="fraud.events")
    >>> s.on_event_in("fraud.events", 0); s.on_prediction(0.004); s.on_drift("logreg", "ADWIN")
    >>> s.value("streamwise_events_consumed_total", topic="fraud.events", partition="0")
    1.0
    >>> s.value("streamwise_drift_detections_total", model="logreg")
    1.0
    >>> s.value("streamwise_event_to_prediction_latency_seconds_count")
    1.0

    Each partition has its own champion and counts its own changes:

    >>> s.on_champion_change(None, "logreg", 0); s.on_champion_change(None, "logreg", 1)
    >>> s.on_champion_change("logreg", "logreg.challenger1", 1)
    >>> [s.value("streamwise_champion_changes_total", partition=p) for p in ("0", "1")]
    [0.0, 1.0]
    """

    def __init__(
        self,
        pipeline: str,
        models: Sequence[str] = (),
        topic: str | None = None,
        registry: CollectorRegistry | None = None,
        rules: Mapping[str, str] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        p = ["pipeline"]
        self.consumed = Counter("streamwise_events_consumed_total", "Records polled from the input topics.", p + ["topic", "partition"], registry=r)
        self.valid = Counter("streamwise_events_valid_total", "Records that decoded and passed validation.", p + ["topic", "partition"], registry=r)
        self.dead_lettered = Counter("streamwise_events_dead_lettered_total", "Records sent to the dead-letter topic, by the stage that rejected them.", p + ["topic", "stage"], registry=r)
        self.predictions = Counter("streamwise_predictions_total", "Prediction records produced.", p, registry=r)
        self.learned = Counter("streamwise_model_learned_total", "Labelled events a model learned from.", p + ["model"], registry=r)
        self.commits = Counter("streamwise_commits_total", "Batches whose outputs and offsets were committed.", p, registry=r)
        self.batch_size = Histogram("streamwise_batch_size_records", "Records per poll batch.", p, buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("streamwise_batch_duration_seconds", "Time to process and commit one batch.", p, buckets=LATENCY_BUCKETS, registry=r)
        # Observed a poll at a time (see _PollHistogram), registered below.
        self.latency = _PollHistogram("streamwise_event_to_prediction_latency_seconds", "From the input record's timestamp to its prediction.", pipeline, LATENCY_BUCKETS)
        self.lag = Gauge("streamwise_consumer_lag_records", "Records between the consumer's position and the end of the partition.", p + ["topic", "partition"], registry=r)
        self.model_metric = Gauge("streamwise_model_metric", "Prequential (test-then-train) metric of a model.", p + ["model", "partition", "metric", "window"], registry=r)
        self.model_faults = Counter("streamwise_model_faults_total", "Events a model failed on (raised, or answered NaN or infinity), by kind; the other models were not affected.", p + ["model", "kind"], registry=r)
        self.drifts = Counter("streamwise_drift_detections_total", "Drifts flagged by a model's detector.", p + ["model"], registry=r)
        self.champion = Gauge("streamwise_model_champion", "1 for the model whose prediction a partition's records carry, else 0.", p + ["model", "partition"], registry=r)
        self.champion_changes = Counter("streamwise_champion_changes_total", "Times a partition's champion model changed.", p + ["partition"], registry=r)
        self.search_metric = Gauge("streamwise_search_candidate_metric", "Prequential metric of each candidate of a searched model, labelled by its parameters.", p + ["model", "partition", "metric", "candidate"], registry=r)
        self.search_best = Gauge("streamwise_search_best", "1 for the candidate whose prediction a searched model gives, else 0.", p + ["model", "partition", "candidate"], registry=r)
        self.search_running = Gauge("streamwise_search_running_candidates", "Candidates of a searched model still learning (halving drops losers).", p + ["model", "partition"], registry=r)
        self.pseudo_labels = Counter("streamwise_self_training_pseudo_labels_total", "Unlabelled events a model learned from its own confident prediction; never among streamwise_model_learned_total.", p + ["model"], registry=r)
        self.self_training = Gauge("streamwise_self_training_active", "1 while a model's self-training is on, 0 once its guard switched it off.", p + ["model", "partition"], registry=r)
        self.label_delay = Histogram("streamwise_label_delay_seconds", "From an event's arrival to its label's.", p, buckets=LABEL_DELAY_BUCKETS, registry=r)
        self.pending_labels = Gauge("streamwise_pending_labels", "Events waiting for their label.", p, registry=r)
        self.label_misses = Counter("streamwise_label_join_misses_total", "Delayed labels and events the join did not learn, by outcome.", p + ["outcome"], registry=r)
        self.torch_step = Histogram("streamwise_torch_step_duration_seconds", "One optimiser step of a torch learner.", p + ["model", "device"], buckets=STEP_BUCKETS, registry=r)
        self.torch_rows = Counter("streamwise_torch_trained_rows_total", "Rows a torch learner trained on.", p + ["model", "device"], registry=r)
        self.torch_device = Gauge("streamwise_torch_device_info", "1 for the device a torch learner runs on.", p + ["model", "device"], registry=r)
        self.snapshot_seconds = Histogram("streamwise_snapshot_duration_seconds", "Time to write one snapshot.", p, buckets=SNAPSHOT_BUCKETS, registry=r)
        self.snapshot_bytes = Gauge("streamwise_snapshot_size_bytes", "Size of the newest snapshot.", p + ["partition"], registry=r)
        self.snapshot_last = Gauge("streamwise_snapshot_last_success_timestamp_seconds", "Unix time of the newest snapshot.", p + ["partition"], registry=r)
        self.snapshot_failures = Counter("streamwise_snapshot_failures_total", "Snapshots that could not be written.", p, registry=r)
        self.snapshot_missing = Counter(
            "streamwise_snapshot_missing_total",
            "Restores that found no snapshot where Kafka's committed offsets say one existed (the store lost data).",
            p + ["action"],
            registry=r,
        )
        self.faults = Counter("streamwise_faults_total", "Faults the worker survived, by kind.", p + ["kind"], registry=r)
        self.partitions_waiting = Gauge(
            "streamwise_partitions_waiting",
            "Partitions assigned to this worker but held: state not restorable yet, fenced, or refused.",
            p,
            registry=r,
        )
        self.stage_partitions = Gauge(
            "streamwise_stage_partitions",
            "Partitions whose state a stage holds on this worker (scope: global: learn = 1 on the worker "
            "that runs the learner, 0 on standbys).",
            p + ["stage"],
            registry=r,
        )
        self.cleaned = Counter("streamwise_cleaner_events_total", "What the cleaners did to events.", p + ["action"], registry=r)
        self.rule_fired = Counter(
            "streamwise_rule_fired_total",
            "Events on which a business rule's condition held, by rule and the rule's outcome (refuse, review, approve, override).",
            p + ["rule", "outcome"], registry=r)
        self.rule_decided = Counter(
            "streamwise_rule_decisions_total",
            "Records whose decision (or prediction override) a business rule gave: the most severe rule that fired.",
            p + ["rule", "decision"], registry=r)
        self.build = Info("streamwise_build", "Versions of streamwise and its main libraries.", p, registry=r)
        # Progress, for the stall alert (streamwise/alerts.py): when a batch was last
        # committed, and when the loop last came round to report (about once a second
        # while it turns, busy or idle). Both start at the sensor's start.
        self.last_progress = Gauge(
            "streamwise_last_progress_timestamp_seconds",
            "Unix time of the last committed batch (of the start, before any).", p, registry=r)
        self.last_report = Gauge(
            "streamwise_last_report_timestamp_seconds",
            "Unix time the worker's loop last reported (about once a second); stops while a batch is stuck.",
            p, registry=r)
        self._snapshot_age = _SnapshotAge(pipeline)
        r.register(self._snapshot_age)
        r.register(self.latency)

        self.build.labels(pipeline).info(build_versions())
        self._predictions = self.predictions.labels(pipeline)
        self._commits = self.commits.labels(pipeline)
        self._last_progress = self.last_progress.labels(pipeline)
        self._last_report = self.last_report.labels(pipeline)
        self._last_progress.set_to_current_time()
        self._last_report.set_to_current_time()
        self._batch_size = self.batch_size.labels(pipeline)
        self._batch_seconds = self.batch_seconds.labels(pipeline)
        self._pending = self.pending_labels.labels(pipeline)
        self._label_delay = self.label_delay.labels(pipeline)
        self._snapshot_seconds = self.snapshot_seconds.labels(pipeline)
        self._snapshot_failures = self.snapshot_failures.labels(pipeline)
        self._faults = {k: self.faults.labels(pipeline, k) for k in FAULT_KINDS}
        # Every outcome from the start, at 0: a first miss is then an increase, not a new series.
        self._label_misses = {k: self.label_misses.labels(pipeline, k) for k in LABEL_MISS_OUTCOMES}
        self._waiting = self.partitions_waiting.labels(pipeline)
        self._cleaned = {a: self.cleaned.labels(pipeline, a) for a in CLEANER_ACTIONS}
        self._learned = {m: self.learned.labels(pipeline, m) for m in models}
        self._models = list(models)
        for m in models:
            self.drifts.labels(pipeline, m)
            for kind in ModelFault:
                self.model_faults.labels(pipeline, m, kind.value)
        # Every rule's series exist from the start, at zero, so that rate() sees its first firing.
        for rule, outcome in (rules or {}).items():
            self.rule_fired.labels(pipeline, rule, outcome)
            self.rule_decided.labels(pipeline, rule, outcome)
        if topic is not None:
            for stage in DeadLetterStage:
                self.dead_lettered.labels(pipeline, topic, stage)
        # Per-event hooks look their child up here instead of through .labels().
        self._consumed: dict[tuple[str, int], Any] = {}
        self._valid: dict[tuple[str, int], Any] = {}
        self._lag_seen: dict[str, set[tuple[str, int]]] = {}
        self._waiting_by_stage: dict[str, int] = {}

    def value(self, name: str, **labels: str) -> float | None:
        """The current value of one sample, ``pipeline`` label implied (for tests and ``top``)."""
        return self.registry.get_sample_value(name, {"pipeline": self.pipeline, **labels})

    # ---- the event path ----
    def on_batch(self, n_records: int, seconds: float) -> None:
        self._batch_size.observe(n_records)
        self._batch_seconds.observe(seconds)

    def on_event_in(self, topic: str, partition: int) -> None:
        self.on_events_in(topic, partition, 1)

    def on_event_valid(self, topic: str, partition: int) -> None:
        self.on_events_valid(topic, partition, 1)

    def on_dead_letter(self, topic: str, stage: str) -> None:
        self.dead_lettered.labels(self.pipeline, topic, stage).inc()

    def on_prediction(self, latency_s: float | None) -> None:
        self.on_predictions([latency_s])

    # The processor reports once per poll: one increment per series instead of one per event.
    def on_events_in(self, topic: str, partition: int, n: int) -> None:
        child = self._consumed.get((topic, partition))
        if child is None:
            child = self._consumed[topic, partition] = self.consumed.labels(self.pipeline, topic, str(partition))
        child.inc(n)

    def on_events_valid(self, topic: str, partition: int, n: int) -> None:
        child = self._valid.get((topic, partition))
        if child is None:
            child = self._valid[topic, partition] = self.valid.labels(self.pipeline, topic, str(partition))
        child.inc(n)

    def on_predictions(self, latencies_s: Sequence[float | None]) -> None:
        if latencies_s:
            self._predictions.inc(len(latencies_s))
            if None in latencies_s:  # records without a timestamp: counted, not timed
                latencies_s = [v for v in latencies_s if v is not None]
            self.latency.observe_many(latencies_s)  # type: ignore[arg-type]

    def on_learn(self, model: str, n: int = 1) -> None:
        child = self._learned.get(model)
        if child is None:
            child = self._learned[model] = self.learned.labels(self.pipeline, model)
        child.inc(n)

    def on_commit(self, n_partitions: int) -> None:
        self._commits.inc()
        self._last_progress.set_to_current_time()

    def on_report(self) -> None:
        self._last_report.set_to_current_time()

    def on_lag(self, lag: Mapping[tuple[str, int], int], stage: str = "pipeline") -> None:
        # A partition given away in a rebalance must stop reporting its last lag; each
        # stage reports its own topics.
        for topic, partition in self._lag_seen.get(stage, set()) - set(lag):
            self.lag.remove(self.pipeline, topic, str(partition))
        for (topic, partition), n in lag.items():
            self.lag.labels(self.pipeline, topic, str(partition)).set(n)
        self._lag_seen[stage] = set(lag)

    def on_stage_partitions(self, stage: str, n: int) -> None:
        self.stage_partitions.labels(self.pipeline, stage).set(n)

    # ---- models ----
    def on_model_metric(
        self, model: str, metric: str, window: str, value: float, partition: int | None = None
    ) -> None:
        part = "" if partition is None else str(partition)
        self.model_metric.labels(self.pipeline, model, part, metric, window).set(value)

    def on_model_fault(self, model: str, kind: str, n: int = 1) -> None:
        self.model_faults.labels(self.pipeline, model, kind).inc(n)

    def on_search(
        self, model: str, metric: str, candidates: Mapping[str, float | None], best: str, running: int,
        partition: int | None = None,
    ) -> None:
        part = "" if partition is None else str(partition)
        for label, value in candidates.items():
            if value is not None:
                self.search_metric.labels(self.pipeline, model, part, metric, label).set(value)
            self.search_best.labels(self.pipeline, model, part, label).set(1.0 if label == best else 0.0)
        self.search_running.labels(self.pipeline, model, part).set(running)

    def on_pseudo_labels(self, model: str, n: int) -> None:
        self.pseudo_labels.labels(self.pipeline, model).inc(n)

    def on_self_training(self, model: str, active: bool, partition: int | None = None) -> None:
        part = "" if partition is None else str(partition)
        self.self_training.labels(self.pipeline, model, part).set(1.0 if active else 0.0)

    def on_drift(self, model: str, detector: str) -> None:
        # No detector label: one series per model, created at zero, keeps rate() honest.
        self.drifts.labels(self.pipeline, model).inc()

    def on_champion_change(self, previous: str | None, champion: str, partition: int | None = None) -> None:
        part = "" if partition is None else str(partition)
        changes = self.champion_changes.labels(self.pipeline, part)
        if previous is None:
            # A partition's series appear when it is first reported (partitions are not
            # known at start): every model at 0, and the counter at 0 so that rate()
            # sees its first change.
            for m in self._models:
                self.champion.labels(self.pipeline, m, part).set(0)
        else:
            self.champion.labels(self.pipeline, previous, part).set(0)
            changes.inc()
        self.champion.labels(self.pipeline, champion, part).set(1)

    def on_label(self, delay_s: float) -> None:
        self._label_delay.observe(delay_s)

    def on_pending_labels(self, n: int) -> None:
        self._pending.set(n)

    def on_label_misses(self, misses: Mapping[str, int]) -> None:
        for outcome, n in misses.items():
            self._label_misses[outcome].inc(n)

    def on_torch_step(self, model: str, seconds: float, batch_size: int, device: str) -> None:
        self.torch_step.labels(self.pipeline, model, device).observe(seconds)
        self.torch_rows.labels(self.pipeline, model, device).inc(batch_size)
        self.torch_device.labels(self.pipeline, model, device).set(1)

    # ---- business rules ----
    def on_rule_fired(self, rule: str, outcome: str, n: int = 1) -> None:
        self.rule_fired.labels(self.pipeline, rule, outcome).inc(n)

    def on_rule_decided(self, rule: str, decision: str, n: int = 1) -> None:
        self.rule_decided.labels(self.pipeline, rule, decision).inc(n)

    # ---- state ----
    def on_snapshot(self, partition: int, size_bytes: int, seconds: float) -> None:
        now = time.time()
        self._snapshot_seconds.observe(seconds)
        self.snapshot_bytes.labels(self.pipeline, str(partition)).set(size_bytes)
        self.snapshot_last.labels(self.pipeline, str(partition)).set(now)
        self._snapshot_age.since = now

    def on_snapshot_failure(self, partition: int, reason: str) -> None:
        self._snapshot_failures.inc()

    def on_snapshot_missing(self, partition: int, action: str) -> None:
        self.snapshot_missing.labels(self.pipeline, action).inc()

    # ---- faults ----
    def on_fault(self, kind: str) -> None:
        self._faults[kind].inc()

    def on_partitions_waiting(self, n: int, stage: str = "pipeline") -> None:
        self._waiting_by_stage[stage] = n
        self._waiting.set(sum(self._waiting_by_stage.values()))

    # ---- cleaners ----
    def on_clean(self, action: str, n: int = 1) -> None:
        child = self._cleaned.get(action)
        if child is None:
            child = self._cleaned[action] = self.cleaned.labels(self.pipeline, action)
        child.inc(n)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # one line per scrape would drown the service's own log


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _with_basic_auth(app: Any, username: str, password: str) -> Any:
    """``app`` behind HTTP basic auth (RFC 7617): 401 without the right credentials."""
    expected = ("Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()).encode()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        # Constant time: how much of a guess matched must not show in the timing.
        if not hmac.compare_digest(given, expected):
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="streamwise metrics"'), ("Content-Type", "text/plain")],
            )
            return [b"401 Unauthorized\n"]
        return app(environ, start_response)

    return guarded


class MetricsServer:
    """``/metrics`` for one registry on ``host:port`` (port 0 picks a free one), served
    from a daemon thread until :meth:`close`; over HTTPS when given a certificate and
    key, behind basic auth when given credentials (Prometheus' ``tls_config`` and
    ``basic_auth`` scrape settings)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        app = make_wsgi_app(registry)
        if basic_auth is not None:
            app = _with_basic_auth(app, *basic_auth)
        server_class = type(
            "_Server", (_ThreadingServer,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET}
        )
        try:
            self._httpd = make_server(host, port, app, server_class, handler_class=_QuietHandler)
            if tls_cert_file is not None:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(certfile=tls_cert_file, keyfile=tls_key_file)
                self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        except (OSError, ssl.SSLError) as e:
            raise ServiceUnavailableError(f"metrics: cannot listen on {host}:{port}: {e}") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="streamwise-metrics", daemon=True)
        self._thread.start()
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self.scheme = "https" if tls_cert_file is not None else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@dataclass
class Scrape:
    """One read of a ``/metrics`` page: every sample, by name, as (labels, value)."""

    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, at: float | None = None) -> Scrape:
        """
        Examples
        --------
        >>> s = Scrape.parse('# TYPE x_total counter\\nx_total{pipeline="p",model="a"} 3.0\\n')
        >>> s.sum("x_total", pipeline="p"), s.by("x_total", "model")
        (3.0, {'a': 3.0})
        """
        out = cls(time.time() if at is None else at)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return out

    def select(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(ls, v) for ls, v in self.samples.get(name, []) if all(ls.get(k) == w for k, w in labels.items())]

    def sum(self, name: str, **labels: str) -> float:
        return math.fsum(v for _, v in self.select(name, **labels))

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for ls, v in self.select(name, **labels):
            out[ls.get(label, "")] = out.get(ls.get(label, ""), 0.0) + v
        return out

    def quantile(self, q: float, name: str, **labels: str) -> float:
        """``histogram_quantile`` over the cumulative buckets ``name``_bucket, as Prometheus
        interpolates it; NaN with no observations."""
        buckets: dict[float, float] = {}
        for ls, v in self.select(f"{name}_bucket", **labels):
            le = float(ls["le"])
            buckets[le] = buckets.get(le, 0.0) + v
        return bucket_quantile(q, sorted(buckets.items()))


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` on sorted (upper bound, cumulative count) pairs.

    Examples
    --------
    >>> bucket_quantile(0.5, [(1.0, 0.0), (3.0, 10.0), (float("inf"), 10.0)])
    2.0
    """
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below) if count > below else upper
        lower, below = upper, count
    return lower


def scrape(
    url: str, timeout_s: float = 5.0, auth: tuple[str, str] | None = None, cafile: str | None = None
) -> Scrape:
    """Reads a ``/metrics`` page over HTTP(S), with basic auth when given ``auth``; an
    https URL is checked against ``cafile`` (else the system's CA store)."""
    try:
        request = urllib.request.Request(url)
        if auth is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        context = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as resp:
            body = resp.read()
    # Besides OSError (refused, timed out, an HTTP error status, a CA file that cannot be
    # read), urllib refuses a URL it cannot use with ValueError ("unknown url type") and
    # http.client with InvalidURL (a port that is not a number).
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise ServiceUnavailableError(f"metrics: cannot read {url}: {e}") from None
    try:
        return Scrape.parse(body.decode("utf-8"))
    except ValueError:
        # Something answered, but not with the text format: a web page, another
        # service's port, the URL without its /metrics path.
        start = body[:60].decode("utf-8", "replace").split("\n", 1)[0].strip()
        raise ServiceUnavailableError(f"metrics: {url} did not answer with Prometheus metrics: it starts with {start!r}") from None
