"""Decoded state keeps plain objects' attributes inline (models/state.py).

CPython stores a plain object's attributes in an array shared with its class until
something reads ``obj.__dict__``; from then on the object holds a real dict, and its
attribute reads are slower (a pickled Hoeffding tree learned about a quarter slower,
bench/clients.py). Which of the two an object has shows in its GC referents: the
attribute values themselves, or one dict holding them.
"""

from __future__ import annotations

import gc
import json
import time
from typing import Any

from river import datasets, stats, tree
from streamwise.connectors.records import ConsumedRecord
from streamwise.models.state import decode_state, encode_state, fingerprint

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor


def _holds_a_dict(obj: Any) -> bool:
    """Whether ``obj``'s attributes live in a dict of their own: then its referents are
    that dict (whose every entry is an attribute of ``obj``) and its class, where inline
    they are the attribute values themselves."""
    refs = [r for r in gc.get_referents(obj) if r is not type(obj)]
    if len(refs) != 1 or type(refs[0]) is not dict:
        return False
    missing = object()
    return all(isinstance(k, str) and getattr(obj, k, missing) is v for k, v in refs[0].items())


def _objects(root: Any) -> list[Any]:
    """Every instance of a River class reachable from ``root`` through attributes and containers."""
    seen: set[int] = set()
    out, stack = [], [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif type(obj).__module__.startswith("river.") and not isinstance(obj, type):
            out.append(obj)
            stack.extend(r for r in gc.get_referents(obj) if not isinstance(r, type))
    return out


def test_a_decoded_statistic_holds_its_attributes_inline_and_the_same_values() -> None:
    mean = stats.Mean()
    for v in (1.0, 2.0, 6.0):
        mean.update(v)
    decoded = decode_state(encode_state(mean))
    assert not _holds_a_dict(decoded)
    assert (decoded.n, decoded.get()) == (3.0, 3.0)


def test_a_decoded_hoeffding_tree_is_inline_throughout_and_predicts_the_same() -> None:
    model = tree.HoeffdingTreeClassifier(grace_period=50)
    rows = list(datasets.Phishing())
    for x, y in rows[:800]:
        model.learn_one(x, y)
    decoded = decode_state(encode_state(model))
    objects = _objects(decoded)
    assert model.n_nodes > 1 and len(objects) > 20  # branches, leaves, splitters, statistics
    assert [type(o).__name__ for o in objects if _holds_a_dict(o)] == []
    assert fingerprint(decoded) == fingerprint(model)
    for x, _ in rows[800:]:
        assert decoded.predict_proba_one(x) == model.predict_proba_one(x)


def test_a_processor_keeps_inline_models_through_its_checkpoints() -> None:
    """The guard's checkpoints encode the live state (which gives every object it holds a
    dict), then the processor takes the decoded copy: after every batch its tree holds
    no more dicts than the same tree learned without any checkpoint (River builds some
    nodes through ``__dict__`` itself), and equals it."""
    cfg = parse_pipeline_config(
        {
            "name": "inline",
            "input": {"topic": "ev"},
            "output": {"topic": "out"},
            "schema": {"id": "id", "label": "y", "features": {"a": "float", "b": "float"}},
            "task": "classification",
            "metric": "Accuracy",
            "models": [{"name": "tree", "steps": [{"tree.HoeffdingTreeClassifier": {"grace_period": 20}}]}],
        }
    )
    now = int(time.time() * 1000)
    events = [{"id": i, "a": i % 7 / 7, "b": float(i % 3), "y": i % 7 > 3} for i in range(600)]
    records = [ConsumedRecord("ev", 0, i, None, json.dumps(e).encode(), now + i) for i, e in enumerate(events)]
    processor, reference = PipelineProcessor(cfg), tree.HoeffdingTreeClassifier(grace_period=20)

    def with_dicts(model: Any) -> int:
        return sum(_holds_a_dict(o) for o in _objects(model))

    for i in range(0, len(records), 100):
        processor.process(records[i : i + 100])
        for e in events[i : i + 100]:
            reference.learn_one({"a": e["a"], "b": e["b"]}, e["y"])
        assert with_dicts(processor.models[0].estimator) <= with_dicts(reference)
    assert reference.n_nodes > 1
    assert fingerprint(processor.models[0].estimator) == fingerprint(reference)
