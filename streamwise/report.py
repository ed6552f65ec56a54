"""``streamwise report``: one self-contained HTML page showing how a pipeline's models
learned, drifted and recovered, read back from what the service wrote to Kafka.

It reads, ``read_committed`` (only what the service committed), the pipeline's
predictions topic, its input topic (for the labels, which prediction records do not
carry) or its labels topic, its alerts topic and its dead-letter topic, all of them or a
time range of them, and draws with matplotlib:

- the prequential metric of every model replica over the labelled events, cumulative and
  over the evaluation window, recomputed test-then-train from the prediction each record
  carries and the event's label, with drift detections and champion changes marked;
- the label delay (labels topic) or the fact that labels come inline;
- dead letters by stage, in total and over time;
- throughput and event-to-prediction latency over time;

and ends with a table of the final figures, which are also embedded as JSON
(``<script type="application/json" id="streamwise-figures">``) at full precision.

The recomputation follows the service step for step (the same ``river.metrics`` classes
through :class:`~streamwise.models.evaluation.Evaluation`, the same labels through the
pipeline's own decoder, the same order within each partition), so over a whole run the
final figures equal the ``streamwise_model_metric`` values the service exported. Over a
time range they are the figures of that range alone. With a labels topic the order in
which labels were scored is rebuilt from record timestamps, so a rolling figure may
differ slightly from the service's when labels and events interleave closely.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamwise.connectors.records import ConsumedRecord
from streamwise.core.errors import StreamwiseError
from streamwise.core.stages import DeadLetterStage
from streamwise.models.evaluation import Evaluation, metric_names
from streamwise.models.config import LabelsConfig
from streamwise.models.labels import LabelRecordError, decode_label_record, in_join_window, join_id, label_delay
from streamwise.models.prequential import Prediction
from streamwise.pipeline_config import PipelineConfig
from streamwise.stream.schema import EventDecoder, EventSchema, RejectedEvent

H_STAGE = "streamwise.error.stage"
# Points per plotted line: enough for the eye, small enough for a light page.
MAX_POINTS = 1500


@dataclass
class Curve:
    """The prequential figures of one model replica, one point per scored label."""

    model: str
    partition: int
    # Position of the label among the partition's labelled events (1-based).
    x: list[int] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)
    rolling: list[float] = field(default_factory=list)
    final: dict[str, dict[str, float]] = field(default_factory=dict)
    labelled: int = 0


@dataclass
class Mark:
    """Something the alerts topic reports, placed on its partition's label axis."""

    partition: int
    x: int
    kind: str  # "drift", "champion" or "challenger"
    model: str
    text: str


@dataclass
class Reign:
    """A stretch of a partition's labelled events whose records carry ``model``'s prediction."""

    partition: int
    model: str
    start: int
    end: int


@dataclass
class Analysis:
    pipeline: str
    metric: str
    window: int
    metrics: list[str]
    configured: list[str]
    curves: list[Curve]
    marks: list[Mark]
    champions: dict[int, str]
    reigns: list[Reign]
    predictions: int
    labelled: int
    dead_letters: dict[str, int]
    # (seconds since start, stage) of every dead letter, by its record timestamp.
    dead_letter_times: list[tuple[float, str]]
    label_delays: list[float]
    inline_labels: bool
    # Start of the run (Unix seconds) and its length, from the earliest record to the last prediction.
    start_s: float
    span_s: float
    # Per time bucket (start in seconds since start_s): events in, predictions out, latency p50/p99.
    bucket_s: float
    buckets: list[float]
    events_in: list[int]
    predictions_out: list[int]
    latency_p50: list[float]
    latency_p99: list[float]
    # Over every prediction of the run, in seconds.
    latency_overall: tuple[float, float] = (math.nan, math.nan)

    def figures(self) -> dict[str, Any]:
        """The final figures, as embedded in the page: per ``model[partition]``, every
        metric cumulative and rolling, and the run's totals."""
        return {
            "pipeline": self.pipeline,
            "metric": self.metric,
            "window": self.window,
            "predictions": self.predictions,
            "labelled": self.labelled,
            "dead_letters": self.dead_letters,
            "champions": {str(p): m for p, m in self.champions.items()},
            "marks": [{"partition": m.partition, "x": m.x, "kind": m.kind, "model": m.model} for m in self.marks],
            "models": {
                f"{c.model}[{c.partition}]": {
                    "model": c.model,
                    "partition": c.partition,
                    "labelled": c.labelled,
                    **c.final,
                }
                for c in self.curves
            },
        }


