"""init_from on the real broker and Redis: the signed snapshot a source pipeline wrote
starts another pipeline's model, and a source that does not fit stops ``streamwise run``
in one line."""

from __future__ import annotations

import yaml
from streamwise.connectors.redis_state import open_state_store
from streamwise.models.state import decode_state, fingerprint
from support import produce
from typer.testing import CliRunner

from streamwise.cli import app
from streamwise.pipeline_config import parse_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner

FEATURES = {"0": "float", "1": "float", "2": "float"}


def _data(name: str, steps: list, init_from: str | None = None) -> dict:
    return {
        "name": name,
        "input": {"topic": f"{name}.events"},
        "output": {"topic": f"{name}.predictions"},
        "schema": {"id": "id", "label": "label", "label_type": "bool", "features": FEATURES},
        "models": [{"name": "lr", "steps": steps,
                    **({"init_from": {"pipeline": init_from, "model": "lr"}} if init_from else {})}],
    }


def test_init_from_a_snapshot_in_redis_and_a_one_line_refusal(settings, bootstrap, unique, tmp_path):
    steps = ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]
    source = parse_pipeline_config(_data(f"{unique}-src", steps))
    produce(bootstrap, source.input.topic, iter_events("synth.SEA", {"seed": 3}, limit=400))
    Runner(source, settings).run(until_idle_s=0.5)
    store = open_state_store(settings.redis, settings.snapshot)
    assert store is not None
    (partition,) = store.partitions(source.name)
    snap = store.load_latest(source.name, partition)
    model = decode_state(snap.payload)["learners"].model("lr")
    assert model.n_learned == 400 and snap.info.meta["signature"]["features"] == FEATURES

    target = parse_pipeline_config(_data(f"{unique}-dst", steps, init_from=source.name))
    runner = Runner(target, settings)
    runner.run(until_idle_s=0.5)  # an empty topic: the state is the one it started with
    (processor,) = runner.partitions.all_processors().values()
    assert fingerprint(processor.learners.model("lr").estimator) == fingerprint(model.estimator)
    store.close()

    wrong = _data(f"{unique}-bad", ["linear_model.LogisticRegression"], init_from=source.name)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(wrong))
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--until-idle", "0.5"])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert f"model 'lr' cannot start from pipeline '{source.name}' model 'lr' (partition 0): steps differ" in lines[0]
