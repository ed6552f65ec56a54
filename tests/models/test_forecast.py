"""The forecasting driver in memory: River's scoring offset, bounds, state, config errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from streamwise.connectors.records import ConsumedRecord
from streamwise.core.errors import ConfigError
from streamwise.models.catalog import ModelSpec
from streamwise.models.forecast import ForecastConfig, ForecastSet

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor

HW = ModelSpec(name="hw", steps=[{"time_series.HoltWinters": {"alpha": 1.0, "beta": 1.0}}])


def _line(config: ForecastConfig, n: int = 40) -> ForecastSet:
    forecasts = ForecastSet([HW], config)
    for t in range(n):
        forecasts.on_event("a", {"y": float(t)}, float(t))
    return forecasts


def test_next_scores_the_values_a_forecast_names_river_scores_one_later():
    # A straight line, which this Holt-Winters forecasts perfectly from its third value.
    nxt = _line(ForecastConfig(target="y", horizon=3, score_against="next")).models[0].horizon_metric
    river = _line(ForecastConfig(target="y", horizon=3)).models[0].horizon_metric
    assert max(nxt.get()) < 0.1, "only the first forecasts, before the trend settled, miss"
    assert min(river.get()) > 0.9, "River's evaluate scores the forecast against the values one step later"


def test_forecasts_carry_the_event_time_each_value_is_for():
    out = ForecastSet([HW], ForecastConfig(target="y", horizon=2, period="1h"))
    out.on_event("a", {"y": 1.0}, 0.0)
    assert [f["event_time"] for f in out.on_event("a", {"y": 2.0}, 60.0)["hw"]] == [
        "1970-01-01T01:01:00Z", "1970-01-01T02:01:00Z"]
    gap = ForecastSet([HW], ForecastConfig(target="y", horizon=1))
    gap.on_event("a", {"y": 1.0}, 0.0)
    assert gap.on_event("a", {"y": 2.0}, 60.0)["hw"][0]["event_time"] == "1970-01-01T00:02:00Z"


def test_keys_are_bounded_by_count_and_idle_events_and_state_pickles():
    forecasts = ForecastSet([HW], ForecastConfig(target="y", horizon=2, max_keys=3, idle_ttl=5))
    for i, key in enumerate("abcd"):
        forecasts.on_event(key, {"y": float(i)}, float(i))
    assert forecasts.n_keys == 3 and forecasts.n_evicted_keys == 1
    for i in range(5):
        forecasts.on_event("d", {"y": float(i)}, 10.0 + i)
    assert forecasts.n_keys == 1, "keys idle for 5 events are dropped"
    copy = pickle.loads(pickle.dumps(forecasts))
    assert copy.on_event("d", {"y": 7.0}, 20.0) == forecasts.on_event("d", {"y": 7.0}, 20.0)


BASE = {"name": "f", "input": {"topic": "a"}, "output": {"topic": "b"},
        "schema": {"id": "id", "features": {"y": "float", "c": "category"}}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "forecast", "models": [HW.model_dump()]}, "task: forecast and a forecast: block go together"),
        ({"task": "forecast", "forecast": {"target": "c"}, "models": [HW.model_dump()]}, "must be a numeric feature"),
        ({"task": "forecast", "forecast": {"target": "y"},
          "models": [{"name": "lr", "steps": ["linear_model.LinearRegression"]}]}, "is not a forecaster"),
        ({"task": "forecast", "forecast": {"target": "y", "period": "fortnight"}, "models": [HW.model_dump()]},
         "period must be"),
        ({"task": "forecast", "forecast": {"target": "y", "metric": "FBeta"}, "models": [HW.model_dump()]},
         "forecast.metric: River metric 'FBeta' needs parameters"),
    ],
)
def test_a_bad_forecast_config_fails_at_start_with_its_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_pipeline_config({**BASE, **overrides})


def test_binary_record_keys_that_are_not_utf8_stay_distinct_series():
    """With no schema key, the record key names the series. Two 8-byte big-endian keys
    (a Java LongSerializer's 254 and 255) are not UTF-8, and a third is the text that
    the first is shown as; each must keep its own forecasters."""
    data = yaml.safe_load((Path(__file__).parents[2] / "examples" / "demand_forecast.yaml").read_text())
    del data["schema"]["key"]
    processor = PipelineProcessor(parse_pipeline_config(data))
    keys = [(254).to_bytes(8, "big"), (255).to_bytes(8, "big"), bytes(7) + b"\\xfe"]
    day = 1_700_000_000
    records = [
        ConsumedRecord("retail.sales", 0, i, keys[i % 3],
                       json.dumps({"id": i, "day": day + 86_400 * (i // 3), "units": 10 * (i % 3) + 1,
                                   "promo": 0}).encode(), (day + 86_400 * (i // 3)) * 1000)
        for i in range(60)
    ]
    out = [json.loads(r.value) for r in processor.process(records)]
    assert len(out) == 60 and processor.learners.n_keys == 3
    # The record shows a byte that is not UTF-8 as \xNN: the first and third look alike.
    assert [o["key"] for o in out[:3]] == ["\x00" * 7 + "\\xfe", "\x00" * 7 + "\\xff", "\x00" * 7 + "\\xfe"]
    # Each series only ever saw its own value; had two shared state, their forecasts
    # would sit between the two.
    last = [o["forecasts"]["holt_winters"][0]["value"] for o in out[-3:]]
    assert last == [pytest.approx(v, abs=0.5) for v in (1.0, 11.0, 21.0)]
