"""The PyTorch mini-batch learner through the service: learns, snapshots, restores."""

from __future__ import annotations

import collections
import json

from streamwise.models.catalog import ModelSpec
from streamwise.replay import iter_events
from streamwise.runner import Runner
from support import consume, phishing_pipeline, produce

MLP = ModelSpec(
    name="mlp",
    steps=[{"streamwise.TorchMiniBatchClassifier": {"hidden_layers": [16], "batch_size": 16, "lr": 0.01, "seed": 7}}],
)


def test_torch_model_learns_through_the_service_and_survives_a_restart(settings, bootstrap, unique):
    cfg = phishing_pipeline(unique)
    cfg.models = [cfg.models[0], MLP]
    produce(bootstrap, cfg.input.topic, iter_events("Phishing"))
    settings.kafka.max_poll_records = 100

    first = Runner(cfg, settings).run(max_events=600)  # a graceful stop snapshots the state
    assert first.events_in >= 600
    second = Runner(cfg, settings).run(until_idle_s=1.0)  # restores it from Redis

    mlp = second.metrics["mlp"]
    assert mlp["learned"] == 1250, "the restored torch learner continues from the snapshot"
    assert mlp["value"] > 0.8, f"prequential accuracy {mlp['value']:.3f}"
    out = [json.loads(r.value) for r in consume(bootstrap, cfg.output.topic, 1250)]
    assert collections.Counter(r["id"] for r in out) == collections.Counter(range(1250))
    assert all(set(r["models"]) == {"logreg", "mlp"} for r in out)
    assert {r["epoch"] for r in out if r["source"]["offset"] >= first.events_in} != {0}
