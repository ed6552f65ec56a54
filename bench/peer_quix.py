"""Peer (issue 8): streamwise ÷ the same pipeline written with Quix Streams + River.

The same data (River's Phishing replayed ``--repeat`` times, on one one-partition
topic of the same broker), the same model (StandardScaler | LogisticRegression), the
same order (predict, update the accuracy, learn: test-then-train), one prediction
record per event on an output topic, with the same delivery guarantee on both sides.

The Quix Streams side is written the way its documentation shows a user would: an
``Application``, a JSON topic, ``sdf.apply(score)`` with the River pipeline in a
closure, ``sdf.to_topic(output)``, everything else at its defaults (which include a
commit, and so an exactly-once transaction, every 5 s, where streamwise's default
``kafka.commit_interval_ms`` is far shorter). Both use librdkafka's producer defaults
for batching (linger 5 ms). It keeps its model in process memory only, so the
streamwise side runs with snapshots off; it writes a prediction record of id, class
and probability, so the streamwise side writes the same (``output.fields: [id,
prediction]``: id, class and probabilities). A last row shows streamwise with its full
default record (every model's prediction, champion, source, epoch, latency), about
five times the bytes.

Both are timed alike: from the first event handed to the application to the return
from its ``run()``, after processing ``n`` events and committing them; each side's
figure is the best of ``--rounds`` runs, taken in alternating order. quixstreams is
installed by ``dev/bootstrap --bench``.

    .venv/bin/python bench/peer_quix.py [--repeat 10] [--guarantee exactly_once]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from streamwise.runner import Runner  # noqa: E402

CLIENTS = ("kafka-python", "confluent")
GUARANTEES = {"exactly_once": "exactly-once", "at_least_once": "at-least-once"}


# What the Quix Streams side writes per event, in streamwise's record fields.
SAME_RECORD = ["id", "prediction"]


def streamwise_rate(
    servers: str, client: str, topic: str, n: int, guarantee: str, fields: list[str] | None = SAME_RECORD
) -> tuple[float, common.CpuMeter]:
    """``fields``: the prediction record's (None: the default, everything)."""
    meter = common.CpuMeter()
    clock = common.Clock(meter)
    settings = common.settings(servers, client)
    settings.kafka = settings.kafka.model_copy(update={"guarantee": guarantee})
    cfg = common.pipeline(topic, common.LOGREG)
    if fields is not None:
        cfg.output.fields = fields  # type: ignore[assignment]
    Runner(cfg, settings, sensors=[clock]).run(max_events=n)
    assert clock.first is not None and clock.events == n
    rate = n / (time.perf_counter() - clock.first)
    meter.stop(n - clock.metered_from)
    return rate, meter


def quix_rate(servers: str, topic: str, n: int, guarantee: str) -> tuple[float, common.CpuMeter]:
    """The user's Quix Streams application, run until it has scored ``n`` events."""
    # quixstreams pulls in authlib, which warns about its httpx module on import.
    warnings.filterwarnings("ignore", message=".*httpx module is deprecated")
    try:
        from quixstreams import Application
    except ImportError as e:
        raise SystemExit(f"peer_quix: quixstreams is not installed ({e}): run dev/bootstrap --bench") from None
    from river import linear_model, metrics, preprocessing

    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    accuracy = metrics.Accuracy()
    name = common.unique("quix")
    seen = {"n": 0, "first": 0.0}
    meter = common.CpuMeter()
    with tempfile.TemporaryDirectory() as state_dir:
        app = Application(
            broker_address=servers, consumer_group=name, auto_offset_reset="earliest",
            processing_guarantee=GUARANTEES[guarantee], state_dir=state_dir, loglevel="WARNING",
        )
        events = app.topic(topic, value_deserializer="json")
        predictions = app.topic(f"{name}.predictions", value_serializer="json")

        def score(event: dict[str, Any]) -> dict[str, Any]:
            if not seen["n"]:
                seen["first"] = time.perf_counter()
                meter.start()
            x = {k: v for k, v in event.items() if k not in ("id", "label")}
            proba = model.predict_proba_one(x)
            y_pred = max(proba, key=proba.get) if proba else None
            if y_pred is not None:  # River's progressive_val_score skips a missing prediction
                accuracy.update(event["label"], y_pred)
            model.learn_one(x, event["label"])
            seen["n"] += 1
            if seen["n"] >= n:
                app.stop()
            return {"id": event["id"], "prediction": y_pred, "probability": proba.get(True, 0.0)}

        app.dataframe(events).apply(score).to_topic(predictions)
        app.run()
    assert seen["n"] == n, seen
    rate = n / (time.perf_counter() - seen["first"])
    meter.stop(n)
    return rate, meter


