"""Finds the local Kafka, Redis and Prometheus that ``dev/up`` starts, starting them if needed.

Used by ``streamwise demo`` and the test fixtures, so both run on the same real
services a developer gets from ``eval "$(dev/up)"``.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from streamwise.core.errors import ServiceUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_UP = REPO_ROOT / "dev" / "up"
# What dev/up exports; the tests need all of them.
DEV_VARIABLES = (
    "STREAMWISE_KAFKA__BOOTSTRAP_SERVERS",
    "STREAMWISE_REDIS__URL",
    "STREAMWISE_SNAPSHOT__SIGNING_KEY",
    "STREAMWISE_DEV_PROMETHEUS_URL",
    "STREAMWISE_DEV_PROMETHEUS_TARGETS",
)


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def ensure_dev_services() -> dict[str, str]:
    """Runs ``dev/up`` (idempotent) and returns the variables it printed.

    When the environment already has everything dev/up provides (as after
    ``eval "$(dev/up)"``) and the broker answers, it is used as it is and nothing is started.
    """
    current = os.environ.get("STREAMWISE_KAFKA__BOOTSTRAP_SERVERS")
    if current and _reachable(current) and all(os.environ.get(k) for k in DEV_VARIABLES):
        return {k: v for k, v in os.environ.items() if k.startswith("STREAMWISE_")}
    if not DEV_UP.exists():
        raise ServiceUnavailableError(
            "Kafka: STREAMWISE_KAFKA__BOOTSTRAP_SERVERS is not set and dev/up is not here to start one"
        )
    proc = subprocess.run([str(DEV_UP)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceUnavailableError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "dev/up failed")
    env: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            k, _, v = line.partition("=")
            env[k] = v
    os.environ.update(env)
    return env



def kafka_pid() -> int:
    """The process id of the broker dev/up started (fault tests pause and resume it)."""
    run_dir = Path(os.environ.get("STREAMWISE_DEV_RUN_DIR", REPO_ROOT / "dev" / ".run"))
    return int((run_dir / "kafka" / "pid").read_text().strip())
