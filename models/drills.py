"""Learners for fault drills: a real estimator made deliberately slow, or faulty.

A service that must survive a slow model (a large ensemble, a model on a cold cache, a
torch step on a busy GPU) is tested with one. :class:`DelayedClassifier` answers
exactly as the classifier it wraps and adds a fixed time to every ``learn_one``, so a
test (or an operator rehearsing an incident) can make a batch outlast
``kafka.max_poll_interval_ms`` on any machine, however fast.

:class:`FaultyClassifier` wraps any River classifier and, on a seeded share of its
predictions, raises or answers NaN; from a given prediction on it can answer NaN
always (a model gone bad). Configure it like any step, e.g. in a pipeline YAML:

.. code-block:: yaml

    - name: flaky
      steps:
        - streamwise.FaultyClassifier:
            model: {linear_model.LogisticRegression: {}}
            error_rate: 0.01
            nan_rate: 0.01

Its faults are drawn from a generator seeded with ``seed`` whose state is part of the
model's pickled state, so a restored snapshot replays the same faults.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from river import base


class DelayedClassifier(base.Wrapper, base.Classifier):
    """Wraps a classifier; each ``learn_one`` also sleeps ``seconds``.

    Parameters
    ----------
    classifier
        The classifier that predicts and learns.
    seconds
        Added to every ``learn_one``.

    Examples
    --------
    >>> from river import naive_bayes
    >>> slow = DelayedClassifier(naive_bayes.GaussianNB(), seconds=0.001)
    >>> t = time.perf_counter()
    >>> slow.learn_one({"x": 1.0}, True)
    >>> time.perf_counter() - t >= 0.001
    True
    >>> slow.predict_one({"x": 1.0})
    True
    """

    def __init__(self, classifier: base.Classifier, seconds: float = 0.002) -> None:
        self.classifier = classifier
        self.seconds = seconds

    @property
    def _wrapped_model(self) -> Any:
        return self.classifier

    @classmethod
    def _unit_test_params(cls) -> Any:
        from river import naive_bayes

        yield {"classifier": naive_bayes.GaussianNB(), "seconds": 0.0}

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        time.sleep(self.seconds)
        self.classifier.learn_one(x, y)

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]:
        return self.classifier.predict_proba_one(x)


class InjectedFault(RuntimeError):
    """What a :class:`FaultyClassifier` raises."""


class FaultyClassifier(base.Classifier):
    """Examples
    --------
    >>> from river import datasets, linear_model
    >>> model = FaultyClassifier(linear_model.LogisticRegression(), error_rate=0.1, nan_rate=0.1, seed=1)
    >>> outcomes = {"error": 0, "nan": 0, "ok": 0}
    >>> for x, y in datasets.Phishing().take(200):
    ...     try:
    ...         p = model.predict_proba_one(x)
    ...     except InjectedFault:
    ...         outcomes["error"] += 1
    ...         continue
    ...     outcomes["nan" if p[True] != p[True] else "ok"] += 1
    ...     model.learn_one(x, y)
    >>> outcomes
    {'error': 23, 'nan': 17, 'ok': 160}
    """

    def __init__(
        self,
        model: Any,
        error_rate: float = 0.0,
        nan_rate: float = 0.0,
        nan_from: int | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(model, list):  # steps, as a pipeline config lists them
            composed = model[0]
            for step in model[1:]:
                composed = composed | step
            model = composed
        if not 0.0 <= error_rate <= 1.0 or not 0.0 <= nan_rate <= 1.0:
            raise ValueError("error_rate and nan_rate are fractions in [0, 1]")
        self.model = model
        self.error_rate = error_rate
        self.nan_rate = nan_rate
        self.nan_from = nan_from
        self.seed = seed
        self._rng = random.Random(seed)
        self.n_predictions = 0

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        self.model.learn_one(x, y)

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]:
        self.n_predictions += 1
        draw = self._rng.random()
        if draw < self.error_rate:
            raise InjectedFault(f"injected fault on prediction {self.n_predictions}")
        proba = self.model.predict_proba_one(x)
        gone_bad = self.nan_from is not None and self.n_predictions >= self.nan_from
        if draw < self.error_rate + self.nan_rate or gone_bad:
            return {c: math.nan for c in proba} or {False: math.nan, True: math.nan}
        return proba
