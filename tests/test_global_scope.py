"""scope: global on the in-memory harness (streamwise.testing): one learning state learns
from every partition, in the order the partition stage wrote to the learn topic, and that
order is what River's ``progressive_val_score`` is checked against. The real-broker proof
is tests/integration/test_global_scope.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
from streamwise.core.settings import KafkaSettings, Settings, SnapshotSettings
from streamwise.models.state import fingerprint
from support import phishing_pipeline

from streamwise.processor import PipelineProcessor
from streamwise.replay import iter_events
from streamwise.runner import explain_stages
from streamwise.testing import (
    CrashAt,
    Faults,
    MemoryBroker,
    MemoryStateStore,
    SimulatedCrash,
    memory_runner,
    river_on_learn_order,
)

N_EVENTS = 400
IDLE_S = 0.3


def _settings() -> Settings:
    s = Settings()
    s.kafka = KafkaSettings(poll_timeout_ms=5, max_poll_records=25, commit_interval_ms=0, session_timeout_ms=1000,
                            retry_backoff_max_ms=200)
    s.snapshot = SnapshotSettings(every_events=60, every_seconds=3600, restore_retry_max_seconds=0.5)
    return s


def _broker(cfg: Any, partitions: int, labels_delay: int | None = None) -> MemoryBroker:
    """Phishing on ``partitions`` partitions; with ``labels_delay``, labels on their own
    topic, published in River's simulate_qa order (the label of event j - delay just
    before event j), keyed like their events."""
    broker = MemoryBroker()
    broker.create_topic(cfg.input.topic, partitions=partitions)
    events = list(iter_events("Phishing", limit=N_EVENTS))
    if labels_delay is None:
        broker.produce_many(cfg.input.topic, events)
        return broker
    broker.create_topic(cfg.input.labels_topic, partitions=partitions)
    bodies = [json.loads(v) for _, v in events]
    for j, (key, _value) in enumerate(events):
        if j >= labels_delay:
            old = bodies[j - labels_delay]
            broker.produce(cfg.input.labels_topic, json.dumps({"id": old["id"], "label": old["label"]}).encode(),
                           key=events[j - labels_delay][0])
        body = dict(bodies[j])
        body.pop("label")
        broker.produce(cfg.input.topic, json.dumps(body).encode(), key=key)
    for j in range(max(0, N_EVENTS - labels_delay), N_EVENTS):
        old = bodies[j]
        broker.produce(cfg.input.labels_topic, json.dumps({"id": old["id"], "label": old["label"]}).encode(),
                       key=events[j][0])
    return broker


def _predicted_ids(broker: MemoryBroker, topic: str) -> Counter[Any]:
    return Counter(json.loads(r.value)["id"] for r in broker.read(topic))


def _assert_equals_river(cfg: Any, broker: MemoryBroker, processor: PipelineProcessor) -> None:
    river = river_on_learn_order(cfg, broker.read(cfg.learn_topic))
    for m in processor.models:
        assert m.metric.get() == pytest.approx(river[m.name], abs=1e-12), m.name


def test_one_model_learns_from_every_partition_in_the_learn_topic_order():
    cfg = phishing_pipeline("glob")
    broker, store = _broker(cfg, partitions=3), MemoryStateStore()
    runner = memory_runner(cfg, _settings(), broker, store)
    summary = runner.run(until_idle_s=IDLE_S)
    assert runner.global_scope and summary.events_in == N_EVENTS and summary.predictions == N_EVENTS
    assert _predicted_ids(broker, cfg.output.topic) == Counter(range(N_EVENTS))
    # One learner: every model learned from all 400 events of the three partitions.
    (processor,) = runner.partitions.all_processors().values()
    assert {m.name: m.n_learned for m in processor.models} == {m.name: N_EVENTS for m in cfg.models}
    learn = broker.read(cfg.learn_topic)
    assert len(learn) == N_EVENTS and {json.loads(r.value)["src"][1] for r in learn} == {0, 1, 2}
    _assert_equals_river(cfg, broker, processor)
    # Every record names the input position of its event, not the learn topic's.
    sources = {(r["source"]["topic"], r["source"]["partition"]) for r in map(json.loads, (
        x.value for x in broker.read(cfg.output.topic)))}
    assert sources == {(cfg.input.topic, p) for p in range(3)}
    # The learner's state is snapshotted under its own name, the partition stage's per partition.
    assert store.partitions(f"{cfg.name}.learn") == [0]
    assert store.partitions(f"{cfg.name}.partition") == [0, 1, 2]


def test_one_partition_runs_one_stage_and_creates_nothing_more():
    cfg = phishing_pipeline("single")
    broker = _broker(cfg, partitions=1)
    runner = memory_runner(cfg, _settings(), broker, MemoryStateStore())
    runner.run(until_idle_s=IDLE_S)
    assert not runner.global_scope and cfg.learn_topic not in broker.topics


def test_delayed_labels_go_through_the_learn_topic_and_equal_river_with_that_order():
    cfg = phishing_pipeline("delayed", scope="global")
    cfg.input.labels_topic = "delayed.labels"
    cfg.event_schema.label = None
    broker = _broker(cfg, partitions=3, labels_delay=50)
    runner = memory_runner(cfg, _settings(), broker, MemoryStateStore())
    runner.run(until_idle_s=IDLE_S)
    assert _predicted_ids(broker, cfg.output.topic) == Counter(range(N_EVENTS))
    (processor,) = runner.partitions.all_processors().values()
    assert {m.n_learned for m in processor.models} == {N_EVENTS}
    _assert_equals_river(cfg, broker, processor)


def test_the_worker_holding_the_learner_crashes_and_the_other_takes_it_over():
    cfg = phishing_pipeline("takeover")
    broker, store = _broker(cfg, partitions=3), MemoryStateStore()
    settings = _settings()
    crash = Faults()
    a = memory_runner(cfg, settings, broker, store, crash, worker_index=0)
    b = memory_runner(cfg, settings, broker, store, Faults(), worker_index=1)
    errors: dict[str, BaseException] = {}

    def run(name: str, runner: Any) -> None:
        try:
            runner.run(until_idle_s=1.0)
        except BaseException as e:  # noqa: BLE001 - checked below
            errors[name] = e

    first = threading.Thread(target=run, args=("a", a))
    first.start()
    deadline = time.monotonic() + 20
    while (a.learner_counts.predictions if a.learner_counts else 0) < 100:
        assert time.monotonic() < deadline and first.is_alive(), "a's learner never predicted 100 events"
        time.sleep(0.002)
    # kill -9 of a, at its next commit (either stage's): every later call of a raises.
    crash.markers.append(CrashAt("commit_transaction", n=crash.calls["commit_transaction"] + 1))
    second = threading.Thread(target=run, args=("b", b))
    second.start()
    first.join(timeout=60)
    # a died with transactions open on both stages; Kafka aborts them once their timeout
    # passes, and until then b cannot read past them.
    time.sleep(0.2)
    assert broker.time_out_transactions(a.worker_id)
    second.join(timeout=60)
    assert not first.is_alive() and not second.is_alive()
    assert isinstance(errors.pop("a"), SimulatedCrash) and errors == {}
    assert crash.fired, "the crash never happened"
    assert a.partitions.all_processors(), "a never held the learner"
    # Every id exactly once, though the learner moved mid-stream.
    assert _predicted_ids(broker, cfg.output.topic) == Counter(range(N_EVENTS))
    (processor,) = b.partitions.all_processors().values()
    _assert_equals_river(cfg, broker, processor)
    # The learner b ended with is the one an uncrashed learner builds from the same order.
    uncrashed = PipelineProcessor(cfg, stage="learn")
    uncrashed.process(broker.read(cfg.learn_topic))
    assert fingerprint(processor.snapshot_state()) == fingerprint(uncrashed.snapshot_state())


def test_explain_says_which_steps_run_where():
    cfg = phishing_pipeline("explain")
    text = explain_stages(cfg)
    assert "explain.learn" in text and "models: " + " ".join(m.name for m in cfg.models) in text


@pytest.mark.parametrize("labels_topic", [None, "explain.labels"])
def test_run_explain_says_when_the_learn_topic_is_used(tmp_path, labels_topic):
    # It said "one input partition and no labels topic" of every global pipeline, even
    # above the two stages it then listed.
    import yaml
    from streamwise.cli import app
    from typer.testing import CliRunner

    cfg = phishing_pipeline("explain")
    cfg.input.labels_topic = labels_topic
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    result = CliRunner().invoke(app, ["run", "-c", str(path), "--explain"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    if labels_topic:
        assert first == "scope: global: two stages through the learn topic (a labels topic always goes through it)"
    else:
        assert "more than one partition" in first and "single stage" in first
    assert "explain.learn" in result.output


@pytest.mark.parametrize("labels_delay", [None, 50])
def test_the_learning_report_follows_the_learn_topic_order(labels_delay):
    from streamwise.report import analyse

    cfg = phishing_pipeline(f"report{labels_delay}")
    if labels_delay is not None:
        cfg.input.labels_topic = f"report{labels_delay}.labels"
        cfg.event_schema.label = None
    broker = _broker(cfg, partitions=3, labels_delay=labels_delay)
    runner = memory_runner(cfg, _settings(), broker, MemoryStateStore())
    runner.run(until_idle_s=IDLE_S)
    (processor,) = runner.partitions.all_processors().values()
    a = analyse(cfg, broker.read(cfg.output.topic), broker.read(cfg.input.topic),
                broker.read(cfg.input.labels_topic) if labels_delay else (),
                broker.read(cfg.alerts_topic), (), learn=broker.read(cfg.learn_topic))
    # One learner: one curve per model, on the learner's axis, ending at the service's figure.
    assert sorted((c.partition, c.model) for c in a.curves) == sorted((0, m.name) for m in cfg.models)
    for c in a.curves:
        model = next(m for m in processor.models if m.name == c.model)
        assert c.labelled == N_EVENTS
        assert c.final["cumulative"][cfg.metric] == pytest.approx(model.metric.get(), abs=1e-12)
