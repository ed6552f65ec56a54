"""``streamwise top``: the figures of the Grafana boards as a terminal table, read from a
pipeline's ``/metrics``, for people without Grafana.

Totals and gauges are the values of the latest scrape. Rates are the increase between
two scrapes divided by the time between them. Latency quantiles are taken over the
whole histogram (since the service started), interpolated as Prometheus'
``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamwise.connectors.prometheus import Scrape


@dataclass
class PipelineRow:
    pipeline: str
    events_in: float
    events_per_s: float
    predictions: float
    dead_letters: float
    latency_p50_s: float
    latency_p99_s: float
    lag: float
    snapshot_age_s: float


@dataclass
class ModelRow:
    """One metric of one model replica: ``model`` is ``name[partition]`` when the state is
    per partition, and ``champion`` says whether that partition's records carry its
    prediction. ``learned`` is the model's count over all the worker's partitions (the
    service does not count it per partition)."""

    pipeline: str
    model: str
    metric: str
    cumulative: float
    rolling: float
    learned: float
    champion: bool


def _rate(prev: Scrape | None, cur: Scrape, name: str, pipeline: str) -> float:
    if prev is None or cur.at <= prev.at:
        return math.nan
    return max(0.0, cur.sum(name, pipeline=pipeline) - prev.sum(name, pipeline=pipeline)) / (cur.at - prev.at)


def figures(
    prev: Scrape | None, cur: Scrape, metric: str | None = None
) -> tuple[list[PipelineRow], list[ModelRow]]:
    """The rows of the two tables: one per pipeline, and one per (pipeline, model replica,
    metric), or only ``metric``'s rows when it is given.

    Examples
    --------
    >>> a = Scrape.parse('streamwise_events_consumed_total{pipeline="p",topic="t",partition="0"} 10\\n', at=0.0)
    >>> b = Scrape.parse('streamwise_events_consumed_total{pipeline="p",topic="t",partition="0"} 30\\n', at=2.0)
    >>> rows, _ = figures(a, b)
    >>> rows[0].events_in, rows[0].events_per_s
    (30.0, 10.0)

    Every metric keeps its own row; the champion is the one of the replica's partition:

    >>> m = Scrape.parse('''
    ... streamwise_model_metric{pipeline="p",model="nb",partition="0",metric="Accuracy",window="rolling"} 0.88
    ... streamwise_model_metric{pipeline="p",model="nb",partition="0",metric="LogLoss",window="rolling"} 0.25
    ... streamwise_model_metric{pipeline="p",model="nb",partition="1",metric="Accuracy",window="rolling"} 0.91
    ... streamwise_model_champion{pipeline="p",model="nb",partition="0"} 0
    ... streamwise_model_champion{pipeline="p",model="nb",partition="1"} 1
    ... ''', at=0.0)
    >>> [(r.model, r.metric, r.rolling, r.champion) for r in figures(None, m)[1]]
    [('nb[0]', 'Accuracy', 0.88, False), ('nb[0]', 'LogLoss', 0.25, False), ('nb[1]', 'Accuracy', 0.91, True)]
    >>> [(r.model, r.metric) for r in figures(None, m, metric="LogLoss")[1]]
    [('nb[0]', 'LogLoss')]
    """
    pipelines = sorted({ls["pipeline"] for samples in cur.samples.values() for ls, _ in samples if "pipeline" in ls})
    rows = []
    for p in pipelines:
        rows.append(PipelineRow(
            pipeline=p,
            events_in=cur.sum("streamwise_events_consumed_total", pipeline=p),
            events_per_s=_rate(prev, cur, "streamwise_events_consumed_total", p),
            predictions=cur.sum("streamwise_predictions_total", pipeline=p),
            dead_letters=cur.sum("streamwise_events_dead_lettered_total", pipeline=p),
            latency_p50_s=cur.quantile(0.5, "streamwise_event_to_prediction_latency_seconds", pipeline=p),
            latency_p99_s=cur.quantile(0.99, "streamwise_event_to_prediction_latency_seconds", pipeline=p),
            lag=cur.sum("streamwise_consumer_lag_records", pipeline=p),
            snapshot_age_s=max((v for _, v in cur.select("streamwise_snapshot_age_seconds", pipeline=p)), default=math.nan),
        ))
    # (pipeline, model, partition) -> 1.0 for the champion of that partition's records.
    champions = {
        (ls["pipeline"], ls["model"], ls.get("partition", "")): v for ls, v in cur.select("streamwise_model_champion")
    }
    models: dict[tuple[str, str, str, str], ModelRow] = {}
    for ls, v in cur.select("streamwise_model_metric"):
        if metric is not None and ls["metric"] != metric:
            continue
        pipeline, model, part = ls["pipeline"], ls["model"], ls.get("partition", "")
        # The metric is part of the key: with several evaluation metrics, each has its row.
        key = (pipeline, model, part, ls["metric"])
        row = models.get(key)
        if row is None:
            row = models[key] = ModelRow(
                pipeline,
                # One replica per input partition: logreg[0], logreg[1], ...
                f"{model}[{part}]" if part else model,
                ls["metric"],
                math.nan,
                math.nan,
                cur.sum("streamwise_model_learned_total", pipeline=pipeline, model=model),
                champions.get((pipeline, model, part)) == 1.0,
            )
        if ls["window"] == "cumulative":
            row.cumulative = v
        elif ls["window"] == "rolling":
            row.rolling = v
    return rows, [models[k] for k in sorted(models, key=_model_order)]


def _model_order(key: tuple[str, str, str, str]) -> tuple[str, int, str, str, str]:
    # Partition 10 after 9, not after 1.
    pipeline, model, part, metric = key
    return (pipeline, int(part) if part.isdigit() else -1, part, model, metric)


def metric_names(cur: Scrape) -> list[str]:
    """The metrics the models report, for ``--metric``'s error message.

    Examples
    --------
    >>> metric_names(Scrape.parse('streamwise_model_metric{pipeline="p",model="a",metric="F1",window="rolling"} 1\\n'))
    ['F1']
    """
    return sorted({ls["metric"] for ls, _ in cur.select("streamwise_model_metric")})


def _num(v: float, fmt: str = ",.0f") -> str:
    return "-" if math.isnan(v) else format(v, fmt)


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:,.1f} ms"


PIPELINE_COLUMNS = ("pipeline", "events in", "events/s", "predictions", "dead letters", "p50 latency", "p99 latency", "lag", "snapshot age")
MODEL_COLUMNS = ("pipeline", "model", "metric", "cumulative", "rolling", "learned", "champion")


def cells(rows: list[PipelineRow], models: list[ModelRow]) -> tuple[list[list[str]], list[list[str]]]:
    """The tables as text cells, in :data:`PIPELINE_COLUMNS` and :data:`MODEL_COLUMNS` order."""
    prow = [
        [r.pipeline, _num(r.events_in), _num(r.events_per_s, ",.1f"), _num(r.predictions), _num(r.dead_letters),
         _ms(r.latency_p50_s), _ms(r.latency_p99_s), _num(r.lag), _num(r.snapshot_age_s, ",.1f") + " s"]
        for r in rows
    ]
    mrow = [
        [m.pipeline, m.model, m.metric, _num(m.cumulative, ".4f"), _num(m.rolling, ".4f"), _num(m.learned),
         "*" if m.champion else ""]
        for m in models
    ]
    return prow, mrow


def render(prev: Scrape | None, cur: Scrape, source: str, metric: str | None = None) -> object:
    """A rich renderable of both tables; the models table only shows ``metric`` when given."""
    from rich.console import Group
    from rich.table import Table

    prow, mrow = cells(*figures(prev, cur, metric))
    tables = []
    for title, columns, body in ((f"streamwise top — {source}", PIPELINE_COLUMNS, prow), ("models", MODEL_COLUMNS, mrow)):
        t = Table(title=title, title_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if i < (3 if columns is MODEL_COLUMNS else 1) else "right")
        for r in body:
            t.add_row(*r)
        tables.append(t)
    return Group(*tables)


def live_lines(prev: Scrape | None, cur: Scrape) -> list[str]:
    """The figures as Influx lines for Grafana Live: measurement ``streamwise`` per
    pipeline and ``streamwise_model`` per model.

    Examples
    --------
    >>> a = Scrape.parse('streamwise_predictions_total{pipeline="p"} 4\\n', at=1.0)
    >>> live_lines(None, a)
    ['streamwise,pipeline=p events_in=0.0,predictions=4.0,dead_letters=0.0,lag=0.0 1000000000']
    """
    from streamwise.connectors.grafana import line_protocol

    rows, models = figures(prev, cur)
    lines = [
        line_protocol("streamwise", {"pipeline": r.pipeline}, {
            "events_in": r.events_in, "events_per_s": r.events_per_s, "predictions": r.predictions,
            "dead_letters": r.dead_letters, "latency_p50_s": r.latency_p50_s, "latency_p99_s": r.latency_p99_s,
            "lag": r.lag, "snapshot_age_s": r.snapshot_age_s,
        }, cur.at)
        for r in rows
    ] + [
        line_protocol("streamwise_model", {"pipeline": m.pipeline, "model": m.model, "metric": m.metric}, {
            "cumulative": m.cumulative, "rolling": m.rolling, "learned": m.learned, "champion": float(m.champion),
        }, cur.at)
        for m in models
    ]
    return [line for line in lines if line is not None]
