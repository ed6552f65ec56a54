"""Which model answers for the pipeline: the best rolling metric, with hysteresis.

A challenger takes over only when it has been ahead of the champion by more than
``margin`` on ``patience`` consecutive evaluations in a row, each over at least
``min_samples`` labels. A model that leads for a moment and falls back resets its
count, so two models of nearly equal skill do not take turns on every label.
A champion whose score is NaN is behind every model with a score.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChampionChange:
    previous: str
    champion: str
    previous_score: float
    champion_score: float


class ChampionSelector:
    """Examples
    --------
    >>> sel = ChampionSelector("a", bigger_is_better=True, margin=0.01, patience=3, min_samples=1)
    >>> [sel.update({"a": (0.80, 10), "b": (0.85, 10)}) is not None for _ in range(3)]
    [False, False, True]
    >>> sel.champion
    'b'
    >>> sel.update({"a": (0.86, 10), "b": (0.85, 10)}) is None  # within the margin: stays
    True
    >>> failing = ChampionSelector("a", bigger_is_better=True, patience=3, min_samples=1)
    >>> [failing.update({"a": (float("nan"), 10), "b": (0.5, 10)}) is not None for _ in range(3)]
    [False, False, True]
    """

    def __init__(
        self,
        initial: str,
        bigger_is_better: bool,
        margin: float = 0.01,
        patience: int = 100,
        min_samples: int = 100,
    ) -> None:
        self.champion = initial
        self.bigger_is_better = bigger_is_better
        self.margin = margin
        self.patience = patience
        self.min_samples = min_samples
        self._leader: str | None = None
        self._streak = 0
        self.n_changes = 0

    def _better(self, a: float, b: float) -> bool:
        """Is score ``a`` better than ``b`` by more than the margin?"""
        return a - b > self.margin if self.bigger_is_better else b - a > self.margin

    def update(self, scores: dict[str, tuple[float, int]]) -> ChampionChange | None:
        """``scores`` maps each model to (rolling metric, labels in its window). Returns the
        change when the champion changes, else None."""
        if self.champion not in scores:
            # The champion was removed (e.g. a retired challenger): hand over at once.
            best = self._best(scores, min_samples=0)
            if best is None:
                return None
            change = ChampionChange(self.champion, best, float("nan"), scores[best][0])
            self._switch(best)
            return change
        own, _ = scores[self.champion]
        leader = self._best(scores, self.min_samples)
        # A NaN score (the champion keeps failing, or its metric broke) is beaten by any
        # number: the champion loses its place after ``patience`` such evaluations.
        if leader is None or leader == self.champion or not (own != own or self._better(scores[leader][0], own)):
            self._leader, self._streak = None, 0
            return None
        if leader != self._leader:
            self._leader, self._streak = leader, 0
        self._streak += 1
        if self._streak < self.patience:
            return None
        change = ChampionChange(self.champion, leader, own, scores[leader][0])
        self._switch(leader)
        return change

    def _best(self, scores: dict[str, tuple[float, int]], min_samples: int) -> str | None:
        eligible = [(v, name) for name, (v, n) in scores.items() if n >= min_samples and v == v]
        if not eligible:
            return None
        pick = max if self.bigger_is_better else min
        # Ties go to the earlier model in config order, not to the name's sort order.
        order = {name: i for i, name in enumerate(scores)}
        return pick(eligible, key=lambda t: (t[0], -order[t[1]]) if self.bigger_is_better else (t[0], order[t[1]]))[1]

    def _switch(self, name: str) -> None:
        self.champion = name
        self._leader, self._streak = None, 0
        self.n_changes += 1
