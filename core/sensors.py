"""Hooks the runner calls as events move through it, in the way Faust's sensors work.

Processing code calls these no-op hooks and never imports a metrics library; a
Prometheus sensor (:class:`streamwise.connectors.prometheus.PrometheusSensor`) overrides
them. :class:`CountingSensor` keeps the totals the CLI prints at the end of a run.

Every argument that ends up as a metric label must stay bounded: a topic, a partition,
a model name, a stage or an action from a fixed list, never a record key or an event id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streamwise.core.stages import CleanerAction

# What a cleaner did to an event: the ``action`` of :meth:`Sensor.on_clean`.
CLEANER_ACTIONS = tuple(CleanerAction)
# What :meth:`Sensor.on_fault` counts: a broker call that failed and is retried
# (kafka), a transaction not committed and its partitions rewound (commit), a producer
# rebuilt after a fatal error (producer), a snapshot write refused because another
# worker claimed the partition (fenced), the lag report failing (lag).
FAULT_KINDS = ("kafka", "commit", "producer", "fenced", "lag")
# What the delayed-label join did not learn (models/labels.py LabelStats.misses).
LABEL_MISS_OUTCOMES = (
    "prediction_expired", "prediction_evicted", "label_late", "label_expired", "label_repeated", "event_repeated"
)
# Which prequential figure :meth:`Sensor.on_model_metric` reports.
METRIC_WINDOWS = ("cumulative", "rolling")


class Sensor:
    """No-op hooks; override the ones you need.

    Examples
    --------
    >>> class Latencies(Sensor):
    ...     def __init__(self):
    ...         self.seen = []
    ...     def on_prediction(self, latency_s):
    ...         self.seen.append(latency_s)
    >>> s = Latencies()
    >>> s.on_prediction(0.25); s.on_drift("logreg", "ADWIN")
    >>> s.seen
    [0.25]
    """

    # ---- the event path (runner and processor) ----
    def on_batch(self, n_records: int, seconds: float) -> None: ...

    def on_event_in(self, topic: str, partition: int) -> None: ...

    def on_event_valid(self, topic: str, partition: int) -> None:
        """The event decoded and passed validation."""

    def on_dead_letter(self, topic: str, stage: str) -> None: ...

    def on_prediction(self, latency_s: float | None) -> None:
        """``latency_s``: from the input record's timestamp to its prediction; None when
        the record has no timestamp (Kafka's -1, or 0)."""

    # ---- the same, once per poll (the processor calls these) ----
    # A sensor that counts should override them: by default they call the per-event
    # hook once per event, which is what a poll-level hook exists to avoid.
    def on_events_in(self, topic: str, partition: int, n: int) -> None:
        """``n`` records of ``topic``/``partition`` were polled (called before they are processed)."""
        for _ in range(n):
            self.on_event_in(topic, partition)

    def on_events_valid(self, topic: str, partition: int, n: int) -> None:
        """``n`` events of the poll decoded and passed validation."""
        for _ in range(n):
            self.on_event_valid(topic, partition)

    def on_predictions(self, latencies_s: Sequence[float | None]) -> None:
        """A prediction record for each event of the poll, with its latency (or None)."""
        for latency_s in latencies_s:
            self.on_prediction(latency_s)

    def on_learn(self, model: str, n: int = 1) -> None:
        """``model`` learned from ``n`` more labelled events."""

    def on_commit(self, n_partitions: int) -> None: ...

    def on_report(self) -> None:
        """The worker's loop came round to report its figures: about once a second, busy
        or idle. It stops while a batch is stuck (a hung model, a blocked call)."""

    def on_lag(self, lag: Mapping[tuple[str, int], int], stage: str = "pipeline") -> None:
        """Records behind the end, per assigned (topic, partition); all of them each time,
        for the ``stage`` that consumes them (``pipeline``, or with ``scope: global``
        ``partition`` for the input topics and ``learn`` for the learn topic)."""

    def on_stage_partitions(self, stage: str, n: int) -> None:
        """Partitions whose state ``stage`` holds in memory on this worker; with ``scope:
        global`` the ``learn`` stage reports 1 on the one worker that runs the learner."""

    # ---- models ----
    def on_model_metric(
        self, model: str, metric: str, window: str, value: float, partition: int | None = None
    ) -> None:
        """The current prequential ``metric`` of ``model``; ``window`` is one of
        :data:`METRIC_WINDOWS`; ``partition`` names the replica when state is per partition."""

    def on_model_fault(self, model: str, kind: str, n: int = 1) -> None:
        """``model`` failed on ``n`` events in the way ``kind`` names (a
        :class:`~streamwise.core.stages.ModelFault`); the other models were not affected."""

    def on_search(
        self, model: str, metric: str, candidates: Mapping[str, float | None], best: str, running: int,
        partition: int | None = None,
    ) -> None:
        """A searched model's state (models/search.py): each candidate's ``metric`` by its
        compact label (None before it scored), the one that answers, and how many still learn."""

    def on_pseudo_labels(self, model: str, n: int) -> None:
        """``model`` learned ``n`` unlabelled events from its own confident predictions
        (self-training); never counted by :meth:`on_learn`."""

    def on_self_training(self, model: str, active: bool, partition: int | None = None) -> None:
        """Whether ``model``'s self-training is on, or was switched off by its guard."""

    def on_drift(self, model: str, detector: str) -> None:
        """``detector`` (e.g. ``ADWIN``) flagged a drift in ``model``'s errors."""

    def on_champion_change(self, previous: str | None, champion: str, partition: int | None = None) -> None:
        """``champion`` now answers in the records of ``partition``: called once when the
        partition is first reported (``previous`` None) and at every real change after.
        Each partition holds its own replica of every model, so each has its own champion;
        ``partition`` is None when one state serves every partition."""

    def on_label(self, delay_s: float) -> None:
        """A label was joined to its event, ``delay_s`` after the event arrived."""

    def on_pending_labels(self, n: int) -> None:
        """Events waiting in the bounded buffer for their label."""

    def on_label_misses(self, misses: Mapping[str, int]) -> None:
        """Delayed labels and events the join did not learn, by outcome (models/labels.py
        ``LabelStats.misses``): a label too late or too early, a repeat, a prediction
        dropped before its label came."""

    def on_torch_step(self, model: str, seconds: float, batch_size: int, device: str) -> None:
        """One optimiser step of a torch learner on ``device`` (``cpu``, ``cuda:0``)."""

    # ---- business rules (models/rules.py) ----
    def on_rule_fired(self, rule: str, outcome: str, n: int = 1) -> None:
        """``rule``'s condition held on ``n`` events; ``outcome`` is what the rule does
        (``refuse``, ``review``, ``approve`` or ``override``), whether or not it decided."""

    def on_rule_decided(self, rule: str, decision: str, n: int = 1) -> None:
        """``rule`` decided ``n`` records: its ``decision`` (or ``override``) is theirs."""

    # ---- state ----
    def on_snapshot(self, partition: int, size_bytes: int, seconds: float) -> None:
        """A snapshot of ``partition`` was written and is now the newest valid one."""

    def on_snapshot_failure(self, partition: int, reason: str) -> None:
        """``reason``: an exception class name or another short word, never a message."""

    def on_snapshot_missing(self, partition: int, action: str) -> None:
        """Kafka's committed offsets show a snapshot existed but Redis has none (data
        lost); ``action`` is the ``snapshot.on_missing`` setting applied."""

    # ---- faults ----
    def on_fault(self, kind: str) -> None:
        """A fault the worker survived: ``kind`` is one of :data:`FAULT_KINDS`."""

    def on_partitions_waiting(self, n: int, stage: str = "pipeline") -> None:
        """Partitions assigned to this worker but paused: state not restorable yet,
        fenced, or refused; reported with every lag report."""

    # ---- cleaners ----
    def on_clean(self, action: str, n: int = 1) -> None:
        """``action`` is one of :data:`CLEANER_ACTIONS`."""


def _hook_names() -> list[str]:
    return [name for name in vars(Sensor) if name.startswith("on_")]


def _fan_out(name: str) -> Callable[..., None]:
    def hook(self: SensorSet, *args: Any, **kwargs: Any) -> None:
        for s in self.sensors:
            getattr(s, name)(*args, **kwargs)

    hook.__name__ = hook.__qualname__ = name
    return hook


class SensorSet(Sensor):
    """Fans every hook out to several sensors.

    Examples
    --------
    >>> counts = CountingSensor()
    >>> both = SensorSet([counts, Sensor()])
    >>> both.on_event_in("events", 0); both.on_dead_letter("events", "decode")
    >>> both.on_events_in("events", 0, 20)
    >>> counts.events_in, dict(counts.dead_letters)
    (21, {'decode': 1})
    """

    def __init__(self, sensors: Sequence[Sensor]) -> None:
        self.sensors = list(sensors)


for _name in _hook_names():
    setattr(SensorSet, _name, _fan_out(_name))


class CountingSensor(Sensor):
    def __init__(self) -> None:
        self.events_in = 0
        self.predictions = 0
        self.dead_letters: Counter[str] = Counter()
        self.learned: Counter[str] = Counter()
        self.batches = 0
        self.busy_seconds = 0.0

    def on_batch(self, n_records: int, seconds: float) -> None:
        self.batches += 1
        self.busy_seconds += seconds

    def on_event_in(self, topic: str, partition: int) -> None:
        self.events_in += 1

    def on_events_in(self, topic: str, partition: int, n: int) -> None:
        self.events_in += n

    def on_dead_letter(self, topic: str, stage: str) -> None:
        self.dead_letters[str(stage)] += 1  # the stage's name, not the enum's repr, in summaries

    def on_prediction(self, latency_s: float | None) -> None:
        self.predictions += 1

    def on_predictions(self, latencies_s: Sequence[float | None]) -> None:
        self.predictions += len(latencies_s)

    def on_learn(self, model: str, n: int = 1) -> None:
        self.learned[model] += n
