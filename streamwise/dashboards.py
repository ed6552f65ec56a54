"""The Grafana dashboards, as code: built with grafana-foundation-sdk and rendered into
``deploy/grafana/dashboards/*.json``, which Grafana provisions (docker-compose.yml) and
``streamwise dashboards push`` uploads.

The SDK is pinned to one build, :data:`SDK_BUILD`, made for one Grafana version,
:data:`GRAFANA_VERSION`; docker-compose.yml runs that same Grafana. Builder method names
drift between SDK builds, so moving either means moving both and re-rendering
(``streamwise dashboards render``); a test fails while the checked-in JSON is stale.

Three boards, each with a ``pipeline`` variable (every pipeline that reports
``streamwise_build_info``):

- **overview**: throughput, latency p50/p99, consumer lag, dead-letter rate, snapshot age,
  and the Prometheus alerts (streamwise/alerts.py) firing for the pipeline;
- **models**: each model's prequential metric, the champion, learning rate, drift
  detections (also as annotations), and the business rules' firings and decisions;
- **data**: valid and dead-lettered events, what the cleaners did (imputed, clipped,
  deduplicated, late), pending labels and label delay.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

SDK_BUILD = "1769699379!11.6.0"
GRAFANA_VERSION = "11.6.0"
# Pinned in deploy/grafana/provisioning/datasources; every query refers to it.
DATASOURCE_UID = "streamwise-prometheus"
DATASOURCE_NAME = "Prometheus"
DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"

SEL = '{pipeline=~"$pipeline"}'
# The input topics only: with scope: global the learner's reads of "<name>.learn" are
# counted too (events per stage), and must not count twice as events in.
INPUT = '{pipeline=~"$pipeline", topic!~".+[.]learn"}'
LEARN = '{pipeline=~"$pipeline", topic=~".+[.]learn"}'
RATE = "[$__rate_interval]"


def _ds() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


class _Board:
    """Lays panels out left to right, 24 grid units a row, numbering them."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.builder = (
            db.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(["streamwise"])
            .editable()
            .refresh("5s")
            .time("now-15m", "now")
            .timezone("browser")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .with_variable(
                db.QueryVariable("pipeline")
                .label("pipeline")
                .datasource(_ds())
                .query("label_values(streamwise_build_info, pipeline)")
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .multi(True)
                .include_all(True)
                .all_value(".*")
            )
        )
        self.next_id = 1

    def add(self, panel: Any) -> _Board:
        self.builder.with_panel(panel.id(self.next_id).datasource(_ds()))
        self.next_id += 1
        return self


class _AlertList(cogbuilder.Builder[dm.Panel]):
    """Grafana's alert list panel, which this SDK build has no builder for: the state of the
    data source-managed rules (Prometheus' own, deploy/prometheus/alerts.yml) of the
    pipelines on show. Its options are those of Grafana 11's UnifiedAlertListOptions."""

    def __init__(self, title: str, description: str) -> None:
        self._internal = dm.Panel(
            type_val="alertlist",
            title=title,
            description=description,
            grid_pos=dm.GridPos(h=8, w=12),
            options={
                "viewMode": "list",
                "groupMode": "default",
                "groupBy": [],
                "maxItems": 20,
                "sortOrder": 3,  # importance: firing first
                "dashboardAlerts": False,
                "alertName": "",
                "alertInstanceLabelFilter": '{pipeline=~"$pipeline"}',
                "datasource": DATASOURCE_NAME,
                "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False, "error": True},
                "showInactiveAlerts": False,
            },
        )

    def id(self, id_val: int) -> _AlertList:
        self._internal.id = id_val
        return self

    def datasource(self, ref: dm.DataSourceRef) -> _AlertList:
        self._internal.datasource = ref
        return self

    def build(self) -> dm.Panel:
        return self._internal


def _q(expr: str, legend: str = "__auto", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range().datasource(_ds())


def _series(title: str, unit: str, *queries: tuple[str, str], width: int = 12, description: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).span(width).height(8)
    for i, (expr, legend) in enumerate(queries):
        panel.with_target(_q(expr, legend, chr(ord("A") + i)))
    return panel


def _stat(title: str, unit: str, expr: str, legend: str = "__auto", description: str = "") -> stat.Panel:
    return stat.Panel().title(title).description(description).unit(unit).span(6).height(4).with_target(_q(expr, legend))


def _quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le, pipeline) (rate({metric}_bucket{SEL}{RATE})))"


