"""init_from on the in-memory services (streamwise.testing): a model starts from another
pipeline's snapshot, exactly as that snapshot holds it, only while its own pipeline has no
state; a source that does not fit stops the start in one line."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from streamwise.core.errors import ConfigError
from streamwise.core.settings import KafkaSettings, Settings, SnapshotSettings
from streamwise.models.state import decode_state, fingerprint

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.processor import PipelineProcessor
from streamwise.replay import iter_events
from streamwise.testing import MemoryBroker, MemoryStateStore, memory_runner

FEATURES = {
    "salary": "float", "commission": "float", "age": "int", "elevel": "int", "car": "int",
    "zipcode": "int", "hvalue": "float", "hyears": "int", "loan": "float",
}
LOGREG = ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]


def _config(name: str, init_from: dict[str, str] | None = None, scope: str = "partition", **changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": name,
        "scope": scope,
        "input": {"topic": f"{name}.events"},
        "output": {"topic": f"{name}.predictions"},
        "schema": {"id": "id", "label": "label", "label_type": "int", "features": dict(FEATURES)},
        "models": [
            {"name": "logreg", "steps": LOGREG, **({"init_from": init_from} if init_from else {})},
            {"name": "tree", "steps": ["tree.HoeffdingTreeClassifier"]},
        ],
    }
    for path, value in changes.items():
        *parents, key = path.split("__")
        target = data
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is None:
            del target[key]
        else:
            target[key] = value
    return parse_pipeline_config(copy.deepcopy(data))


def _settings() -> Settings:
    s = Settings()
    s.kafka = KafkaSettings(poll_timeout_ms=5, max_poll_records=200, commit_interval_ms=0)
    s.snapshot = SnapshotSettings(every_events=10_000, every_seconds=3600)
    return s


def _services(source_events: int = 600, scope: str = "partition") -> tuple[MemoryBroker, MemoryStateStore]:
    """A store holding the snapshots of pipeline "north" (3 partitions, Agrawal seed 1):
    one replica per partition with scope: partition, the learner's one with scope: global."""
    broker, store = MemoryBroker(), MemoryStateStore()
    broker.create_topic("north.events", partitions=3)
    broker.produce_many("north.events", iter_events("synth.Agrawal", {"seed": 1}, limit=source_events))
    memory_runner(_config("north", scope=scope), _settings(), broker, store).run(until_idle_s=0.5)
    return broker, store


def _source_choice(store: MemoryStateStore) -> tuple[int, str]:
    """The partition whose logreg learned the most, and that model's fingerprint: recomputed
    here from the snapshots themselves."""
    best = None
    for p in store.partitions("north"):
        state = decode_state(store.load_latest("north", p).payload)
        model = state["learners"].model("logreg")
        if best is None or model.n_learned > best[0]:
            best = (model.n_learned, p, fingerprint(model.estimator))
    assert best is not None
    return best[1], best[2]


def test_a_model_starts_from_the_sources_snapshot_and_a_restart_restores_its_own(caplog):
    broker, store = _services()
    partition, source_fp = _source_choice(store)
    cfg = _config("south", init_from={"pipeline": "north", "model": "logreg"})
    broker.create_topic("south.events", partitions=1)

    caplog.set_level(logging.INFO, logger="streamwise")
    runner = memory_runner(cfg, _settings(), broker, store)
    runner.run(until_idle_s=0.2)  # nothing to read: the state is the one it started with
    (processor,) = runner.partitions.all_processors().values()
    assert fingerprint(processor.learners.model("logreg").estimator) == source_fp
    assert processor.learners.model("logreg").n_learned == 0  # its counters are this pipeline's
    # The model without init_from starts from zero.
    untrained = PipelineProcessor(_config("south")).learners.model("tree").estimator
    assert fingerprint(processor.learners.model("tree").estimator) == fingerprint(untrained)
    assert any(f"model 'logreg' starts from pipeline 'north' model 'logreg' (partition {partition}," in r.message
               for r in caplog.records)

    # It learns its own stream, is snapshotted, and a restart restores that state.
    broker.produce_many("south.events", iter_events("synth.Agrawal", {"seed": 2}, limit=200))
    memory_runner(cfg, _settings(), broker, store).run(until_idle_s=0.2)
    own = decode_state(store.load_latest("south", 0).payload)["learners"].model("logreg")
    assert own.n_learned == 200 and fingerprint(own.estimator) != source_fp
    restarted = memory_runner(cfg, _settings(), broker, store)
    restarted.run(until_idle_s=0.2)
    (processor,) = restarted.partitions.all_processors().values()
    assert fingerprint(processor.learners.model("logreg").estimator) == fingerprint(own.estimator)


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"models__0__steps": ["preprocessing.StandardScaler", {"linear_model.LogisticRegression": {"l2": 0.1}}]},
         'steps differ: [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}] there, '
         '[{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {"l2": 0.1}}] here'),
        ({"schema__features__car": None}, "features only in 'north': car"),
        ({"schema__features__loan": "int"}, "feature types differ: loan float there, int here"),
        ({"schema__label_type": "bool"}, "label type int there, bool here"),
        ({"features": [{"kind": "standard_scale", "fields": ["loan"]}]}, "cleaners or feature extractors differ"),
    ],
    ids=["steps", "missing feature", "feature type", "label type", "stream steps"],
)
def test_an_incompatible_source_stops_the_start_in_one_line(changes, what):
    broker, store = _services(source_events=150)
    cfg = _config("south", init_from={"pipeline": "north", "model": "logreg"}, **changes)
    broker.create_topic("south.events", partitions=1)
    with pytest.raises(ConfigError) as caught:
        memory_runner(cfg, _settings(), broker, store).run(until_idle_s=0.2)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("models[0].init_from: model 'logreg' cannot start from pipeline 'north' model 'logreg'")
    assert message.endswith(what), message