def run(repeat: int, guarantees: list[str], rounds: int = 2) -> tuple[str, dict[str, Any]]:
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    servers = common.bootstrap()
    topic = common.unique("peer") + ".events"
    events = common.phishing_events(repeat)
    common.produce(servers, topic, events)
    n = len(events)
    rows, figures = [], {}
    meters: dict[tuple[str, str], common.CpuMeter] = {}
    for guarantee in guarantees:
        # The best of ``rounds`` for each side, in alternating order: the machine's other
        # load only ever slows a run down, and drifts in it must favour neither side.
        runs: dict[str, Callable[[], tuple[float, common.CpuMeter]]] = {
            "quix": lambda g=guarantee: quix_rate(servers, topic, n, g),
            **{c: (lambda c=c, g=guarantee: streamwise_rate(servers, c, topic, n, g)) for c in CLIENTS},
        }
        if guarantee == "exactly_once":
            runs["full"] = lambda: streamwise_rate(servers, "confluent", topic, n, "exactly_once", fields=None)
            runs["full-kafka-python"] = lambda: streamwise_rate(
                servers, "kafka-python", topic, n, "exactly_once", fields=None)
        best = dict.fromkeys(runs, 0.0)
        for r in range(rounds):
            for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                rate, meter = runs[name]()
                if rate > best[name]:
                    best[name] = rate
                    meters[guarantee, name] = meter
        figures[guarantee] = best
        quix = best["quix"]
        rows.append([guarantee.replace("_", "-"), best["kafka-python"], best["confluent"], quix,
                     best["kafka-python"] / quix, best["confluent"] / quix])
    if "exactly_once" in figures:
        best = figures["exactly_once"]
        quix = best["quix"]
        rows.append(["exactly-once, streamwise's full default record", best["full-kafka-python"], best["full"], quix,
                     best["full-kafka-python"] / quix, best["full"] / quix])
    title = (f"Peer: Quix Streams + River, Phishing × {repeat} = {n:,} events, StandardScaler | "
             "LogisticRegression, one prediction record per event (id, class, probabilities), events/s, "
             f"best of {rounds} runs each")
    header = ["guarantee", "streamwise (kafka-python)", "streamwise (confluent)", "Quix Streams",
              "÷ Quix (kafka-python)", "÷ Quix (confluent)"]
    text = common.table(title, header, rows) + "\n\n" + cpu_table(meters, figures)
    return text, figures


def cpu_table(meters: dict[tuple[str, str], common.CpuMeter], figures: dict[str, dict[str, float]]) -> str:
    """CPU per event of each side's best run, and what it means for a peer ratio here:
    the broker shares the machine's cores, so no design runs faster than the cores
    divided by the CPU an event costs in all (this process's threads plus the broker)."""
    cores = os.cpu_count() or 1
    names = {"kafka-python": "streamwise (kafka-python)", "confluent": "streamwise (confluent)", "quix": "Quix Streams"}
    rows = []
    for (guarantee, name), meter in meters.items():
        if name not in names:
            continue
        process, broker = meter.per_event_us()
        total = process + broker
        quix = figures[guarantee]["quix"]
        figures_ = [process, broker, total, cores * 1e6 / total, cores * 1e6 / total / quix]
        rows.append([f"{guarantee.replace('_', '-')}, {names[name]}", figures[guarantee][name],
                     *(v if math.isfinite(v) else "n/a" for v in figures_)])
    title = (f"Peer: CPU per event (streamwise from the end of its first batch, Quix from its first event, "
             f"each to the end of run()), best run of each, and the ceiling it sets on {cores} cores shared "
             "with the broker (n/a: the broker's process not found)")
    header = ["run", "events/s", "process CPU µs/event (all threads)", "broker CPU µs/event", "sum",
              "ceiling events/s (cores ÷ sum)", "ceiling ÷ Quix"]
    return common.table(title, header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="Phishing replays (1,250 events each)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side (the best counts)")
    parser.add_argument("--guarantee", action="append", choices=list(GUARANTEES),
                        help="repeatable; default both")
    args = parser.parse_args()
    text, _ = run(args.repeat, args.guarantee or list(GUARANTEES), args.rounds)
    print(text)


if __name__ == "__main__":
    main()
