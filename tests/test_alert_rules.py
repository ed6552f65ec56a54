"""The Prometheus alerting rules (streamwise/alerts.py): the checked-in files match the
code, ``promtool check rules`` accepts them, and ``promtool test rules`` runs a firing and
a non-firing case of every rule, for both the production and the fast parameters.

The cases are built from the parameters (windows, ``for:`` durations, floors), so the
same story is told at minute scale for ``alerts.yml`` and at second scale for
``alerts-fast.yml``. They check when each rule fires and with which labels; the
annotations are prose whose templates ``promtool check rules`` parses, so the unit tests
run on a copy of the rules without them (promtool would otherwise compare every
rendered sentence).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamwise import alerts
from streamwise.alerts import FAST, PRODUCTION, AlertParams

# Evaluation step of each profile's tests: a fraction of its shortest window.
PROFILES = [("alerts.yml", PRODUCTION, 15), ("alerts-fast.yml", FAST, 1)]
WORKER = {"pipeline": "credit", "instance": "worker-0:9108", "job": "streamwise"}


def _promtool() -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: it ships with Debian's prometheus package (dev/bootstrap installs it)"
    return exe


def _series(name: str, **labels: str) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in {**WORKER, **labels}.items())
    return f"{name}{{{inner}}}"


@dataclass
class Case:
    """One promtool test: input series, and at ``eval_s`` the alerts ``alertname`` has
    (each as its labels; an empty list means it must not fire)."""

    title: str
    alertname: str
    series: list[tuple[str, str]]
    eval_s: int
    expected: list[dict[str, str]] = field(default_factory=list)

    def promtool(self, step: int) -> dict[str, Any]:
        return {
            "name": self.title,
            "interval": alerts.duration(step),
            "input_series": [{"series": s, "values": v} for s, v in self.series],
            "alert_rule_test": [{
                "eval_time": alerts.duration(self.eval_s),
                "alertname": self.alertname,
                "exp_alerts": [{"exp_labels": labels} for labels in self.expected],
            }],
        }


def cases(p: AlertParams, step: int) -> list[Case]:
    def n(seconds: float) -> int:
        return max(1, math.ceil(seconds / step))

    out: list[Case] = []

    # ---- consumer lag growing ----
    lag_n = n(p.lag_window_s) + n(p.lag_for_s) + 10
    lag_at = (n(p.lag_window_s) + n(p.lag_for_s) + 4) * step
    lag = _series("streamwise_consumer_lag_records", topic="credit.events", partition="3")
    lag_labels = {"pipeline": "credit", "topic": "credit.events", "partition": "3", "severity": "warning"}
    out += [
        Case("lag grows past the floor", "StreamwiseConsumerLagGrowing",
             [(lag, f"0+{p.lag_min_records // 2}x{lag_n}")], lag_at, [lag_labels]),
        Case("lag high but steady", "StreamwiseConsumerLagGrowing",
             [(lag, f"{5 * p.lag_min_records}x{lag_n}")], lag_at),
        Case("lag grows but stays under the floor", "StreamwiseConsumerLagGrowing",
             [(lag, f"0+{max(1, p.lag_min_records // (2 * lag_n))}x{lag_n}")], lag_at),
    ]

    # ---- snapshot age ----
    snap_n = n(p.snapshot_age_bound_s) + n(p.snapshot_for_s) + 10
    snap_at = (n(p.snapshot_age_bound_s) + n(p.snapshot_for_s) + 4) * step
    age = (_series("streamwise_snapshot_age_seconds"), f"0+{step}x{snap_n}")
    consumed = _series("streamwise_events_consumed_total", topic="credit.events", partition="0")
    worker_labels = {"pipeline": "credit", "instance": WORKER["instance"], "severity": "warning"}
    out += [
        Case("no snapshot while events arrive", "StreamwiseSnapshotTooOld",
             [age, (consumed, f"0+10x{snap_n}")], snap_at, [worker_labels]),
        Case("old snapshot but idle: nothing at risk", "StreamwiseSnapshotTooOld",
             [age, (consumed, f"0x{snap_n}")], snap_at),
        Case("snapshots keep up", "StreamwiseSnapshotTooOld",
             [(age[0], f"{step}x{snap_n}"), (consumed, f"0+10x{snap_n}")], snap_at),
    ]

    # ---- snapshot failures ----
    fail_n = n(p.snapshot_failures_window_s) * 3
    failures = _series("streamwise_snapshot_failures_total")
    out += [
        Case("a snapshot failed", "StreamwiseSnapshotFailing",
             [(failures, f"0x4 1x{fail_n}")], 6 * step, [worker_labels]),
        Case("no failure", "StreamwiseSnapshotFailing", [(failures, f"0x{fail_n}")], 6 * step),
        Case("a failure long ago", "StreamwiseSnapshotFailing", [(failures, f"0x4 1x{fail_n}")],
             (5 + 2 * n(p.snapshot_failures_window_s)) * step),
    ]

    # ---- dead letters ----
    dl_n = n(p.dead_letter_window_s) + n(p.dead_letter_for_s) + 10
    dl_at = (n(p.dead_letter_window_s) + n(p.dead_letter_for_s) + 4) * step
    dead = _series("streamwise_events_dead_lettered_total", topic="credit.events", stage="decode")
    share = p.dead_letter_share
    out += [
        Case("twice the allowed share dead-lettered", "StreamwiseDeadLetterRateHigh",
             [(consumed, f"0+1000x{dl_n}"), (dead, f"0+{round(2000 * share)}x{dl_n}")], dl_at,
             [{"pipeline": "credit", "severity": "warning"}]),
        Case("half the allowed share", "StreamwiseDeadLetterRateHigh",
             [(consumed, f"0+1000x{dl_n}"), (dead, f"0+{round(500 * share)}x{dl_n}")], dl_at),
    ]

    # ---- model scores ----
    level_n = n(p.metric_level_window_s)
    before, after = level_n + 2, n(p.metric_for_s) + 10
    metric_at = (before + n(p.metric_for_s) + 4) * step

    def rolling(metric: str) -> str:
        return _series("streamwise_model_metric", model="tree", partition="0", metric=metric, window="rolling")

    def model_labels(metric: str) -> dict[str, str]:
        return {**WORKER, "model": "tree", "partition": "0", "metric": metric, "window": "rolling",
                "severity": "warning"}

    high, dropped = 0.9, 0.9 - 4 * p.metric_drop
    low_loss, risen = 0.2, 0.2 * (1 + 3 * p.loss_rise)
    out += [
        Case("accuracy falls well below its level", "StreamwiseModelMetricDropped",
             [(rolling("Accuracy"), f"{high}x{before} {dropped:.4f}x{after}")], metric_at, [model_labels("Accuracy")]),
        Case("accuracy dips within the margin; a loss falls", "StreamwiseModelMetricDropped",
             [(rolling("Accuracy"), f"{high}x{before} {high - p.metric_drop / 2:.4f}x{after}"),
              (rolling("LogLoss"), f"0.5x{before} 0.1x{after}")], metric_at),
        Case("log loss rises well above its level", "StreamwiseModelLossRose",
             [(rolling("LogLoss"), f"{low_loss}x{before} {risen:.4f}x{after}")], metric_at, [model_labels("LogLoss")]),
        Case("log loss rises a little; a score falls", "StreamwiseModelLossRose",
             [(rolling("LogLoss"), f"{low_loss}x{before} {low_loss * (1 + p.loss_rise / 3):.4f}x{after}"),
              (rolling("Accuracy"), f"{high}x{before} {dropped:.4f}x{after}")], metric_at),
    ]

    # ---- drift ----
    drift = _series("streamwise_drift_detections_total", model="tree")
    drift_n = n(p.drift_window_s) * 3
    out += [
        Case("a detection", "StreamwiseDriftDetected", [(drift, f"0x4 1x{drift_n}")], 6 * step,
             [{"pipeline": "credit", "model": "tree", "severity": "info"}]),
        Case("no detection", "StreamwiseDriftDetected", [(drift, f"0x{drift_n}")], 6 * step),
    ]

    # ---- model faults ----
    learn = _series("streamwise_model_faults_total", model="logreg", kind="learn")
    fault_n = n(p.model_fault_window_s) * 3
    out += [
        Case("a model fails to learn", "StreamwiseModelFaulting", [(learn, f"0x4 5x{fault_n}")], 6 * step,
             [{"pipeline": "credit", "model": "logreg", "kind": "learn", "severity": "warning"}]),
        Case("no fault since long ago", "StreamwiseModelFaulting", [(learn, f"0x2 5x{fault_n * 2}")],
             (fault_n * 2 - 2) * step),
    ]

    # ---- progress ----
    # promtool's clock starts at Unix time 0: a timestamp series "0x.." stopped at the start,
    # one "0+step" keeps up with time().
    stall_n = n(p.stall_s) + n(p.stall_for_s) + 10
    stall_at = (n(p.stall_s) + n(p.stall_for_s) + 4) * step
    progress = _series("streamwise_last_progress_timestamp_seconds")
    reported = _series("streamwise_last_report_timestamp_seconds")
    stopped, moving = f"0x{stall_n}", f"0+{step}x{stall_n}"
    critical = {**worker_labels, "severity": "critical"}
    out += [
        Case("input waits, nothing committed", "StreamwiseWorkerStalled",
             [(progress, stopped), (reported, moving), (lag, f"100x{stall_n}")], stall_at, [critical]),
        Case("a batch is stuck: the loop stopped", "StreamwiseWorkerStalled",
             [(progress, stopped), (reported, stopped), (lag, f"0x{stall_n}")], stall_at, [critical]),
        Case("idle: nothing to commit", "StreamwiseWorkerStalled",
             [(progress, stopped), (reported, moving), (lag, f"0x{stall_n}")], stall_at),
        Case("busy and committing", "StreamwiseWorkerStalled",
             [(progress, moving), (reported, moving), (lag, f"100x{stall_n}")], stall_at),
    ]

    # ---- scrape target ----
    down_n = n(p.down_for_s) + 10
    down_at = (4 + n(p.down_for_s) + 3) * step
    up = 'up{job="%s", instance="worker-0:9108"}'
    out += [
        Case("worker stops answering", "StreamwiseTargetDown", [(up % p.job, f"1x3 0x{down_n}")], down_at,
             [{"job": p.job, "instance": "worker-0:9108", "severity": "critical"}]),
        Case("worker answers; another job is down", "StreamwiseTargetDown",
             [(up % p.job, f"1x{down_n + 4}"), (up % "other", f"0x{down_n + 4}")], down_at),
    ]
    return out


def test_checked_in_rules_match_the_code():
    # When this fails: run `streamwise dashboards render` and commit deploy/prometheus.
    assert alerts.stale() == []


def test_the_compose_prometheus_config_loads_the_rules():
    config = alerts.RULES_DIR / "prometheus.yml"
    check = subprocess.run([_promtool(), "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout and "SUCCESS: 10 rules found" in check.stdout


def test_every_rule_has_a_firing_and_a_quiet_case():
    names = {r["alert"] for r in alerts.rules()}
    assert len(names) == 10
    for _, params, step in PROFILES:
        built = cases(params, step)
        assert {c.alertname for c in built if c.expected} == names
        assert {c.alertname for c in built if not c.expected} == names


@pytest.mark.parametrize(("name", "params", "step"), PROFILES, ids=[p[0] for p in PROFILES])
def test_promtool_checks_the_rules_and_every_case_passes(tmp_path: Path, name: str, params: AlertParams, step: int):
    promtool = _promtool()
    rules_file = alerts.RULES_DIR / name
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS: 10 rules found" in check.stdout, check.stdout + check.stderr

    bare = yaml.safe_load(rules_file.read_text())
    for rule in bare["groups"][0]["rules"]:
        rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(bare))
    built = cases(params, step)
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": alerts.duration(step),
             "tests": [c.promtool(step) for c in built]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    run = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout and len(built) >= 2 * 9


def test_promtool_catches_a_rule_that_fires_when_it_should_not(tmp_path: Path):
    """The cases can fail: with the dead-letter share lowered below the quiet case's
    share, its 'must not fire' case fails in promtool."""
    promtool = _promtool()
    lax = alerts.AlertParams(dead_letter_share=PRODUCTION.dead_letter_share / 4)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {k: v for k, v in r.items() if k != "annotations"} for r in alerts.rules(lax)]}]}))
    quiet = next(c for c in cases(PRODUCTION, 15) if c.title == "half the allowed share")
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": [quiet.promtool(15)]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    run = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0 and "StreamwiseDeadLetterRateHigh" in run.stdout + run.stderr


def test_the_readme_lists_every_rule():
    readme = (alerts.RULES_DIR.parents[1] / "README.md").read_text()
    assert [r["alert"] for r in alerts.rules() if f"| `{r['alert']}` |" not in readme] == []
