"""Dataset sources of `streamwise replay`: what events they produce, before any Kafka."""

from __future__ import annotations

import json

import pytest
from river import datasets

from streamwise.core.errors import ConfigError
from streamwise.replay import dataset_size, iter_events


def _decoded(events):
    return [(k, json.loads(v)) for k, v in events]


def test_river_dataset_events_carry_id_features_and_label_in_order():
    events = _decoded(iter_events("phishing", limit=3))
    x0, y0 = next(iter(datasets.Phishing()))
    assert events[0] == (b"0", {"id": 0, **x0, "label": y0})
    assert [e["id"] for _k, e in events] == [0, 1, 2]
    assert dataset_size("Phishing") == 1250


def test_synthetic_generator_takes_parameters_and_a_limit():
    a = _decoded(iter_events("synth.Agrawal", {"seed": 3, "classification_function": 2}, limit=50))
    b = _decoded(iter_events("synth.Agrawal", {"seed": 3, "classification_function": 2}, limit=50))
    assert len(a) == 50 and a == b and set(a[0][1]) >= {"id", "salary", "label"}


def test_csv_cells_become_numbers_and_jsonl_passes_bad_lines_through(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("amount,city,flag\n12.5,Oslo,1\n,Lima,0\n")
    rows = [e for _k, e in _decoded(iter_events(str(csv)))]
    assert rows == [{"amount": 12.5, "city": "Oslo", "flag": 1, "id": 0}, {"city": "Lima", "flag": 0, "id": 1}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b'{"id": "a", "v": 1}\nnot json\n{"v": 2}\n')
    out = list(iter_events(str(jsonl), key_field="v"))
    assert out[0] == (b"1", b'{"id":"a","v":1}') and out[1] == (None, b"not json")
    assert json.loads(out[2][1]) == {"v": 2, "id": 2}


def test_card_transactions_are_keyed_by_card():
    events = _decoded(iter_events("streamwise.CardTransactions", {"n_events": 20}, key_field="card_id"))
    assert len(events) == 20 and all(k.decode() == e["card_id"] for k, e in events)


@pytest.mark.parametrize("source", ["NoSuchDataset", "synth.Nope", "streamwise.Nope", "missing.csv"])
def test_an_unknown_source_is_a_config_error(source):
    with pytest.raises(ConfigError, match="source"):
        list(iter_events(source, limit=1))


def test_a_bad_dataset_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="source: Phishing"):
        list(iter_events("Phishing", {"no_such_parameter": 1}, limit=1))


def test_a_generator_parameter_takes_a_nested_generator_with_dotted_parameters():
    from river.datasets import synth

    params = {
        "stream": "synth.Agrawal",
        "stream.classification_function": 0,
        "stream.seed": 7,
        "drift_stream": "synth.Agrawal",
        "drift_stream.classification_function": 7,
        "drift_stream.seed": 7,
        "position": 100,
        "width": 10,
        "seed": 7,
    }
    got = [e for _k, e in _decoded(iter_events("synth.ConceptDriftStream", params, limit=300))]
    expected = synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=7),
        drift_stream=synth.Agrawal(classification_function=7, seed=7),
        position=100,
        width=10,
        seed=7,
    )
    assert [e["label"] for e in got] == [y for _x, y in expected.take(300)]
    with pytest.raises(ConfigError, match=r"stream\.seed given, but stream is not a synth.<Generator>"):
        list(iter_events("synth.ConceptDriftStream", {"stream.seed": 7}, limit=1))


def test_patient_vitals_are_keyed_by_patient_and_no_single_reading_gives_the_label_away():
    events = _decoded(iter_events("streamwise.PatientVitals", {"n_events": 4000, "seed": 3}, key_field="patient_id"))
    assert all(k.decode() == e["patient_id"] for k, e in events)
    assert [e["id"] for _k, e in events] == list(range(4000))
    rows = [e for _k, e in events]
    for vital in ("heart_rate", "systolic_bp", "spo2"):
        values = [r[vital] for r in rows]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        pos = [r[vital] for r in rows if r["deteriorating"]]
        neg = [r[vital] for r in rows if not r["deteriorating"]]
        # Labelled readings sit in the later half of a trend centred on the baseline, so they
        # lean a little its way (measured: 0.26 of the spread for heart rate), against the
        # far larger spread between patients.
        assert abs(sum(pos) / len(pos) - sum(neg) / len(neg)) < 0.3 * std, vital
