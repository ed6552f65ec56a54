"""Every benchmark of issue 8 in one run, its tables written to docs/benchmarks.md.

Runs, each in its own process with its own time limit (so that one stuck part cannot
eat the others' time, and one part's memory and threads cannot slow the next):

- G1 and G2 per Kafka client (bench/clients.py: service ÷ in-memory River loop, no-op
  service ÷ bare passthrough);
- G2's passthrough ÷ Kafka's own producer and consumer perf tools (bench/kafka_tools.py);
- G3 latency at 50% of the measured throughput ÷ a Kafka echo (bench/latency.py), for
  each client;
- G4 snapshot overhead and restore time (bench/snapshots.py);
- G5 the torch learner's examples/s per batch size, CPU and CUDA (bench/torch_learner.py);
- G6 the sequence learner's examples/s per batch size and sequence length, CPU and CUDA,
  and its accuracy on PatientVitals against an MLP and windowed aggregates
  (bench/torch_sequence.py);
- the Quix Streams + River peer (bench/peer_quix.py);
- 2 workers ÷ 1 (bench/scale.py);
- drift recovery per drift policy on examples/credit_drift.yaml (bench/drift_recovery.py);
- a cProfile of the service per client, by library and by function, with a closing note
  that names where the time goes;
- throughput and G3 latency per ``kafka.commit_interval_ms`` (bench/commit_cadence.py).

A part not run (``--only``, or skipped when the budget is spent) keeps its section from
the document as it was, and sections no part writes are kept as they are.

Every ratio is computed inside one part, from two things measured one after the other
on the same broker. The whole run takes under 15 minutes on a 2-core machine; a part
whose turn comes after the deadline is skipped and says so.

    dev/bootstrap --bench        # once: Quix Streams, for the peer part
    eval "$(dev/up)"             # Kafka, Redis
    .venv/bin/python bench/run_all.py [--out docs/benchmarks.md] [--only latency,scale] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BENCH = Path(__file__).resolve().parent
BUDGET_S = 14 * 60
CLIENTS = ("kafka-python", "confluent")
STAGE_PROCESS = common.STAGES[1][0]
# The 1-minute load average when each part started: how busy the two cores were.
LOAD: dict[str, float] = {}
# When each part started: a section kept from an earlier run says when it ran.
STARTED: dict[str, str] = {}
COMMANDS: dict[str, str] = {}


@dataclass
class Part:
    name: str
    title: str
    argv: list[str]
    quick: list[str]
    timeout_s: int


def parts() -> list[Part]:
    py = [sys.executable]
    out = [
        # 50,000 events (5,000 for ARF): at 15,000 a run lasted under half a second on
        # confluent, and the first batches (a young model, the first checkpoints) weighed
        # in the ratio more than they do in a service that runs for hours.
        Part("clients", "G1 model efficiency and G2 I/O tax, per Kafka client",
             [*py, str(BENCH / "clients.py"), "--repeat", "40", "--arf-events", "5000", "--rounds", "3"],
             ["--repeat", "4", "--arf-events", "1000", "--rounds", "1"], 400),
        Part("kafka_tools", "G2: the bare passthrough ÷ Kafka's own perf tools",
             [*py, str(BENCH / "kafka_tools.py"), "--repeat", "12", "--records", "150000"],
             ["--repeat", "4", "--records", "40000"], 150),
    ]
    for client in CLIENTS:
        out.append(Part(f"latency-{client}", f"G3 latency, {client}",
                        [*py, str(BENCH / "latency.py"), "--client", client, "--seconds", "15"],
                        ["--seconds", "5", "--repeat", "3"], 150))
    out += [
        Part("snapshots", "G4 snapshot overhead and restore time",
             [*py, str(BENCH / "snapshots.py"), "--repeat", "16", "--rounds", "3"],
             ["--repeat", "6", "--rounds", "1"], 180),
        Part("torch", "G5 the torch mini-batch learner",
             [*py, str(BENCH / "torch_learner.py"), "--rows", "20000"], ["--rows", "4000"], 120),
        Part("sequence", "G6 the per-key sequence learner",
             [*py, str(BENCH / "torch_sequence.py"), "--threads", "1", "--rows", "8000"],
             ["--rows", "2000", "--accuracy-events", "1500"], 240),
        Part("peer", "Peer: Quix Streams + River",
             [*py, str(BENCH / "peer_quix.py"), "--repeat", "16"], ["--repeat", "3", "--rounds", "1"], 200),
        Part("scale", "Scale: 2 worker processes ÷ 1",
             [*py, str(BENCH / "scale.py"), "--events", "20000", "--rounds", "2"],
             ["--events", "6000", "--rounds", "1"], 240),
        Part("drift", "Drift recovery per drift policy",
             [*py, str(BENCH / "drift_recovery.py")], [], 150),
        Part("profile", "Where the service's time goes (cProfile)",
             [*py, str(Path(__file__).resolve()), "--profile-section"], ["--profile-repeat", "4"], 120),
        # Last: the longest part, and the one whose figures change least from run to run;
        # skipped for lack of time, its section from the previous run is kept.
        Part("cadence", "Commit cadence: throughput and latency per kafka.commit_interval_ms",
             [*py, str(BENCH / "commit_cadence.py"), "--seconds", "8"],
             ["--seconds", "3", "--intervals", "0,100", "--rounds", "1", "--repeat", "2"], 420),
    ]
    return out


def _argv(part: Part, quick: bool) -> list[str]:
    """The part's command; --quick replaces the values of the options it names."""
    argv = list(part.argv)
    if quick:
        for flag, value in zip(part.quick[::2], part.quick[1::2], strict=True):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
    return argv


