"""EventPipeline semantics and YAML assembly: prequential order, rejections, key paths, fraud lift."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
from river import compose, linear_model, metrics, preprocessing

from streamwise.core.errors import ConfigError
from streamwise.pipeline_config import load_pipeline_config, parse_pipeline_config
from streamwise.stream.datasets import CardTransactions
from streamwise.stream.features import WindowedAggregates
from streamwise.stream.pipeline import build_event_pipeline
from streamwise.stream.schema import EventDecoder, RejectedEvent

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "name": "p",
    "input": {"topic": "in"},
    "output": {"topic": "out"},
    "schema": {"id": "id", "key": "card", "event_time": "ts", "label": "y",
               "features": {"amount": {"type": "float", "required": False}, "shop": "category"}},
    "models": [{"name": "lr", "steps": ["linear_model.LogisticRegression"]}],
}


def _config(**extra):
    return parse_pipeline_config({**copy.deepcopy(BASE), **extra}, "p.yaml")


def _errors(**extra) -> str:
    with pytest.raises(ConfigError) as info:
        _config(**extra)
    return str(info.value)


def test_without_steps_the_event_is_exactly_what_the_decoder_gives():
    cfg = load_pipeline_config(ROOT / "examples" / "phishing.yaml")
    assert cfg.cleaners == [] and cfg.features == []
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    raw = b'{"id": 3, "empty_server_form_handler": 0.5, "popup_window": 0, "https": 1, "request_from_other_domain": 0,' \
          b' "anchor_from_other_domain": 0.25, "is_popular": 1, "long_url": 0, "age_of_domain": 1, "ip_in_url": 0}'
    assert pipeline.is_identity
    assert pipeline.decode(raw) == EventDecoder(cfg.event_schema).decode(raw)


def test_unknown_kinds_parameters_and_bad_durations_name_their_key_path():
    text = _errors(features=[
        {"kind": "ratio", "numerator": "amount", "denominator": "amount"},
        {"kind": "hash", "fields": ["shop"], "n_buckets": 8},
        {"kind": "window_aggregates", "fields": ["amount"], "windows": ["1 hour"]},
        "sliding_thing",
    ])
    assert 'p.yaml: features[1].n_buckets: Extra inputs are not permitted' in text
    assert 'p.yaml: features[2].windows[0]: expected a duration like "1h"' in text
    assert "p.yaml: features[3]: expected a step kind, one of: standard_scale," in text


def test_fields_the_schema_lacks_are_named_with_their_key_path():
    text = _errors(
        cleaners=[{"kind": "impute", "fields": ["shop"], "strategy": "mean"}],
        features=[{"kind": "window_aggregates", "by": "crad", "fields": ["amount"], "windows": ["1h"]},
                  {"kind": "ratio", "numerator": "amount", "denominator": "card.amount.mean.2h"}],
    )
    assert "p.yaml: cleaners[0].fields[0]: 'shop' is required" in text
    assert "p.yaml: features[0].by: unknown field 'crad'" in text
    assert "p.yaml: features[1].denominator: unknown field 'card.amount.mean.2h'" in text
    no_time = copy.deepcopy(BASE)
    del no_time["schema"]["event_time"]
    with pytest.raises(ConfigError, match=r"features\[0\]\.windows: needs an event time"):
        parse_pipeline_config({**no_time, "features": [{"kind": "window_aggregates", "windows": ["1h"]}]})


def test_steps_transform_with_the_state_before_the_event_then_learn():
    cfg = _config(features=[{"kind": "window_aggregates", "fields": ["amount"], "windows": ["1h"]},
                            {"kind": "standard_scale", "fields": ["amount"]}])
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    xs = [pipeline.process_json({"id": i, "card": "c", "ts": 60 * i, "amount": a, "shop": "s"}).x
          for i, a in enumerate([10.0, 20.0, 30.0])]
    # The first event sees an empty history and a scaler that learned nothing.
    assert xs[0]["card.count.1h"] == 0.0 and xs[0]["amount"] == 0.0
    # The third sees the two before it, never itself.
    assert xs[2]["card.count.1h"] == 2.0 and xs[2]["card.amount.mean.1h"] == 15.0
    assert xs[2]["amount"] == pytest.approx((30.0 - 15.0) / 5.0)
    # Id, key and event time feed the steps but never reach the models.
    assert not {"id", "card", "ts"} & set(xs[2])


def test_a_rejected_event_changes_no_state_and_names_its_stage():
    cfg = _config(cleaners=[{"kind": "dedup"}, {"kind": "lateness", "allowed": "5m"}],
                  features=[{"kind": "window_aggregates", "fields": ["amount"], "windows": ["1h"]}])
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    pipeline.process_json({"id": 1, "card": "c", "ts": 1000, "amount": 5.0, "shop": "s"})
    before = pickle.dumps(pipeline)
    with pytest.raises(RejectedEvent) as dup:
        pipeline.process_json({"id": 1, "card": "c", "ts": 1001, "amount": 5.0, "shop": "s"})
    with pytest.raises(RejectedEvent) as late:
        pipeline.process_json({"id": 2, "card": "c", "ts": 1000 - 301, "amount": 5.0, "shop": "s"})
    with pytest.raises(RejectedEvent) as bad_time:
        pipeline.process_json({"id": 3, "card": "c", "ts": "tomorrow", "amount": 5.0, "shop": "s"})
    assert (dup.value.stage, late.value.stage, bad_time.value.stage) == ("clean", "clean", "validate")
    assert "duplicate event" in dup.value.reason and "late event" in late.value.reason
    assert pickle.dumps(pipeline) == before
    event = pipeline.process_json({"id": 4, "card": "c", "ts": "1970-01-01T00:17:00Z", "amount": 7.0, "shop": "s"})
    assert event.x["card.count.1h"] == 1.0


def test_coercion_runs_before_validation_and_imputation_fills_what_it_removed():
    cfg = _config(cleaners=["coerce", {"kind": "impute", "indicator": True}])
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    assert pipeline.process_json({"id": 1, "card": "c", "amount": "4.5", "shop": "s", "y": "true"}).y is True
    event = pipeline.process_json({"id": 2, "card": "c", "amount": "NA", "shop": "s"})
    assert event.x == {"amount": 4.5, "shop": "s", "amount_was_missing": 1.0}
    with pytest.raises(RejectedEvent, match="amount"):
        build_event_pipeline(cfg.event_schema).process_json({"id": 1, "card": "c", "amount": "4.5", "shop": "s"})


def test_the_pipeline_pickles_with_its_learned_state():
    cfg = load_pipeline_config(ROOT / "examples" / "fraud.yaml")
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    events = list(CardTransactions(n_events=400, seed=3))
    for e in events[:300]:
        pipeline.decode(json.dumps(e).encode())
    clone = pickle.loads(pickle.dumps(pipeline))
    for e in events[300:]:
        raw = json.dumps(e).encode()
        assert clone.decode(raw) == pipeline.decode(raw)


def test_components_compose_with_river_pipelines():
    model = (
        WindowedAggregates("card", ["amount"], ["1h"], "ts", aggregates=["count", "mean"])
        | compose.Discard("card", "ts")
        | preprocessing.StandardScaler()
        | linear_model.LogisticRegression()
    )
    for i in range(50):
        x = {"card": f"c{i % 3}", "ts": 60.0 * i, "amount": float(i % 7)}
        model.predict_proba_one(x)
        model.learn_one(x, i % 7 > 3)
    assert set(model["LogisticRegression"].weights) == {"amount", "card.count.1h", "card.amount.mean.1h", "card.since_last"}


def _prequential_auc(cfg) -> float:
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    auc = metrics.ROCAUC()
    for e in CardTransactions(n_events=5000, seed=42):
        event = pipeline.decode(json.dumps(e).encode())
        auc.update(event.y, model.predict_proba_one(event.x))
        model.learn_one(event.x, event.y)
    return auc.get()


def test_per_card_windowed_features_clearly_lift_fraud_roc_auc():
    cfg = load_pipeline_config(ROOT / "examples" / "fraud.yaml")
    without = cfg.model_copy(update={"features": [f for f in cfg.features if f.kind != "window_aggregates"
                                                  and f.kind != "ratio"]})
    with_windows, baseline = _prequential_auc(cfg), _prequential_auc(without)
    print(f"fraud ROC AUC with windowed features {with_windows:.4f}, without {baseline:.4f}")
    assert with_windows > baseline + 0.08
    assert with_windows > 0.9


def test_cleaner_activity_reaches_the_sensor_hook():
    from streamwise.connectors.records import ConsumedRecord
    from streamwise.processor import PipelineProcessor
    from streamwise.core.sensors import Sensor

    class Cleanings(Sensor):
        def __init__(self):
            self.seen: dict[str, int] = {}

        def on_clean(self, action, n=1):
            self.seen[action] = self.seen.get(action, 0) + n

    cfg = _config(cleaners=[{"kind": "impute"}, {"kind": "dedup"}, {"kind": "lateness", "allowed": "1m"}],
                  features=[{"kind": "hash", "fields": ["shop"]}])
    sensor = Cleanings()
    processor = PipelineProcessor(cfg, sensor)
    bodies = [{"id": 1, "card": "c", "ts": 1000, "amount": 2.0, "shop": "s", "y": True},
              {"id": 2, "card": "c", "ts": 1001, "shop": "s", "y": False},      # imputed
              {"id": 2, "card": "c", "ts": 1002, "shop": "s"},                  # duplicate
              {"id": 3, "card": "c", "ts": 800, "amount": 1.0, "shop": "s"}]    # late
    records = [ConsumedRecord("in", 0, i, b"c", json.dumps(b).encode(), 0) for i, b in enumerate(bodies)]
    out = processor.process(records)
    assert sensor.seen == {"imputed": 1, "deduplicated": 1, "late": 1}
    stages = [dict(r.headers).get("streamwise.error.stage") for r in out if r.topic == cfg.dead_letter_topic]
    assert stages == [b"clean", b"clean"]


def test_a_record_without_a_timestamp_holds_the_event_time_to_the_clock():
    # Producers of Kafka's v0 message format write no timestamp (-1 ms): holding the
    # event time to it refused every event they sent as "ahead of its record timestamp".
    import time

    cfg = _config()
    pipeline = build_event_pipeline(cfg.event_schema, cfg.cleaners, cfg.features)
    now = time.time()
    event = json.dumps({"id": 1, "card": "c", "ts": now - 5, "amount": 5.0, "shop": "s"}).encode()
    ahead = json.dumps({"id": 2, "card": "c", "ts": now + 7200, "amount": 5.0, "shop": "s"}).encode()
    for record_time in (-0.001, 0.0):
        assert pipeline.decode(event, record_time).id == 1
        (decoded, refused) = pipeline.decode_many([event, ahead], [record_time, record_time])
        assert decoded.id == 1 and isinstance(refused, RejectedEvent) and "ahead of the clock" in refused.reason
    with pytest.raises(RejectedEvent, match="ahead of its record timestamp"):
        pipeline.decode(event, 1000.0)  # a real timestamp still holds the event time