# ---------------------------------------------------------------------------- analysis


def _label_parser(label_type: str) -> Any:
    """Turns the keys of a record's ``probabilities`` (JSON strings) back into labels.
    Records write a bool class as ``true``/``false``, whatever the schema's label type
    (a generator's bool labels pass an int schema as they are).

    Examples
    --------
    >>> [_label_parser("int")(k) for k in ("1", "false")], _label_parser("str")("true")
    ([1, False], 'true')
    """
    if label_type == "str":
        return str
    number = float if label_type == "float" else int
    return lambda k: k == "true" if k in ("true", "false") else number(k)


def _prediction(entry: dict[str, Any], parse_key: Any) -> Prediction:
    # A model that failed on the event, or answered NaN: scored by nothing, as in the service.
    if "error" in entry:
        return Prediction(None, error=entry["error"])
    if entry.get("not_finite"):
        return Prediction(None, finite=False)
    proba = entry.get("probabilities")
    return Prediction(entry.get("prediction"), None if proba is None else {parse_key(k): v for k, v in proba.items()})


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _bucket_size(span_s: float) -> float:
    """A round bucket width giving about 60-120 buckets over ``span_s``.

    Examples
    --------
    >>> _bucket_size(30.0), _bucket_size(600.0), _bucket_size(86400.0)
    (0.25, 5.0, 900.0)
    """
    for width in (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400):
        if span_s / width <= 120:
            return float(width)
    return 86400.0


# A labelled event in scoring order: (event id, label, its prediction record).
Scored = tuple[Any, Any, dict[str, Any]]


def _labels_and_times(
    events: Iterable[ConsumedRecord], decoder: EventDecoder, inline: bool
) -> tuple[dict[tuple[int, int], Any], dict[tuple[int, int], int]]:
    """Each input record's inline label (decoded as the service decodes it) and its
    timestamp, by (partition, offset)."""
    labels: dict[tuple[int, int], Any] = {}
    times: dict[tuple[int, int], int] = {}
    for r in events:
        times[r.partition, r.offset] = r.timestamp_ms
        if inline:
            try:
                y = decoder.decode(r.value or b"").y
            except RejectedEvent:
                continue  # dead-lettered by the service as well
            if y is not None:
                labels[r.partition, r.offset] = y
    return labels, times


def _prediction_rows(predictions: Iterable[ConsumedRecord]) -> list[dict[str, Any]]:
    """The prediction records, once each (at-least-once delivery may repeat one), in the
    order the service processed them: by input partition, then offset. Each gets its
    input position as ``_src``."""
    seen: set[tuple[int, int]] = set()
    rows: list[dict[str, Any]] = []
    for r in predictions:
        body = json.loads(r.value or b"{}")
        src = body.get("source", {})
        key = (int(src.get("partition", r.partition)), int(src.get("offset", r.offset)))
        if key not in seen:
            seen.add(key)
            body["_src"] = key
            rows.append(body)
    rows.sort(key=lambda b: b["_src"])
    return rows


