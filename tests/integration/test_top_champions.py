"""Per-partition champions and several evaluation metrics, on the real broker and Prometheus.

One worker owns two input partitions whose streams favour different models: in
partition 0 the label is a threshold on ``x`` (the logistic regression learns it, the
prior cannot), in partition 1 it ignores ``x`` and is True 90 % of the time (nothing
beats the prior). So partition 0's champion moves from ``prior`` to ``logreg`` once and
partition 1's never does. ``streamwise top`` must show every metric under its own name
and the champion of each partition, and the champion-change counter must count that one
change and then stay still.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

import pytest
from kafka import KafkaProducer
from promsupport import LOGREG, free_port, one_feature_pipeline, prom_scalar, running_in_thread, scraped, wait_for
from streamwise.connectors import make_admin
from streamwise.connectors.prometheus import Scrape, scrape
from streamwise.core.settings import MetricsSettings
from streamwise.models.evaluation import BINARY
from support import consume, consume_to_end, values
from typer.testing import CliRunner

from streamwise.cli import app
from streamwise.pipeline_config import PipelineConfig
from streamwise.runner import Runner

EVENTS_PER_PARTITION = 600
# partition -> the model that must end as its champion
EXPECTED_CHAMPION = {0: "logreg", 1: "prior"}


def two_stream_pipeline(prefix: str) -> PipelineConfig:
    return one_feature_pipeline(
        prefix,
        [{"name": "prior", "steps": ["dummy.PriorClassifier"]}, LOGREG],
        evaluation={"window": 200, "metrics": "standard"},
        # Hysteresis short enough for 600 events, still well above noise.
        champion={"min_samples": 100, "patience": 20, "margin": 0.05},
        # Each partition has its own champion: two streams, two replicas.
        scope="partition",
    )


def _events(partition: int, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = rng.random()
        label = x > 0.5 if partition == 0 else rng.random() < 0.9
        out.append({"id": f"p{partition}-{i}", "x": x, "label": label})
    return out


def _produce_to_partitions(bootstrap: str, topic: str, by_partition: dict[int, list[dict[str, Any]]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for p, events in by_partition.items():
        for e in events:
            producer.send(topic, key=e["id"].encode(), value=json.dumps(e).encode(), partition=p)
    producer.flush()
    producer.close()


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("│┃").split("│")]


def _model_rows(output: str, pipeline: str) -> list[list[str]]:
    """The body rows of top's models table (pipeline, model, metric, cumulative, rolling,
    learned, champion)."""
    rows = [_cells(line) for line in output.splitlines() if "│" in line]
    return [r for r in rows if len(r) == 7 and r[0] == pipeline]


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_top_shows_every_metric_and_each_partitions_champion_and_changes_are_counted_once(
    services, settings, bootstrap, unique
):
    cfg = two_stream_pipeline(unique)
    admin = make_admin(settings.kafka)
    admin.ensure_topics([cfg.input.topic], partitions=2)
    admin.close()
    port = free_port()
    settings.metrics = MetricsSettings(host="127.0.0.1", port=port)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    runner = Runner(cfg, settings)
    with running_in_thread(runner), scraped(services, cfg.name, port) as prom:
        _produce_to_partitions(bootstrap, cfg.input.topic, {p: _events(p, EVENTS_PER_PARTITION, 7 + p) for p in (0, 1)})
        assert len(consume(bootstrap, cfg.output.topic, 2 * EVENTS_PER_PARTITION)) == 2 * EVENTS_PER_PARTITION
        # Metrics and champions are reported once a second, lag included.
        wait_for(lambda: (s := scrape(metrics_url)).sum("streamwise_consumer_lag_records") == 0
                 and s.sum("streamwise_model_learned_total") == 4 * EVENTS_PER_PARTITION, 15, "the pipeline to go idle")
        time.sleep(1.5)

        # ---- the champion of each partition, and the changes that really happened ----
        alerts = values(consume_to_end(bootstrap, cfg.alerts_topic))
        changes = {p: [a for a in alerts if a["type"] == "champion" and a["partition"] == p] for p in (0, 1)}
        assert [(a["previous"], a["champion"]) for a in changes[0]] == [("prior", "logreg")], changes[0]
        assert changes[1] == []
        before = scrape(metrics_url)
        for p, champion in EXPECTED_CHAMPION.items():
            for model in ("prior", "logreg"):
                got = before.select("streamwise_model_champion", model=model, partition=str(p))
                assert [v for _, v in got] == [1.0 if model == champion else 0.0], (p, model, got)
            assert before.sum("streamwise_champion_changes_total", partition=str(p)) == len(changes[p])
        # Nothing changes any more: several report cycles later the counter has not moved,
        # in /metrics nor in what Prometheus scraped over that time.
        time.sleep(3.0)
        after = scrape(metrics_url)
        for p in (0, 1):
            assert after.sum("streamwise_champion_changes_total", partition=str(p)) == len(changes[p])
            sel = f'{{pipeline="{cfg.name}", partition="{p}"}}'
            counted = f"streamwise_champion_changes_total{sel}"
            wait_for(lambda counted=counted, p=p: prom_scalar(prom, counted) == len(changes[p]), 10, "a scrape")
            assert prom_scalar(prom, f"increase(streamwise_champion_changes_total{sel}[3s])") == 0.0
            champion = EXPECTED_CHAMPION[p]
            holder = f'streamwise_model_champion{{pipeline="{cfg.name}", partition="{p}", model="{champion}"}}'
            assert prom_scalar(prom, holder) == 1.0

        # ---- top: one row per (model replica, metric), each under its own name ----
        result = CliRunner().invoke(app, ["top", "--url", metrics_url, "--once", "--interval", "0.2"])
        assert result.exit_code == 0, result.output
        truth = scrape(metrics_url)
        rows = _model_rows(result.output, cfg.name)
        assert sorted((r[1], r[2]) for r in rows) == sorted(
            (f"{m}[{p}]", metric) for p in (0, 1) for m in ("prior", "logreg") for metric in BINARY
        ), result.output
        for model_cell, metric, cumulative, rolling, learned, star in (r[1:] for r in rows):
            model, p = model_cell[:-3], model_cell[-2]
            labels = {"model": model, "partition": p, "metric": metric}
            assert cumulative == _shown(truth, window="cumulative", **labels), (model_cell, metric)
            assert rolling == _shown(truth, window="rolling", **labels), (model_cell, metric)
            assert learned == f"{2 * EVENTS_PER_PARTITION:,}"
            assert (star == "*") == (EXPECTED_CHAMPION[int(p)] == model), (model_cell, metric, star)
        # The figures differ by metric (the old bug showed one metric's value under all).
        logreg0 = {r[2]: r[4] for r in rows if r[1] == "logreg[0]"}
        assert len(set(logreg0.values())) == len(BINARY), logreg0
        assert float(logreg0["Accuracy"]) > 0.9 and float(logreg0["LogLoss"]) < 0.5

        top = ["top", "--url", metrics_url, "--once", "--interval", "0.2"]
        one = CliRunner().invoke(app, [*top, "--metric", "LogLoss"])
        assert one.exit_code == 0, one.output
        assert sorted((r[1], r[2]) for r in _model_rows(one.output, cfg.name)) == [
            ("logreg[0]", "LogLoss"), ("logreg[1]", "LogLoss"), ("prior[0]", "LogLoss"), ("prior[1]", "LogLoss")]
        wrong = CliRunner().invoke(app, [*top, "--metric", "Accuracyy"])
        assert wrong.exit_code == 2 and "Accuracy, F1, LogLoss, ROCAUC" in wrong.output


def _shown(truth: Scrape, **labels: str) -> str:
    got = [v for _, v in truth.select("streamwise_model_metric", **labels)]
    assert len(got) == 1, (labels, got)
    return "-" if math.isnan(got[0]) else f"{got[0]:.4f}"
