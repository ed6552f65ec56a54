"""Injected trouble makes the real Prometheus from dev/up fire the matching alerts.

dev/up's Prometheus evaluates deploy/prometheus/alerts-fast.yml (the rules of
streamwise/alerts.py with windows of seconds). A pipeline runs in this process with its
/metrics scraped every second, and goes through four phases:

1. healthy traffic: none of the rules below fires for it;
2. a burst of malformed records: ``StreamwiseDeadLetterRateHigh``;
3. a model made slow (every batch sleeps) while events keep coming faster than it
   can take them: ``StreamwiseConsumerLagGrowing``;
4. the model hangs (a batch never returns): ``StreamwiseWorkerStalled``.

A second test stops a worker process with SIGSTOP: it can no longer be scraped, and
``StreamwiseTargetDown`` fires. Each alert is read back from Prometheus' own
``/api/v1/alerts``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from promsupport import LOGREG, free_port, one_feature_pipeline, prom_get, running_in_thread, scraped, wait_for
from streamwise.core.settings import MetricsSettings
from support import consume, produce

from streamwise.processor import PipelineProcessor
from streamwise.runner import Runner

MALFORMED = [b"not json", b"\xff\xfe", b'{"id": "bad", "x": "high"}', b"[1, 2]"]
WATCHED = ("StreamwiseDeadLetterRateHigh", "StreamwiseConsumerLagGrowing", "StreamwiseWorkerStalled")


class Trouble:
    """What the test does to the model: a sleep before every batch, or a hang until released."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.running = threading.Event()
        self.running.set()

    def wrap(self, process: Any) -> Any:
        def slowed(processor: PipelineProcessor, records: Any) -> Any:
            self.running.wait(timeout=120)
            time.sleep(self.delay_s)
            return process(processor, records)

        return slowed


@pytest.fixture
def trouble(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trouble]:
    t = Trouble()
    monkeypatch.setattr(PipelineProcessor, "process", t.wrap(PipelineProcessor.process))
    yield t
    t.delay_s = 0.0
    t.running.set()


def _events(start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(str(i).encode(), json.dumps({"id": i, "x": (i % 97) / 97, "label": i % 97 > 48}).encode())
            for i in range(start, start + n)]


class Producer(threading.Thread):
    """Keeps producing ``rate`` events a second until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float, start_id: int) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, rate, start_id)
        self.stopped = threading.Event()

    def run(self) -> None:
        bootstrap, topic, rate, i = self.args
        while not self.stopped.is_set():
            produce(bootstrap, topic, _events(i, int(rate / 4)))
            i += int(rate / 4)
            self.stopped.wait(0.25)


def _alerts(prom: str, pipeline: str, state: str = "firing") -> dict[str, dict[str, Any]]:
    return {a["labels"]["alertname"]: a for a in prom_get(prom, "/api/v1/alerts")["alerts"]
            if a["labels"].get("pipeline") == pipeline and a["state"] == state}


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_trouble_fires_the_matching_alerts_in_the_real_prometheus(services, settings, bootstrap, unique, trouble):
    cfg = one_feature_pipeline(unique, [LOGREG])
    # Small batches, so that a slow model shows as a lag that grows steadily.
    settings.kafka = settings.kafka.model_copy(update={"max_poll_records": 20})
    settings.snapshot = settings.snapshot.model_copy(update={"every_seconds": 5.0})
    port = free_port()
    settings.metrics = MetricsSettings(host="127.0.0.1", port=port)
    runner = Runner(cfg, settings)
    producer = Producer(bootstrap, cfg.input.topic, rate=400, start_id=10_000)
    with running_in_thread(runner), scraped(services, cfg.name, port) as prom:
        try:
            # 1. Healthy: every event predicted, nothing fires.
            produce(bootstrap, cfg.input.topic, _events(0, 300))
            assert len(consume(bootstrap, cfg.output.topic, 300)) == 300
            time.sleep(4)
            active = set(_alerts(prom, cfg.name)) | set(_alerts(prom, cfg.name, "pending"))
            assert not set(WATCHED) & active, active

            # 2. A third of a burst is malformed.
            produce(bootstrap, cfg.input.topic, [(None, MALFORMED[i % 4]) for i in range(100)] + _events(300, 200))
            dead = wait_for(lambda: _alerts(prom, cfg.name).get("StreamwiseDeadLetterRateHigh"), 30, "dead letters")
            assert float(dead["value"]) > 0.05 and dead["labels"]["severity"] == "warning"
            assert "StreamwiseConsumerLagGrowing" not in _alerts(prom, cfg.name)

            # 3. The model takes 0.2 s a batch of 20 (100 events/s) while 400 a second arrive.
            trouble.delay_s = 0.2
            producer.start()
            lag = wait_for(lambda: _alerts(prom, cfg.name).get("StreamwiseConsumerLagGrowing"), 45, "a growing lag")
            assert lag["labels"]["topic"] == cfg.input.topic and float(lag["value"]) > 50
            assert "StreamwiseWorkerStalled" not in _alerts(prom, cfg.name)  # slow, but committing

            # 4. The model hangs: no batch returns.
            trouble.running.clear()
            stalled = wait_for(lambda: _alerts(prom, cfg.name).get("StreamwiseWorkerStalled"), 45, "a stalled worker")
            assert stalled["labels"]["instance"] == f"127.0.0.1:{port}" and stalled["labels"]["severity"] == "critical"
            assert float(stalled["value"]) > 8
        finally:
            producer.stopped.set()
            trouble.delay_s = 0.0
            trouble.running.set()


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_a_stopped_worker_fires_target_down(services, bootstrap, unique, tmp_path):
    cfg = one_feature_pipeline(unique, [LOGREG])
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True, exclude_none=True)))
    port = free_port()
    env = {**os.environ, "STREAMWISE_METRICS__HOST": "127.0.0.1", "STREAMWISE_METRICS__PORT": str(port)}
    worker = subprocess.Popen([sys.executable, "-m", "streamwise", "run", "--config", str(config)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/metrics"), 60, "the worker's /metrics")
        with scraped(services, cfg.name, port) as prom:
            produce(bootstrap, cfg.input.topic, _events(0, 100))
            assert len(consume(bootstrap, cfg.output.topic, 100)) == 100
            assert "StreamwiseTargetDown" not in _target_alerts(prom, cfg.name)
            worker.send_signal(signal.SIGSTOP)
            down = wait_for(lambda: _target_alerts(prom, cfg.name).get("StreamwiseTargetDown"), 30, "target down")
            assert down["labels"]["instance"] == f"127.0.0.1:{port}" and down["labels"]["severity"] == "critical"
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        worker.wait(30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _target_alerts(prom: str, name: str) -> dict[str, dict[str, Any]]:
    """Firing alerts about the scrape target this test registered (``up`` has no pipeline
    label, only the target's own)."""
    return {a["labels"]["alertname"]: a for a in prom_get(prom, "/api/v1/alerts")["alerts"]
            if a["labels"].get("test") == name and a["state"] == "firing"}
