"""`streamwise dashboards push` and `dashboards live` against a local HTTP server that
answers as Grafana's API does and records every call (no Grafana server runs here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from streamwise import dashboards
from streamwise.cli import app
from streamwise.connectors.prometheus import MetricsServer, PrometheusSensor

TOKEN = "glsa_test_token_123"


class FakeGrafana(ThreadingHTTPServer):
    """Grafana's API shape for the calls we make: folders, dashboards/db, live/push."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[dict[str, Any]] = []
        self.folders: set[str] = set()
        self.versions: dict[str, int] = {}


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": raw}
        self.server.calls.append(call)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._answer(401, {"message": "invalid API key"})
        if self.command == "GET" and self.path.startswith("/api/folders/"):
            uid = self.path.rsplit("/", 1)[1]
            if uid in self.server.folders:
                return self._answer(200, {"uid": uid, "title": uid})
            return self._answer(404, {"message": "folder not found"})
        if self.command == "POST" and self.path == "/api/folders":
            body = json.loads(raw)
            self.server.folders.add(body["uid"])
            return self._answer(200, {"uid": body["uid"], "title": body["title"], "id": 7})
        if self.command == "POST" and self.path == "/api/dashboards/db":
            assert self.headers["Content-Type"].startswith("application/json")
            body = json.loads(raw)
            uid = body["dashboard"]["uid"]
            if body.get("folderUid") not in self.server.folders:
                return self._answer(400, {"message": "folder not found"})
            self.server.versions[uid] = self.server.versions.get(uid, 0) + 1
            return self._answer(200, {"id": 1, "uid": uid, "url": f"/d/{uid}/x", "status": "success",
                                      "version": self.server.versions[uid], "slug": "x"})
        if self.command == "POST" and self.path.startswith("/api/live/push/"):
            return self._answer(200, {})
        return self._answer(404, {"message": "not found"})

    do_GET = do_POST = _handle


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: FakeGrafana) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_push_creates_the_folder_then_uploads_every_board(grafana, monkeypatch):
    monkeypatch.setenv("STREAMWISE_GRAFANA__TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", _url(grafana)])
    assert result.exit_code == 0, result.output

    calls = [(c["method"], c["path"]) for c in grafana.calls]
    assert calls == [("GET", "/api/folders/streamwise"), ("POST", "/api/folders")] + [("POST", "/api/dashboards/db")] * 3
    assert all(c["headers"]["Authorization"] == f"Bearer {TOKEN}" for c in grafana.calls)
    assert json.loads(grafana.calls[1]["body"]) == {"title": "streamwise", "uid": "streamwise"}
    pushed = [json.loads(c["body"]) for c in grafana.calls[2:]]
    for body, name in zip(pushed, dashboards.BOARDS, strict=True):
        assert body["overwrite"] is True and body["folderUid"] == "streamwise" and body["message"]
        assert "id" not in body["dashboard"]  # the uid alone decides which board is replaced
        expected = json.loads((dashboards.DASHBOARD_DIR / f"{name}.json").read_text())
        assert body["dashboard"] == {k: v for k, v in expected.items() if k != "id"}
    assert "overview: success /d/streamwise-overview/x (version 1)" in result.output

    # A second push finds the folder and bumps each board's version.
    grafana.calls.clear()
    result = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", _url(grafana)])
    assert result.exit_code == 0, result.output
    assert [(c["method"], c["path"]) for c in grafana.calls][:2] == [("GET", "/api/folders/streamwise"), ("POST", "/api/dashboards/db")]
    assert "(version 2)" in result.output


def test_push_with_a_wrong_token_fails_in_one_line(grafana, monkeypatch):
    monkeypatch.setenv("STREAMWISE_GRAFANA__TOKEN", "wrong")
    result = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", _url(grafana)])
    assert result.exit_code == 2
    assert result.output.startswith("streamwise: grafana:") and len(result.output.strip().splitlines()) == 1


def test_push_without_a_token_says_which_variable_to_set(grafana, monkeypatch):
    monkeypatch.delenv("STREAMWISE_GRAFANA__TOKEN", raising=False)
    result = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", _url(grafana)])
    assert result.exit_code == 2 and "STREAMWISE_GRAFANA__TOKEN" in result.output
    assert grafana.calls == []


def test_live_push_sends_line_protocol_of_the_metrics(grafana, monkeypatch):
    sensor = PrometheusSensor("fraud", ["logreg"], "fraud.events")
    for _ in range(5):
        sensor.on_event_in("fraud.events", 0)
        sensor.on_prediction(0.02)
    sensor.on_model_metric("logreg", "Accuracy", "cumulative", 0.75, 0)
    sensor.on_champion_change(None, "logreg", 0)
    metrics = MetricsServer(sensor.registry)
    monkeypatch.setenv("STREAMWISE_GRAFANA__TOKEN", TOKEN)
    try:
        result = CliRunner().invoke(app, [
            "dashboards", "live", "--metrics-url", metrics.url, "--grafana-url", _url(grafana),
            "--stream", "streamwise", "--interval", "0.1", "--count", "2",
        ])
    finally:
        metrics.close()
    assert result.exit_code == 0, result.output
    assert [(c["method"], c["path"]) for c in grafana.calls] == [("POST", "/api/live/push/streamwise")] * 2
    call = grafana.calls[-1]
    assert call["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert call["headers"]["Content-Type"] == "text/plain"
    lines = call["body"].decode().splitlines()
    pipeline = next(line for line in lines if line.startswith("streamwise,pipeline=fraud "))
    fields = dict(kv.split("=") for kv in pipeline.split(" ")[1].split(","))
    assert float(fields["events_in"]) == 5.0 and float(fields["predictions"]) == 5.0
    assert float(fields["events_per_s"]) == 0.0  # nothing arrived between the two scrapes
    assert 0.01 < float(fields["latency_p50_s"]) <= 0.025
    model = next(line for line in lines if line.startswith("streamwise_model,"))
    assert model.startswith("streamwise_model,metric=Accuracy,model=logreg[0],pipeline=fraud ")
    assert "cumulative=0.75" in model and "champion=1.0" in model
    assert int(model.rsplit(" ", 1)[1]) > 1_600_000_000 * 10**9  # nanoseconds
