"""Online hyperparameter search: a model's ``search:`` block, its candidates and who answers.

A ``search:`` block on a model entry names a space of hyperparameters. The space is
expanded into candidates (the Cartesian product of every parameter's values), each a
clone of the model's estimator with those parameters, and a :class:`SearchClassifier`
or :class:`SearchRegressor` holds them. It is the model's estimator: it is snapshotted,
restored, scored and drift-monitored like any other, and its answer is the current
best candidate's.

The space
    Keys are parameter paths in River's ``estimator__param`` style (``l2`` for a
    one-step model, ``LogisticRegression__l2`` or ``LogisticRegression__optimizer__lr``
    through a pipeline), or the same paths as nested mappings. A value is a list of
    choices (numbers, strings, or estimator specs such as ``{optim.Adam: {lr: 0.01}}``),
    ``{range: {low, high, step}}`` or ``{log_range: {low, high, num}}``. A path that the
    estimator does not have is an error at start naming the key and the parameters it
    has.

The policies (every candidate is scored on the labels it learns from, with the
pipeline's metric, by predicting before learning as River's model selectors do; the
candidates are scored with the prediction they make when the label arrives, which for
inline labels is the prediction made at arrival):

- ``successive_halving``: River's ``SuccessiveHalvingClassifier/Regressor`` semantics,
  reimplemented so that each candidate's metric can be read and the search predicts
  once per event: every running candidate learns every label; at each rung the worse
  half (``eta``) stops; at most ``budget`` candidate-events are spent on the rungs,
  after which one candidate is left and the search costs what one model costs. Two
  differences from River's: the answer is chosen as keep_all's is, below, among the
  running candidates (River's answers with the best cumulative metric), and a rung
  never drops the answering candidate (it takes the last place kept).
- ``bandit``: River's ``BanditClassifier/Regressor`` semantics with a ``river.bandit``
  policy: every candidate learns its ``burn_in`` first labels, then the policy picks one
  candidate per label. The answer is the arm with the best reward so far.
- ``keep_all``: every candidate learns every label (until ``budget`` candidate-events are
  spent, if a budget is given, when all but the answering one stop).

Who answers (keep_all and successive_halving)
    The candidate with the configured steps' own parameters answers first (the first
    candidate when none has them). Another takes over when it has the best rolling metric
    over the last ``window`` labels, leads the answering one by more than ``margin``, and
    its lead is real: a paired test on the two candidates' per-label errors over the same
    window (0/1 for a classifier, absolute for a regressor) puts the mean difference more
    than ``z`` standard errors above zero, on ``patience`` labels in a row. Why the test:
    on a stream where several settings are equally good, a leader over a few hundred
    labels is mostly luck, and each switch to a lucky candidate of equal or lesser skill
    costs accuracy (measured: the champion's margin and patience alone lost 0.65 points
    to River's defaults on 2,000 Hyperplane events through the service, and up to 0.56
    on Phishing in memory, where the defaults are among the best settings), while a
    setting that is truly better early (a higher learning rate in the first hundred
    labels) passes the test at once.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections import deque
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from river import base, utils
from streamwise.models.prequential import final_step, make_metric

__all__ = [
    "SearchConfig",
    "SearchClassifier",
    "SearchRegressor",
    "build_search",
    "search_candidates",
    "accepts_weight",
    "expand_space",
    "candidate_label",
]

_LEAF_KEYS = frozenset({"range", "log_range"})


class SearchConfig(BaseModel):
    """A model's ``search:`` block."""

    model_config = ConfigDict(extra="forbid")

    space: dict[str, Any] = Field(min_length=1)
    policy: Literal["successive_halving", "bandit", "keep_all"] = "keep_all"
    # Candidate-events (one candidate learning one label) the search may spend before a
    # single candidate is left: required by successive_halving, optional for keep_all.
    budget: int | None = Field(None, ge=1)
    # successive_halving: at each rung ceil(k / eta) of the k running candidates go on.
    eta: int = Field(2, ge=2)
    # bandit: a river.bandit policy, by name or {name: {params}}, and how many labels every
    # candidate learns before the policy chooses (River's burn_in).
    bandit: str | dict[str, Any] = {"EpsilonGreedy": {"epsilon": 0.1, "seed": 42}}
    burn_in: int = Field(100, ge=0)
    # keep_all and successive_halving: who answers (see "Who answers" above): the rolling
    # window, the lead over the answering candidate, the paired test's z, how many labels in
    # a row, and the labels before any change.
    window: int = Field(300, ge=2)
    margin: float = Field(0.0, ge=0)
    z: float = Field(2.0, ge=0)
    patience: int = Field(1, ge=1)
    min_samples: int = Field(30, ge=1)
    # A space that expands past this is refused: every candidate costs a model's time.
    max_candidates: int = Field(64, ge=2)


