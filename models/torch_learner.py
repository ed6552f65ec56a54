"""A PyTorch MLP that predicts whole poll batches and learns in mini-batches.

:class:`TorchMiniBatchClassifier` and :class:`TorchMiniBatchRegressor` speak River's
verbs (``predict_proba_one``, ``predict_one``, ``learn_one``) and their batch forms
(``predict_proba_many``, ``predict_many``, ``learn_many``) over lists of feature dicts,
so the processor can score a whole poll batch in one forward pass.

This module imports only torch and numpy (plus the standard library): it is checked
alone on GPU machines where nothing else of streamwise is installed.

How an event becomes a vector
    The declared ``features`` come first, in their declared order; every other feature
    is hashed (CRC-32, stable across processes, unlike ``hash``) into ``hash_width``
    buckets. A string value ``v`` of feature ``k`` adds 1 to the bucket of ``"k=v"``.
    With ``features=None`` the numeric features of the first event, sorted, are frozen
    as the declared ones. Inputs are standardised with running means and variances,
    updated only from the rows the network learns from.

When it learns
    Labelled rows are buffered; an optimizer step runs on every ``batch_size`` rows,
    and :meth:`flush` takes a step on a partial batch once its oldest row has waited
    ``max_wait_s`` of *stream* time (the record timestamps passed as ``t``), never of
    wall-clock time, so replaying a stream repeats every step exactly.

Determinism and state
    Weights are initialised from ``seed``; dropout masks come from a generator seeded
    with ``(seed, step number)``, so a restored learner draws the same masks as the one
    that was never stopped. Pickling stores the config, ``torch.save`` bytes of the
    network's and the optimizer's ``state_dict`` (loaded back with ``weights_only=True``),
    the running statistics and the buffer: never a pickled ``nn.Module``.
"""

from __future__ import annotations

import io
import os
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["TorchMiniBatchClassifier", "TorchMiniBatchRegressor", "resolve_device"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}
_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is the GPU when torch sees one, else the CPU.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in {"cpu", "cuda"}
    True
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in {"cpu", "cuda"} and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}") from None
    # Asked for by name, a GPU that is not there is a config error at build, not a
    # traceback at the first mini-batch ("auto" falls back to the CPU instead).
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch sees no GPU here; use auto to take one when present")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: torch sees {torch.cuda.device_count()} GPU(s)")
    return resolved


def _bucket(token: str, width: int) -> int:
    return zlib.crc32(token.encode("utf-8")) % width