def run_part(part: Part, quick: bool, seconds_left: float) -> tuple[str, float]:
    if not Path(part.argv[1]).exists():
        return f"_Not run: {Path(part.argv[1]).name} is not in this checkout._", 0.0
    timeout = min(part.timeout_s, seconds_left)
    LOAD[part.name] = os.getloadavg()[0]
    STARTED[part.name] = time.strftime("%Y-%m-%d %H:%M %Z")
    COMMANDS[part.name] = " ".join(Path(a).name if "/" in a else a for a in _argv(part, quick)[1:])
    t0 = time.perf_counter()
    print(f"\n== {part.name} (at most {timeout:.0f} s)", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(_argv(part, quick), stdout=subprocess.PIPE, text=True, timeout=timeout,
                              cwd=common.ROOT)
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return f"{partial.strip()}\n\n_Stopped after its limit of {timeout:.0f} s._".strip(), time.perf_counter() - t0
    text = proc.stdout.strip()
    if proc.returncode:
        text += f"\n\n_Exited with status {proc.returncode}; its error output is on the run's stderr._"
    print(text, flush=True)
    return text, time.perf_counter() - t0


# ----- the profile part -------------------------------------------------------------------


def profile_section(repeat: int) -> None:
    """cProfile of the service (Phishing, StandardScaler | LogisticRegression, exactly-once)
    on each client, by library and by function, and a note that names the largest share."""
    from streamwise.runner import Runner

    servers = common.bootstrap()
    topic = common.unique("profile") + ".events"
    events = common.phishing_events(repeat)
    common.produce(servers, topic, events)
    from support import reference_predictions

    # The models alone under the same profiler: what "process" would cost with no service.
    pairs = [({k: v for k, v in e.items() if k not in ("id", "label")}, e["label"])
             for e in (json.loads(v) for _k, v in events)]
    def models_alone() -> float:
        alone = common.ProfileWindow(len(pairs))
        alone.on_event_in("", 0)
        reference_predictions(common.pipeline(topic, common.LOGREG), pairs)
        alone.on_batch(len(pairs), 0.0)
        assert alone.result is not None
        return alone.result.wall * 1e6 / len(pairs)

    # The fastest of three: the machine's other load only ever adds time.
    model_us = min(models_alone() for _ in range(3))
    print(f"The same models in an in-memory loop (predict, metric, learn) under the same profiler: "
          f"{model_us:.0f} µs/event.\n")
    notes = []
    for client in CLIENTS:
        window = common.ProfileWindow(len(events))
        settings = common.settings(servers, client)
        # The window starts profiling inside the first batch, so that batch's process()
        # goes uncounted: keep batches small against the whole run.
        settings.kafka.max_poll_records = 500
        runner = Runner(common.pipeline(topic, common.LOGREG), settings, sensors=[window])
        runner.run(max_events=len(events))
        assert window.result is not None
        print(f"**Service on {client}, StandardScaler | LogisticRegression, exactly-once**\n\n"
              f"{common.profile_summary(window.result)}\n")
        result = window.result
        stages = result.stages()
        stage, seconds = max(stages.items(), key=lambda kv: kv[1])
        us = 1e6 / result.events
        process = stages[STAGE_PROCESS] * us
        top = ", ".join(f"{name} {t * us:.0f} µs" for name, t in result.top_functions(3))
        notes.append(
            f"on {client}, the {stage.split(':')[0]} stage takes {seconds / result.wall:.0%} of the wall time "
            f"({seconds * us:.0f} of {result.wall * us:.0f} µs/event); the heaviest functions by own time are "
            f"{top}. Processing costs {process:.0f} µs/event, of which the models' own predict, metric and "
            f"learn are about {model_us:.0f}: the other {max(0.0, process - model_us):.0f} µs are the "
            "service's per-event Python around the model (JSON decode, validation, the prediction record "
            "and its JSON, sensors, the extra per-model metrics)"
        )
    print("Where the time goes (all figures under the profiler, which slows Python calls about 2×): "
          + "; ".join(notes) + ".")


# ----- the document -----------------------------------------------------------------------


def _row(text: str, label: str) -> list[float]:
    """The numbers of the table row whose first cell starts with ``label``."""
    m = re.search(r"^\| " + re.escape(label) + r"[^|]*\|([^\n]+)", text, flags=re.M)
    return [float(c.replace(",", "")) for c in re.findall(r"-?[\d,]*\.?\d+", m.group(1))] if m else []


# Issue 16's bars read from bench/clients.py's table: (what, its row, the lower bound per client).
BARS = (
    ("G1 LogisticRegression", "G1 LogisticRegression: ratio", {"kafka-python": 0.3, "confluent": 0.6}),
    ("G1 HoeffdingTree", "G1 HoeffdingTree: ratio", {"confluent": 0.75}),
    ("G1 ARF", "G1 ARF: ratio", {"confluent": 0.95}),
    ("G2", "G2 ratio", {"confluent": 0.8}),
)


def _peer(text: str) -> dict[tuple[str, str], float]:
    """streamwise ÷ Quix per (guarantee, client), from bench/peer_quix.py's table."""
    out = {}
    for guarantee in ("exactly-once", "at-least-once"):
        row = _row(text, guarantee)
        if len(row) >= 5:
            out[guarantee, "kafka-python"], out[guarantee, "confluent"] = row[3], row[4]
    return out


def closing_note(texts: dict[str, str]) -> str:
    """Each of issue 16's bars, met or not, in this run's figures, and where the time goes."""
    clients = texts.get("clients", "")
    met, missed = [], []

    def judge(what: str, value: float, bound: float, at_least: bool = True) -> None:
        ok = value >= bound if at_least else value <= bound
        (met if ok else missed).append(f"{what} {value:.2f} ({'≥' if at_least else '≤'} {bound:g})")

    for what, label, bounds in BARS:
        values = dict(zip(CLIENTS, _row(clients, label), strict=False))
        for client, bound in bounds.items():
            if client in values:
                judge(f"{what} on {client}", values[client], bound)
    overhead = dict(zip(CLIENTS, _row(clients, "G2 our per-event overhead"), strict=False))
    if "confluent" in overhead:
        judge("our per-event overhead (µs) on confluent", overhead["confluent"], 8.0, at_least=False)
    for (guarantee, client), ratio in _peer(texts.get("peer", "")).items():
        judge(f"peer ÷ Quix, {guarantee}, {client}", ratio, 1.5 if client == "confluent" else 0.8)
    for client in CLIENTS:
        p99 = _row(texts.get(f"latency-{client}", ""), "p99 (ms)")
        if len(p99) >= 3:
            judge(f"G3 p99 ÷ echo on {client}", p99[2], 2.0, at_least=False)
    cpu = _row(texts.get("peer", ""), "exactly-once, streamwise (confluent)")
    cpu_line = ""
    if len(cpu) >= 6:
        # events/s, process µs, broker µs, sum, ceiling events/s, ceiling ÷ Quix
        ratio = _peer(texts.get("peer", "")).get(("exactly-once", "confluent"))
        binds = ("the service's one Python thread binds, not the machine's CPU"
                 if ratio is not None and cpu[5] > 1.2 * ratio else "the machine's CPU itself binds")
        cpu_line = (f"CPU per event, confluent, exactly-once: {cpu[3]:.0f} µs in all ({cpu[1]:.0f} in the service's "
                    f"threads, {cpu[2]:.0f} in the broker); at that cost the machine's cores could carry "
                    f"{cpu[5]:.2f}× Quix's rate: {binds}.")
    profile = texts.get("profile", "")
    where = profile.strip().splitlines()[-1] if profile.strip() else "No profile in this run."
    lines = ["## Closing note", ""]
    if met or missed:
        lines.append("Issue 16's bars met in this run: " + ("; ".join(met) or "none") + ".")
        lines.append("")
        lines.append("Not met: " + ("; ".join(missed) or "none") + ".")
    else:
        lines.append("No figures could be read from this run's tables.")
    lines += ["", where]
    if cpu_line:
        lines += ["", cpu_line]
    return "\n".join(lines)


def sections(text: str) -> dict[str, str]:
    """A benchmarks document's ``## `` sections by title, each with its heading, in order.

    >>> doc = "# Benchmarks\\n\\nintro\\n\\n## A\\n\\na text\\n\\n## B\\nb\\n"
    >>> sections(doc)
    {'A': '## A\\n\\na text', 'B': '## B\\nb'}
    """
    out = {}
    for chunk in re.split(r"^(?=## )", text, flags=re.M)[1:]:
        title = chunk.splitlines()[0][3:].strip()
        out[title] = chunk.strip()
    return out


def document(
    texts: dict[str, str], seconds: dict[str, float], started: str, load: str, total: float, previous: str = ""
) -> str:
    """The whole document. A part not run this time (``--only``, or skipped for lack of
    time) keeps its section from ``previous``, the document as it was, and so does any
    section that no part writes (one added by another benchmark); the closing note reads
    the kept sections' figures too."""
    versions = [common.machine()]
    for dist in ("torch", "quixstreams"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    lines = [
        "# Benchmarks",
        "",
        "Written by `bench/run_all.py`; do not edit by hand. Every ratio is two things measured one",
        "after the other in the same run on the same broker: compare ratios across machines, not",
        "the absolute figures (the machines we run on have two cores shared with other work).",
        "",
        f"- Run started {started}, took {total / 60:.1f} min; load average at the start: {load}."
        + ("" if set(texts) >= {p.name for p in parts()} else
           f" It ran {', '.join(texts)} only: every other section is kept from an earlier run."),
        f"- Machine and versions: {', '.join(versions)}.",
        "- Broker: the single-node Apache Kafka (KRaft) that `dev/up` starts from Maven jars, Redis 7,",
        "  all on loopback.",
        "",
    ]
    kept = sections(previous)
    owned = {p.title for p in parts()} | {"Closing note"}
    note_texts = dict(texts)
    for part in parts():
        ran = part.name in texts and not texts[part.name].startswith("_Skipped")
        if ran:
            when = (f"_{STARTED.get(part.name, '')}, {seconds.get(part.name, 0):.0f} s, load average "
                    f"{LOAD.get(part.name, 0):.1f} at its start; `{COMMANDS.get(part.name, '')}`_")
            lines += [f"## {part.title}", "", when, "", texts[part.name], ""]
        elif part.title in kept:
            lines += [kept[part.title], ""]
            note_texts[part.name] = kept[part.title]
        elif part.name in texts:
            lines += [f"## {part.title}", "", texts[part.name], ""]
    lines += [text + "\n" for title, text in kept.items() if title not in owned]
    lines.append(closing_note(note_texts))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=common.ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--only", help="comma-separated part names: " + ", ".join(p.name for p in parts()))
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that every part runs")
    parser.add_argument("--profile-section", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-repeat", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_section:
        profile_section(args.profile_repeat)
        return
    common.bootstrap()  # start the services once, before any clock runs
    chosen = [p for p in parts() if not args.only or p.name in args.only.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    texts: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for part in chosen:
        left = BUDGET_S - (time.perf_counter() - t0)
        if left < 30:
            texts[part.name] = f"_Skipped: the run's {BUDGET_S // 60}-minute budget was spent._"
            continue
        texts[part.name], seconds[part.name] = run_part(part, args.quick, left)
    total = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(document(texts, seconds, started, load, total, previous))
    print(f"\nwrote {args.out} ({total / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