def overview() -> db.Dashboard:
    consumed = f"sum by (pipeline) (rate(streamwise_events_consumed_total{INPUT}{RATE}))"
    predicted = f"sum by (pipeline) (rate(streamwise_predictions_total{SEL}{RATE}))"
    dead = f"sum by (pipeline, stage) (rate(streamwise_events_dead_lettered_total{SEL}{RATE}))"
    lat = "streamwise_event_to_prediction_latency_seconds"
    board = _Board("streamwise-overview", "streamwise / overview", "Throughput, latency, lag, dead letters and snapshot age of every pipeline.")
    # Prometheus' alerting rules (streamwise/alerts.py) marked on every panel while they fire.
    board.builder.annotation(
        db.AnnotationQuery()
        .name("Alerts")
        .datasource(_ds())
        .enable(True)
        .icon_color("orange")
        .expr('ALERTS{alertstate="firing", pipeline=~"$pipeline"}')
    )
    firing = (
        'count by (pipeline) (ALERTS{pipeline=~"$pipeline", alertstate="firing"})'
        f" or 0 * max by (pipeline) (streamwise_build_info{SEL})"
    )
    (
        board.add(_stat("Events in", "ops", consumed, "{{pipeline}}"))
        .add(_stat("Latency p99", "s", _quantile(0.99, lat), "{{pipeline}}"))
        .add(_stat("Consumer lag", "short", f"sum by (pipeline) (streamwise_consumer_lag_records{SEL})", "{{pipeline}}"))
        .add(_stat("Snapshot age", "s", f"max by (pipeline) (streamwise_snapshot_age_seconds{SEL})", "{{pipeline}}",
                   "Seconds of learning not yet in a snapshot: a crash now replays this much."))
        .add(_series("Throughput", "ops", (consumed, "{{pipeline}} in"), (predicted, "{{pipeline}} predictions")))
        .add(_series("Event-to-prediction latency", "s",
                     (_quantile(0.5, lat), "{{pipeline}} p50"), (_quantile(0.99, lat), "{{pipeline}} p99")))
        .add(_series("Consumer lag per partition", "short",
                     (f"sum by (pipeline, topic, partition) (streamwise_consumer_lag_records{SEL})", "{{pipeline}} {{topic}}[{{partition}}]")))
        .add(_series("Dead letters", "ops", (dead, "{{pipeline}} {{stage}}")))
        .add(_series("Batch size", "short",
                     (_quantile(0.5, "streamwise_batch_size_records"), "{{pipeline}} p50"),
                     (_quantile(0.99, "streamwise_batch_size_records"), "{{pipeline}} p99")))
        .add(_series("Snapshots", "s",
                     (f"max by (pipeline) (streamwise_snapshot_age_seconds{SEL})", "{{pipeline}} age"),
                     (_quantile(0.99, "streamwise_snapshot_duration_seconds"), "{{pipeline}} write p99"),
                     (f"sum by (pipeline) (increase(streamwise_snapshot_failures_total{SEL}{RATE}))", "{{pipeline}} failures")))
        .add(_series("Events per stage", "ops",
                     (f"sum by (pipeline, topic) (rate(streamwise_events_consumed_total{SEL}{RATE}))",
                      "{{pipeline}} {{topic}}"),
                     description="scope: global: the input topics feed the partition stage, <name>.learn the learner."))
        .add(_series("Learn topic lag", "short",
                     (f"sum by (pipeline) (streamwise_consumer_lag_records{LEARN})"
                      f" or 0 * max by (pipeline) (streamwise_build_info{SEL})", "{{pipeline}}"),
                     description="scope: global: records the partition stage wrote that the learner has not read"
                                 " (0 for a pipeline of one stage)."))
        .add(_stat("Models held by", "short",
                   'max by (pipeline, instance, stage) '
                   '(streamwise_stage_partitions{pipeline=~"$pipeline", stage=~"learn|pipeline"}) > 0',
                   "{{pipeline}} {{instance}} ({{stage}})",
                   "The workers whose memory holds the models: with scope: global the one that runs the learner"
                   " (the others stand by to take it over), else each worker with partitions."))
        .add(_stat("Firing alerts", "short", firing, "{{pipeline}}",
                   "Prometheus alerting rules (deploy/prometheus/alerts.yml) firing now for the pipeline."))
        .add(_AlertList("Alerts", "Pending and firing alerts of the pipelines on show, from Prometheus' rules."))
    )
    return board.builder


