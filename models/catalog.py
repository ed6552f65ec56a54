"""Builds River estimators from the ``models:`` entries of a pipeline config.

A model is a list of steps composed left to right, as River's ``|`` does. A step is
a dotted name under ``river`` (``"preprocessing.StandardScaler"``), one of our own
learners (``"streamwise.TorchMiniBatchClassifier"``, alone in its model), or a one-key
mapping from that name to its parameters. A parameter value that is itself such a
one-key mapping is built the same way, so optimizers and sub-models can be given:

.. code-block:: yaml

    steps:
      - preprocessing.StandardScaler
      - linear_model.LogisticRegression:
          optimizer: {optim.SGD: {lr: 0.05}}
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from streamwise.models.learner import is_batch_learner
from streamwise.models.prequential import final_step
from streamwise.models.search import SearchConfig, accepts_weight, search_candidates
from streamwise.models.self_training import SelfTrainingConfig
from streamwise.models.state import ensure_deep_recursion

_DOTTED = re.compile(r"^[a-z_][a-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class InitFrom(BaseModel):
    """Where a model's first state comes from: another pipeline's model, as its newest
    snapshot holds it (streamwise/transfer.py)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")


class ModelSpec(BaseModel):
    """One model of a pipeline: a name that appears in predictions and metrics, and its steps."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    steps: list[str | dict[str, Any]] = Field(min_length=1)
    # Start from what another pipeline's model learned instead of from zero; used only
    # while this pipeline has no snapshot of its own (a restart restores its own state).
    init_from: InitFrom | None = None
    # Hyperparameter search over clones of the steps (models/search.py); none by default.
    search: SearchConfig | None = None
    # Learning from confident predictions of unlabelled events (models/self_training.py); off by default.
    self_training: SelfTrainingConfig | None = None
    # After 3 NaN or infinite answers in a row, put the model back to a copy of itself
    # that answered finite numbers (models/recovery.py). Off: it keeps answering NaN,
    # flagged in the records and kept out of the metrics.
    restore_when_not_finite: bool = True

    @field_validator("steps")
    @classmethod
    def _buildable(cls, steps: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        build_estimator(steps)  # fail at start, not at the first event
        return steps

    @model_validator(mode="after")
    def _searchable(self) -> ModelSpec:
        from river import base

        estimator = build_estimator(self.steps)
        if self.search is not None:
            search_candidates(estimator, self.search)
        st = self.self_training
        if st is not None:
            if is_batch_learner(estimator) or not isinstance(final_step(estimator), base.Classifier):
                raise ValueError("self_training: needs a River classifier (it learns from confident probabilities)")
            if st.weight < 0.5 and not accepts_weight(estimator):
                raise ValueError(
                    f"self_training.weight: {st.weight} is below 0.5 and this estimator's learn_one takes no sample"
                    " weight, so no pseudo-label would ever be learned"
                )
        return self


# Learners of our own, by the step name a config gives them. Their modules are
# imported on first use so that River-only installs never import torch.
_STREAMWISE_LEARNERS = {
    "streamwise.TorchMiniBatchClassifier": ("streamwise.models.torch_learner", "TorchMiniBatchClassifier"),
    "streamwise.TorchMiniBatchRegressor": ("streamwise.models.torch_learner", "TorchMiniBatchRegressor"),
    "streamwise.TorchSequenceClassifier": ("streamwise.models.torch_sequence", "TorchSequenceClassifier"),
    "streamwise.TorchSequenceRegressor": ("streamwise.models.torch_sequence", "TorchSequenceRegressor"),
    # A real classifier made deliberately slow, for fault drills (models/drills.py).
    "streamwise.DelayedClassifier": ("streamwise.models.drills", "DelayedClassifier"),
    # Raises or answers NaN on purpose, for fault drills (models/drills.py).
    "streamwise.FaultyClassifier": ("streamwise.models.drills", "FaultyClassifier"),
}


def _resolve(name: str) -> type:
    if name in _STREAMWISE_LEARNERS:
        module_name, attr = _STREAMWISE_LEARNERS[name]
        try:
            return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]
        except ImportError:
            raise ValueError(f"{name} needs PyTorch: pip install 'streamwise[torch]'") from None
    if name.startswith("streamwise."):
        raise ValueError(f"unknown streamwise learner {name!r}; known: {', '.join(_STREAMWISE_LEARNERS)}")
    if not _DOTTED.match(name):
        raise ValueError(f"{name!r} is not a dotted River name like 'linear_model.LogisticRegression'")
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(f"river.{module_name}")
    except ImportError:
        raise ValueError(f"unknown River module 'river.{module_name}' in {name!r}") from None
    obj = getattr(module, attr, None)
    if obj is None or not inspect.isclass(obj):
        raise ValueError(f"unknown River estimator {name!r}")
    return obj


def _is_spec(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and isinstance(next(iter(value)), str)
        and bool(_DOTTED.match(next(iter(value))))
    )


def build_value(value: Any) -> Any:
    if _is_spec(value):
        return _build_one(value)
    if isinstance(value, list):
        return [build_value(v) for v in value]
    return value


def _build_one(step: str | dict[str, Any]) -> Any:
    if isinstance(step, str):
        name, params = step, {}
    elif _is_spec(step):
        ((name, params),) = step.items()
        params = params or {}
        if not isinstance(params, dict):
            raise ValueError(f"parameters of {name!r} must be a mapping, got {type(params).__name__}")
    else:
        raise ValueError(f"a step is a dotted River name or a one-key mapping, got {step!r}")
    cls = _resolve(name)
    kwargs = {k: build_value(v) for k, v in params.items()}
    if name not in _STREAMWISE_LEARNERS:  # those check their own parameters
        try:
            signature = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            signature = {}
        for key, value in kwargs.items():
            problem = _scalar_problem(signature.get(key), value)
            if problem is not None:
                raise ValueError(f"{name}: {key}: {problem}")
    try:
        built = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - River constructors raise AttributeError, AssertionError...
        # Whatever a River constructor raises on bad parameters (a model given as a string
        # meets attribute access, a bad enum an assert), it is the config's fault: report it
        # with the step's name so the user sees which key, not a traceback.
        detail = str(e) if isinstance(e, (TypeError, ValueError)) else f"{type(e).__name__}: {e}"
        raise ValueError(f"{name}: {detail}") from None
    if name not in _STREAMWISE_LEARNERS:
        # River keeps each parameter as given, in the attribute of its name (clone() reads
        # them back). One it replaced was not taken: Hoeffding trees print a notice and
        # use their default for a split_criterion or leaf_prediction they do not know.
        for key, value in kwargs.items():
            if isinstance(value, str) and isinstance(getattr(built, key, value), str) and getattr(built, key) != value:
                raise ValueError(f"{name}: {key}: {value!r} is not one River knows (it would use {getattr(built, key)!r})")
    return built


# The annotations River writes for plain parameters, as the types a YAML scalar may have.
_PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (float, int), "bool": (bool,), "str": (str,), "None": (type(None),),
}
# An annotation naming a River class (optim.base.Optimizer, base.DriftDetector, Splitter):
# no YAML scalar can be one. Type aliases that stand for plain values are not such names.
_RIVER_CLASS = re.compile(r"(?:[a-z_]+\.)*[A-Z][A-Za-z0-9]*")
_NOT_CLASSES = {"base.typing.FeatureName"}


def _scalar_problem(param: inspect.Parameter | None, value: Any) -> str | None:
    """Why a YAML scalar (a string, number or boolean) cannot be the River parameter
    ``param``, by its annotation (``grace_period: int``) or, without one, its default's
    type (``l2=0.0``); None when it can or when nothing says. River's constructors take
    what they are given, so a string for a number would fail only at the first event.
    Built objects, lists and mappings are left to the constructor.

    Examples
    --------
    >>> from river import linear_model, tree
    >>> lr, ht = (inspect.signature(c).parameters for c in (linear_model.LogisticRegression, tree.HoeffdingTreeClassifier))
    >>> _scalar_problem(lr["l2"], "abc")
    "expects a number, got the string 'abc'"
    >>> _scalar_problem(ht["grace_period"], 2.5)
    'expects an integer, got 2.5'
    >>> [_scalar_problem(ht[k], v) for k, v in [("delta", 1), ("max_depth", None)]]
    [None, None]
    >>> _scalar_problem(lr["optimizer"], "SGD")
    "expects a River optim.base.Optimizer, written {module.Class: {parameters}}, got the string 'SGD'"
    """
    if not isinstance(value, (str, int, float, type(None))):
        return None
    if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
        return None  # an unknown name is the constructor's TypeError
    annotation, default = param.annotation, param.default
    classes: list[str] = []
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.split("|")]
        classes = [p for p in parts if p not in _PLAIN_TYPES]
        if not all(_RIVER_CLASS.fullmatch(p) and p not in _NOT_CLASSES for p in classes):
            return None  # a list, a callable, an alias: left to the constructor
        allowed = tuple(t for p in parts if p in _PLAIN_TYPES for t in _PLAIN_TYPES[p])
    elif annotation is param.empty and type(default) in (bool, int, float, str):
        allowed = _PLAIN_TYPES[type(default).__name__]
    else:
        return None
    if value is None and default is None:
        allowed += (type(None),)
    if type(value) in allowed or (type(value) is float and int in allowed and value.is_integer()):
        return None
    wanted = ("a number" if float in allowed else "an integer" if int in allowed
              else "true or false" if bool in allowed else "a string" if str in allowed
              else f"a River {' or '.join(classes)}, written {{module.Class: {{parameters}}}}" if classes
              else "nothing (null)")
    got = f"the string {value!r}" if isinstance(value, str) else repr(value)
    if isinstance(value, str) and classes and _DOTTED.match(value):
        got += f" (write {{{value}: {{}}}})"
    elif isinstance(value, str) and wanted != "a string":
        try:
            float(value)
            got += " (a number in quotes)"
        except ValueError:
            pass
    return f"expects {wanted}, got {got}"


def build_estimator(steps: list[str | dict[str, Any]]) -> Any:
    """Builds a fresh estimator from a spec's steps.

    Examples
    --------
    >>> model = build_estimator(
    ...     ["preprocessing.StandardScaler", {"linear_model.LogisticRegression": {"l2": 0.1}}]
    ... )
    >>> list(model.steps)
    ['StandardScaler', 'LogisticRegression']
    >>> model["LogisticRegression"].l2
    0.1
    >>> build_estimator([{"streamwise.TorchMiniBatchClassifier": {"hidden_layers": [8], "device": "cpu"}}])
    TorchMiniBatchClassifier(hidden_layers=[8], device=cpu)
    >>> build_estimator(["linear_model.LogistcRegression"])
    Traceback (most recent call last):
    ...
    ValueError: unknown River estimator 'linear_model.LogistcRegression'
    """
    # River's trees read the recursion limit into their max_depth when built: it must be
    # the one value every estimator of the process sees (models/state.py).
    ensure_deep_recursion()
    built = [_build_one(copy.deepcopy(s)) for s in steps]
    if len(built) > 1 and any(is_batch_learner(b) for b in built):
        raise ValueError("a streamwise torch learner must be the only step of its model")
    model = built[0]
    for step in built[1:]:
        model = model | step
    return model
