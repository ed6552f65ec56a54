"""Delayed labels join their event by id, with an integer written as a string ("42")
the same id as the integer (models/labels.py join_id): a label service that writes ids
as strings must not leave the models without a single label."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from river import datasets
from streamwise.connectors.records import ConsumedRecord
from streamwise.core.sensors import Sensor
from streamwise.models.config import LabelsConfig
from streamwise.models.labels import PendingLabels
from streamwise.models.model_set import ModelSet
from streamwise.models.catalog import ModelSpec
from streamwise.models.state import fingerprint
from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor

ROOT = Path(__file__).resolve().parents[2]
ROWS = list(itertools.islice(datasets.Phishing(), 300))
LOGREG = ModelSpec(name="logreg", steps=["preprocessing.StandardScaler", "linear_model.LogisticRegression"])


def _run(event_id: Any, label_id: Any, delay: int = 5) -> tuple[PipelineProcessor, list[Any]]:
    data = yaml.safe_load((ROOT / "examples" / "phishing.yaml").read_text())
    data["input"]["labels_topic"] = "phishing.labels"
    processor = PipelineProcessor(parse_pipeline_config(data))
    records = []
    for i, (x, _y) in enumerate(ROWS):
        records.append(("phishing.events", {"id": event_id(i), **x}))
        if i >= delay:
            records.append(("phishing.labels", {"id": label_id(i - delay), "label": ROWS[i - delay][1]}))
    consumed = [ConsumedRecord(t, 0, k, None, json.dumps(v).encode(), 1_700_000_000_000 + k) for k, (t, v) in
                enumerate(records)]
    out = []
    for start in range(0, len(consumed), 37):
        out += processor.process(consumed[start : start + 37])
    predictions = [json.loads(o.value)["models"] for o in out if o.topic == "phishing.predictions"]
    return processor, predictions


def test_an_id_written_as_a_string_joins_the_integer_id_both_ways():
    same, same_predictions = _run(int, int)
    assert {m.name: m.n_learned for m in same.models} == {"logreg": 295, "hoeffding_tree": 295}
    for event_id, label_id in [(int, str), (str, int), (lambda i: f"{i}", lambda i: f"{i}")]:
        joined, predictions = _run(event_id, label_id)
        assert predictions == same_predictions
        assert fingerprint(joined.snapshot_state()["learners"]) == fingerprint(same.snapshot_state()["learners"])


def test_only_the_canonical_integer_string_is_the_integer():
    # "007" is not 7: such a label waits for an event "007"; "100" to "294" are canonical
    padded, _ = _run(int, lambda i: f"{i:03d}")
    assert {m.name: m.n_learned for m in padded.models} == {"logreg": 195, "hoeffding_tree": 195}


def _merge(sides: list[list[Any]], rng: random.Random) -> list[Any]:
    """One random read order of several time-ordered partitions: each keeps its order."""
    heads = [0] * len(sides)
    out = []
    while True:
        open_sides = [i for i, side in enumerate(sides) if heads[i] < len(side)]
        if not open_sides:
            return out
        i = rng.choice(open_sides)
        out.append(sides[i][heads[i]])
        heads[i] += 1


def test_which_labels_join_depends_on_the_record_times_not_on_which_topic_was_read_first():
    # Events on 3 partitions, every 4th labelled on 3 label partitions, with delays on
    # both sides of the window: a label joins iff -early_hold_s <= delay <= ttl_s, read
    # in any order (all events first: a backlog; all labels first; random interleavings).
    rng = random.Random(7)
    ttl, hold = 600.0, 60.0
    events, labels, expected = [[], [], []], [[], [], []], set()
    for i in range(6000):
        t = 1_000.0 + 0.5 * i
        events[i % 3].append(("event", i, t, i % 3))
        if i % 4 == 0:
            delay = rng.choice([rng.uniform(0, ttl), rng.uniform(-hold, 0), rng.uniform(ttl + 1, 3 * ttl),
                                rng.uniform(-3 * hold, -hold - 1), 0.0, ttl, -hold])
            labels[i % 3].append(("label", i, t + delay, i % 3))
            if -hold <= delay <= ttl:
                expected.add(i)
    for side in labels:
        side.sort(key=lambda r: r[2])  # a labels partition is in its own time order
    orders = {
        "events first": sum(events, []) + sum(labels, []),
        "labels first": sum(labels, []) + sum(events, []),
        **{f"interleaved {k}": _merge(events + labels, rng) for k in range(3)},
    }
    assert 1000 < len(expected) < 1400
    for name, order in orders.items():
        models = ModelSet([LOGREG], task="classification", metric="Accuracy", delayed_labels=True,
                          labels=LabelsConfig(ttl_s=ttl, early_hold_s=hold))
        models.pending.expect(3, 3)  # as the runner tells the learner of scope: global
        for kind, i, t, partition in order:
            if kind == "event":
                models.on_event(i, ROWS[i % len(ROWS)][0], None, t, partition=partition)
            else:
                models.on_label(i, ROWS[i % len(ROWS)][1], t, partition=partition)
        models.end_batch()
        report = models.report()["labels"]
        assert models.models[0].n_learned == len(expected), name
        assert report["joined"] == len(expected), name
        refused = report["late"] + report["early_expired"]
        assert refused + len(expected) == 1500, (name, report)
        assert report["held_early"] == 0 and report["delay_max_s"] <= ttl, name


def test_a_held_label_waits_for_the_slowest_events_partition():
    # Partition 0's events run an hour ahead of partition 1's: the label of an event on
    # partition 1 must still be held when that event is read.
    pending = PendingLabels(ttl_s=600.0, early_hold_s=60.0)
    pending.expect(2, 2)
    assert pending.on_event("a", "a", t=1000.0, partition=1) is None
    assert pending.on_label("b", True, t=1010.0, partition=1) is None  # b's event not read yet
    for k in range(100):
        assert pending.on_event(("p0", k), None, t=1000.0 + 36.0 * k, partition=0) is None
    assert pending.on_event("b", "b", t=1009.0, partition=1) == (1010.0, True)
    assert pending.stats.joined_early == 1 and pending.stats.early_expired == 0


class _Heard(Sensor):
    def __init__(self) -> None:
        self.latencies: list[float | None] = []
        self.delays: list[float] = []

    def on_predictions(self, latencies_s: Any) -> None:
        self.latencies += latencies_s

    def on_label(self, delay_s: float) -> None:
        self.delays.append(delay_s)


@pytest.mark.parametrize("untimed", ["labels", "events", "both", "every 7th event"])
@pytest.mark.parametrize("no_time", [-1, 0])
def test_records_without_a_timestamp_join_whatever_the_read_order_and_have_no_latency(untimed, no_time):
    """Kafka's -1 (or a producer's 0) on one side or both: each label still joins its
    event, whatever order the two topics are read in and however polls cut them (a
    backlog of events, labels first, interleaved); its delay is unknown, not 56 years;
    and a prediction of an event without a time says its latency is unknown."""
    data = yaml.safe_load((ROOT / "examples" / "phishing.yaml").read_text())
    data["input"]["labels_topic"] = "phishing.labels"
    now_ms = int(time.time() * 1000) - 60_000

    def event_time(i: int) -> int:
        untimed_event = untimed in ("events", "both") or (untimed == "every 7th event" and i % 7 == 0)
        return no_time if untimed_event else now_ms + 10 * i

    events = [ConsumedRecord("phishing.events", 0, i, None, json.dumps({"id": i, **x}).encode(), event_time(i))
              for i, (x, _y) in enumerate(ROWS)]
    labels = [ConsumedRecord("phishing.labels", 0, i, None, json.dumps({"id": i, "label": y}).encode(),
                             no_time if untimed in ("labels", "both") else now_ms + 10 * i + 50)
              for i, (_x, y) in enumerate(ROWS)]
    interleaved = [r for i in range(len(ROWS)) for r in (events[i], *labels[max(0, i - 5) : i - 4])] + labels[-5:]
    orders = {"interleaved": interleaved, "events first": events + labels, "labels first": labels + events}
    for (name, order), poll in itertools.product(orders.items(), (7, 50)):
        heard = _Heard()
        processor = PipelineProcessor(parse_pipeline_config(data), heard)
        out = []
        for start in range(0, len(order), poll):
            out += processor.process(order[start : start + poll])
        predictions = [json.loads(o.value) for o in out if o.topic == "phishing.predictions"]
        assert len(predictions) == len(ROWS)
        assert all(m.n_learned == len(ROWS) for m in processor.models), (name, poll)
        untimed_events = {i for i in range(len(ROWS)) if event_time(i) <= 0}
        timed_joins = 0 if untimed in ("labels", "both") else len(ROWS) - len(untimed_events)
        assert len(heard.delays) == timed_joins and max(heard.delays, default=0) < 60, (name, poll)
        assert all((p["latency_s"] is None) == (p["id"] in untimed_events) for p in predictions)
        assert sum(v is None for v in heard.latencies) == len(untimed_events)


@pytest.mark.parametrize("value, reason", [
    (b'{"id": 1, "label": 18446744073709551616}', "label beyond int64"),  # read as a float
    (b'{"id": 1, "label": 9223372036854775808}', "label longer than 1024 characters or beyond int64"),
    (b'{"id": 1, "label": 3.0}', "label must be an int, got float"),
])
def test_an_int_label_out_of_reach_says_why(value, reason):
    from streamwise.models.labels import LabelRecordError, decode_label_record

    with pytest.raises(LabelRecordError, match=f"^{reason}$"):
        decode_label_record(value, "id", "label", "int")
