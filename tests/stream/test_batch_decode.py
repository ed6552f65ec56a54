"""BatchDecoder (msgspec, a poll at once) gives exactly what EventDecoder (pydantic, one
record at a time) gives: the same events, field types and order included, and the same
rejections with the same messages."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamwise.stream.batch_decode import BatchDecoder
from streamwise.stream.schema import EventDecoder, EventSchema, RejectedEvent

from streamwise.pipeline_config import load_pipeline_config
from streamwise.replay import iter_events

ROOT = Path(__file__).resolve().parents[2]

SCHEMAS = {
    "every type": EventSchema(
        id="id", key="user", event_time="ts", label="y", label_type="float",
        features={
            "amount": {"type": "float", "required": False},
            "price": {"type": "float", "min": -1e6, "max": 1e6},
            "n": {"type": "int", "required": False, "min": 1, "max": 1e12},
            "flag": {"type": "bool", "required": False},
            "city": {"type": "category", "categories": ["Lyon", "Oslo"], "required": False},
            "shop": {"type": "category", "required": False},
            "memo": {"type": "text", "required": False},
            "when": {"type": "timestamp", "required": False},
        },
    ),
    "category label, int key": EventSchema(
        id="id", key="n", label="y", label_type="category", features={"n": "int", "f": {"min": 0, "max": 1}}
    ),
    "int label, key is id": EventSchema(id="id", key="id", label="y", label_type="int", features={"f": "float"}),
    "fraud": load_pipeline_config(ROOT / "examples" / "fraud.yaml").event_schema,
    "phishing": load_pipeline_config(ROOT / "examples" / "phishing.yaml").event_schema,
}
FIELDS = sorted({f for s in SCHEMAS.values() for f in s.features} | {"id", "ts", "user", "y", "card_id", "is_fraud"})

scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.floats(-2e6, 2e6) | st.text(max_size=6)
    | st.sampled_from(["Lyon", "Oslo", "Rome", "1", "2024-01-02T03:04:05", "online", "pos"])
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)
events = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=3), values, max_size=14)
raw = (
    events.map(lambda e: json.dumps(e).encode())
    | st.binary(max_size=60)
    | st.sampled_from([b'{"id": 1, "id": 2, "price": 1, "f": 0.5}', b'{"id": 1, "price": 1e400}', b"[1]", b"null",
                       b'{"id": 1, "price": NaN}', b'{"id": "\xff", "price": 1}', b"{" * 3000 + b"}" * 3000,
                       # the bounded reader's limits: id length, int64, category length, nesting
                       b'{"id": "' + b"i" * 1025 + b'", "price": 1, "f": 0.5}',
                       b'{"id": 9223372036854775808, "f": 0.5}',
                       b'{"id": 1, "price": 1, "f": 0.5, "shop": "' + b"s" * 1025 + b'", "n": 9223372036854775808}',
                       b'{"id": 1, "f": 0.5, "x": ' + b"[" * 1100 + b"]" * 1100 + b"}",
                       # what msgspec skips unread in a field the schema does not name
                       b'{"id": 1, "price": 1, "f": 0.5, "extra": 1e400}',
                       b'{"id": 1, "price": 1, "f": 0.5, "extra": "\xe9t\xe9"}'])
    | st.none()
)


def _fitting(spec: Any) -> st.SearchStrategy[Any]:
    if spec.categories is not None:
        return st.sampled_from([*spec.categories, "Rome"])
    low = -1e6 if spec.min is None else spec.min
    high = 1e6 if spec.max is None else spec.max
    return {
        "float": st.floats(low, high) | st.integers(int(low), int(high)),
        "int": st.integers(int(low), int(min(high, 10**13))),
        "bool": st.booleans(),
        "category": st.sampled_from(["grocery", "online", "pos", "x"]),
        "text": st.text(max_size=8),
        "timestamp": st.floats(1.6e9, 1.7e9) | st.integers(0, 2**40) | st.just("2024-01-02T03:04:05"),
    }[spec.type]


def _plausible(schema: EventSchema) -> st.SearchStrategy[bytes]:
    """Events that are mostly right for ``schema``: each field of a fitting type and range,
    one time in eight a neighbouring value (an int for a float, a float for an int, a
    bool, null, a string) or missing."""
    near = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2) | st.sampled_from(["Lyon", "1", ""])
    fields: dict[str, Any] = {schema.id: st.integers(0, 99) | st.text(max_size=3)}
    if schema.key is not None and schema.key not in schema.features:
        fields[schema.key] = st.sampled_from(["a", "b"]) | st.integers(0, 3)
    if schema.label is not None:
        fields[schema.label] = {"bool": st.booleans(), "float": st.floats(-1, 1), "int": st.integers(0, 3),
                                "category": st.sampled_from(["yes", "no", 1, True])}[schema.label_type]
    if schema.event_time is not None:
        fields[schema.event_time] = st.floats(1.6e9, 1.7e9) | st.just("2024-01-02T03:04:05")
    for name, spec in schema.features.items():
        fields[name] = _fitting(spec)
    mostly = {name: st.integers(0, 7).flatmap(lambda i, good=good: near if i == 0 else good)
              for name, good in fields.items()}
    return st.fixed_dictionaries(mostly).map(lambda e: json.dumps(e).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(SCHEMAS)))
def test_plausible_events_decode_the_same(data: st.DataObject, name: str) -> None:
    schema = SCHEMAS[name]
    items = data.draw(st.lists(_plausible(schema), min_size=1, max_size=10))
    batch = BatchDecoder(schema)
    expected = [_signature(_one_at_a_time(batch.fallback, v)) for v in items]
    assert [_signature(r) for r in batch.decode_many(items)] == expected


def test_real_streams_take_the_fast_path_and_decode_the_same() -> None:
    for name, source, params, key in [("phishing", "Phishing", {}, None),
                                      ("fraud", "streamwise.CardTransactions", {"n_events": 500}, "card_id")]:
        schema = SCHEMAS[name]
        items = [v for _k, v in iter_events(source, params, key_field=key)]
        batch = BatchDecoder(schema)
        assert batch.fast
        got = batch.decode_many(items)
        assert not any(isinstance(r, RejectedEvent) for r in got), name
        assert [_signature(r) for r in got] == [_signature(_one_at_a_time(batch.fallback, v)) for v in items]


def _signature(result: Any) -> Any:
    """What must match: the event's fields with their types and order, or the rejection."""
    if isinstance(result, RejectedEvent):
        return ("rejected", result.stage, result.reason)
    typed = lambda v: (type(v).__name__, v)  # noqa: E731
    return (typed(result.id), [(k, *typed(v)) for k, v in result.x.items()], typed(result.y), result.key,
            typed(result.event_time))