def models() -> db.Dashboard:
    board = _Board("streamwise-models", "streamwise / models", "Every model's prequential metric, the champion and drift.")
    drift = f"sum by (pipeline, model) (increase(streamwise_drift_detections_total{SEL}{RATE}))"
    # A pipeline without a search or self-training shows 0, not "no data".
    none = f" or 0 * max by (pipeline) (streamwise_build_info{SEL})"
    board.builder.annotation(
        db.AnnotationQuery()
        .name("Drift")
        .datasource(_ds())
        .enable(True)
        .icon_color("red")
        .expr(f"sum by (pipeline, model) (changes(streamwise_drift_detections_total{SEL}[1m])) > 0")
    )
    (
        board.add(_stat("Champion", "none", f"max by (pipeline, partition, model) (streamwise_model_champion{SEL}) == 1",
                        "{{pipeline}}[{{partition}}]: {{model}}",
                        "The model whose prediction the records carry, per input partition (each has its own replicas)."))
        .add(_stat("Champion changes", "short", f"sum by (pipeline) (increase(streamwise_champion_changes_total{SEL}[$__range]))", "{{pipeline}}"))
        .add(_stat("Drift detections", "short", f"sum by (pipeline) (increase(streamwise_drift_detections_total{SEL}[$__range]))", "{{pipeline}}"))
        .add(_stat("Labelled events/s", "ops", f"sum by (pipeline) (rate(streamwise_model_learned_total{SEL}{RATE}))", "{{pipeline}}"))
        .add(_series("Prequential metric", "none",
                     (f"max by (pipeline, model, partition, metric, window) (streamwise_model_metric{SEL})",
                      "{{pipeline}} {{model}}[{{partition}}] {{metric}} ({{window}})"),
                     width=24, description="Test-then-train score of each model replica (one per input partition); cumulative since start, rolling over the last window."))
        .add(_series("Learned per second", "ops", (f"sum by (pipeline, model) (rate(streamwise_model_learned_total{SEL}{RATE}))", "{{pipeline}} {{model}}")))
        .add(_series("Drift detections", "short", (drift, "{{pipeline}} {{model}}")))
        .add(_series("Business rules fired", "ops",
                     (f"sum by (pipeline, rule, outcome) (rate(streamwise_rule_fired_total{SEL}{RATE}))",
                      "{{pipeline}} {{rule}} ({{outcome}})"),
                     (f"sum by (pipeline, decision) (rate(streamwise_rule_decisions_total{SEL}{RATE}))",
                      "{{pipeline}} decided: {{decision}}"),
                     width=24,
                     description="Events on which each rule's condition held, and the decisions the rules gave "
                                 "(the most severe rule that fired decides; models/rules.py)."))
        .add(_series("Hyperparameter search", "none",
                     (f"max by (pipeline, model, candidate) (streamwise_search_candidate_metric{SEL}){none}",
                      "{{pipeline}} {{model}} {{candidate}}"),
                     (f"max by (pipeline, model) (streamwise_search_running_candidates{SEL}){none}",
                      "{{pipeline}} {{model}} candidates learning"),
                     width=24, description="Each candidate's prequential metric (its parameters in the legend) and how "
                     "many still learn; 0 for a pipeline without a search."))
        .add(_stat("Search winner", "none", f"max by (pipeline, model, candidate) (streamwise_search_best{SEL}) == 1{none}",
                   "{{pipeline}} {{model}}: {{candidate}}", "The candidate whose prediction a searched model gives."))
        .add(_series("Self-training", "ops",
                     (f"sum by (pipeline, model) (rate(streamwise_self_training_pseudo_labels_total{SEL}{RATE})){none}",
                      "{{pipeline}} {{model}} pseudo-labels"),
                     (f"max by (pipeline, model) (streamwise_self_training_active{SEL}){none}",
                      "{{pipeline}} {{model}} on (1) / switched off by the guard (0)"),
                     description="Unlabelled events learned from confident predictions, never counted as labels."))
    )
    return board.builder