# ---- the space ---------------------------------------------------------------------


def _range_values(kind: str, spec: Any, where: str) -> list[Any]:
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "step", "num"}:
        raise ValueError(f"{where}: {kind} takes {{low, high, {'step' if kind == 'range' else 'num'}}}")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        raise ValueError(f"{where}: {kind} needs numbers low < high")
    if kind == "range":
        step = spec.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
            raise ValueError(f"{where}: range needs a positive step")
        n = int(math.floor((high - low) / step + 1e-9)) + 1
        values = [low + i * step for i in range(n)]
        if all(isinstance(v, int) for v in (low, high, step)):
            return values
        return [round(v, 12) for v in values]
    num = spec.get("num")
    if not isinstance(num, int) or isinstance(num, bool) or num < 2 or low <= 0:
        raise ValueError(f"{where}: log_range needs low > 0 and an integer num >= 2")
    ratio = (high / low) ** (1 / (num - 1))
    # Rounded to 6 significant digits: labels and configs stay readable (0.001, not 0.0009999).
    return [float(f"{low * ratio**i:.6g}") for i in range(num)]


def _leaves(space: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], list[Any]]]:
    for key, value in space.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"search.space: key {key!r} must be a parameter name")
        path = prefix + tuple(key.split("__"))
        where = "search.space." + "__".join(path)
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{where}: no values")
            yield path, value
        elif isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _LEAF_KEYS:
            ((kind, spec),) = value.items()
            yield path, _range_values(kind, spec, where)
        elif isinstance(value, dict) and value:
            yield from _leaves(value, path)
        else:
            raise ValueError(f"{where}: a list of values, {{range: ...}}, {{log_range: ...}} or nested parameters")


def expand_space(space: dict[str, Any]) -> list[dict[tuple[str, ...], Any]]:
    """Every combination of the space's values, as ``{path: value}``, in a stable order
    (the last key varies fastest).

    Examples
    --------
    >>> lrs = {"log_range": {"low": 0.01, "high": 1, "num": 3}}
    >>> grid = expand_space({"LogisticRegression__l2": [0.0, 0.01], "LogisticRegression": {"optimizer": {"lr": lrs}}})
    >>> len(grid), grid[1]
    (6, {('LogisticRegression', 'l2'): 0.0, ('LogisticRegression', 'optimizer', 'lr'): 0.1})
    >>> expand_space({"grace_period": {"range": {"low": 50, "high": 200, "step": 75}}})
    [{('grace_period',): 50}, {('grace_period',): 125}, {('grace_period',): 200}]
    """
    leaves = list(_leaves(space))
    paths = [p for p, _ in leaves]
    if len(set(paths)) != len(paths):
        raise ValueError("search.space: a parameter is given twice")
    return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*(v for _, v in leaves))]


