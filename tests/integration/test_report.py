"""``streamwise report`` on a credit-drift run (examples/credit_drift.yaml over a short
ConceptDriftStream replay, with a few malformed records), on the real broker and
Prometheus: the page is one self-contained HTML file that headless Chromium opens without
a console message, its screenshot is not blank, and the final figures it plots equal the
ones the service exported to Prometheus, to the last bit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from promsupport import free_port, prom_scalar, promql, running_in_thread, scraped, wait_for
from streamwise.connectors.prometheus import scrape
from streamwise.core.settings import MetricsSettings
from support import DRIFT_PARAMS, DRIFT_SOURCE, consume, produce
from typer.testing import CliRunner

from streamwise.cli import app
from streamwise.pipeline_config import load_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner

REPO = Path(__file__).resolve().parents[2]
EVENTS, CHANGE = 3000, 1500
MALFORMED = [b"not json", b'{"id": "bad-1", "salary": -5}', b'{"id": "bad-2"}']


def _figures(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="streamwise-figures">(.*?)</script>', page, re.S)
    assert found, "the page embeds its figures"
    return json.loads(found.group(1).replace("<\\/", "</"))  # type: ignore[no-any-return]


def _screenshot(page: Path, png: Path) -> str:
    """Opens ``page`` in headless Chromium, saves a screenshot, returns what it logged."""
    exe = shutil.which("chromium")
    assert exe, "chromium not found (Debian: apt-get install chromium; dev/bootstrap installs it)"
    run = subprocess.run(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={png.parent / 'chromium-profile'}", "--window-size=1200,2400",
         f"--screenshot={png}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0 and png.is_file(), run.stderr[-2000:]
    return run.stderr


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_report_of_a_credit_drift_run_opens_in_chromium_and_plots_what_prometheus_holds(
    services, settings, bootstrap, unique, tmp_path
):
    cfg = load_pipeline_config(REPO / "examples" / "credit_drift.yaml")
    cfg.name = unique
    cfg.input.topic = f"{unique}.events"
    cfg.output.topic = f"{unique}.predictions"
    cfg.output.alerts_topic = f"{unique}.alerts"
    events = list(iter_events(DRIFT_SOURCE, {**DRIFT_PARAMS, "position": CHANGE}, limit=EVENTS))
    produce(bootstrap, cfg.input.topic, events[:1000] + [(None, v) for v in MALFORMED] + events[1000:])
    port = free_port()
    settings.metrics = MetricsSettings(host="127.0.0.1", port=port)
    runner = Runner(cfg, settings)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with running_in_thread(runner), scraped(services, cfg.name, port) as prom:
        assert len(consume(bootstrap, cfg.output.topic, EVENTS)) == EVENTS
        wait_for(lambda: scrape(metrics_url).sum("streamwise_consumer_lag_records") == 0, 30, "the pipeline to go idle")
        # The figures are reported once a second and scraped once a second: wait until
        # Prometheus holds the values /metrics shows now, which no longer change.
        final = scrape(metrics_url)
        sel = f'{{pipeline="{cfg.name}", partition="0"}}'
        wait_for(lambda: len(promql(prom, f"streamwise_model_metric{sel}")) >= 3 * 2 * 3, 15, "every model metric")
        exported = {}
        for m in cfg.models:
            for ls, v in final.select("streamwise_model_metric", model=m.name, partition="0"):
                exported[m.name, ls["metric"], ls["window"]] = v
        time.sleep(2.5)
        configured = {m.name for m in cfg.models}
        held = {(r["metric"]["model"], r["metric"]["metric"], r["metric"]["window"]): float(r["value"][1])
                for r in promql(prom, f"streamwise_model_metric{sel}") if r["metric"]["model"] in configured}
        stages = {r["metric"]["stage"]: float(r["value"][1])
                  for r in promql(prom, f'streamwise_events_dead_lettered_total{{pipeline="{cfg.name}"}}')}
        predictions = prom_scalar(prom, f'sum(streamwise_predictions_total{{pipeline="{cfg.name}"}})')
    assert held == exported and len(held) == 3 * 3 * 2  # 3 models x (Accuracy, MacroF1, CrossEntropy) x 2 windows

    page = tmp_path / "report.html"
    # The config names the example's topics; the run above used this test's own, so the
    # report reads a copy of the YAML pointing at them.
    config = tmp_path / "pipeline.yaml"
    text = (REPO / "examples" / "credit_drift.yaml").read_text()
    text = text.replace("name: credit-drift", f"name: {unique}").replace("credit-drift.", f"{unique}.")
    config.write_text(text)
    result = CliRunner().invoke(app, ["report", "--config", str(config), "--out", str(page),
                                      "--figures-dir", str(tmp_path / "figures")])
    assert result.exit_code == 0, result.output
    assert f"{EVENTS:,} predictions" in result.output

    # A time range: nothing was written after now, so a range starting in an hour is empty.
    later = CliRunner().invoke(app, ["report", "--config", str(config), "--out", str(tmp_path / "later.html"),
                                     "--since", str(time.time() + 3600)])
    assert later.exit_code == 0 and "0 predictions, 0 labelled, 0 dead letters" in later.output, later.output

    html = page.read_text()
    figures = _figures(html)
    # Every model's final figures, as plotted and tabled, equal what the service exported.
    for (model, metric, window), value in held.items():
        assert figures["models"][f"{model}[0]"][window][metric] == value, (model, metric, window)
    assert figures["predictions"] == predictions == EVENTS
    assert {s: float(n) for s, n in figures["dead_letters"].items()} == {s: n for s, n in stages.items() if n}
    assert sum(figures["dead_letters"].values()) == len(MALFORMED)
    assert figures["models"]["tree[0]"]["labelled"] == EVENTS
    # The change of lending rule is marked where the detectors saw it: after it.
    drifts = [m for m in figures["marks"] if m["kind"] == "drift"]
    assert drifts and all(m["x"] > CHANGE - 100 for m in drifts), drifts

    # One self-contained file: nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:|//)', html)
    assert (tmp_path / "figures" / f"{unique}-learning.png").is_file()
    png = tmp_path / "screenshot.png"
    log = _screenshot(page, png)
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 1000 and pixels.shape[1] == 1200
    # A blank page is one colour; this one has plots (std of grey levels well above 0).
    assert float(pixels[..., :3].mean(axis=2).std()) > 0.05
