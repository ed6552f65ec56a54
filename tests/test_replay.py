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


@pytest.mark.parametrize(
    ("source", "params", "named"),
    [
        # Refused by the constructor (a ValueError, not the TypeError of an unknown name).
        ("synth.Agrawal", {"classification_function": 99}, "classification_function=99"),
        # Accepted by the constructor, refused when the first event is drawn.
        ("synth.RandomRBF", {"n_classes": 0}, "n_classes=0"),
        ("synth.Friedman", {"seed": [1]}, "seed=[1]"),
    ],
)
def test_a_generator_parameter_out_of_range_or_of_the_wrong_type_is_a_config_error(source, params, named):
    with pytest.raises(ConfigError) as caught:
        list(iter_events(source, params, limit=1))
    message = str(caught.value)
    assert message.startswith(f"source: {source} with {named}: ") and "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"a,b\n1,2\n3\n", "line 3: 1 field, the header has 2"),
        (b"a,b\n1,2,3\n", "line 2: 3 fields, the header has 2"),
        (b"a,b\n1,2\n\xff,4\n", "line 3: not UTF-8 text"),
    ],
)
def test_a_csv_row_that_does_not_fit_the_header_or_is_not_utf8_names_the_file_and_line(tmp_path, text, expected):
    path = tmp_path / "rows.csv"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=f"^source: {path}, {expected}"):
        list(iter_events(str(path)))


def _replay(*args: str):
    from typer.testing import CliRunner

    from streamwise.cli import app

    # No broker listens on port 1: each mistake must be named before Kafka is asked.
    return CliRunner().invoke(app, ["replay", *args, "--topic", "t", "--bootstrap-servers", "127.0.0.1:1"])


def test_replay_names_a_refused_parameter_or_a_bad_row_in_one_line_before_connecting(tmp_path):
    result = _replay("synth.Agrawal", "-p", "classification_function=99")
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "streamwise: source: synth.Agrawal with classification_function=99: "
        "classification_function takes values from 0 to 9 and 99 was passed"
    ]
    path = tmp_path / "short.csv"
    path.write_text("a,b\n1\n")
    result = _replay(str(path))
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"streamwise: source: {path}, line 2: 1 field, the header has 2"]


def test_a_param_value_that_is_not_yaml_is_refused_at_its_option():
    result = _replay("synth.Agrawal", "-p", "x=[unclosed")
    assert result.exit_code == 2, result.output
    # Word-wrapped in typer's error box: compared without the box and the line breaks.
    said = " ".join(result.output.replace("│", " ").split())
    assert "Invalid value for --param: 'x=[unclosed': the value is not valid YAML: expected ',' or ']'" in said
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("option", "value"), [
    ("--partitions", "0"), ("--partitions", "100000000"), ("--limit", "-1"), ("--rate", "-5"), ("--rate", "nan"),
])
def test_replay_refuses_a_count_or_rate_no_topic_can_take_before_kafka_is_asked(option, value):
    # Before, --partitions 0 dumped the broker's CreateTopics answer, --limit -1
    # published nothing and said so with exit 0, and a negative rate was ignored.
    from streamwise.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["replay", "Phishing", "--topic", "t", option, value,
                                      "--bootstrap-servers", "127.0.0.1:1"])
    assert result.exit_code == 2 and option in result.output, result.output
