"""The torch mini-batch learner on its own: determinism, learning, state, devices."""

from __future__ import annotations

import io
import pickle
import pickletools

import numpy as np
import pytest
import torch

from streamwise.models.torch_learner import TorchMiniBatchClassifier, TorchMiniBatchRegressor


def _xor_like(n: int, seed: int = 0) -> tuple[list[dict], list[bool]]:
    rng = np.random.default_rng(seed)
    X = [{"a": float(a), "b": float(b), "colour": "red" if a > 0 else "blue"} for a, b in rng.normal(size=(n, 2))]
    y = [x["a"] * x["b"] > 0 for x in X]
    return X, y


def _train(model, X, y, chunk: int = 50) -> list[list[dict]]:
    """Prequential in chunks, like poll batches: predict the chunk, then learn it."""
    probas = []
    for i in range(0, len(X), chunk):
        probas.append(model.predict_proba_many(X[i : i + chunk]))
        model.learn_many(X[i : i + chunk], y[i : i + chunk], t=float(i))
    return probas


def _make(**kw):
    params = dict(features=["a", "b"], hash_width=8, hidden_layers=[16, 8], dropout=0.1,
                  lr=0.01, batch_size=16, device="cpu", seed=7)
    return TorchMiniBatchClassifier(**{**params, **kw})


def test_same_seed_same_predictions_other_seed_differs():
    X, y = _xor_like(400)
    a, b, c = _make(), _make(), _make(seed=8)
    pa, pb, pc = _train(a, X, y), _train(b, X, y), _train(c, X, y)
    assert pa == pb
    assert pa != pc
    assert a.n_steps == b.n_steps == 400 // 16


def test_learning_reduces_the_loss_on_a_learnable_problem():
    X, y = _xor_like(600)
    model = _make(dropout=0.0)
    before = model.loss_on(X[-200:], y[-200:])
    for _ in range(5):
        model.learn_many(X[:400], y[:400])
    after = model.loss_on(X[-200:], y[-200:])
    assert after < 0.5 * before
    accuracy = np.mean([p == t for p, t in zip(model.predict_many(X[-200:]), y[-200:], strict=True)])
    assert accuracy > 0.9


def test_steps_every_batch_size_rows_and_after_max_wait_with_a_partial_batch():
    X, y = _xor_like(40)
    model = _make(batch_size=16, max_wait_s=5.0)
    model.learn_many(X[:20], y[:20], t=100.0)
    assert model.n_steps == 1 and model.n_learned == 16
    assert not model.flush(t=104.0)  # the partial batch has waited 4 s of stream time
    assert model.flush(t=105.5)
    assert model.n_steps == 2 and model.n_learned == 20


def test_pickle_round_trip_predicts_and_learns_the_same():
    X, y = _xor_like(300)
    model = _make()
    _train(model, X[:200], y[:200])
    model.learn_many(X[200:205], y[200:205], t=1.0)  # leave rows in the buffer
    clone = pickle.loads(pickle.dumps(model))
    assert clone.predict_proba_many(X[250:]) == model.predict_proba_many(X[250:])
    # Same optimizer state, buffer, statistics and dropout stream: learning goes on identically.
    assert _train(clone, X[205:], y[205:]) == _train(model, X[205:], y[205:])


def test_pickled_state_holds_state_dicts_not_a_module():
    model = _make()
    _train(model, *_xor_like(100))
    data = pickle.dumps(model)
    globals_referenced = {
        arg for op, arg, _ in pickletools.genops(data) if op.name in {"GLOBAL", "STACK_GLOBAL"} and arg
    }
    assert not any("torch" in str(g) for g in globals_referenced)
    assert b"torch.nn.modules" not in data and b"_MLP" not in data
    state = model.__getstate__()
    weights = torch.load(io.BytesIO(state["weights"]), weights_only=True)
    assert set(weights) == {"model", "optimizer"}
    assert all(isinstance(v, torch.Tensor) for v in weights["model"].values())
    assert "state" in weights["optimizer"] and "param_groups" in weights["optimizer"]


def test_warm_start_from_a_state_dict_file(tmp_path):
    X, y = _xor_like(400)
    trained = _make(dropout=0.0)
    for _ in range(3):
        trained.learn_many(X, y)
    path = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), path)
    warm = _make(dropout=0.0, warm_start=str(path))
    cold = _make(dropout=0.0)
    # The weights come over; the input statistics do not, so compare unscaled logits.
    for name, tensor in trained._net.state_dict().items():
        assert torch.equal(warm._net.state_dict()[name], tensor)
    assert not torch.equal(cold._net.state_dict()["layers.0.weight"], trained._net.state_dict()["layers.0.weight"])


def test_undeclared_features_are_hashed_into_a_fixed_width():
    model = _make(features=["a"], hash_width=4)
    v1 = model._vector({"a": 1.0, "zzz": 2.0, "colour": "red"})
    v2 = model._vector({"colour": "red", "zzz": 2.0, "a": 1.0, "new_field": None})
    assert v1.shape == (5,) and np.array_equal(v1, v2)
    assert v1[0] == 1.0 and v1[1:].sum() == 3.0


def test_regressor_learns_a_linear_target_and_explains_by_gradient_times_input():
    rng = np.random.default_rng(1)
    X = [{"x1": float(a), "x2": float(b)} for a, b in rng.normal(size=(500, 2))]
    y = [10.0 + 4.0 * x["x1"] for x in X]
    model = TorchMiniBatchRegressor(features=["x1", "x2"], hash_width=0, lr=0.01, batch_size=16, device="cpu")
    for _ in range(5):
        model.learn_many(X, y)
    errors = [abs(p - t) for p, t in zip(model.predict_many(X[:100]), y[:100], strict=True)]
    assert np.mean(errors) < 0.5
    (top,) = model.explain_many([{"x1": 2.0, "x2": 0.1}], k=1)
    assert list(top) == ["x1"]


def test_device_auto_is_cuda_when_present():
    model = _make(device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.device_name.startswith(expected)
    with pytest.raises(ValueError, match="device must be"):
        _make(device="tpu")
