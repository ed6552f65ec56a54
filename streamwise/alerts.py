"""Prometheus alerting rules, as code, for what an operator must hear about.

Rendered beside the Grafana boards (``streamwise dashboards render``) into
``deploy/prometheus/``:

- ``alerts.yml``: the rules docker-compose.yml's Prometheus loads, with windows and
  ``for:`` durations of minutes (:data:`PRODUCTION`);
- ``alerts-fast.yml``: the same rules with windows of seconds (:data:`FAST`), which
  dev/up's Prometheus loads so that a test can make each one fire in well under a minute.

Every rule reads only series the service exports (``connectors/prometheus.py``) and
keeps the ``pipeline`` label, so one Prometheus can watch many pipelines. Rule unit tests
(``promtool test rules``) live in ``tests/test_alert_rules.py``, with a firing and a
non-firing case for each rule and each set of parameters.

The rules:

=================================  ==========================================================
``StreamwiseConsumerLagGrowing``   a partition's lag grew over the last window, for a while,
                                   and is above a floor: the workers do not keep up.
``StreamwiseSnapshotTooOld``       events arrived since the newest snapshot, and it is older
                                   than its bound: a crash now would re-learn that much.
``StreamwiseSnapshotFailing``      a snapshot could not be written (Redis down, state that
                                   cannot be pickled).
``StreamwiseDeadLetterRateHigh``   more than a share of the input went to the dead-letter topic.
``StreamwiseModelMetricDropped``   a model's rolling score (bigger is better) fell more than
                                   X below its own mean over the recent window.
``StreamwiseModelLossRose``        a model's rolling loss (smaller is better) rose more than
                                   a fraction above its own recent mean.
``StreamwiseDriftDetected``        a model's drift detector fired (information).
``StreamwiseModelFaulting``        a model raised, answered NaN, or was put back to a healthy
                                   copy of itself; the other models serve as usual.
``StreamwiseWorkerStalled``        nothing committed for a while although input is waiting,
                                   or the worker's loop has not come round (a batch stuck).
``StreamwiseTargetDown``           Prometheus cannot scrape a worker (dead, or stopped).
=================================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
GROUP = "streamwise"


@dataclass(frozen=True)
class AlertParams:
    """The thresholds and windows of the rules; durations in seconds."""

    # The scrape job of the workers (deploy/prometheus/prometheus.yml, dev/up).
    job: str = "streamwise"
    # Lag: growing over ``lag_window_s`` for ``lag_for_s``, and above ``lag_min_records``
    # (a backlog of a few batches is normal weather).
    lag_window_s: int = 300
    lag_for_s: int = 600
    lag_min_records: int = 1000
    # Snapshots: SnapshotSettings.every_seconds is 30 by default; ten times that and a
    # snapshot is not being written.
    snapshot_age_bound_s: int = 300
    snapshot_for_s: int = 60
    snapshot_failures_window_s: int = 600
    # Dead letters: share of consumed records, over the window.
    dead_letter_share: float = 0.05
    dead_letter_window_s: int = 300
    dead_letter_for_s: int = 300
    # Model scores: the drop from the model's mean over the recent window.
    metric_drop: float = 0.05
    loss_rise: float = 0.5
    metric_level_window_s: int = 1800
    metric_for_s: int = 300
    # Drift: any detection in the window.
    drift_window_s: int = 600
    # Model faults (raised, NaN, restored): any in the window.
    model_fault_window_s: int = 600
    # Progress: seconds without a committed batch (or a turn of the loop).
    stall_s: int = 300
    stall_for_s: int = 60
    down_for_s: int = 120


PRODUCTION = AlertParams()
# For dev/up and the tests: every window in seconds, floors low enough for a short stream.
FAST = replace(
    PRODUCTION,
    lag_window_s=10,
    lag_for_s=5,
    lag_min_records=50,
    snapshot_age_bound_s=45,
    snapshot_for_s=2,
    snapshot_failures_window_s=30,
    dead_letter_window_s=10,
    dead_letter_for_s=2,
    metric_level_window_s=30,
    metric_for_s=2,
    drift_window_s=30,
    model_fault_window_s=30,
    stall_s=8,
    stall_for_s=2,
    down_for_s=5,
)
PROFILES: dict[str, AlertParams] = {"alerts.yml": PRODUCTION, "alerts-fast.yml": FAST}


def duration(seconds: float) -> str:
    """A Prometheus duration: the largest unit that divides ``seconds`` exactly.

    Examples
    --------
    >>> duration(600), duration(90), duration(5), duration(0), duration(7200)
    ('10m', '90s', '5s', '0s', '2h')
    """
    s = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _loss_metrics() -> list[str]:
    """``river.metrics`` classes for which smaller is better (losses and errors); every
    other metric a model reports is a score. The rendered rules hold the list, so a River
    upgrade that changes it shows as stale rules."""
    from river import metrics

    out = []
    for name in sorted(set(metrics.__all__)):
        cls = getattr(metrics, name, None)
        if not isinstance(cls, type):
            continue
        try:
            # Some need parameters, some have no direction (a confusion matrix): neither
            # can be a pipeline's metric by name alone.
            direction = cls().bigger_is_better
        except (TypeError, NotImplementedError):
            continue
        if direction is False:
            out.append(name)
    return out


def rules(p: AlertParams = PRODUCTION) -> list[dict[str, Any]]:
    """The alerting rules of group :data:`GROUP`, as Prometheus' rule-file entries."""
    d = duration
    lag = "streamwise_consumer_lag_records"
    losses = "|".join(_loss_metrics())
    rolling_score = f'streamwise_model_metric{{window="rolling", metric!~"{losses}"}}'
    rolling_loss = f'streamwise_model_metric{{window="rolling", metric=~"{losses}"}}'
    level = d(p.metric_level_window_s)
    return [
        _rule(
            "StreamwiseConsumerLagGrowing", "warning", p.lag_for_s,
            f"max by (pipeline, topic, partition) (deriv({lag}[{d(p.lag_window_s)}])) > 0\n"
            f"and max by (pipeline, topic, partition) ({lag}) > {p.lag_min_records}",
            "{{ $labels.pipeline }}: lag of {{ $labels.topic }}[{{ $labels.partition }}] keeps growing",
            f"The lag grew over the last {d(p.lag_window_s)} for {d(p.lag_for_s)} and is {{{{ $value }}}} records"
            f" (above {p.lag_min_records}): the workers do not keep up. Add workers (streamwise run --workers),"
            " look for a slow model (streamwise_batch_duration_seconds) or a paused partition (Redis).",
        ),
        _rule(
            "StreamwiseSnapshotTooOld", "warning", p.snapshot_for_s,
            f"max by (pipeline, instance) (streamwise_snapshot_age_seconds) > {p.snapshot_age_bound_s}\n"
            "and on (pipeline, instance)\n"
            "sum by (pipeline, instance)"
            f" (increase(streamwise_events_consumed_total[{d(p.snapshot_age_bound_s)}])) > 0",
            "{{ $labels.pipeline }}: newest snapshot is {{ $value | humanizeDuration }} old",
            f"Events arrived since the newest snapshot, which is older than {d(p.snapshot_age_bound_s)}: a crash now"
            " re-learns all of them. Check Redis and streamwise_snapshot_failures_total.",
        ),
        _rule(
            "StreamwiseSnapshotFailing", "warning", 0,
            "sum by (pipeline, instance)"
            f" (increase(streamwise_snapshot_failures_total[{d(p.snapshot_failures_window_s)}])) > 0",
            "{{ $labels.pipeline }}: snapshots are failing",
            f"{{{{ $value }}}} snapshot(s) could not be written in the last {d(p.snapshot_failures_window_s)}"
            " (Redis unavailable, or state that cannot be pickled; see the worker's log). Partitions pause"
            " once snapshot.max_unsnapshotted_events are at risk.",
        ),
        _rule(
            "StreamwiseDeadLetterRateHigh", "warning", p.dead_letter_for_s,
            f"sum by (pipeline) (rate(streamwise_events_dead_lettered_total[{d(p.dead_letter_window_s)}]))\n"
            f"/ sum by (pipeline) (rate(streamwise_events_consumed_total[{d(p.dead_letter_window_s)}]))\n"
            f"> {p.dead_letter_share}",
            "{{ $labels.pipeline }}: {{ $value | humanizePercentage }} of the input is dead-lettered",
            f"More than {p.dead_letter_share:.0%} of the records consumed over {d(p.dead_letter_window_s)} went to the"
            " dead-letter topic. Its headers (streamwise.error.stage, .message) say why; a producer may have"
            " changed its schema.",
        ),
        _rule(
            "StreamwiseModelMetricDropped", "warning", p.metric_for_s,
            f"avg_over_time({rolling_score}[{level}]) - {rolling_score}\n> {p.metric_drop}",
            "{{ $labels.pipeline }}: {{ $labels.model }}[{{ $labels.partition }}] {{ $labels.metric }}"
            " fell {{ $value | printf \"%.3f\" }} below its recent level",
            f"The rolling {{{{ $labels.metric }}}} is more than {p.metric_drop} below its own mean over the last"
            f" {level}: the world may have drifted, or the input changed. Compare with the other models and"
            " the drift detections.",
        ),
        _rule(
            "StreamwiseModelLossRose", "warning", p.metric_for_s,
            f"({rolling_loss} - avg_over_time({rolling_loss}[{level}]))\n"
            f"/ avg_over_time({rolling_loss}[{level}])\n> {p.loss_rise}",
            "{{ $labels.pipeline }}: {{ $labels.model }}[{{ $labels.partition }}] {{ $labels.metric }}"
            " rose {{ $value | humanizePercentage }} above its recent level",
            f"The rolling {{{{ $labels.metric }}}} is more than {p.loss_rise:.0%} above its own mean over the last"
            f" {level}.",
        ),
        _rule(
            "StreamwiseDriftDetected", "info", 0,
            f"sum by (pipeline, model) (increase(streamwise_drift_detections_total[{d(p.drift_window_s)}])) > 0",
            "{{ $labels.pipeline }}: drift detected in {{ $labels.model }}",
            f"The drift detector of {{{{ $labels.model }}}} fired in the last {d(p.drift_window_s)}; the drift policy"
            " acted on it (see the alerts topic for what it did).",
        ),
        _rule(
            "StreamwiseModelFaulting", "warning", 0,
            "sum by (pipeline, model, kind) "
            f"(increase(streamwise_model_faults_total[{d(p.model_fault_window_s)}])) > 0",
            "{{ $labels.pipeline }}: {{ $labels.model }} faulted ({{ $labels.kind }})",
            f"In the last {d(p.model_fault_window_s)} the model raised while predicting (its records carry the"
            " error) or learning (it did not learn those events), answered NaN or infinity (flagged, kept out"
            " of the metrics), or was put back to a healthy copy of itself after NaN answers (restored; the"
            " alerts topic says to which). The other models predict and learn as usual. The model's last"
            " error is in the worker's log and in streamwise snapshots show.",
        ),
        _rule(
            "StreamwiseWorkerStalled", "critical", p.stall_for_s,
            f"time() - max by (pipeline, instance) (streamwise_last_progress_timestamp_seconds) > {p.stall_s}\n"
            "and on (pipeline, instance) (\n"
            f"  sum by (pipeline, instance) ({lag}) > 0\n"
            "  or time() - max by (pipeline, instance) (streamwise_last_report_timestamp_seconds)"
            f" > {p.stall_s}\n"
            ")",
            "{{ $labels.pipeline }}: {{ $labels.instance }} has committed nothing for {{ $value | humanizeDuration }}",
            f"No batch committed for more than {d(p.stall_s)} while input is waiting, or the worker's loop has not"
            " come round in that time (a batch stuck in a model or a hung call). Look at the worker's log and"
            " its last batch duration.",
        ),
        _rule(
            "StreamwiseTargetDown", "critical", p.down_for_s,
            f'up{{job="{p.job}"}} == 0',
            "{{ $labels.instance }} cannot be scraped",
            "Prometheus cannot read the worker's /metrics: it is dead, stopped (SIGSTOP, a paused container)"
            " or unreachable. Its partitions move to another worker once its session times out.",
        ),
    ]


