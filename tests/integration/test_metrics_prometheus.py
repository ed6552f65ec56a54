"""The real Prometheus from dev/up scrapes a running pipeline during a replay; every query
of every dashboard panel has data, and ``streamwise top`` shows what /metrics says."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from streamwise import dashboards
from streamwise.cli import app
from streamwise.connectors.prometheus import bucket_quantile, scrape
from streamwise.replay import iter_events
from streamwise.runner import Runner
from streamwise.core.settings import MetricsSettings
from streamwise.models.rules import RuleSpec
from promsupport import free_port, prom_get, prom_scalar, promql, running_in_thread, scraped, wait_for
from support import consume, phishing_pipeline, produce

MALFORMED = [(None, b"not json"), (None, b"\xff\xfe"), (None, b'{"id": "x1", "popup_window": "high"}'), (None, b"[1, 2]")]


@pytest.fixture
def running(settings, unique) -> Iterator[tuple[Any, Runner, str]]:
    """The Phishing pipeline, running in a thread with /metrics on a free port, with one
    business rule so that the rules panel has its series."""
    cfg = phishing_pipeline(unique, rules=[RuleSpec(name="no_https", when="https < 0.5", decision="review")])
    port = free_port()
    settings.metrics = MetricsSettings(host="127.0.0.1", port=port)
    runner = Runner(cfg, settings)
    with running_in_thread(runner):
        yield cfg, runner, f"http://127.0.0.1:{port}/metrics"


def test_prometheus_scrapes_a_replay_and_every_dashboard_query_has_data(services, bootstrap, running):
    cfg, runner, metrics_url = running
    port = urllib.parse.urlsplit(metrics_url).port
    assert port is not None
    with scraped(services, cfg.name, port) as prom:
        events = list(iter_events("Phishing"))
        # Replayed in steps while Prometheus scrapes every second, with the demo's malformed records.
        for i in range(0, len(events), 250):
            produce(bootstrap, cfg.input.topic, events[i : i + 250] + MALFORMED[i // 250 : i // 250 + 1])
            time.sleep(0.4)
        assert len(consume(bootstrap, cfg.output.topic, 1250)) == 1250
        sel = f'{{pipeline="{cfg.name}"}}'
        wait_for(lambda: prom_scalar(prom, f"sum(streamwise_predictions_total{sel})") == 1250.0, 30, "the last scrape")
        wait_for(lambda: prom_scalar(prom, f"sum(streamwise_consumer_lag_records{sel})") == 0.0, 30, "lag 0 scraped")

        # What Prometheus holds is what the service did.
        assert prom_scalar(prom, f"sum(streamwise_events_consumed_total{sel})") == 1254.0
        assert prom_scalar(prom, f"sum(streamwise_events_valid_total{sel})") == 1250.0
        assert prom_scalar(prom, f"sum(streamwise_events_dead_lettered_total{sel})") == 4.0
        for m in _models(runner):
            # One input partition: one replica of each model, so one series.
            found = promql(prom, f'streamwise_model_metric{{pipeline="{cfg.name}", model="{m.name}", window="cumulative"}}')
            assert len(found) == 1 and math.isclose(float(found[0]["value"][1]), m.metric.get(), abs_tol=1e-12)
        assert prom_scalar(prom, f'streamwise_model_champion{{pipeline="{cfg.name}", model="logreg"}}') == 1.0
        assert cfg.name in _label_values(prom, "pipeline", "streamwise_build_info")
        no_https = sum(json.loads(v)["https"] < 0.5 for _, v in events)
        assert 0 < no_https < 1250
        fired = f'streamwise_rule_fired_total{{pipeline="{cfg.name}", rule="no_https", outcome="review"}}'
        assert prom_scalar(prom, fired) == no_https

        variables = {"pipeline": cfg.name, "__rate_interval": "1m", "__range": "5m"}
        checked = 0
        for name, board in _boards():
            for title, expr in dashboards.panel_queries(board):
                result = promql(prom, dashboards.substitute(expr, variables))
                assert result, f"{name} / {title}: no data for {dashboards.substitute(expr, variables)}"
                checked += 1
        assert checked >= 25
        # The headline figures are real numbers, not NaN from empty histograms.
        assert prom_scalar(prom, dashboards.substitute(dashboards._quantile(0.99, "streamwise_event_to_prediction_latency_seconds"), variables)) > 0
        assert prom_scalar(prom, dashboards.substitute(
            f'sum by (pipeline) (rate(streamwise_events_consumed_total{dashboards.SEL}{dashboards.RATE}))', variables)) > 0


def _boards() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in dashboards.BOARDS:
        yield name, json.loads((dashboards.DASHBOARD_DIR / f"{name}.json").read_text())


def _label_values(prom: str, label: str, metric: str) -> list[str]:
    return prom_get(prom, f"/api/v1/label/{label}/values", **{"match[]": metric})  # type: ignore[no-any-return]


def test_top_prints_the_figures_of_metrics(bootstrap, running):
    cfg, runner, metrics_url = running
    produce(bootstrap, cfg.input.topic, list(iter_events("Phishing", limit=300)) + MALFORMED[:2])
    assert len(consume(bootstrap, cfg.output.topic, 300)) == 300
    # Lag and model metrics are refreshed once a second.
    wait_for(lambda: (s := scrape(metrics_url)).sum("streamwise_consumer_lag_records") == 0
          and s.sum("streamwise_model_learned_total") == 600, 10, "the pipeline to go idle")

    result = CliRunner().invoke(app, ["top", "--url", metrics_url, "--once", "--interval", "0.5"])
    assert result.exit_code == 0, result.output
    truth = scrape(metrics_url)

    lines = result.output.splitlines()
    row = _cells(next(line for line in lines if line.strip("│ ").startswith(cfg.name) and "Accuracy" not in line))
    assert row[1] == f"{truth.sum('streamwise_events_consumed_total'):,.0f}" == "302"
    assert row[2] == "0.0"  # idle: nothing arrived between the two scrapes
    assert row[3] == f"{truth.sum('streamwise_predictions_total'):,.0f}" == "300"
    assert row[4] == f"{truth.sum('streamwise_events_dead_lettered_total'):,.0f}" == "2"
    buckets = sorted((float(ls["le"]), v) for ls, v in truth.select("streamwise_event_to_prediction_latency_seconds_bucket"))
    assert row[6] == f"{bucket_quantile(0.99, buckets) * 1000:,.1f} ms"
    assert row[7] == "0"
    for m in _models(runner):
        mrow = _cells(next(line for line in lines if f" {m.name} " in line or f" {m.name}[0] " in line))
        value = truth.select("streamwise_model_metric", model=m.name, metric="Accuracy", window="cumulative")[0][1]
        rolling = truth.select("streamwise_model_metric", model=m.name, metric="Accuracy", window="rolling")[0][1]
        assert mrow[2:5] == ["Accuracy", f"{value:.4f}", f"{rolling:.4f}"]
        assert mrow[5] == f"{truth.sum('streamwise_model_learned_total', model=m.name):,.0f}" == "300"
        assert (mrow[6:] == ["*"]) == (m.name == "logreg")


def _models(runner: Runner) -> list[Any]:
    """The models of partition 0 (the runner keeps one replica per partition)."""
    processors = getattr(runner, "processors", None)
    return processors[0].models if processors is not None else runner.processor.models


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("│┃").split("│")]