class _MLP(nn.Module):
    """Linear layers with an activation between them; dropout is applied by the caller's
    generator so that masks are reproducible (``nn.Dropout`` draws from the global RNG)."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> None:
        super().__init__()
        sizes = [n_in, *hidden, n_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.activation = _ACTIVATIONS[activation]()

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, dropout: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.activation(x)
                if dropout > 0.0 and generator is not None:
                    keep = torch.rand(x.shape, generator=generator, device=x.device) >= dropout
                    x = x * keep / (1.0 - dropout)
        return x


class _TorchMiniBatchBase:
    """What the classifier and the regressor share: vectorising, buffering, stepping, state."""

    task: str = ""
    # Tells the processor to predict whole poll batches with one forward pass.
    predicts_in_batches = True

    def __init__(
        self,
        features: Sequence[str] | None = None,
        hash_width: int = 32,
        hidden_layers: Sequence[int] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 32,
        steps_per_batch: int = 1,
        max_wait_s: float | None = 5.0,
        standardize: bool = True,
        device: str = "auto",
        seed: int = 42,
        warm_start: str | None = None,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if batch_size < 1 or steps_per_batch < 1 or hash_width < 0:
            raise ValueError("batch_size and steps_per_batch must be >= 1, hash_width >= 0")
        if isinstance(hidden_layers, (str, bytes)) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in hidden_layers
        ):
            # A string would be read digit by digit: "32" built layers of 3 and 2 units.
            raise ValueError(f"hidden_layers must be a list of unit counts, e.g. [32, 16]; got {hidden_layers!r}")
        if features is not None and (isinstance(features, (str, bytes)) or not all(isinstance(f, str) for f in features)):
            raise ValueError(f"features must be a list of field names; got {features!r}")
        if any(int(h) < 1 for h in hidden_layers):
            raise ValueError(f"hidden_layers: every layer needs at least one unit, got {list(hidden_layers)}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if warm_start is not None and not os.path.isfile(warm_start):
            raise ValueError(f"warm_start: no file at {warm_start}")
        self.features = list(features) if features is not None else None
        self.hash_width = int(hash_width)
        self.hidden_layers = [int(h) for h in hidden_layers]
        self.activation = activation
        self.dropout = float(dropout)
        self.optimizer = optimizer
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.steps_per_batch = int(steps_per_batch)
        self.max_wait_s = max_wait_s
        self.standardize = standardize
        self.device = device
        self.seed = int(seed)
        self.warm_start = warm_start
        self._init_state()

    # -- construction -----------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "hash_width": self.hash_width,
            "hidden_layers": self.hidden_layers,
            "activation": self.activation,
            "dropout": self.dropout,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "steps_per_batch": self.steps_per_batch,
            "max_wait_s": self.max_wait_s,
            "standardize": self.standardize,
            "device": self.device,
            "seed": self.seed,
            "warm_start": self.warm_start,
        }

    def clone(self) -> Any:
        """A fresh, untrained learner with the same parameters (River's ``clone``)."""
        return type(self)(**self._params())

    def _n_outputs(self) -> int:
        raise NotImplementedError

    def _init_state(self) -> None:
        self._device = resolve_device(self.device)
        self._net: _MLP | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self.n_seen = 0  # rows folded into the running input statistics
        self.n_steps = 0
        self.n_learned = 0
        self._buffer_x: list[np.ndarray] = []
        self._buffer_y: list[Any] = []
        self._buffer_t0: float | None = None
        self.last_loss: float | None = None
        if self.features is not None:
            self._build()

    @property
    def n_inputs(self) -> int:
        return len(self.features or ()) + self.hash_width

    def _build(self) -> None:
        gen_state = torch.random.get_rng_state()
        # Initialise from the seed without disturbing anyone else's global RNG.
        torch.manual_seed(self.seed)
        try:
            net = self._make_net()
        finally:
            torch.random.set_rng_state(gen_state)
        self._net = net.to(self._device)
        self._opt = _OPTIMIZERS[self.optimizer](
            self._net.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        self._index = {name: i for i, name in enumerate(self.features or ())}
        self._mean = np.zeros(self.n_inputs)
        self._m2 = np.zeros(self.n_inputs)
        if self.warm_start:
            loaded = torch.load(self.warm_start, map_location=self._device, weights_only=True)
            self._net.load_state_dict(loaded["model"] if "model" in loaded else loaded)
            if "optimizer" in loaded:
                self._opt.load_state_dict(loaded["optimizer"])

    def _make_net(self) -> nn.Module:
        # A hook: the sequence learners (torch_sequence.py) put a recurrent network here.
        return _MLP(self.n_inputs, self.hidden_layers, self._n_outputs(), self.activation)

    def declare_features(self, names: Sequence[str]) -> None:
        """Fixes the declared features (e.g. the pipeline schema's numeric fields) unless
        they were given or already frozen."""
        if self.features is None:
            self.features = list(names)
            self._build()

    def _freeze_features(self, x: dict[str, Any]) -> None:
        if self.features is None:
            self.features = sorted(
                k for k, v in x.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            )
            self._build()

    # -- vectorising ------------------------------------------------------------------

    def _vector(self, x: dict[str, Any]) -> np.ndarray:
        v = np.zeros(self.n_inputs)
        index = self._index
        width = self.hash_width
        n_declared = len(index)
        for k, value in x.items():
            if value is None:
                continue
            if isinstance(value, str):
                if width:
                    v[n_declared + _bucket(f"{k}={value}", width)] += 1.0
                continue
            i = index.get(k)
            number = float(value)
            if not math.isfinite(number):
                continue
            if i is not None:
                v[i] = number
            elif width:
                v[n_declared + _bucket(k, width)] += number
        return v

    def _matrix(self, X: Sequence[dict[str, Any]]) -> np.ndarray:
        if X:
            self._freeze_features(X[0])
        return np.stack([self._vector(x) for x in X]) if X else np.zeros((0, self.n_inputs))

    def _scaled(self, m: np.ndarray) -> torch.Tensor:
        if self.standardize and self.n_seen > 1:
            std = np.sqrt(self._m2 / self.n_seen)
            std[std == 0.0] = 1.0
            m = (m - self._mean) / std
        return torch.as_tensor(m, dtype=torch.float32, device=self._device)

    def _update_stats(self, m: np.ndarray) -> None:
        # Chan et al.'s parallel update of mean and M2 with a whole batch of rows.
        n_b = m.shape[0]
        if n_b == 0:
            return
        mean_b = m.mean(axis=0)
        m2_b = ((m - mean_b) ** 2).sum(axis=0)
        n_a = self.n_seen
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.n_seen = n

    # -- predicting -------------------------------------------------------------------

    def _forward(self, X: Sequence[dict[str, Any]]) -> torch.Tensor:
        m = self._matrix(X)
        assert self._net is not None
        self._net.eval()
        with torch.no_grad():
            return self._net(self._scaled(m))

    # -- learning ---------------------------------------------------------------------

    def _target(self, y: Any) -> Any:
        raise NotImplementedError

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _y_tensor(self, ys: list[Any]) -> torch.Tensor:
        raise NotImplementedError

    def learn_one(self, x: dict[str, Any], y: Any, t: float | None = None) -> None:
        self.learn_many([x], [y], t)

    @property
    def rows_until_step(self) -> int:
        """Labelled rows still to come before the next optimizer step. The processor
        predicts in blocks of at most this many events, so an event is predicted with
        the weights of every step taken before it, however the stream was polled."""
        return max(1, self.batch_size - len(self._buffer_x))

    def learn_many(self, X: Sequence[dict[str, Any]], ys: Sequence[Any], t: float | None = None) -> None:
        """Buffers the rows; steps on every full ``batch_size`` rows. ``t`` is the stream
        time in seconds of the newest row, used by :meth:`flush` to bound the wait."""
        if not X:
            return
        m = self._matrix(X)
        for row, y in zip(m, ys, strict=True):
            self._buffer(row, y, t)

    def _buffer(self, row: Any, y: Any, t: float | None) -> None:
        """Adds one labelled input (a row here, a window for the sequence learners); steps
        when the batch is full."""
        if not self._buffer_x and t is not None:
            self._buffer_t0 = t
        self._buffer_x.append(row)
        self._buffer_y.append(self._target(y))
        if len(self._buffer_x) >= self.batch_size:
            self._step()
            if t is not None:
                self._buffer_t0 = t

    def flush(self, t: float | None = None) -> bool:
        """Steps on a partial batch if its oldest row has waited ``max_wait_s`` by stream
        time ``t`` (or at once when ``t`` is None). Returns whether a step was taken."""
        if not self._buffer_x:
            return False
        if t is not None:
            if self.max_wait_s is None or self._buffer_t0 is None or t - self._buffer_t0 < self.max_wait_s:
                return False
        self._step()
        return True

    def _step(self) -> None:
        rows = np.stack(self._buffer_x)
        ys = self._buffer_y
        self._buffer_x, self._buffer_y, self._buffer_t0 = [], [], None
        self._update_stats(rows)
        self._fit_batch(rows, ys)

    def _fit_batch(self, rows: np.ndarray, ys: list[Any]) -> None:
        assert self._net is not None and self._opt is not None
        x = self._scaled(rows)
        y = self._y_tensor(ys)
        self._net.train()
        for _ in range(self.steps_per_batch):
            generator = None
            if self.dropout > 0.0:
                generator = torch.Generator(device=self._device)
                generator.manual_seed(self.seed * 1_000_003 + self.n_steps)
            self._opt.zero_grad(set_to_none=True)
            loss = self._loss(self._net(x, self.dropout, generator), y)
            loss.backward()
            self._opt.step()
            self.n_steps += 1
            self.last_loss = float(loss.detach())
        self.n_learned += len(ys)

    def loss_on(self, X: Sequence[dict[str, Any]], ys: Sequence[Any]) -> float:
        """The training loss of the current weights on these rows (no learning)."""
        out = self._forward(X)
        return float(self._loss(out, self._y_tensor([self._target(y) for y in ys])))

    # -- explanations -----------------------------------------------------------------

    def _feature_name(self, i: int) -> str:
        declared = self.features or []
        return declared[i] if i < len(declared) else f"hash[{i - len(declared)}]"

    def explain_many(self, X: Sequence[dict[str, Any]], k: int = 3) -> list[dict[str, float]]:
        """Top ``k`` contributions per row by |gradient × input| of the score (the
        positive-class logit, the top class's logit, or the regression output)."""
        if not X:
            return []
        m = self._matrix(X)
        assert self._net is not None
        self._net.eval()
        inp = self._scaled(m).requires_grad_(True)
        out = self._net(inp)
        score = out[:, 0] if out.shape[1] == 1 else out.max(dim=1).values
        (grad,) = torch.autograd.grad(score.sum(), inp)
        contrib = (grad * inp).detach().cpu().numpy()
        result = []
        for row in contrib:
            top = np.argsort(-np.abs(row), kind="stable")[:k]
            result.append({self._feature_name(int(i)): float(row[i]) for i in top if row[i] != 0.0})
        return result

    # -- state ------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        weights = None
        if self._net is not None and self._opt is not None:
            buf = io.BytesIO()
            torch.save(
                {"model": self._net.state_dict(), "optimizer": self._opt.state_dict()}, buf
            )
            weights = buf.getvalue()
        return {
            "params": self._params(),
            "extra": self._extra_state(),
            "weights": weights,
            "mean": self._mean,
            "m2": self._m2,
            "n_seen": self.n_seen,
            "n_steps": self.n_steps,
            "n_learned": self.n_learned,
            "buffer_x": [r.copy() for r in self._buffer_x],
            "buffer_y": list(self._buffer_y),
            "buffer_t0": self._buffer_t0,
            "last_loss": self.last_loss,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        params = dict(state["params"])
        # The warm start was applied when the learner was first built; its weights are below.
        params["warm_start"] = None
        self.__init__(**params, **state["extra"])  # type: ignore[misc]
        self.warm_start = state["params"]["warm_start"]
        if state["weights"] is not None:
            assert self._net is not None and self._opt is not None
            loaded = torch.load(io.BytesIO(state["weights"]), map_location=self._device, weights_only=True)
            self._net.load_state_dict(loaded["model"])
            self._opt.load_state_dict(loaded["optimizer"])
            self._mean, self._m2 = state["mean"], state["m2"]
        self.n_seen = state["n_seen"]
        self.n_steps = state["n_steps"]
        self.n_learned = state["n_learned"]
        self._buffer_x = state["buffer_x"]
        self._buffer_y = state["buffer_y"]
        self._buffer_t0 = state["buffer_t0"]
        self.last_loss = state["last_loss"]

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The network's and the optimizer's ``state_dict``, e.g. to write a warm-start file
        with ``torch.save(learner.state_dict(), path)``."""
        assert self._net is not None and self._opt is not None
        return {"model": self._net.state_dict(), "optimizer": self._opt.state_dict()}

    @property
    def device_name(self) -> str:
        """Where the network runs, as torch names it (``cpu``, ``cuda:0``)."""
        return str(next(self._net.parameters()).device) if self._net is not None else self._device.type

    def __repr__(self) -> str:
        return f"{type(self).__name__}(hidden_layers={self.hidden_layers}, device={self._device.type})"


class TorchMiniBatchClassifier(_TorchMiniBatchBase):
    """An MLP classifier. With ``classes=None`` it is binary over ``False``/``True``.

    Examples
    --------
    >>> import pickle
    >>> model = TorchMiniBatchClassifier(features=["a", "b"], hash_width=0, batch_size=4,
    ...                                  lr=0.05, device="cpu", seed=1)
    >>> X = [{"a": float(i % 2), "b": 1.0 - i % 2} for i in range(64)]
    >>> y = [i % 2 == 1 for i in range(64)]
    >>> for _ in range(5):
    ...     model.learn_many(X, y)
    >>> model.predict_many([{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0}])
    [True, False]
    >>> clone = pickle.loads(pickle.dumps(model))
    >>> clone.predict_proba_many(X[:3]) == model.predict_proba_many(X[:3])
    True
    """

    task = "classification"

    def __init__(self, classes: Sequence[Any] | None = None, **params: Any) -> None:
        self.classes = list(classes) if classes is not None else [False, True]
        if len(self.classes) < 2:
            raise ValueError("a classifier needs at least two classes")
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        super().__init__(**params)

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "classes": self.classes}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _n_outputs(self) -> int:
        return 1 if len(self.classes) == 2 else len(self.classes)

    def _target(self, y: Any) -> int:
        try:
            return self._class_index[y]
        except KeyError:
            raise ValueError(f"label {y!r} is not one of the classes {self.classes}") from None

    def _y_tensor(self, ys: list[Any]) -> torch.Tensor:
        if len(self.classes) == 2:
            return torch.tensor(ys, dtype=torch.float32, device=self._device)
        return torch.tensor(ys, dtype=torch.long, device=self._device)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(self.classes) == 2:
            return nn.functional.binary_cross_entropy_with_logits(out[:, 0], y)
        return nn.functional.cross_entropy(out, y)

    def predict_proba_many(self, X: Sequence[dict[str, Any]]) -> list[dict[Any, float]]:
        if not X:
            return []
        return self._proba_rows(self._forward(X))

    def _proba_rows(self, out: torch.Tensor) -> list[dict[Any, float]]:
        """The network's outputs as one ``{class: probability}`` per row."""
        if len(self.classes) == 2:
            p = torch.sigmoid(out[:, 0]).double().cpu().numpy()
            neg, pos = self.classes
            return [{neg: float(1.0 - q), pos: float(q)} for q in p]
        probs = torch.softmax(out, dim=1).double().cpu().numpy()
        return [dict(zip(self.classes, map(float, row), strict=True)) for row in probs]

    def predict_many(self, X: Sequence[dict[str, Any]]) -> list[Any]:
        return [max(p, key=p.__getitem__) for p in self.predict_proba_many(X)]

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]:
        return self.predict_proba_many([x])[0]

    def predict_one(self, x: dict[str, Any]) -> Any:
        return self.predict_many([x])[0]


class TorchMiniBatchRegressor(_TorchMiniBatchBase):
    """An MLP regressor trained on the mean squared error of a standardised target.

    Examples
    --------
    >>> model = TorchMiniBatchRegressor(features=["x"], hash_width=0, batch_size=8,
    ...                                 lr=0.01, device="cpu", seed=0)
    >>> X = [{"x": i / 50} for i in range(100)]
    >>> before = model.loss_on(X, [3 * x["x"] + 10 for x in X])
    >>> for _ in range(20):
    ...     model.learn_many(X, [3 * x["x"] + 10 for x in X])
    >>> model.loss_on(X, [3 * x["x"] + 10 for x in X]) < before / 10
    True
    """

    task = "regression"

    def _init_state(self) -> None:
        # The target is standardised with running statistics so the network sees O(1) values.
        self._y_mean = 0.0
        self._y_m2 = 0.0
        self._y_n = 0
        super()._init_state()

    def _n_outputs(self) -> int:
        return 1

    def _target(self, y: Any) -> float:
        return float(y)

    def _y_scale(self) -> tuple[float, float]:
        if self._y_n < 2:
            return self._y_mean, 1.0
        std = math.sqrt(self._y_m2 / self._y_n)
        return self._y_mean, std if std > 0 else 1.0

    def _y_tensor(self, ys: list[Any]) -> torch.Tensor:
        mean, std = self._y_scale()
        return torch.tensor([(y - mean) / std for y in ys], dtype=torch.float32, device=self._device)

    def _fit_batch(self, rows: np.ndarray, ys: list[Any]) -> None:
        for y in ys:
            self._y_n += 1
            delta = y - self._y_mean
            self._y_mean += delta / self._y_n
            self._y_m2 += delta * (y - self._y_mean)
        super()._fit_batch(rows, ys)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out[:, 0], y)

    def predict_many(self, X: Sequence[dict[str, Any]]) -> list[float]:
        if not X:
            return []
        return self._values(self._forward(X))

    def _values(self, out: torch.Tensor) -> list[float]:
        """The network's outputs back on the target's scale."""
        mean, std = self._y_scale()
        return [float(v * std + mean) for v in out[:, 0].double().cpu().numpy()]

    def predict_one(self, x: dict[str, Any]) -> float:
        return self.predict_many([x])[0]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["target"] = (self._y_mean, self._y_m2, self._y_n)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._y_mean, self._y_m2, self._y_n = state["target"]