def _short(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        ((name, params),) = value.items()
        inner = ",".join(f"{k}={_short(v)}" for k, v in (params or {}).items())
        return f"{str(name).rpartition('.')[2]}({inner})"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def candidate_label(assignment: dict[tuple[str, ...], Any]) -> str:
    """A compact name for a candidate: each parameter by its last name (its full path
    when two share one), then its value.

    Examples
    --------
    >>> candidate_label({("LogisticRegression", "optimizer", "lr"): 0.1, ("LogisticRegression", "l2"): 0.0})
    'lr=0.1,l2=0'
    >>> candidate_label({("a", "lr"): 1, ("b", "lr"): 2})
    'a__lr=1,b__lr=2'
    """
    lasts = [p[-1] for p in assignment]
    parts = []
    for path, value in assignment.items():
        name = path[-1] if lasts.count(path[-1]) == 1 else "__".join(path)
        parts.append(f"{name}={_short(value)}")
    return ",".join(parts)


def _clone_params(estimator: Any, assignment: dict[tuple[str, ...], Any], build_value: Any) -> dict[str, Any]:
    """The nested ``clone()`` parameters that set each path of ``assignment``, checked
    against the estimator's own parameters (River's ``_get_params``)."""
    out: dict[str, Any] = {}
    for path, value in assignment.items():
        params: Any = estimator._get_params()
        target = out
        for i, name in enumerate(path):
            where = "search.space." + "__".join(path)
            if not isinstance(params, dict) or name not in params:
                have = ", ".join(sorted(params)) if isinstance(params, dict) else "none"
                owner = "__".join(path[:i]) or type(estimator).__name__
                raise ValueError(f"{where}: {owner} has no parameter {name!r} (it has: {have})")
            if i == len(path) - 1:
                target[name] = build_value(value)
                break
            inner = params[name]
            if isinstance(inner, tuple) and len(inner) == 2 and inspect.isclass(inner[0]):
                # A nested estimator (an optimizer): River clones it with (class, params).
                slot = target.setdefault(name, (inner[0], {}))
                target, params = slot[1], inner[1]
            elif isinstance(inner, dict):  # a pipeline step
                target, params = target.setdefault(name, {}), inner
            else:
                raise ValueError(f"{where}: {name!r} is a plain value, not an estimator with parameters")
    return out


# ---- the search estimator ----------------------------------------------------------


def _accepts_weight(estimator: Any) -> bool:
    try:
        return "w" in inspect.signature(final_step(estimator).learn_one).parameters
    except (TypeError, ValueError):
        return False


class _Search:
    """What the classifier and the regressor share; see the module's docstring."""

    def __init__(
        self, candidates: list[Any], labels: list[str], metric: str, config: SearchConfig, incumbent: int = 0
    ) -> None:
        self.candidates = candidates
        self.labels = labels
        self.metric_name = metric
        self.config = config
        n = len(candidates)
        self.metrics = [make_metric(metric) for _ in range(n)]
        self._bigger = self.metrics[0].bigger_is_better
        self._proba = isinstance(self, base.Classifier) and not self.metrics[0].requires_labels
        self.n_scored = [0] * n
        # Candidate-events spent: one candidate learning one label.
        self.spent = 0
        # The candidate with the configured steps' own parameters answers until another
        # proves better: switching between candidates of equal skill only costs.
        self.best = incumbent
        self.running = list(range(n))
        self.policy = config.policy
        if config.policy == "successive_halving":
            self._rungs = math.ceil(math.log(n, config.eta))
            self._s = n
            self._r = math.floor(config.budget / (n * self._rungs)) if config.budget else 0
            self._iterations = 0
        elif config.policy == "bandit":
            self.bandit = _bandit_policy(config.bandit, config.burn_in, self.metrics[0])
        if config.policy != "bandit":
            self.rolling = [utils.Rolling(type(make_metric(metric)), window_size=config.window) for _ in range(n)]
            # Per-label errors over the window, for the paired test of a lead.
            self.errors: list[deque[float]] = [deque(maxlen=config.window) for _ in range(n)]
            self.n_labels = 0
            self._leader: int | None = None
            self._streak = 0
        self._summary: dict[str, Any] | None = None

    # -- what the model set reads ---------------------------------------------------

    @property
    def best_label(self) -> str:
        return self.labels[self.best]

    def summary(self) -> dict[str, Any]:
        """``{"best": label, "metrics": [...]}``, each candidate's metric in candidate order
        (None for one that has scored nothing); rebuilt only after a label, so every record
        between two labels shares one dict."""
        if self._summary is None:
            self._summary = {
                "best": self.labels[self.best],
                "metrics": [m.get() if k else None for m, k in zip(self.metrics, self.n_scored, strict=True)],
            }
        return self._summary

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_summary"] = None  # a cache of what was read, not what was learned
        return state

    # -- learning -------------------------------------------------------------------

    def _learners(self) -> list[int]:
        if self.policy == "bandit":
            burning = [i for i in self.running if self.bandit._counts[i] < self.bandit.burn_in]
            return burning or [self.bandit.pull(range(len(self.candidates)))]
        return self.running[: self._s] if self.policy == "successive_halving" else self.running

    def learn_one(self, x: dict[str, Any], y: Any, **kwargs: Any) -> None:
        """Scores each candidate the policy lets learn (predict, then learn), then lets the
        policy halve, pull or change the answer."""
        for i in self._learners():
            c = self.candidates[i]
            y_pred = c.predict_proba_one(x) if self._proba else c.predict_one(x)
            if y_pred is not None and y_pred != {}:
                self.metrics[i].update(y, y_pred)
                self.n_scored[i] += 1
                if self.policy == "bandit":
                    self.bandit.update(i, y, y_pred)
                else:
                    self.rolling[i].update(y, y_pred)
                    self.errors[i].append(self._error(y, y_pred))
            c.learn_one(x, y, **kwargs)
            self.spent += 1
        self._after_label()
        self._summary = None

    def learn_unscored(self, x: dict[str, Any], y: Any, **kwargs: Any) -> None:
        """Learns a pseudo-label (self-training): the candidates the policy lets learn
        learn it, and no metric, reward or rung counts it."""
        for i in self._learners():
            self.candidates[i].learn_one(x, y, **kwargs)

    def _after_label(self) -> None:
        cfg = self.config
        if self.policy == "successive_halving":
            self._iterations += 1
            if self._s > 1 and self._iterations == self._r:
                # River's rung: rank the running candidates, keep ceil(s / eta) of them.
                ranked = sorted(self.running[: self._s], key=lambda i: self.metrics[i].get(), reverse=self._bigger)
                self._s = math.ceil(self._s / cfg.eta)
                if self.best not in ranked[: self._s]:
                    # The answering candidate is never dropped: a rung ranks on the metric
                    # since the start, which favours the fastest early learners (halving's
                    # short-horizon bias), while the answer has had to show a real lead.
                    # Measured: without this, halving lost 0.3-0.4 points to River's
                    # defaults on Phishing (bench/search.py).
                    ranked.remove(self.best)
                    ranked.insert(self._s - 1, self.best)
                self.running[: len(ranked)] = ranked
                self._r = math.floor(cfg.budget / (self._s * self._rungs))  # type: ignore[operator]
                self.running = self.running[: self._s]
        elif self.policy == "bandit":
            rewards = self.bandit._rewards
            if rewards:
                self.best = max(rewards, key=lambda arm: rewards[arm].get())
            return
        self.n_labels += 1
        self._choose()
        if self.policy == "keep_all" and cfg.budget is not None and self.spent >= cfg.budget and len(self.running) > 1:
            self.running = [self.best]

    def _error(self, y: Any, y_pred: Any) -> float:
        if isinstance(self, base.Classifier):
            if isinstance(y_pred, dict):
                y_pred = max(y_pred, key=y_pred.get)
            return 0.0 if y_pred == y else 1.0
        return abs(y - y_pred)  # type: ignore[no-any-return]

    def _choose(self) -> None:
        """keep_all and halving: the answer among the candidates still learning (see
        "Who answers"); a dropped answer hands over to the leader at once."""
        cfg = self.config
        sign = 1.0 if self._bigger else -1.0
        # The best rolling metric; ties go to the earlier candidate.
        leader = max(self.running, key=lambda i: (sign * self.rolling[i].get(), -i))
        if self.best not in self.running:
            self.best, self._leader, self._streak = leader, None, 0
            return
        if leader == self.best or self.n_labels < cfg.min_samples:
            self._leader, self._streak = None, 0
            return
        lead = sign * (self.rolling[leader].get() - self.rolling[self.best].get())
        if not (lead > cfg.margin and self._significant(leader, self.best)):
            self._leader, self._streak = None, 0
            return
        if leader != self._leader:
            self._leader, self._streak = leader, 0
        self._streak += 1
        if self._streak >= cfg.patience:
            self.best, self._leader, self._streak = leader, None, 0

    def _significant(self, leader: int, answer: int) -> bool:
        """The paired test: the answering candidate's errors minus the leader's, label by
        label over the window, average more than ``z`` standard errors above zero."""
        mine, theirs = self.errors[answer], self.errors[leader]
        n = min(len(mine), len(theirs))  # the newest n labels of both (aligned at the end)
        diffs = [a - b for a, b in zip(list(mine)[-n:], list(theirs)[-n:], strict=True)]
        if n < 2:
            return False
        mean = sum(diffs) / n
        var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
        if var == 0.0:
            return mean > 0.0
        return mean > self.config.z * math.sqrt(var / n)

    # -- predicting -----------------------------------------------------------------

    def predict_one(self, x: dict[str, Any]) -> Any:
        return self.candidates[self.best].predict_one(x)

    @property
    def answering(self) -> Any:
        """The candidate whose prediction is the search's."""
        return self.candidates[self.best]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policy}, {len(self.candidates)} candidates, best {self.best_label})"


