"""`streamwise snapshots list|show|rollback` against the snapshots a real run left in Redis."""

from __future__ import annotations

import json
import subprocess
import sys

from streamwise.replay import iter_events
from streamwise.runner import Runner
from support import phishing_pipeline, produce


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamwise", "snapshots", *args], capture_output=True, text=True, timeout=60)


def test_list_show_and_rollback(settings, bootstrap, unique):
    cfg = phishing_pipeline(unique)
    produce(bootstrap, cfg.input.topic, iter_events("Phishing"))
    settings.snapshot.every_events = 400
    settings.kafka.max_poll_records = 200
    summary = Runner(cfg, settings).run(until_idle_s=1.0)

    listed = _cli("list", "--pipeline", cfg.name)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == settings.snapshot.keep and all(line.startswith("partition 0") for line in lines)
    epochs = [int(line.split("epoch")[1].split()[0]) for line in lines]
    assert epochs == sorted(epochs, reverse=True) and f"{cfg.input.topic}:0=1250" in lines[0]

    shown = _cli("show", "--pipeline", cfg.name, "--partition", "0")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["signature"] == "valid" and info["epoch"] == epochs[0]
    assert info["models"]["logreg"]["value"] == summary.metrics["logreg"]["value"]
    assert info["models"]["logreg"]["learned"] == 1250

    rolled = _cli("rollback", "--pipeline", cfg.name, "--partition", "0", "--epoch", str(epochs[1]))
    assert rolled.returncode == 0, rolled.stderr
    after = _cli("list", "--pipeline", cfg.name).stdout.strip().splitlines()
    assert f"epoch {epochs[1]:>5}" in after[0] and len(after) == len(lines) - 1

    missing = _cli("rollback", "--pipeline", cfg.name, "--partition", "0", "--epoch", "99999")
    assert missing.returncode == 2 and "no kept snapshot with epoch 99999" in missing.stderr
