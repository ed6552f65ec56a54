"""``task: forecast`` through the service on the real broker: River's own evaluation on
AirlinePassengers, and per-key forecasters that match per-key runs in memory.

Forecasting never sees the Kafka client, so these run on one client (confluent).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
from river import datasets, metrics, time_series
from streamwise.connectors.prometheus import PrometheusSensor
from streamwise.models.catalog import build_estimator
from support import consume, produce

from streamwise.pipeline_config import load_pipeline_config, parse_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner

one_client = pytest.mark.parametrize("kafka_client", ["confluent"], indirect=True)
HORIZON = 12
MODELS = {
    "hw": [{"time_series.HoltWinters": {"alpha": 0.3, "beta": 0.1, "gamma": 0.6, "seasonality": 12}}],
    "snarimax": [{"time_series.SNARIMAX": {"p": 12, "d": 1, "q": 2}}],
}


@one_client
def test_the_horizon_metric_on_airline_passengers_equals_rivers_evaluate(settings, bootstrap, unique):
    cfg = parse_pipeline_config({
        "name": unique,
        "input": {"topic": f"{unique}.airline"},
        "output": {"topic": f"{unique}.forecasts"},
        "schema": {"id": "id", "event_time": "month", "features": {"passengers": "float"}},
        "task": "forecast",
        "forecast": {"target": "passengers", "horizon": HORIZON, "per_key": False, "period": "month",
                     "metric": "MAE"},
        "models": [{"name": name, "steps": steps} for name, steps in MODELS.items()],
    })
    produce(bootstrap, cfg.input.topic, iter_events("AirlinePassengers", label_field="passengers"))
    settings.kafka.max_poll_records = 50
    prometheus = PrometheusSensor(cfg.name, [m.name for m in cfg.models], cfg.input.topic)

    runner = Runner(cfg, settings, sensors=[prometheus])
    summary = runner.run(until_idle_s=1.0)

    assert summary.events_in == 144
    (processor,) = runner.partitions.all_processors().values()
    for model in processor.models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # time_series.evaluate's own notice
            # The series only: the month is the event time, not a feature.
            river = time_series.evaluate([({}, y) for _x, y in datasets.AirlinePassengers()],
                                         build_estimator(MODELS[model.name]), metrics.MAE(), horizon=HORIZON)
        ours = model.horizon_metric.get()
        assert len(ours) == HORIZON and ours == pytest.approx(river.get(), abs=1e-12, rel=0)
        for step, value in enumerate(river.get(), start=1):
            exported = prometheus.value("streamwise_model_metric", model=model.name, partition="0",
                                        metric=f"MAE+{step}", window="cumulative")
            assert exported == pytest.approx(value, abs=1e-12, rel=0), (model.name, step)
    out = [json.loads(r.value) for r in consume(bootstrap, cfg.output.topic, 144)]
    last = max(out, key=lambda r: r["id"])
    assert [f["event_time"] for f in last["forecasts"]["hw"]][:2] == ["1961-01-01T00:00:00Z", "1961-02-01T00:00:00Z"]


@one_client
def test_per_key_forecasts_equal_one_in_memory_forecaster_per_key_across_a_restart(settings, bootstrap, unique):
    cfg = load_pipeline_config(Path(__file__).resolve().parents[2] / "examples" / "demand_forecast.yaml")
    cfg.name = unique
    cfg.input.topic = f"{unique}.sales"
    cfg.output.topic = f"{unique}.forecasts"
    params = {"n_stores": 3, "n_products": 4, "n_days": 40, "seed": 5}
    events = [json.loads(v) for _k, v in iter_events("streamwise.StoreDemand", params, key_field="series")]
    produce(bootstrap, cfg.input.topic, iter_events("streamwise.StoreDemand", params, key_field="series"))
    settings.kafka.max_poll_records = 100

    # Stopped and restored from its snapshot half-way: the forecasters are state too.
    Runner(cfg, settings).run(max_events=230)
    Runner(cfg, settings).run(until_idle_s=1.0)

    records = {r["id"]: r for r in map(json.loads, (x.value for x in consume(bootstrap, cfg.output.topic, 480)))}
    assert sorted(records) == [e["id"] for e in events]
    assert {r["epoch"] for r in records.values() if r["source"]["offset"] >= 230} != {0}, "restored"
    templates = {spec.name: build_estimator(spec.steps) for spec in cfg.models}
    forecasters: dict[tuple[str, str], object] = {}
    compared = 0
    for e in events:  # each series alone, in its own order, with no Kafka at all
        record = records[e["id"]]
        assert record["key"] == e["series"]
        for name, template in templates.items():
            model = forecasters.setdefault((e["series"], name), copy.deepcopy(template))
            model.learn_one(y=float(e["units"]), x={"promo": e["promo"]})
            try:
                expected = model.forecast(horizon=cfg.forecast.horizon)
            except (IndexError, ZeroDivisionError, ValueError):
                assert record["forecasts"][name] is None
                continue
            assert [f["value"] for f in record["forecasts"][name]] == expected, "exactly, not approximately"
            compared += 1
    assert compared > 0.8 * 2 * len(events)