def _one_at_a_time(decoder: EventDecoder, value: bytes | None) -> Any:
    try:
        return decoder.decode(value)
    except RejectedEvent as e:
        return e


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(raw, max_size=8), name=st.sampled_from(sorted(SCHEMAS)))
def test_batch_decoding_equals_one_record_at_a_time(items: list[bytes | None], name: str) -> None:
    schema = SCHEMAS[name]
    batch = BatchDecoder(schema)
    expected = [_signature(_one_at_a_time(batch.fallback, v)) for v in items]
    assert [_signature(r) for r in batch.decode_many(items)] == expected


def test_the_fast_path_serves_the_shipped_examples() -> None:
    for name, schema in SCHEMAS.items():
        assert BatchDecoder(schema).fast, name
    boolean_categories = EventSchema(id="id", features={"c": {"type": "category", "categories": [True, "x"]}})
    assert not BatchDecoder(boolean_categories).fast
    assert BatchDecoder(boolean_categories).decode_many([b'{"id": 1, "c": true}'])[0].x == {"c": True}


UNNAMED_FIELDS = [
    # refused by the EventDecoder (orjson) for a field no schema names
    (b'{"id": 1, "price": 1, "f": 0.5, "extra": 1e400}', "number is infinity"),
    (b'{"id": 1, "price": 1, "f": 0.5, "extra": -2E+308}', "number is infinity"),
    (b'{"id": 1, "price": 1, "f": 0.5, "extra": [1, {"deep": 1e0309}]}', "number is infinity"),
    (b'{"id": 1, "price": 1, "f": 0.5, "extra": 1' + b"0" * 400 + b"}", "number is infinity"),
    (b'{"id": 1, "price": 1, "f": 0.5, "extra": "\xe9t\xe9"}', "not UTF-8"),  # Latin-1
    (b'{"id": 1, "price": 1, "f": 0.5, "\xff": 2}', "not UTF-8"),
    (b'{"id": 1, "price": 1, "f": 0.5, "extra": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate
    # accepted by both
    ('{"id": 1, "price": 1, "f": 0.5, "extra": "été", "e123": 1.5e-300, "n2": 1e+30}'.encode(), None),
    (b'{"id": 1, "price": 1, "f": 0.5, "extra": 12345678901234567890123}', None),
]


def test_a_field_no_schema_names_gets_the_one_at_a_time_verdict() -> None:
    """msgspec skips a field the schema does not name without reading it through; what
    orjson refuses there (bytes that are not UTF-8, a number beyond a double) must be
    refused all the same, in a poll of good records and alone."""
    # beside records with colons in a string (an event time) and without, and one written
    # with a blank before each colon (Jackson's pretty printer), whose missing '":' once
    # made up for the unread field's in a count over the poll
    goods = [b'{"id": 2, "price": 1, "f": 0.5}', b'{"id":3,"price":1,"f":0.5,"ts":"2024-01-02T03:04:05"}',
             b'{"id" : 4,"price":1,"f":0.5}', b'{"id" : 5,"price" : 1,"f":0.5}']
    for (name, schema), good in itertools.product(SCHEMAS.items(), goods):
        batch = BatchDecoder(schema)
        for value, refused in UNNAMED_FIELDS:
            expected = _signature(_one_at_a_time(batch.fallback, value))
            assert [_signature(r) for r in batch.decode_many([good, value, None, good])][1] == expected, (name, value)
            assert [_signature(r) for r in batch.decode_many([good, value])][1] == expected, (name, value, good)
            assert _signature(batch.decode_many([value])[0]) == expected, (name, value)
            if refused is not None:
                assert expected[0] == "rejected" and refused in expected[2], (name, value, expected)
            elif name == "int label, key is id":  # f is its one required feature
                assert expected[0] != "rejected", (name, value, expected)


def test_a_timestamp_feature_reaches_the_models_as_epoch_seconds_or_is_refused() -> None:
    """A timestamp feature was passed on as written: any text up to 1,024 characters passed
    validation, and an ISO time reached the models as a string (a scaler then raised at
    every event, and the model never learned)."""
    from streamwise.connectors.records import ConsumedRecord
    from streamwise.pipeline_config import parse_pipeline_config
    from streamwise.processor import PipelineProcessor

    schema = EventSchema(id="id", label="y", features={"opened": "timestamp", "amount": "float"})
    values = [b'{"id": 1, "opened": "2023-11-14T22:13:20Z", "amount": 1, "y": true}',
              b'{"id": 2, "opened": 1700000000, "amount": 2, "y": false}',
              b'{"id": 3, "opened": "garbage", "amount": 3, "y": true}',
              b'{"id": 4, "opened": "", "amount": 4, "y": true}']
    batch = BatchDecoder(schema)
    assert batch.fast
    expected = [_signature(_one_at_a_time(batch.fallback, v)) for v in values]
    assert [_signature(r) for r in batch.decode_many(values)] == expected
    assert [e[1][0] for e in expected[:2]] == [("opened", "float", 1700000000.0)] * 2
    assert expected[2] == ("rejected", "validate", "opened: not a timestamp: 'garbage'")
    assert expected[3][:2] == ("rejected", "validate")

    config = parse_pipeline_config({
        "name": "t", "input": {"topic": "in"}, "output": {"topic": "out"},
        "schema": {"id": "id", "label": "y", "features": {"opened": "timestamp", "amount": "float"}},
        "models": [{"name": "lr", "steps": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]}],
    })
    processor = PipelineProcessor(config)
    out = processor.process([ConsumedRecord("in", 0, i, None, v, 1) for i, v in enumerate(values)])
    assert [r.topic for r in out].count("out") == 2 and [r.topic for r in out].count("in.dlq") == 2
    (model,) = processor.models
    assert model.n_learned == 2 and not model.faults
