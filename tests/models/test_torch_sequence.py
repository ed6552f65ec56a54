"""The per-key sequence learners on their own: exactness, state, bounds, memory."""

from __future__ import annotations

import pickle
import random
import tracemalloc

import numpy as np
import pytest
import torch
from streamwise.models.catalog import build_estimator
from streamwise.models.torch_sequence import TorchSequenceClassifier, TorchSequenceRegressor


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Two shared cores: with a thread per core, torch's threads fight the other work and a
    # small GRU step takes ten times as long (measured 27 ms against 2 ms).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stream(n: int, n_keys: int = 6, seed: int = 0) -> list[tuple[str, dict, bool]]:
    """Keys whose label is whether their value rose over their last two events."""
    rng = random.Random(seed)
    last: dict[str, list[float]] = {}
    out = []
    for _ in range(n):
        key = f"k{rng.randrange(n_keys)}"
        v = rng.gauss(0, 1)
        seen = last.setdefault(key, [])
        seen.append(v)
        y = len(seen) >= 3 and seen[-1] > seen[-2] > seen[-3]
        out.append((key, {"v": v, "w": rng.uniform(-1, 1), "site": rng.choice("xyz")}, y))
    return out


def _make(cls=TorchSequenceClassifier, **kw):
    params = dict(features=["v", "w"], hash_width=4, sequence_length=4, hidden_size=8, hidden_layers=[8],
                  batch_size=8, lr=0.01, dropout=0.1, device="cpu", seed=3)
    return cls(**{**params, **kw})


def _run(model, events, block: int, start: int = 0) -> list[dict]:
    """Prequential in blocks, as the model set drives it: predict a block (never past the
    next step), then learn its labelled rows, by key and id."""
    probas: list[dict] = []
    i = 0
    while i < len(events):
        n = min(block, model.rows_until_step)
        chunk = events[i : i + n]
        ids = list(range(start + i, start + i + len(chunk)))
        keys = [k for k, _, _ in chunk]
        X = [x for _, x, _ in chunk]
        probas += model.predict_proba_many(X, keys=keys, ids=ids)
        model.learn_many(X, [y for _, _, y in chunk], t=float(i), keys=keys, ids=ids)
        i += len(chunk)
    return probas


def _close(a: list[dict], b: list[dict]) -> bool:
    return all(abs(p[True] - q[True]) < 1e-6 for p, q in zip(a, b, strict=True)) and len(a) == len(b)


def test_predictions_do_not_depend_on_how_the_stream_was_blocked():
    events = _stream(300)
    one, seven, fifty = _make(), _make(), _make()
    assert _close(_run(one, events, 1), _run(seven, events, 7))
    assert _close(_run(one := _make(), events, 1), _run(fifty, events, 50))
    assert one.n_steps == fifty.n_steps == 300 // 8


def test_a_restored_learner_continues_exactly_like_one_never_stopped():
    events = _stream(400)
    straight = _make()
    expected = _run(straight, events, 5)
    stopped = _make()
    first = _run(stopped, events[:203], 5)
    restored = pickle.loads(pickle.dumps(stopped))
    assert restored.n_keys == stopped.n_keys and restored.n_observed == 203
    rest = _run(restored, events[203:], 5, start=203)
    assert first + rest == expected, "bit-identical on the CPU"


def test_a_late_label_trains_on_the_window_its_event_was_predicted_with():
    a, b = _make(batch_size=1, dropout=0.0), _make(batch_size=1, dropout=0.0)
    e1, e2 = {"v": 1.0, "w": 0.0}, {"v": -2.0, "w": 0.5}
    # a: the label of e1 comes after e2 arrived; b: before.
    a.predict_many([e1], keys=["p"], ids=[1])
    a.predict_many([e2], keys=["p"], ids=[2])
    a.learn_one(e1, True, key="p", event_id=1)
    b.predict_many([e1], keys=["p"], ids=[1])
    b.learn_one(e1, True, key="p", event_id=1)
    b.predict_many([e2], keys=["p"], ids=[2])
    for wa, wb in zip(a.state_dict()["model"].values(), b.state_dict()["model"].values(), strict=True):
        assert torch.equal(wa, wb)
    assert len(a.history("p")) == len(b.history("p")) == 2, "learning a predicted row does not observe it again"


def test_without_ids_predicting_changes_nothing_and_learning_is_the_events_arrival():
    model = _make(batch_size=2, dropout=0.0)
    X = [{"v": 0.1, "w": 0.2}, {"v": 0.3, "w": 0.4}]
    first = model.predict_proba_many(X, keys=["a", "a"])
    assert model.predict_proba_many(X, keys=["a", "a"]) == first and len(model.history("a")) == 0
    # The second row's window holds the first, as if it had arrived: as when each row is
    # predicted, then learned, in turn.
    one_by_one = _make(batch_size=2, dropout=0.0)
    alone = [one_by_one.predict_proba_one(X[0], key="a")]
    one_by_one.learn_one(X[0], True, key="a")
    alone.append(one_by_one.predict_proba_one(X[1], key="a"))
    assert _close(first, alone)
    model.learn_many(X, [True, False], keys=["a", "a"])
    assert len(model.history("a")) == 2 and model.n_steps == 1


