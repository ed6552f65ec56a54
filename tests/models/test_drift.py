"""DriftMonitor keeps ADWIN's window sum and width itself instead of asking ADWIN's Rust
window before every label: its decisions must be those of asking every time."""

from __future__ import annotations

import pickle
import random

import pytest

from streamwise.models.drift import DriftMonitor


def _errors(seed: int, n: int = 12_000) -> list[float]:
    """An error stream whose mean moves up and down every 2,000 labels (so ADWIN cuts its
    window both ways): 0/1 errors for odd seeds, absolute errors of a regressor for even."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        mean = (0.1, 0.6, 0.3)[(i // 2000) % 3]
        out.append(float(rng.random() < mean) if seed % 2 else abs(rng.gauss(mean, 1.0)))
    return out


class _AskingEveryTime(DriftMonitor):
    """The decision rule as it was: ADWIN's estimation read from ADWIN before and after
    every update."""

    def update(self, error: float) -> bool:
        self.n_updates += 1
        helper = self.detector._helper
        before = helper.get_total() / helper.get_width() if helper.get_width() else 0.0
        self.detector.update(error)
        if not self.detector.drift_detected:
            return False
        helper = self.detector._helper  # ADWIN starts a new window object after a drift
        after = helper.get_total() / helper.get_width() if helper.get_width() else 0.0
        return self._judge(before, after)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("clock", [1, 32])
def test_the_kept_window_equals_adwins_and_so_do_the_decisions(seed, clock):
    spec = {"ADWIN": {"clock": clock}}
    monitor, reference = DriftMonitor(spec), _AskingEveryTime(spec)
    decisions, expected = [], []
    for e in _errors(seed):
        decisions.append(monitor.update(e))
        expected.append(reference.update(e))
        helper = monitor.detector._helper
        if not monitor.detector.drift_detected:
            assert (monitor._total, monitor._width) == (helper.get_total(), helper.get_width())
    assert decisions == expected
    assert reference.n_detections + reference.n_improvements > 0  # the stream did drift
    assert (monitor.n_detections, monitor.n_improvements) == (reference.n_detections, reference.n_improvements)


def test_a_monitor_from_a_snapshot_without_the_kept_window_reads_it_from_adwin_once():
    errors = _errors(1)
    whole, older = DriftMonitor("ADWIN"), DriftMonitor("ADWIN")
    for e in errors[:3000]:
        whole.update(e)
        older.update(e)
    # As unpickled from a snapshot written before the monitor kept the window.
    restored = pickle.loads(pickle.dumps(older))
    del restored.__dict__["_total"], restored.__dict__["_width"]
    assert restored._total is None
    assert [restored.update(e) for e in errors[3000:]] == [whole.update(e) for e in errors[3000:]]
    assert restored._total == whole._total


def test_another_detector_is_asked_for_its_estimation():
    monitor = DriftMonitor("PageHinkley")
    hits = [i for i in range(3000) if monitor.update(0.0 if i < 1500 else 1.0)]
    assert monitor._total is None
    assert hits and hits[0] > 1500