def _delayed_order(
    config: PipelineConfig,
    rows: list[dict[str, Any]],
    labels: Iterable[ConsumedRecord],
    event_ts: dict[tuple[int, int], int],
) -> tuple[dict[int, list[Scored]], list[float]]:
    """With a labels topic: each partition's labelled events in the order their labels
    were learned (a label that came before its event counts when the event arrived),
    and every label's delay in seconds."""
    schema, cfg = config.event_schema, config.labels
    by_id: dict[tuple[int, Any], dict[str, Any]] = {}
    for b in rows:  # a repeated id: the first prediction is the one joined, as in the service
        by_id.setdefault((b["_src"][0], join_id(b["id"])), b)
    arrivals = []
    learned: set[tuple[int, Any]] = set()
    delays: list[float] = []
    # Where the service reads a record without a time (-1 or 0): its poll merges each
    # partition by record time, so such a record comes right after the one before it.
    event_at: dict[tuple[int, int], int] = {}
    last_timed: dict[int, int] = {}  # per partition
    for (partition, offset), t in sorted(event_ts.items()):
        if t > 0:
            last_timed[partition] = t
        event_at[partition, offset] = last_timed.get(partition, 0)
    label_at: dict[int, int] = {}
    # The service's checks of a label record: classes, range, and (per partition, in
    # record order) one JSON type per category class (stream/schema.py).
    decoders: dict[int, EventDecoder] = {}
    for r in labels:
        try:
            event_id, y = decode_label_record(r.value, cfg.id_field or schema.id, cfg.label_field, schema.label_type)
            decoder = decoders.get(r.partition) or decoders.setdefault(r.partition, EventDecoder(schema))
            decoder.check_label(y)
            if decoder.checks_forms:
                decoder.check_form(y, "labels")
                decoder.note_form(y, "labels")
        except (LabelRecordError, RejectedEvent):
            continue  # dead-lettered by the service as well
        event_id = join_id(event_id)
        at = label_at[r.partition] = r.timestamp_ms if r.timestamp_ms > 0 else label_at.get(r.partition, 0)
        b = by_id.get((r.partition, event_id))
        if b is None or (r.partition, event_id) in learned:
            continue  # no prediction for it in range, or a repeated label (learned once)
        t_event = event_ts.get(b["_src"], b.get("event_timestamp_ms", r.timestamp_ms))
        if not in_join_window(t_event / 1000.0, r.timestamp_ms / 1000.0, cfg.ttl_s, cfg.early_hold_s):
            continue  # outside the join window: the service did not learn it (models/labels.py)
        learned.add((r.partition, event_id))
        delay = label_delay(t_event / 1000.0, r.timestamp_ms / 1000.0)
        if delay is not None:
            delays.append(delay)
        arrivals.append((r.partition, max(at, event_at.get(b["_src"], t_event)), r.offset, event_id, y, b))
    scored: dict[int, list[Scored]] = defaultdict(list)
    for p, _, _, event_id, y, b in sorted(arrivals, key=lambda a: a[:3]):
        scored[p].append((event_id, y, b))
    return scored, delays


def _promotions(
    config: PipelineConfig, alerts: Iterable[ConsumedRecord]
) -> dict[tuple[int, Any], list[tuple[str, str]]]:
    """(model, challenger) pairs promoted, by the (partition, event id) whose label did it."""
    promoted: dict[tuple[int, Any], list[tuple[str, str]]] = defaultdict(list)
    for r in alerts:
        a = json.loads(r.value or b"{}")
        if (
            a.get("pipeline") in (None, config.name)
            and a.get("type") == "challenger"
            and a.get("action") == "promoted"
            and a.get("partition") is not None
        ):
            promoted[a["partition"], a.get("event_id")].append((a["model"], a["challenger"]))
    return promoted


def _learn_order(
    rows: list[dict[str, Any]],
    learn: list[ConsumedRecord],
    event_ts: dict[tuple[int, int], int],
    labels: LabelsConfig,
    schema: EventSchema | None = None,
) -> tuple[dict[int, list[Scored]], list[float]]:
    """The labelled events in the order the learner of ``scope: global`` learned them
    (:func:`~streamwise.processor.learn_order`), and each delayed label's delay. Each
    row's ``_src`` becomes (0, its position in the learn topic): one learner, one axis."""
    from streamwise.processor import learn_order

    by_src = {b["_src"]: b for b in rows}
    learned = []
    for e in learn_order(learn, labels, schema=schema):
        b = by_src.get((e.origin.partition, e.origin.offset))
        if b is None:
            continue  # no prediction for it in range
        if e.learned_at is not None:
            learned.append((e.learned_at, e, b))
        b["_src"] = (0, e.position)
    scored: dict[int, list[Scored]] = defaultdict(list)
    delays: list[float] = []
    for _, e, b in sorted(learned, key=lambda leb: leb[0]):
        scored[0].append((e.event.id, e.y, b))
        if e.label_timestamp_ms is not None:
            t_event = event_ts.get((e.origin.partition, e.origin.offset), e.origin.timestamp_ms)
            delay = label_delay(t_event / 1000.0, e.label_timestamp_ms / 1000.0)
            if delay is not None:
                delays.append(delay)
    return scored, delays