def test_histories_are_bounded_by_length_keys_and_idle_events():
    model = _make(sequence_length=3, max_keys=4, idle_ttl=10)
    for i in range(6):
        model.predict_many([{"v": float(i)}], keys=["a"], ids=[i])
    assert model.history("a")[:, 0].tolist() == [3.0, 4.0, 5.0], "the last 3 rows, oldest first"
    model.predict_many([{"v": 0.0}] * 5, keys=["b", "c", "d", "e", "f"], ids=list(range(6, 11)))
    assert model.n_keys == 4 and len(model.history("a")) == 0, "the least recently seen key went first"
    for i in range(10):
        model.predict_many([{"v": 0.0}], keys=["g"], ids=[20 + i])
    assert model.n_keys == 1, "keys idle for 10 events are dropped"
    assert model.n_evicted_keys == 6


def test_explanations_name_the_previous_events_by_lag():
    model = _make(hash_width=0)
    _run(model, _stream(64), 8)
    X = [{"v": 0.5, "w": 0.0}]
    model.predict_many(X, keys=["k1"], ids=["q"])
    (ex,) = model.explain_many(X, k=6, keys=["k1"], ids=["q"])
    assert ex and all(name.split("[")[0] in {"v", "w"} for name in ex)
    assert any(name.endswith("]") for name in ex), ex


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_learns_a_trend_that_no_single_event_shows(cell):
    model = _make(cell=cell, dropout=0.0, hidden_size=16, batch_size=16, lr=0.02, hash_width=0)
    events = _stream(3000, n_keys=4)
    probas = _run(model, events, 16)
    tail = [(p[True] > 0.5) == y for p, (_, _, y) in zip(probas[-500:], events[-500:], strict=True)]
    base = 1 - sum(y for _, _, y in events[-500:]) / 500
    assert sum(tail) / 500 > base + 0.05, f"accuracy {sum(tail) / 500:.3f} vs majority {base:.3f}"


def test_the_regressor_restores_its_target_scale_too():
    model = _make(TorchSequenceRegressor, dropout=0.0)
    X = [{"v": float(i % 5)} for i in range(40)]
    model.predict_many(X, keys=["a"] * 40, ids=list(range(40)))
    model.learn_many(X, [10.0 + i for i in range(40)], keys=["a"] * 40, ids=list(range(40)))
    clone = pickle.loads(pickle.dumps(model))
    probe = [{"v": 1.0}]
    assert clone.predict_many(probe, keys=["a"]) == model.predict_many(probe, keys=["a"])


def test_built_from_the_catalog_and_on_the_gpu_when_there_is_one():
    model = build_estimator([{"streamwise.TorchSequenceClassifier": {"features": ["v"], "cell": "lstm"}}])
    assert isinstance(model, TorchSequenceClassifier) and model.cell == "lstm"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.device_name.startswith(expected), "device: auto picks CUDA when torch sees it"
    with pytest.raises(ValueError, match="cell must be one of"):
        build_estimator([{"streamwise.TorchSequenceClassifier": {"cell": "rnn"}}])


# Measured here: 100,000 keys, sequence length 8, 5 features cost 52.6 MB of histories
# (526 bytes per key: 160 of rows; the rest is the array header, the ring, the ordered
# dict's entry and the key string itself).
BYTES_PER_KEY_BOUND = 600


def test_one_hundred_thousand_keys_stay_within_the_stated_memory_bound():
    names = ["a", "b", "c", "d", "e"]
    model = TorchSequenceClassifier(features=names, hash_width=0, sequence_length=8, hidden_size=16,
                                    max_awaiting=0, device="cpu", seed=0)
    rng = np.random.default_rng(0)
    rows = [dict(zip(names, map(float, r), strict=True)) for r in rng.normal(size=(1000, 5))]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for block in range(100):
        model.predict_proba_many(rows, keys=[f"key-{block}-{i}" for i in range(1000)], ids=list(range(1000)))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert model.n_keys == 100_000
    per_key = used / 100_000
    print(f"{per_key:.0f} bytes per key, {used / 1e6:.1f} MB for 100,000 keys")
    assert per_key < BYTES_PER_KEY_BOUND


def test_the_model_set_hands_the_learner_each_events_key_and_id():
    from streamwise.models.catalog import ModelSpec
    from streamwise.models.model_set import ModelSet

    spec = ModelSpec(name="gru", steps=[{"streamwise.TorchSequenceClassifier": {
        "sequence_length": 4, "hidden_size": 8, "batch_size": 8, "device": "cpu", "seed": 0}}])
    models = ModelSet([spec], task="classification", metric="Accuracy", numeric_features=["v", "w"],
                      delayed_labels=True)
    events = _stream(200)
    for i, (key, x, _y) in enumerate(events):
        models.on_event(i, x, None, t=float(i), key=key)
        if i >= 5:  # each label five events late, from a labels topic
            models.on_label(i - 5, events[i - 5][2], t=float(i))
        if i % 20 == 19:
            models.end_batch()
    models.end_batch()
    learner = models.models[0].estimator
    assert learner.n_keys == len({k for k, _, _ in events}), "one history per key, not one for all"
    assert learner.n_observed == 200, "every event observed once, labelled later or not"
    assert sorted(learner._awaiting) == list(range(195, 200)), "only unlabelled events' windows wait"