def _bandit_policy(spec: str | dict[str, Any], burn_in: int, metric: Any) -> Any:
    from river import bandit

    name, params = (spec, {}) if isinstance(spec, str) else next(iter(spec.items()))
    cls = getattr(bandit, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, bandit.base.Policy)):
        raise ValueError(f"search.bandit: unknown river.bandit policy {name!r}")
    try:
        return cls(**{**(params or {}), "burn_in": burn_in, "reward_obj": metric.clone()})
    except TypeError as e:
        raise ValueError(f"search.bandit: {name}: {e}") from None


class SearchClassifier(_Search, base.Classifier):
    """A search over classifiers; answers with the best candidate's probabilities.

    Examples
    --------
    >>> from river import datasets, linear_model, preprocessing
    >>> cfg = SearchConfig(space={"LogisticRegression__l2": [0.0, 0.1]}, policy="successive_halving", budget=400)
    >>> search = build_search(preprocessing.StandardScaler() | linear_model.LogisticRegression(), cfg, "Accuracy")
    >>> for x, y in datasets.Phishing().take(300):
    ...     _ = search.predict_proba_one(x)
    ...     search.learn_one(x, y)
    >>> search.labels, search.running, search.spent
    (['l2=0', 'l2=0.1'], [0], 500)
    >>> search.summary()["best"]
    'l2=0'
    """

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]:
        return self.candidates[self.best].predict_proba_one(x)  # type: ignore[no-any-return]


