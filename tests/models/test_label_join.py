"""Delayed labels join their event by id, with an integer written as a string ("42")
the same id as the integer (models/labels.py join_id): a label service that writes ids
as strings must not leave the models without a single label."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from river import datasets
from streamwise.connectors.records import ConsumedRecord
from streamwise.models.state import fingerprint
from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor

ROOT = Path(__file__).resolve().parents[2]
ROWS = list(itertools.islice(datasets.Phishing(), 300))


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