def _score(
    config: PipelineConfig,
    scored: dict[int, list[Scored]],
    parse_key: Any,
    names: list[str],
    promotions: dict[tuple[int, Any], list[tuple[str, str]]],
) -> tuple[dict[tuple[int, str], Curve], dict[tuple[int, Any], int], list[Reign]]:
    """Test-then-train, replayed: each model's figures after every label, the position
    of each labelled event on its partition's axis, and the champion's reigns.

    A promoted challenger hands its rolling window to the model it replaces, as in the
    service: from then on the model's rolling figures are the challenger's estimator's."""
    binary = config.event_schema.label_type == "bool"
    curves: dict[tuple[int, str], Curve] = {}
    evaluations: dict[tuple[int, str], Evaluation] = {}
    position: dict[tuple[int, Any], int] = {}
    reigns: list[Reign] = []
    for p in sorted(scored):
        for i, (event_id, y, b) in enumerate(scored[p], start=1):
            position[p, event_id] = i
            champion = b.get("champion")
            if reigns and reigns[-1].partition == p and reigns[-1].model == champion:
                reigns[-1].end = i
            else:
                reigns.append(Reign(p, champion, i, i))
            # Challengers appear in the records from their first prediction on.
            for model, entry in b.get("models", {}).items():
                ev = evaluations.get((p, model))
                if ev is None:
                    ev = evaluations[p, model] = Evaluation(config.task, binary, config.evaluation.window, names)
                    curves[p, model] = Curve(model, p)
                ev.update(y, _prediction(entry, parse_key))
                c = curves[p, model]
                c.labelled += 1
                c.x.append(i)
                c.cumulative.append(ev.cumulative[config.metric].get())
                c.rolling.append(ev.rolling[config.metric].get())
            for model, challenger in promotions.get((p, event_id), ()):
                if (p, model) in evaluations and (p, challenger) in evaluations:
                    evaluations[p, model].adopt_window(evaluations[p, challenger])
    for key, ev in evaluations.items():
        curves[key].final = ev.report()
    return curves, position, reigns


def _marks(
    config: PipelineConfig, alerts: Iterable[ConsumedRecord], position: dict[tuple[int, Any], int]
) -> list[Mark]:
    """The alerts topic's drift detections, champion changes and challenger outcomes,
    placed at the labelled event that caused them."""
    marks = []
    for r in alerts:
        a = json.loads(r.value or b"{}")
        if a.get("pipeline") not in (None, config.name) or a.get("partition") is None:
            continue
        x = position.get((a["partition"], a.get("event_id")))
        kind = a.get("type")
        if x is None or kind not in ("drift", "champion", "challenger"):
            continue
        if kind == "drift":
            text = f"drift in {a['model']} ({a.get('action', '')})"
        elif kind == "champion":
            text = f"champion: {a['previous']} → {a['champion']}"
        else:
            text = f"{a['challenger']} {a.get('action', '')}"
        marks.append(Mark(a["partition"], x, kind, a["champion"] if kind == "champion" else a["model"], text))
    return sorted(marks, key=lambda m: (m.partition, m.x))


