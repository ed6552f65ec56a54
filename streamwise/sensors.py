"""Hooks the runner calls as events move through it, in the way Faust's sensors work.

Processing code calls these no-op hooks and never imports a metrics library; a
Prometheus sensor (in ``connectors/``) overrides them. :class:`CountingSensor` keeps the
totals the CLI prints at the end of a run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


class Sensor:
    def on_batch(self, n_records: int, seconds: float) -> None: ...

    def on_event_in(self, topic: str, partition: int) -> None: ...

    def on_dead_letter(self, topic: str, stage: str) -> None: ...

    def on_prediction(self, latency_s: float) -> None: ...

    def on_learn(self, model: str) -> None: ...

    def on_commit(self, n_partitions: int) -> None: ...


class SensorSet(Sensor):
    """Fans every hook out to several sensors."""

    def __init__(self, sensors: Sequence[Sensor]) -> None:
        self.sensors = list(sensors)

    def on_batch(self, n_records: int, seconds: float) -> None:
        for s in self.sensors:
            s.on_batch(n_records, seconds)

    def on_event_in(self, topic: str, partition: int) -> None:
        for s in self.sensors:
            s.on_event_in(topic, partition)

    def on_dead_letter(self, topic: str, stage: str) -> None:
        for s in self.sensors:
            s.on_dead_letter(topic, stage)

    def on_prediction(self, latency_s: float) -> None:
        for s in self.sensors:
            s.on_prediction(latency_s)

    def on_learn(self, model: str) -> None:
        for s in self.sensors:
            s.on_learn(model)

    def on_commit(self, n_partitions: int) -> None:
        for s in self.sensors:
            s.on_commit(n_partitions)


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

    def on_dead_letter(self, topic: str, stage: str) -> None:
        self.dead_letters[stage] += 1

    def on_prediction(self, latency_s: float) -> None:
        self.predictions += 1

    def on_learn(self, model: str) -> None:
        self.learned[model] += 1
