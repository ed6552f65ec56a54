"""Helpers the monitoring tests share: a free port for a pipeline's /metrics, pointing the
real Prometheus from dev/up at it (file service discovery), and asking that Prometheus.

Like support.py these talk to the real services with plain HTTP, not through
streamwise's own reader, so a test checks streamwise against an independent client.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOGREG = {"name": "logreg", "steps": ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    """Calls ``check`` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def prom_get(base: str, path: str, **params: str) -> Any:
    """``data`` of one Prometheus HTTP API answer, after checking it succeeded."""
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", (url, body)
    return body["data"]


def promql(base: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector ``expr`` evaluates to now."""
    return prom_get(base, "/api/v1/query", query=expr)["result"]  # type: ignore[no-any-return]


def prom_scalar(base: str, expr: str) -> float | None:
    """The value of the first series of ``expr``, None when it has none."""
    result = promql(base, expr)
    return float(result[0]["value"][1]) if result else None


@contextlib.contextmanager
def scraped(services: dict[str, str], name: str, port: int) -> Iterator[str]:
    """Has dev/up's Prometheus scrape ``127.0.0.1:port`` with the label ``test=name`` until
    the block ends; yields Prometheus' base URL once the first scrape succeeded."""
    prom = services["STREAMWISE_DEV_PROMETHEUS_URL"]
    target = Path(services["STREAMWISE_DEV_PROMETHEUS_TARGETS"]) / f"{name}.json"
    # File service discovery: Prometheus picks the file up within its 1 s refresh.
    target.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"test": name}}]))
    try:
        wait_for(lambda: prom_scalar(prom, f'up{{test="{name}"}}') == 1.0, 30, "Prometheus to scrape the service")
        yield prom
    finally:
        target.unlink()


@contextlib.contextmanager
def running_in_thread(runner: Any, **run_kwargs: Any) -> Iterator[threading.Thread]:
    """Runs ``runner.run`` in a daemon thread; stops and joins it when the block ends."""
    thread = threading.Thread(target=runner.run, kwargs=run_kwargs, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        runner.stop()
        thread.join(30)
    assert not thread.is_alive()


def one_feature_pipeline(prefix: str, models: list[dict[str, Any]], **extra: Any) -> Any:
    """A binary classification pipeline on this test's own topics: events ``{"id", "x",
    "label"}`` with one float feature, the given ``models``, and ``extra`` config keys."""
    from streamwise.pipeline_config import parse_pipeline_config

    return parse_pipeline_config({
        "name": prefix,
        "input": {"topic": f"{prefix}.events"},
        "output": {"topic": f"{prefix}.predictions"},
        "schema": {"id": "id", "label": "label", "label_type": "bool", "features": {"x": {"type": "float"}}},
        "task": "classification",
        "metric": "Accuracy",
        "models": models,
        **extra,
    })
