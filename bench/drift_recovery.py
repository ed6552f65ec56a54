"""Drift recovery: examples/credit_drift.yaml on a stream whose lending rule changes.

Replays River's ``synth.ConceptDriftStream`` (Agrawal function 0, then function 7 from
event 5,000 over a 100-event transition; 15,000 events) into a fresh topic on the local
broker, runs the example through the service once per drift policy (none, reset,
challenger), each on its own consumer group and output topics, and reads back what it
wrote. For the record's ``prediction`` and each model it prints:

- the first drift detection at or after the transition, in events from the change;
- the accuracy over the 1,000 events before the transition (the pre-drift level);
- the recovery: events from the change to the end of the first 500-event window, all
  after the transition, whose accuracy is within 2 points of that level
  (``streamwise.models.drift.recovery_events``); 550 is the quickest possible.

The run is deterministic (one partition, inline labels), so one pass is enough.

    .venv/bin/python bench/drift_recovery.py [--client kafka-python]
"""

from __future__ import annotations

import argparse

from common import bootstrap, machine, produce, settings, table, unique
from streamwise.models.drift import recovery_events
from support import DRIFT_CHANGE, DRIFT_EVENTS, DRIFT_PARAMS, DRIFT_SOURCE, DRIFT_TRANSITION, run_drift_example

from streamwise.replay import iter_events

POLICIES = ("none", "reset", "challenger")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", default="kafka-python", choices=["kafka-python", "confluent"])
    args = parser.parse_args()
    servers = bootstrap()
    topic = unique("drift") + ".events"
    produce(servers, topic, list(iter_events(DRIFT_SOURCE, DRIFT_PARAMS, limit=DRIFT_EVENTS)))
    prefix = unique("drift")
    runs = {p: run_drift_example(settings(servers, args.client), topic, prefix, p) for p in POLICIES}

    rows = []
    for who in runs["none"]["correct"]:
        row: list[object] = [who]
        for policy in POLICIES:
            run = runs[policy]
            pre, recovery = recovery_events(run["correct"][who], DRIFT_CHANGE, transition=DRIFT_TRANSITION)
            detected = [
                a["event_id"] - DRIFT_CHANGE
                for a in run["alerts"]
                if a["type"] == "drift" and a["model"] == who and a["event_id"] >= DRIFT_CHANGE - DRIFT_TRANSITION
            ]
            if policy == "none":
                row += [f"{pre:.3f}", detected[0] if detected else "—"]
            row.append(recovery if recovery is not None else f"> {DRIFT_EVENTS - DRIFT_CHANGE}")
        rows.append(row)
    header = ["predictions of", "pre-drift accuracy", "detected (events after change)"]
    header += [f"recovery, policy {p}" for p in POLICIES]
    print(machine())
    print()
    print(table(f"Drift recovery, examples/credit_drift.yaml, {DRIFT_EVENTS:,} events, {args.client}", header, rows))
    quickest = 500 + (DRIFT_TRANSITION + 1) // 2
    print(
        f"\n{quickest} events is the quickest recovery this measure can show (a 500-event window wholly after"
        " the transition): the model was as good as before at once. A low pre-drift level is regained at once"
        " under any policy (logreg here)."
    )
    changes = [
        (p, a["type"], a["event_id"], a.get("champion") or a.get("challenger"), a.get("action", "took over"))
        for p in POLICIES
        for a in runs[p]["alerts"]
        if a["type"] in ("champion", "challenger")
    ]
    print()
    print(table("Champion and challenger alerts", ["policy", "type", "event", "model", "action"], changes))


if __name__ == "__main__":
    main()