def analyse(
    config: PipelineConfig,
    predictions: Iterable[ConsumedRecord],
    events: Iterable[ConsumedRecord],
    labels: Iterable[ConsumedRecord] = (),
    alerts: Iterable[ConsumedRecord] = (),
    dead_letters: Iterable[ConsumedRecord] = (),
    learn: Iterable[ConsumedRecord] = (),
) -> Analysis:
    """Recomputes every model's prequential figures from the records a pipeline wrote.

    ``events`` are the input topic's records (their labels, when inline, and their
    timestamps); ``labels`` the labels topic's, when the pipeline has one. ``learn`` is
    the learn topic of ``scope: global`` on several partitions: the one order its one
    learner learned in, which the figures then follow (as partition 0, the learner's).
    """
    schema = config.event_schema
    inline = config.input.labels_topic is None
    extra = config.evaluation.metrics
    standard = metric_names(config.task, schema.label_type == "bool") if extra == "standard" else extra
    names = list(dict.fromkeys([config.metric, *standard]))

    event_label, event_ts = _labels_and_times(events, EventDecoder(schema), inline)
    rows = _prediction_rows(predictions)
    label_delays: list[float] = []
    learn = list(learn)
    if learn:
        scored, label_delays = _learn_order(rows, learn, event_ts, config.labels, config.event_schema)
    elif inline:
        scored: dict[int, list[Scored]] = defaultdict(list)
        for b in rows:
            y = event_label.get(b["_src"])
            if y is not None:
                scored[b["_src"][0]].append((b["id"], y, b))
    else:
        scored, label_delays = _delayed_order(config, rows, labels, event_ts)
    alerts = list(alerts)
    curves, position, reigns = _score(
        config, scored, _label_parser(schema.label_type), names, _promotions(config, alerts)
    )

    dl_stage: Counter[str] = Counter()
    dl_times: list[tuple[float, str]] = []
    for r in dead_letters:
        stage = dict(r.headers).get(H_STAGE, b"unknown").decode("utf-8", "replace")
        dl_stage[stage] += 1
        if r.timestamp_ms > 0:  # a record without a time has no place on the time axis
            dl_times.append((r.timestamp_ms / 1000.0, stage))

    # Time axis: from the first input record to the last prediction or dead letter.
    done = [(b["event_timestamp_ms"] / 1000.0 + b["latency_s"], b["latency_s"]) for b in rows
            if b.get("latency_s") is not None and b.get("event_timestamp_ms", 0) > 0]
    arrived = [t / 1000.0 for t in event_ts.values() if t > 0]
    times = arrived + [t for t, _ in done] + [t for t, _ in dl_times]
    start = min(times) if times else 0.0
    span = max(times) - start if times else 0.0
    width = _bucket_size(span)
    n = int(span // width) + 1
    events_in, out = [0] * n, [0] * n
    lat: list[list[float]] = [[] for _ in range(n)]
    for t in arrived:
        events_in[int((t - start) // width)] += 1
    for t, latency in done:
        j = int((t - start) // width)
        out[j] += 1
        lat[j].append(latency)

    return Analysis(
        pipeline=config.name,
        metric=config.metric,
        window=config.evaluation.window,
        metrics=names,
        configured=[m.name for m in config.models],
        curves=[curves[k] for k in sorted(curves)],
        marks=_marks(config, alerts, position),
        # The champion of each partition's last record.
        champions={b["_src"][0]: b.get("champion") for b in rows},
        reigns=reigns,
        predictions=len(rows),
        labelled=sum(len(v) for v in scored.values()),
        dead_letters=dict(sorted(dl_stage.items())),
        dead_letter_times=[(t - start, s) for t, s in dl_times],
        label_delays=label_delays,
        inline_labels=inline,
        start_s=start,
        span_s=span,
        bucket_s=width,
        buckets=[i * width for i in range(n)],
        events_in=events_in,
        predictions_out=out,
        latency_p50=[_quantile(v, 0.5) for v in lat],
        latency_p99=[_quantile(v, 0.99) for v in lat],
        latency_overall=(_quantile([v for _, v in done], 0.5), _quantile([v for _, v in done], 0.99)),
    )


# ---------------------------------------------------------------------------- plots


def _thin(xs: Sequence[Any], ys: Sequence[float]) -> tuple[list[Any], list[float]]:
    """At most :data:`MAX_POINTS` evenly spaced points, the last one always kept (it is
    the final figure the table shows)."""
    if len(xs) <= MAX_POINTS:
        return list(xs), list(ys)
    step = len(xs) / MAX_POINTS
    idx = sorted({int(i * step) for i in range(MAX_POINTS)} | {len(xs) - 1})
    return [xs[i] for i in idx], [ys[i] for i in idx]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise StreamwiseError("streamwise report draws with matplotlib: pip install 'streamwise[report]'") from None
    matplotlib.use("Agg")  # no display; must precede importing pyplot
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "streamwise"}
    )  # stable ids: the same run, the same page
    return plt


def plot_learning(a: Analysis) -> Any:
    """The prequential metric of every model replica over its partition's labelled events,
    drift detections marked, and under it a band saying which model was champion."""
    plt = _pyplot()
    partitions = sorted({c.partition for c in a.curves}) or [0]
    fig, axes = plt.subplots(
        2 * len(partitions),
        1,
        figsize=(11, 4.0 * len(partitions)),
        squeeze=False,
        gridspec_kw={"height_ratios": [9, 1] * len(partitions), "hspace": 0.08},
    )
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(a.configured)}

    def colour(model: str) -> Any:
        return colours.get(model.split(".challenger")[0], "grey")

    for k, p in enumerate(partitions):
        ax, band = axes[2 * k, 0], axes[2 * k + 1, 0]
        band.sharex(ax)
        lows = []
        for c in (c for c in a.curves if c.partition == p):
            if c.model in colours:
                ax.plot(*_thin(c.x, c.cumulative), color=colour(c.model), lw=1.6, label=f"{c.model} cumulative")
                ax.plot(
                    *_thin(c.x, c.rolling),
                    color=colour(c.model),
                    lw=1.0,
                    ls="--",
                    label=f"{c.model} rolling ({a.window})",
                )
            else:  # a challenger: its rolling figure, thin, in its model's colour
                ax.plot(
                    *_thin(c.x, c.rolling), color=colour(c.model), lw=0.8, ls=":", alpha=0.8, label=f"{c.model} rolling"
                )
            # A model's first labels swing between 0 and 1: the scale is set by what follows.
            lows += [v for v in c.rolling[50:] + c.cumulative[50:] if not math.isnan(v)]
        if lows:
            ax.set_ylim(max(0.0, min(lows) - 0.05) if min(lows) >= 0 else min(lows), ax.get_ylim()[1])
        top = ax.get_ylim()[1]
        for m in (m for m in a.marks if m.partition == p):
            if m.kind == "drift":
                ax.axvline(m.x, color=colour(m.model), lw=0.8, ls=":", alpha=0.9)
                ax.plot([m.x], [top], marker="v", color=colour(m.model), ms=6, clip_on=False)
        ax.set_title(f"{a.pipeline}, partition {p}: prequential {a.metric} (▼ drift detection)")
        ax.set_ylabel(a.metric)
        if any(c.partition == p for c in a.curves):
            ax.legend(loc="lower right", fontsize=7, ncol=2)
        else:
            ax.text(0.5, 0.5, "no labelled event in range", ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(labelbottom=False)
        mine = [r for r in a.reigns if r.partition == p]
        span = max((r.end for r in mine), default=1)
        for r in mine:
            band.broken_barh([(r.start - 0.5, r.end - r.start + 1)], (0, 1), color=colour(r.model), alpha=0.85)
            if (r.end - r.start) / span > 0.06:
                band.text((r.start + r.end) / 2, 0.5, r.model, ha="center", va="center", fontsize=7, color="white")
        band.set_yticks([])
        band.set_ylim(0, 1)
        band.set_ylabel("champion", rotation=0, ha="right", va="center", fontsize=8)
        band.grid(False)
        band.set_xlabel("labelled events (test-then-train order)")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.1)
    return fig


def plot_operations(a: Analysis) -> Any:
    """Throughput, latency, dead letters and label delay over the run."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
    (thr, lat), (dead, delay) = axes
    per_s = 1.0 / a.bucket_s
    thr.step(a.buckets, [v * per_s for v in a.events_in], where="post", label="events in")
    thr.step(a.buckets, [v * per_s for v in a.predictions_out], where="post", label="predictions out")
    thr.set_title("Throughput")
    thr.set_ylabel("records / s")
    thr.set_xlabel("seconds since start")
    thr.legend(fontsize=7, loc="upper right")

    lat.plot(a.buckets, [v * 1000 for v in a.latency_p50], ".-", ms=3, label="p50")
    lat.plot(a.buckets, [v * 1000 for v in a.latency_p99], ".-", ms=3, label="p99")
    lat.set_yscale("log")
    lat.set_title("Event-to-prediction latency")
    lat.set_ylabel("ms")
    lat.set_xlabel("seconds since start")
    lat.legend(fontsize=7, loc="upper right")

    stages = [str(s) for s in DeadLetterStage] + sorted(set(a.dead_letters) - {str(s) for s in DeadLetterStage})
    bottom = [0] * len(a.buckets)
    for stage in stages:
        counts = [0] * len(a.buckets)
        for t, s in a.dead_letter_times:
            if s == stage:
                counts[min(len(counts) - 1, int(t // a.bucket_s))] += 1
        if any(counts):
            dead.bar(
                a.buckets,
                counts,
                width=a.bucket_s,
                bottom=bottom,
                align="edge",
                label=f"{stage} ({a.dead_letters.get(stage, 0)})",
            )
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    dead.set_title(f"Dead letters by stage ({sum(a.dead_letters.values())} in all)")
    dead.set_ylabel(f"records per {a.bucket_s:g} s")
    dead.set_xlabel("seconds since start")
    if a.dead_letters:
        dead.legend(fontsize=7, loc="upper right")
    else:
        dead.text(0.5, 0.5, "no dead letters", ha="center", va="center", transform=dead.transAxes)

    if a.label_delays:
        delays = [max(d, 1e-3) for d in a.label_delays]
        delay.hist(delays, bins=40)
        delay.set_xscale("log")
        p50, p99 = _quantile(a.label_delays, 0.5), _quantile(a.label_delays, 0.99)
        delay.set_title(f"Label delay (p50 {p50:.3g} s, p99 {p99:.3g} s)")
        delay.set_xlabel("seconds from event to label")
        delay.set_ylabel("labels")
    else:
        delay.set_title("Label delay")
        why = "labels come inline with each event:\nno delay" if a.inline_labels else "no label joined in range"
        delay.text(0.5, 0.5, why, ha="center", va="center", transform=delay.transAxes)
        delay.set_axis_off()
    fig.tight_layout()
    return fig


def _svg(fig: Any) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------- page

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1120px; color: #222; background: #fff; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.sub { color: #666; } img { width: 100%; height: auto; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } tr.champion td:first-child { font-weight: 600; }
"""


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _model_table(a: Analysis) -> str:
    head = "".join(f"<th>{html.escape(m)} cumulative</th><th>{html.escape(m)} rolling</th>" for m in a.metrics)
    drifts = Counter((m.partition, m.model) for m in a.marks if m.kind == "drift")
    rows = []
    for c in a.curves:
        champion = a.champions.get(c.partition) == c.model
        cells = "".join(
            f"<td>{_fmt(c.final['cumulative'][m])}</td><td>{_fmt(c.final['rolling'][m])}</td>" for m in a.metrics
        )
        rows.append(
            f'<tr class="{"champion" if champion else ""}"><td>{html.escape(c.model)}[{c.partition}]'
            f"{' ★' if champion else ''}</td>{cells}<td>{c.labelled:,}</td><td>{drifts[c.partition, c.model]}</td></tr>"
        )
    return (
        f"<table><tr><th>model[partition]</th>{head}<th>labelled</th><th>drift detections</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _run_table(a: Analysis) -> str:
    p50, p99 = a.latency_overall
    done = [b + a.bucket_s for b, n in zip(a.buckets, a.predictions_out, strict=True) if n]
    busy = done[-1] - done[0] + a.bucket_s if done else 0.0
    items = [
        ("predictions", f"{a.predictions:,}"),
        ("labelled events scored", f"{a.labelled:,}"),
        (
            "dead letters",
            f"{sum(a.dead_letters.values()):,}"
            + (" (" + ", ".join(f"{s}: {n}" for s, n in a.dead_letters.items()) + ")" if a.dead_letters else ""),
        ),
        ("drift detections", str(sum(1 for m in a.marks if m.kind == "drift"))),
        ("champion changes", str(sum(1 for m in a.marks if m.kind == "champion"))),
        ("span", f"{a.span_s:,.1f} s from {datetime.fromtimestamp(a.start_s, UTC):%Y-%m-%d %H:%M:%S} UTC"),
        ("throughput", f"{a.predictions / busy:,.0f} predictions/s from the first to the last" if busy else "–"),
        (
            "event-to-prediction latency",
            "–" if math.isnan(p50) else f"p50 {p50 * 1000:,.1f} ms, p99 {p99 * 1000:,.1f} ms",
        ),
    ]
    return "<table>" + "".join(f"<tr><td>{k}</td><td>{html.escape(v)}</td></tr>" for k, v in items) + "</table>"


def render_html(a: Analysis) -> str:
    """The page: two figures as embedded SVG, the tables, and the figures as JSON."""
    learning, operations = _svg(plot_learning(a)), _svg(plot_operations(a))
    data = json.dumps(a.figures(), allow_nan=True).replace("</", "<\\/").replace("NaN", "null")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>streamwise report: {html.escape(a.pipeline)}</title>
<style>{_CSS}</style></head><body>
<h1>streamwise report: {html.escape(a.pipeline)}</h1>
<p class="sub">{a.predictions:,} predictions, {a.labelled:,} labelled;
prequential (test-then-train) {html.escape(a.metric)},
cumulative and over the last {a.window:,} labels, recomputed from the prediction records and the events' labels.</p>
<h2>How the models learned</h2>
<img alt="prequential {html.escape(a.metric)} per model" src="data:image/svg+xml;base64,{learning}">
<h2>Final figures</h2>
{_model_table(a)}
<p class="sub">★ the champion (whose prediction the records carry) at the last event of its partition.</p>
{_run_table(a)}
<h2>Operations</h2>
<img alt="throughput, latency, dead letters and label delay" src="data:image/svg+xml;base64,{operations}">
<script type="application/json" id="streamwise-figures">{data}</script>
</body></html>
"""


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from ISO 8601 (naive means UTC) or Unix seconds.

    Examples
    --------
    >>> parse_time("2026-01-02T03:04:05Z"), parse_time("1767322445.5")
    (1767323045000, 1767322445500)
    """
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StreamwiseError(f"{text!r}: expected an ISO 8601 time or Unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def collect(
    config: PipelineConfig, settings: Any, since_ms: int | None = None, until_ms: int | None = None
) -> Analysis:
    """Reads the pipeline's topics from Kafka and analyses them."""
    from streamwise.connectors.topic_reader import read_topic

    def read(topic: str | None) -> list[ConsumedRecord]:
        return [] if topic is None else read_topic(settings.kafka, topic, since_ms, until_ms)

    learn: list[ConsumedRecord] = []
    if config.scope == "global":
        from streamwise.connectors import make_admin

        admin = make_admin(settings.kafka)
        try:
            counts = admin.partition_counts([config.input.topic, config.learn_topic])
        finally:
            admin.close()
        if counts.get(config.input.topic, 1) > 1 and config.learn_topic in counts:
            learn = read(config.learn_topic)
    return analyse(
        config,
        predictions=read(config.output.topic),
        events=read(config.input.topic),
        labels=read(config.input.labels_topic),
        alerts=read(config.alerts_topic),
        dead_letters=read(config.dead_letter_topic),
        learn=learn,
    )


def write(a: Analysis, out: Path, figures_dir: Path | None = None) -> list[Path]:
    """Writes the page to ``out`` and, with ``figures_dir``, each figure as a PNG too."""
    html = render_html(a)
    try:
        out.write_text(html, encoding="utf-8")
    except OSError as e:
        raise StreamwiseError(f"{out}: cannot write the report: {e.strerror or e}") from None
    written = [out]
    if figures_dir is not None:
        plt = _pyplot()
        try:
            figures_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StreamwiseError(f"{figures_dir}: cannot make the figures directory: {e.strerror or e}") from None
        for name, make in (("learning", plot_learning), ("operations", plot_operations)):
            fig = make(a)
            path = figures_dir / f"{a.pipeline}-{name}.png"
            try:
                fig.savefig(path, dpi=110, metadata={"Software": None})
            except OSError as e:
                raise StreamwiseError(f"{path}: cannot write the figure: {e.strerror or e}") from None
            finally:
                plt.close(fig)
            written.append(path)
    return written
