"""Learners for fault drills: a real estimator made deliberately slow.

A service that must survive a slow model (a large ensemble, a model on a cold cache, a
torch step on a busy GPU) is tested with one. :class:`DelayedClassifier` answers
exactly as the classifier it wraps and adds a fixed time to every ``learn_one``, so a
test (or an operator rehearsing an incident) can make a batch outlast
``kafka.max_poll_interval_ms`` on any machine, however fast.
"""

from __future__ import annotations

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