def _rule(name: str, severity: str, for_s: int, expr: str, summary: str, description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_s:
        rule["for"] = duration(for_s)
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


class _Literal(str):
    """A string written as a YAML block (``|``), so multi-line PromQL stays readable."""


def _literal(dumper: yaml.SafeDumper, data: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def render_text(params: AlertParams = PRODUCTION, header: str = "") -> str:
    """The rule file: one group, :data:`GROUP`, with every rule of :func:`rules`.

    Examples
    --------
    >>> text = render_text(FAST)
    >>> "alert: StreamwiseWorkerStalled" in text and "for: 2s" in text
    True
    """
    entries = [{k: _Literal(v) if k == "expr" else v for k, v in r.items()} for r in rules(params)]
    body = yaml.dump({"groups": [{"name": GROUP, "rules": entries}]}, Dumper=_Dumper, sort_keys=False, width=200)
    return header + body


def _header(name: str) -> str:
    params = PROFILES[name]
    return (
        "# Rendered by `streamwise dashboards render` from streamwise/alerts.py: edit that, not this.\n"
        + (
            "# Loaded by docker-compose.yml's Prometheus (deploy/prometheus/prometheus.yml, rule_files).\n"
            if params is PRODUCTION
            else "# The same rules with windows of seconds, for dev/up's Prometheus and the tests.\n"
        )
    )


def render(directory: Path = RULES_DIR) -> list[Path]:
    """Writes every rule file of :data:`PROFILES` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, params in PROFILES.items():
        path = directory / name
        path.write_text(render_text(params, _header(name)))
        out.append(path)
    return out


def stale(directory: Path = RULES_DIR) -> list[str]:
    """Names of the rule files in ``directory`` that are missing or differ from the code."""
    return [
        name
        for name, params in PROFILES.items()
        if not (directory / name).is_file() or (directory / name).read_text() != render_text(params, _header(name))
    ]