def data() -> db.Dashboard:
    board = _Board("streamwise-data", "streamwise / data", "What arrives and what the cleaners do to it.")
    cleaned = f"sum by (pipeline, action) (rate(streamwise_cleaner_events_total{SEL}{RATE}))"
    (
        board.add(_stat("Valid share", "percentunit",
                        f"sum by (pipeline) (rate(streamwise_events_valid_total{SEL}{RATE})) / sum by (pipeline) (rate(streamwise_events_consumed_total{INPUT}{RATE}))",
                        "{{pipeline}}"))
        .add(_stat("Pending labels", "short", f"sum by (pipeline) (streamwise_pending_labels{SEL})", "{{pipeline}}"))
        .add(_stat("Imputed + clipped", "short",
                   'sum by (pipeline) (increase(streamwise_cleaner_events_total{pipeline=~"$pipeline", action=~"imputed|clipped"}[$__range]))',
                   "{{pipeline}}"))
        .add(_stat("Deduplicated + late", "short",
                   'sum by (pipeline) (increase(streamwise_cleaner_events_total{pipeline=~"$pipeline", action=~"deduplicated|late"}[$__range]))',
                   "{{pipeline}}"))
        .add(_series("Events by outcome", "ops",
                     (f"sum by (pipeline) (rate(streamwise_events_valid_total{SEL}{RATE}))", "{{pipeline}} valid"),
                     (f"sum by (pipeline, stage) (rate(streamwise_events_dead_lettered_total{SEL}{RATE}))", "{{pipeline}} dead-lettered at {{stage}}")))
        .add(_series("Cleaners", "ops", (cleaned, "{{pipeline}} {{action}}"),
                     description="Imputed, clipped, deduplicated and late events per second."))
        .add(_series("Pending labels", "short", (f"sum by (pipeline) (streamwise_pending_labels{SEL})", "{{pipeline}}")))
        .add(_series("Labels not learned", "short",
                     (f"sum by (pipeline, outcome) (increase(streamwise_label_join_misses_total{SEL}{RATE}))",
                      "{{pipeline}} {{outcome}}"),
                     description="Delayed labels the join refused (late, expired before their event, repeated) "
                                 "and predictions dropped before their label came (labels.ttl_s, labels.max_pending)."))
        .add(_series("Label delay", "s",
                     (_quantile(0.5, "streamwise_label_delay_seconds"), "{{pipeline}} p50"),
                     (_quantile(0.99, "streamwise_label_delay_seconds"), "{{pipeline}} p99")))
    )
    return board.builder


BOARDS: dict[str, Callable[[], db.Dashboard]] = {"overview": overview, "models": models, "data": data}


def to_json(board: db.Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (plain dicts and lists)."""
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render_text(name: str) -> str:
    """The file contents for board ``name``: stable key order, so diffs stay readable."""
    return json.dumps(to_json(BOARDS[name]()), indent=2, sort_keys=True) + "\n"


def render(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """Writes every board into ``directory`` as ``<name>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in BOARDS:
        path = directory / f"{name}.json"
        path.write_text(render_text(name))
        out.append(path)
    return out


def stale(directory: Path = DASHBOARD_DIR) -> list[str]:
    """Names of the boards whose file in ``directory`` is missing or differs from the code.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> stale(d)
    ['overview', 'models', 'data']
    >>> _ = render(d); stale(d)
    []
    """
    return [
        name for name in BOARDS
        if not (directory / f"{name}.json").is_file() or (directory / f"{name}.json").read_text() != render_text(name)
    ]


def load(path: Path) -> dm.Dashboard:
    """Reads a rendered board back into the SDK's model (raises on a shape it does not know)."""
    return dm.Dashboard.from_json(json.loads(Path(path).read_text()))


def panel_queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows included.

    Examples
    --------
    >>> [q for _, q in panel_queries(to_json(overview()))][0]
    'sum by (pipeline) (rate(streamwise_events_consumed_total{pipeline=~"$pipeline", topic!~".+[.]learn"}[$__rate_interval]))'
    """
    for panel in board.get("panels", []):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel.get("title", ""), target["expr"]
        yield from panel_queries(panel)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replaces Grafana's ``$name`` and ``${name}`` with values, as Grafana would.

    Examples
    --------
    >>> substitute('rate(x{p=~"$pipeline"}[$__rate_interval])', {"pipeline": "a", "__rate_interval": "1m"})
    'rate(x{p=~"a"}[1m])'
    """

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return variables[name] if name in variables else m.group(0)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)
