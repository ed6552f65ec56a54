"""Schema mistakes that a config used to accept and then paid for later: an int bound no
int validator can hold, a key that is also the label or the event time, categories or
a hash step at odds with a field's type, and an event time no datetime holds. Each is
refused in one line at its key, or, for an event, as a bad input before any model."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from support import config_refusal, pipeline_dict
from streamwise.connectors.records import ConsumedRecord
from streamwise.core.errors import ConfigError
from streamwise.models.catalog import ModelSpec
from streamwise.models.forecast import ForecastConfig, ForecastSet
from streamwise.pipeline_config import load_pipeline_config, parse_pipeline_config
from streamwise.processor import PipelineProcessor
from streamwise.stream.schema import EventDecoder, EventSchema, RejectedEvent, event_seconds, to_epoch_seconds

ROOT = Path(__file__).resolve().parents[1]
BASE: dict[str, Any] = pipeline_dict({"a": "float", "n": "int"})


def refusal(changes: dict[str, Any]) -> str:
    message = config_refusal(BASE, changes)
    assert "\n" not in message and "models[0]" not in message and "SchemaError" not in message
    return message


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({"min": 0.5, "max": 1}, "p.yaml: schema.features.n: min: 0.5 is not a whole number, and this is an int field"),
        ({"max": 1.5}, "p.yaml: schema.features.n: max: 1.5 is not a whole number"),
        ({"max": 1e19}, "p.yaml: schema.features.n: max: 1e+19 is beyond int64, the range of an int field"),
        ({"max": 9.3e18}, "p.yaml: schema.features.n: max: 9.3e+18 is beyond int64"),
        # int64's own limits round to 2**63 as floats, which no int validator accepts.
        ({"min": -(2**63)}, "p.yaml: schema.features.n: min: -9.223372036854776e+18 is beyond int64"),
        ({"max": 2**63 - 1}, "p.yaml: schema.features.n: max: 9.223372036854776e+18 is beyond int64"),
    ],
)
def test_an_int_bound_no_int_validator_can_hold_is_refused_at_its_key(bounds, expected):
    assert expected in refusal({"schema.features.n": {"type": "int", **bounds}})


def test_whole_int_bounds_within_int64_still_bound_the_field():
    schema = EventSchema(features={"n": {"type": "int", "min": -9e18, "max": 10.0}})
    decoder = EventDecoder(schema)
    assert decoder.decode(b'{"id": 1, "n": 10}').x == {"n": 10}
    with pytest.raises(RejectedEvent, match="less than or equal to 10"):
        decoder.decode(b'{"id": 1, "n": 11}')
    # A float field keeps its fractional bounds.
    assert EventSchema(features={"a": {"min": 0.5, "max": 1e30}}).features["a"].min == 0.5


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"key": "label"}, "p.yaml: schema: key field 'label' is also the label field; each field has one role"),
        ({"key": "ts", "event_time": "ts"},
         "p.yaml: schema: key field 'ts' is also the event_time field; each field has one role"),
    ],
)
def test_a_key_that_is_also_the_label_or_the_event_time_is_refused(schema, expected):
    assert expected in refusal({f"schema.{k}": v for k, v in schema.items()})


def test_a_key_may_still_be_the_id_or_a_feature():
    assert parse_pipeline_config({**copy.deepcopy(BASE), "schema": {**BASE["schema"], "key": "id"}}).event_schema.key
    assert parse_pipeline_config({**copy.deepcopy(BASE), "schema": {**BASE["schema"], "key": "n"}}).event_schema.key


@pytest.mark.parametrize("example", ["bug_label_is_key", "bug_key_is_time"])
def test_the_fraud_example_with_its_key_in_a_second_role_is_refused(example, tmp_path):
    text = (ROOT / "examples/fraud.yaml").read_text()
    text = text.replace("  label: is_fraud", "  label: card_id") if example == "bug_label_is_key" else text.replace(
        "  key: card_id", "  key: ts")
    path = tmp_path / "fraud.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is also the (label|event_time) field"):
        load_pipeline_config(path)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "bool", "categories": ["a", "b"]},
         "p.yaml: schema.features.n: categories: 'a' is not a bool, and the field's type is bool"),
        ({"type": "int", "categories": [1, True]}, "categories: True is not an int, and the field's type is int"),
        ({"type": "float", "categories": ["x"]}, "categories: 'x' is not a number, and the field's type is float"),
        ({"type": "text", "categories": ["x", 3]}, "categories: 3 is not a string, and the field's type is text"),
    ],
)
def test_categories_of_another_type_than_their_field_are_refused(spec, expected):
    assert expected in refusal({"schema.features.n": spec})


def test_categories_that_match_their_field_still_load():
    for spec in ({"type": "bool", "categories": [True]}, {"type": "int", "categories": [1, 2]},
                 {"type": "category", "categories": ["x", 1, True]}):
        data = copy.deepcopy(BASE)
        data["schema"]["features"]["n"] = spec
        assert parse_pipeline_config(data).event_schema.features["n"].categories == spec["categories"]


def test_a_hash_step_on_a_float_field_is_refused_at_its_field():
    message = refusal({"features": [{"kind": "hash", "fields": ["a"], "n_features": 8}]})
    assert "p.yaml: features[0].fields[0]: 'a' is float: hashing makes each value its own category" in message
    data = copy.deepcopy(BASE)
    data["schema"]["features"]["c"] = "category"
    data["features"] = [{"kind": "hash", "fields": ["c", "n"], "n_features": 8}]
    assert parse_pipeline_config(data).features[0].fields == ["c", "n"]


# ---- event times a datetime cannot hold --------------------------------------------


@pytest.mark.parametrize("seconds", [-1e11, -62135596801, 253402300800, 1e15])
def test_a_time_in_seconds_outside_the_years_1_to_9999_is_refused_at_validate(seconds):
    with pytest.raises(RejectedEvent) as caught:
        event_seconds(seconds, "day")
    assert caught.value.stage == "validate"
    assert caught.value.reason.startswith("day: not a time between the years 1 and 9999 (UTC)")


def test_the_first_and_last_second_of_the_years_1_to_9999_are_times():
    assert to_epoch_seconds(-62135596800) == to_epoch_seconds("0001-01-01T00:00:00Z")
    assert to_epoch_seconds(253402300799) == to_epoch_seconds("9999-12-31T23:59:59Z")
    # ISO text is a datetime already, even where its zone puts it a little past an end.
    assert to_epoch_seconds("0001-01-01T00:00:00+01:00") == -62135596800 - 3600


def _forecast_records(days: list[float]) -> list[ConsumedRecord]:
    now_ms = int(time.time() * 1000)
    return [
        ConsumedRecord("retail.sales", 0, i, b"s1",
                       json.dumps({"id": i, "series": "s1", "day": day, "units": 10, "promo": 0}).encode(), now_ms)
        for i, day in enumerate(days)
    ]


def test_a_forecast_event_time_far_in_the_past_is_a_validate_dead_letter_not_a_model_fault():
    config = load_pipeline_config(ROOT / "examples/demand_forecast.yaml")
    now = time.time()
    out = PipelineProcessor(config).process(_forecast_records([now - 3 * 86400, now - 2 * 86400, -1e11]))
    dead = [r for r in out if r.topic == config.dead_letter_topic]
    assert sum(r.topic == config.output.topic for r in out) == 2
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["streamwise.error.stage"] == b"validate"
    assert b"day: not a time between the years 1 and 9999" in headers["streamwise.error.message"]


HW = ModelSpec(name="hw", steps=[{"time_series.HoltWinters": {"alpha": 1.0, "beta": 1.0}}])


@pytest.mark.parametrize(
    ("period", "last", "expected"),
    [
        ("1d", "9999-12-30T00:00:00Z", ["9999-12-31T00:00:00Z", None, None]),
        ("month", "9999-10-15T00:00:00Z", ["9999-11-15T00:00:00Z", "9999-12-15T00:00:00Z", None]),
    ],
)
def test_forecast_steps_past_year_9999_have_no_event_time_instead_of_failing(period, last, expected):
    forecasts = ForecastSet([HW], ForecastConfig(target="y", horizon=3, period=period))
    t = to_epoch_seconds(last)
    forecasts.on_event("a", {"y": 1.0}, t - 86400 * 40)
    assert [f["event_time"] for f in forecasts.on_event("a", {"y": 2.0}, t)["hw"]] == expected
    # A time that slipped past the schema (here: given straight to the set) costs no event.
    assert [f["event_time"] for f in forecasts.on_event("a", {"y": 3.0}, -1e11)["hw"]] == [None, None, None]


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ([1, "1"], "classes: 1 and '1' are one class to the models or in a prediction record"),
        ([True, 1], "classes: True and 1 are one class"),
        (["false", False], "classes: 'false' and False are one class"),
    ],
)
def test_category_classes_that_are_one_class_to_river_or_in_json_are_refused(classes, expected):
    """River keys classes by Python equality (True is 1) and a record's probabilities by
    their JSON key ("1" for 1 and "1"): such classes would merge, or repeat a key."""
    message = refusal({"schema.label_type": "category", "schema.classes": classes})
    assert "p.yaml: schema: " in message and expected in message
    ok = copy.deepcopy(BASE)
    ok["schema"].update(label_type="category", classes=[1, 2, "x", True])
    with pytest.raises(ConfigError, match="1 and True are one class"):
        parse_pipeline_config(ok)
    ok["schema"]["classes"] = [1, 2, "x"]
    assert parse_pipeline_config(ok).event_schema.classes == [1, 2, "x"]


# ---- the range of a numeric label ---------------------------------------------------

@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"label_min": 0}, "schema: label_min: bounds a numeric label, and label_type is bool"),
        ({"label_type": "float", "label_min": 5, "label_max": 1}, "label_min 5 and label_max 1: no float label could pass"),
        ({"label_type": "int", "label_min": 0.2, "label_max": 0.8}, "label_min 0.2 and label_max 0.8: no int label"),
        ({"label_type": "float", "label_max": float("inf")}, "label_max: must be a finite number, got inf"),
    ],
)
def test_a_label_range_that_cannot_work_is_refused_at_its_key(schema, expected):
    assert expected in refusal({f"schema.{k}": v for k, v in schema.items()})


def test_a_regression_label_outside_its_range_is_dead_lettered_and_pulls_no_model_off():
    """One target of 1e308 took a LinearRegression's answers to about 1e10 for good, all
    finite, so no recovery acted: with label_max it never reaches the model."""
    def config(**schema: Any) -> Any:
        data = copy.deepcopy(BASE)
        data.update(task="regression", metric="MAE",
                    models=[{"name": "lr", "steps": ["linear_model.LinearRegression"]}])
        data["schema"].update(label_type="float", **schema)
        return parse_pipeline_config(data)

    events = [{"id": i, "a": float(i % 5), "n": i % 3, "label": 10.0 + i % 5} for i in range(200)]
    events[50]["label"] = 1e308
    records = [ConsumedRecord("events", 0, i, None, json.dumps(e).encode(), 1) for i, e in enumerate(events)]
    bounded = PipelineProcessor(config(label_min=0, label_max=1000))
    out = bounded.process(records)
    letters = [r for r in out if r.topic == "events.dlq"]
    assert [json.loads(r.value)["id"] for r in letters] == [50]
    assert dict(letters[0].headers)["streamwise.error.message"] == (
        b"label 1e+308 is outside schema.label_min/label_max [0.0, 1000.0]")
    answers = [json.loads(r.value)["prediction"] for r in out if r.topic == "predictions"]
    assert len(answers) == 199 and abs(answers[-1] - 12.0) < 5.0
    unbounded = PipelineProcessor(config())
    poisoned = [json.loads(r.value)["prediction"] for r in unbounded.process(records) if r.topic == "predictions"]
    assert abs(poisoned[-1]) > 1e6  # what the range prevents

    labels_config = config(label_max=1000)
    labels_config.input.labels_topic = "labels"
    delayed = PipelineProcessor(parse_pipeline_config(labels_config.model_dump(mode="json", exclude_none=True)))
    label_records = [ConsumedRecord("labels", 0, 0, None, b'{"id": 0, "label": 2000.5}', 2)]
    out = delayed.process(records[:1] + label_records)
    (letter,) = [r for r in out if r.topic == "events.dlq"]
    assert [r.topic for r in out].count("predictions") == 1
    assert b"label 2000.5 is outside" in dict(letter.headers)["streamwise.error.message"]


def test_categories_tell_true_from_1_as_json_does():
    """pydantic's Literal compares by equality: true passed as the category 1 and became
    it, 1 as True, and an int field took 1.0."""
    schema = EventSchema(features={
        "n": {"type": "int", "categories": [0, 1]},
        "b": {"type": "bool", "categories": [True]},
        "c": {"type": "category", "categories": ["x", 1]},
        "f": {"type": "float", "categories": [0, 1]},
    })
    decoder = EventDecoder(schema)
    good = {"id": 1, "n": 1, "b": True, "c": "x", "f": 1.0}
    assert decoder.decode(json.dumps(good).encode()).x == {"n": 1, "b": True, "c": "x", "f": 1}
    for field, value, reason in [("n", True, "n: Input should be 0 or 1"), ("n", 1.0, "n: Input should be 0 or 1"),
                                 ("b", 1, "b: Input should be True"), ("c", True, "c: Input should be 'x' or 1"),
                                 ("c", [1], "c: Input should be 'x' or 1"), ("f", False, "f: Input should be 0 or 1")]:
        with pytest.raises(RejectedEvent) as caught:
            decoder.decode(json.dumps({**good, field: value}).encode())
        assert (caught.value.stage, caught.value.reason) == ("validate", reason)


def test_categories_without_a_type_are_typed_by_what_they_list():
    """Before categories were checked against their field's type, `{categories: [pos,
    online]}` worked whatever the default type (float) said; it must go on working."""
    for categories, kind in ((["pos", "online"], "category"), ([1, 2], "int"), ([True], "bool"), (["a", 1], "category")):
        data = copy.deepcopy(BASE)
        data["schema"]["features"]["n"] = {"categories": categories}
        assert parse_pipeline_config(data).event_schema.features["n"].type == kind
