"""examples/credit_drift.yaml through the service on the real broker, once per drift
policy: ADWIN flags the change of lending rule within 1,000 events of it, and the reset
and challenger policies bring accuracy back to within 2 points of its pre-drift level
sooner than alerting alone does."""

from __future__ import annotations

import pytest
from streamwise.models.drift import recovery_events
from support import DRIFT_CHANGE, DRIFT_EVENTS, DRIFT_PARAMS, DRIFT_SOURCE, DRIFT_TRANSITION, produce, run_drift_example

from streamwise.replay import iter_events


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)
def test_drift_is_detected_and_the_policies_recover_sooner_than_none(settings, bootstrap, unique):
    topic = f"{unique}.events"
    produce(bootstrap, topic, iter_events(DRIFT_SOURCE, DRIFT_PARAMS, limit=DRIFT_EVENTS))
    runs = {policy: run_drift_example(settings, topic, unique, policy) for policy in ("none", "reset", "challenger")}

    for policy, run in runs.items():
        assert run["events"] == DRIFT_EVENTS
        drifts = [a for a in run["alerts"] if a["type"] == "drift"]
        for model in ("logreg", "naive_bayes", "tree"):
            # The first detection once the transition begins, counted from the change,
            # and what the policy did about it.
            since = DRIFT_CHANGE - DRIFT_TRANSITION
            first = next((a for a in drifts if a["model"] == model and a["event_id"] >= since), None)
            assert first is not None and first["event_id"] - DRIFT_CHANGE <= 1000, (policy, model, drifts)
            action = {"none": "none", "reset": "reset", "challenger": f"started {model}.challenger"}[policy]
            assert first["action"].startswith(action), (policy, first)

    def recovery(policy: str, who: str) -> int | None:
        return recovery_events(runs[policy]["correct"][who], DRIFT_CHANGE, transition=DRIFT_TRANSITION)[1]

    # The record's prediction, what users read, and the two models that keep the old
    # rule longest without help: each comes back sooner with either policy.
    for who in ("pipeline", "naive_bayes", "tree"):
        none = recovery("none", who)
        for policy in ("reset", "challenger"):
            got = recovery(policy, who)
            assert got is not None and (none is None or got < none), (who, policy, got, none)
    promoted = [a for a in runs["challenger"]["alerts"] if a["type"] == "challenger" and a["action"] == "promoted"]
    assert promoted and all(a["event_id"] > DRIFT_CHANGE for a in promoted), promoted
