"""Transfer: a model started with ``init_from`` a trained pipeline's snapshot against a cold start.

For each stream, through the service on the local broker and Redis (dev/up):

1. the *source* pipeline learns ``--source-events`` events of one segment (Agrawal or
   SEA with one seed) and is snapshotted to Redis when it stops;
2. a *cold* pipeline and a *warm* one (each model with ``init_from`` the source's model
   of the same name) then learn the same ``--target-events`` events of another segment
   (the same generator with another seed: other applicants, the same lending rule).

The source's level is each model's accuracy over the source's last 2,000 events. A
pipeline *reaches* it at the end of the first 500-event window whose accuracy is within
one point of that level ("—": not within the target stream). The learning curves are
the accuracy of each 250-event window. The section "Transfer: init_from vs a cold
start" of docs/benchmarks.md is replaced (or added) with the tables; other sections
are left as they are.

    .venv/bin/python bench/transfer.py [--source-events 20000] [--target-events 5000] [--no-write]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import common
from common import add_output_args, produce, section_heading, settings, start_services, table, unique
from support import consume, values

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner

WINDOW = 250
SECTION = "## Transfer: init_from vs a cold start"
MODELS = {
    "logreg": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
    "tree": [{"tree.HoeffdingTreeClassifier": {"grace_period": 100}}],
}
STREAMS: dict[str, dict[str, Any]] = {
    "Agrawal (credit), function 0": {
        "source": ("synth.Agrawal", {"classification_function": 0, "seed": 1}),
        "target": ("synth.Agrawal", {"classification_function": 0, "seed": 2}),
        "label_type": "int",
        "features": {"salary": "float", "commission": "float", "age": "int", "elevel": "int", "car": "int",
                     "zipcode": "int", "hvalue": "float", "hyears": "int", "loan": "float"},
    },
    "SEA, variant 0, 10% noise": {
        "source": ("synth.SEA", {"variant": 0, "noise": 0.1, "seed": 1}),
        "target": ("synth.SEA", {"variant": 0, "noise": 0.1, "seed": 2}),
        "label_type": "bool",
        "features": {"0": "float", "1": "float", "2": "float"},
    },
}


def _config(name: str, topic: str, features: dict[str, str], label_type: str, init_from: str | None) -> Any:
    models = [
        {"name": m, "steps": steps, **({"init_from": {"pipeline": init_from, "model": m}} if init_from else {})}
        for m, steps in MODELS.items()
    ]
    return parse_pipeline_config({
        "name": name,
        "input": {"topic": topic},
        "output": {"topic": f"{name}.predictions", "fields": ["id", "prediction", "models"]},
        "schema": {"id": "id", "label": "label", "label_type": label_type, "features": features},
        "metric": "Accuracy",
        "models": models,
        # Drift resets would blur what the start state did.
        "drift": {"enabled": False},
    })


def _run(servers: str, cfg: Any, labels: dict[Any, Any], n: int) -> dict[str, list[bool]]:
    """Runs the pipeline over its topic and returns, per model, whether each event's
    prediction (in event order) was right."""
    s = settings(servers, "kafka-python", snapshots=True)
    Runner(cfg, s).run(until_idle_s=1.0)
    records = sorted(values(consume(servers, cfg.output.topic, n)), key=lambda r: r["id"])
    assert len(records) == n, (cfg.name, len(records), n)
    return {m: [r["models"][m].get("prediction") == labels[r["id"]] for r in records] for m in MODELS}


def _windows(correct: list[bool]) -> list[float]:
    return [sum(correct[i : i + WINDOW]) / WINDOW for i in range(0, len(correct) - WINDOW + 1, WINDOW)]


def _reaches(correct: list[bool], level: float) -> int | None:
    """Events until the end of the first window within one point of ``level``."""
    for k, acc in enumerate(_windows(correct)):
        if acc >= level - 0.01:
            return (k + 1) * WINDOW
    return None


def _stream(
    servers: str, name: str, spec: dict[str, Any], source_events: int, target_events: int
) -> tuple[str, list[tuple[int | None, int | None]]]:
    """The stream's tables, and (cold, warm) events to the source's level for each model."""
    topics = {}
    labels: dict[str, dict[Any, Any]] = {}
    features: dict[str, str] = spec["features"]
    for side, limit in (("source", source_events), ("target", target_events)):
        dataset, params = spec[side]
        events = list(iter_events(dataset, params, limit=limit))
        labels[side] = {json.loads(v)["id"]: json.loads(v)["label"] for _, v in events}
        topics[side] = unique("transfer") + ".events"
        produce(servers, topics[side], events)
    source = unique("transfer-source")
    runs = {"source": _run(servers, _config(source, topics["source"], features, spec["label_type"], None),
                           labels["source"], source_events)}
    for kind, init in (("cold", None), ("warm", source)):
        cfg = _config(unique(f"transfer-{kind}"), topics["target"], features, spec["label_type"], init)
        runs[kind] = _run(servers, cfg, labels["target"], target_events)

    rows = []
    reached = []
    for m in MODELS:
        src = runs["source"][m]
        level = sum(src[-2000:]) / len(src[-2000:])
        cold, warm = _reaches(runs["cold"][m], level), _reaches(runs["warm"][m], level)
        reached.append((cold, warm))
        rows.append([
            m, f"{level:.3f}", cold if cold is not None else "—", warm if warm is not None else "—",
            f"{sum(runs['cold'][m]) / target_events:.3f}", f"{sum(runs['warm'][m]) / target_events:.3f}",
        ])
    windows = {(m, kind): _windows(runs[kind][m]) for m in MODELS for kind in ("cold", "warm")}
    curves = [
        [f"{(k + 1) * WINDOW:,}", *(f"{windows[m, kind][k]:.3f}" for m in MODELS for kind in ("cold", "warm"))]
        for k in range(target_events // WINDOW)
    ]
    counts: dict[Any, int] = {}
    for y in labels["target"].values():
        counts[y] = counts.get(y, 0) + 1
    majority = max(counts.values()) / len(labels["target"])
    out = table(
        f"{name}: {source_events:,} source events, {target_events:,} target events"
        f" (majority-class share of the target: {majority:.3f})",
        ["model", "source level (last 2,000)", "cold: events to level", "warm: events to level",
         "cold: prequential accuracy", "warm: prequential accuracy"],
        rows,
    )
    out += "\n\n" + table(
        f"{name}: learning curves, accuracy per {WINDOW}-event window",
        ["events", *(f"{m} {kind}" for m in MODELS for kind in ("cold", "warm (init_from)"))], curves,
    )
    return out, reached


def _verdict(reached: list[tuple[int | None, int | None]], target_events: int) -> str:
    """How many models reached the source's level sooner warm than cold, as soon, or later."""
    never = target_events + 1
    pairs = [(never if c is None else c, never if w is None else w) for c, w in reached]
    sooner = sum(w < c for c, w in pairs)
    same = sum(w == c for c, w in pairs)
    return (
        f"Warm reached the source's level in fewer events than cold for {sooner} of {len(pairs)} models,"
        f" in as many for {same}, in more for {len(pairs) - sooner - same}. A tie at {WINDOW} events is a model"
        " already at the level in its first window either way; compare its accuracy with the target stream's"
        " majority-class share, in each table's title."
    )


def write_section(text: str, path: Path) -> None:
    """Replaces this bench's section of ``path`` (or appends it), leaving the others as they are."""
    common.write_section(SECTION, text, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-events", type=int, default=20_000)
    parser.add_argument("--target-events", type=int, default=5_000)
    add_output_args(parser)
    args = parser.parse_args()
    servers, started, load = start_services()
    results = [_stream(servers, name, spec, args.source_events, args.target_events) for name, spec in STREAMS.items()]
    parts = [text for text, _ in results]
    reached = [pair for _, pairs in results for pair in pairs]
    text = "\n\n".join([
        section_heading(started, load, "transfer.py"),
        "Each model of the warm pipeline starts from the source pipeline's newest snapshot in Redis"
        " (`init_from`, streamwise/transfer.py); the cold one from zero. Both then learn the same"
        " target events, test-then-train. \"Events to level\": the end of the first"
        f" {WINDOW}-event window within one point of the source's accuracy over its last 2,000 events.",
        _verdict(reached, args.target_events),
        *parts,
    ])
    print(text)
    if not args.no_write:
        write_section(text, args.out)
        print(f"wrote the section {SECTION[3:]!r} of {args.out}")


if __name__ == "__main__":
    main()