class SearchRegressor(_Search, base.Regressor):
    """A search over regressors; answers with the best candidate's prediction."""


def search_candidates(estimator: Any, config: SearchConfig) -> tuple[list[Any], list[str]]:
    """The candidates of ``config.space`` built as clones of ``estimator``, and their labels;
    a ValueError naming the key for a space the estimator does not have, or a budget too small."""
    from streamwise.models.catalog import build_value

    grid = expand_space(config.space)
    if len(grid) < 2:
        raise ValueError("search.space: a search needs at least two candidates")
    if len(grid) > config.max_candidates:
        raise ValueError(f"search.space: {len(grid)} candidates, more than max_candidates ({config.max_candidates})")
    if not isinstance(estimator, base.Estimator) or getattr(estimator, "predicts_in_batches", False):
        raise ValueError("search: only River estimators can be searched")
    candidates = [estimator.clone(_clone_params(estimator, a, build_value)) for a in grid]
    labels = [candidate_label(a) for a in grid]
    if len(set(labels)) != len(labels):
        raise ValueError("search.space: two candidates have the same parameters")
    if config.policy == "successive_halving":
        rungs = math.ceil(math.log(len(grid), config.eta))
        if config.budget is None:
            raise ValueError("search.budget: successive_halving needs a budget of candidate-events")
        if config.budget < len(grid) * rungs:
            raise ValueError(
                f"search.budget: {config.budget} is too small for {len(grid)} candidates: at least {len(grid) * rungs}"
                " (one label per candidate and rung)"
            )
    return candidates, labels


def build_search(estimator: Any, config: SearchConfig, metric: str) -> SearchClassifier | SearchRegressor:
    """The search estimator over ``config.space``, scoring with the pipeline's ``metric``."""
    candidates, labels = search_candidates(estimator, config)
    own = estimator._get_params()
    incumbent = next((i for i, c in enumerate(candidates) if c._get_params() == own), 0)
    if not make_metric(metric).works_with(estimator):
        raise ValueError(f"search: metric {metric} does not work with the searched estimator")
    classifier = isinstance(estimator, base.Classifier) or isinstance(final_step(estimator), base.Classifier)
    cls = SearchClassifier if classifier else SearchRegressor
    return cls(candidates, labels, metric, config, incumbent)


def accepts_weight(estimator: Any) -> bool:
    """Whether ``learn_one`` takes a sample weight ``w`` (a search: its candidates')."""
    if isinstance(estimator, _Search):
        return all(_accepts_weight(c) for c in estimator.candidates)
    return _accepts_weight(estimator)