def test_a_missing_source_or_model_stops_the_start():
    broker, store = _services(source_events=150)
    broker.create_topic("south.events", partitions=1)
    nowhere = _config("south", init_from={"pipeline": "nowhere", "model": "logreg"})
    no_snapshot = r"^models\[0\]\.init_from: .* pipeline 'nowhere': that pipeline has no snapshot"
    with pytest.raises(ConfigError, match=no_snapshot):
        memory_runner(nowhere, _settings(), broker, store).run(until_idle_s=0.2)
    no_model = _config("south", init_from={"pipeline": "north", "model": "forest"})
    with pytest.raises(ConfigError, match=r"its snapshots hold no model 'forest'$"):
        memory_runner(no_model, _settings(), broker, store).run(until_idle_s=0.2)
    with pytest.raises(ConfigError, match="init_from names this pipeline"):
        _config("north", init_from={"pipeline": "north", "model": "logreg"})


def test_the_transfer_example_fits_the_credit_example():
    from pathlib import Path

    from streamwise.pipeline_config import load_pipeline_config
    from streamwise.transfer import pipeline_signature, steps_key

    examples = Path(__file__).resolve().parents[1] / "examples"
    source, target = (load_pipeline_config(examples / f) for f in ("credit_scoring.yaml", "transfer.yaml"))
    assert pipeline_signature(source) == pipeline_signature(target)
    steps = {m.name: steps_key(m.steps) for m in source.models}
    for m in target.models:
        assert m.init_from is not None and m.init_from.pipeline == source.name
        assert steps[m.init_from.model] == steps_key(m.steps)


def test_a_torch_learner_starts_from_the_sources_weights():
    pytest.importorskip("torch")
    torch_steps = [{"streamwise.TorchMiniBatchClassifier": {"hidden_layers": [8], "device": "cpu", "batch_size": 16}}]
    broker, store = MemoryBroker(), MemoryStateStore()
    broker.create_topic("north.events", partitions=1)
    broker.produce_many("north.events", iter_events("synth.Agrawal", {"seed": 1}, limit=200))
    memory_runner(_config("north", models__0__steps=torch_steps), _settings(), broker, store).run(until_idle_s=0.2)
    source = decode_state(store.load_latest("north", 0).payload)["learners"].model("logreg")
    assert source.estimator.n_steps > 0  # it trained: the weights moved

    broker.create_topic("south.events", partitions=1)
    cfg = _config("south", init_from={"pipeline": "north", "model": "logreg"}, models__0__steps=torch_steps)
    runner = memory_runner(cfg, _settings(), broker, store)
    runner.run(until_idle_s=0.2)
    (processor,) = runner.partitions.all_processors().values()
    started = processor.learners.model("logreg").estimator
    assert fingerprint(started) == fingerprint(source.estimator) and started.n_steps == source.estimator.n_steps
    cold = PipelineProcessor(_config("south", models__0__steps=torch_steps)).learners.model("logreg").estimator
    assert fingerprint(cold) != fingerprint(source.estimator)


def test_a_global_scope_source_gives_its_learners_model(caplog):
    """With scope: global, the source's models are in one series, "<name>.learn"."""
    broker, store = _services(source_events=300, scope="global")
    assert store.partitions("north") == [] and store.partitions("north.learn") == [0]
    learned = decode_state(store.load_latest("north.learn", 0).payload)["learners"].model("logreg")
    assert learned.n_learned == 300
    broker.create_topic("south.events", partitions=1)
    cfg = _config("south", init_from={"pipeline": "north", "model": "logreg"})
    runner = memory_runner(cfg, _settings(), broker, store)
    runner.run(until_idle_s=0.2)
    (processor,) = runner.partitions.all_processors().values()
    assert fingerprint(processor.learners.model("logreg").estimator) == fingerprint(learned.estimator)


def test_a_store_that_cannot_be_read_stops_the_start_in_one_line():
    from streamwise.core.errors import ServiceUnavailableError

    broker, store = _services(source_events=150)
    broker.create_topic("south.events", partitions=1)
    store.go_down(30)
    cfg = _config("south", init_from={"pipeline": "north", "model": "logreg"})
    with pytest.raises(ServiceUnavailableError, match=r"^models\[0\]\.init_from: .*: the state store cannot be read"):
        memory_runner(cfg, _settings(), broker, store).run(until_idle_s=0.2)
