"""The service on secured services, as a Confluent Cloud, MSK or Aiven user runs it:
Kafka over SASL_SSL (SCRAM-SHA-512) and over mutual TLS, Redis over TLS with an ACL
user, /metrics over HTTPS with basic auth scraped by a real Prometheus. The services
come from ``dev/up-secure``, started once per test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from river import datasets
from support import consume, phishing_pipeline, produce, reference_predictions, values

from streamwise.replay import iter_events

REPO = Path(__file__).resolve().parents[2]
N_PHISHING = 1250


@pytest.fixture(scope="session")
def secure() -> dict[str, str]:
    """dev/up-secure's variables; not put into os.environ, so the other tests keep
    their plaintext services."""
    proc = subprocess.run([str(REPO / "dev" / "up-secure")], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    env = {}
    for line in proc.stdout.splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        env[k] = v
    return env


def _listener_env(secure: dict[str, str], listener: str) -> dict[str, str]:
    """The STREAMWISE_ variables for one listener, Redis over TLS included."""
    env = {k: v for k, v in secure.items() if not k.startswith("STREAMWISE_DEV_")}
    if listener == "mtls":
        for k in ("SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD"):
            del env[f"STREAMWISE_KAFKA__{k}"]
        certs = secure["STREAMWISE_DEV_SECURE_CERTS"]
        env.update(
            STREAMWISE_KAFKA__BOOTSTRAP_SERVERS=secure["STREAMWISE_DEV_SECURE_MTLS_SERVERS"],
            STREAMWISE_KAFKA__SECURITY_PROTOCOL="SSL",
            STREAMWISE_KAFKA__SSL_CERT_FILE=f"{certs}/client.pem",
            STREAMWISE_KAFKA__SSL_KEY_FILE=f"{certs}/client.key",
        )
    return env


def _streamwise(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Only this test's STREAMWISE_ variables: none of the plaintext services' leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWISE_")}
    return subprocess.run(
        [sys.executable, "-m", "streamwise", *args], env={**base, **env}, capture_output=True, text=True,
        timeout=timeout,
    )


def _pipeline_file(tmp_path: Path, cfg: Any) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(by_alias=True, exclude_none=True), sort_keys=False))
    return path


@pytest.mark.parametrize("listener", ["sasl_ssl", "mtls"])
def test_run_on_a_secured_cluster_is_exactly_once_with_river_parity(
    secure, listener, kafka_client, unique, tmp_path
):
    """1,250 Phishing events in two halves (the second run restores the first's
    snapshot from Redis over TLS): one prediction per event, each what River's
    test-then-train loop predicts."""
    plain = secure["STREAMWISE_DEV_SECURE_PLAINTEXT_SERVERS"]
    cfg = phishing_pipeline(unique)
    path = _pipeline_file(tmp_path, cfg)
    env = {**_listener_env(secure, listener), "STREAMWISE_KAFKA__CLIENT": kafka_client}
    events = list(iter_events("Phishing"))

    produce(plain, cfg.input.topic, events[:1000])
    first = _streamwise(["run", "-c", str(path), "--until-idle", "1"], env)
    assert first.returncode == 0, first.stderr
    assert "events in: 1000" in first.stdout

    listed = _streamwise(["snapshots", "list", "--pipeline", cfg.name], env, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert f"{cfg.input.topic}:0=1000" in listed.stdout

    produce(plain, cfg.input.topic, events[1000:])
    second = _streamwise(["run", "-c", str(path), "--until-idle", "1"], env)
    assert second.returncode == 0, second.stderr
    assert "events in: 250" in second.stdout

    out = sorted(values(consume(plain, cfg.output.topic, N_PHISHING)), key=lambda r: r["id"])
    assert [r["id"] for r in out] == list(range(N_PHISHING))
    ref = reference_predictions(cfg, datasets.Phishing())
    for spec in cfg.models:
        # The second half is right only if the models came back from the snapshot.
        assert [r["models"][spec.name]["prediction"] for r in out] == ref["predictions"][spec.name]


def _wrong_ca(tmp_path: Path) -> Path:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=another CA",
         "-keyout", str(tmp_path / "other.key"), "-out", str(tmp_path / "other.pem")],
        check=True, capture_output=True,
    )
    return tmp_path / "other.pem"


@pytest.mark.parametrize("fault", ["wrong password", "wrong CA", "no client certificate"])
def test_a_refused_connection_is_one_line_within_10_s_without_the_secret(
    secure, fault, kafka_client, unique, tmp_path
):
    cfg = phishing_pipeline(unique)
    path = _pipeline_file(tmp_path, cfg)
    env = {**_listener_env(secure, "mtls" if fault == "no client certificate" else "sasl_ssl"),
           "STREAMWISE_KAFKA__CLIENT": kafka_client}
    wrong = f"not-{unique}"
    if fault == "wrong password":
        env["STREAMWISE_KAFKA__SASL_PASSWORD"] = wrong
    elif fault == "wrong CA":
        env["STREAMWISE_KAFKA__SSL_CA_FILE"] = str(_wrong_ca(tmp_path))
    else:
        del env["STREAMWISE_KAFKA__SSL_CERT_FILE"], env["STREAMWISE_KAFKA__SSL_KEY_FILE"]

    started = time.monotonic()
    proc = _streamwise(["run", "-c", str(path)], env, timeout=60)
    took = time.monotonic() - started

    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert took < 10.0, f"{took:.1f} s"
    expected = {"wrong password": "SASL authentication failed", "wrong CA": "could not be verified",
                "no client certificate": "requires a client certificate"}[fault]
    assert expected in lines[0]
    for secret in (wrong, secure["STREAMWISE_KAFKA__SASL_PASSWORD"], secure["STREAMWISE_REDIS__PASSWORD"]):
        assert secret not in proc.stderr + proc.stdout


def test_a_wrong_redis_password_is_one_line(secure, unique, tmp_path):
    env = {**_listener_env(secure, "sasl_ssl"), "STREAMWISE_REDIS__PASSWORD": f"not-{unique}"}
    proc = _streamwise(["snapshots", "list", "--pipeline", unique], env, timeout=30)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "authentication failed for user 'streamwise'" in lines[0]
    assert f"not-{unique}" not in proc.stderr


def test_a_misspelt_setting_is_refused_at_start(secure, tmp_path):
    env = _listener_env(secure, "sasl_ssl")
    env["STREAMWISE_KAFKA__SASL_MECHANSIM"] = env.pop("STREAMWISE_KAFKA__SASL_MECHANISM")
    proc = _streamwise(["run", "-c", str(REPO / "examples" / "phishing.yaml")], env, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "streamwise: STREAMWISE_KAFKA__SASL_MECHANSIM is not a setting"
        " (did you mean STREAMWISE_KAFKA__SASL_MECHANISM?)"
    )


def test_create_topics_false_names_the_missing_topic(secure, kafka_client, unique, tmp_path):
    cfg = phishing_pipeline(unique)
    env = {**_listener_env(secure, "sasl_ssl"), "STREAMWISE_KAFKA__CLIENT": kafka_client,
           "STREAMWISE_KAFKA__CREATE_TOPICS": "false"}
    proc = _streamwise(["run", "-c", str(_pipeline_file(tmp_path, cfg))], env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"streamwise: kafka.create_topics is false and topic {cfg.input.topic} does not exist: create it"
        " (or set STREAMWISE_KAFKA__CREATE_TOPICS=true)"
    )


def test_replication_factor_is_what_the_topic_gets(secure, kafka_client, unique):
    """One broker can hold one replica: 1 is honoured (described), 3 is refused by the
    broker, which shows the setting reaches it instead of a hard-coded 1."""
    from kafka import KafkaAdminClient
    from streamwise.connectors import make_admin
    from streamwise.core.errors import StreamwiseError
    from streamwise.core.settings import KafkaSettings

    env = _listener_env(secure, "sasl_ssl")
    base = {
        k.removeprefix("STREAMWISE_KAFKA__").lower(): v for k, v in env.items() if k.startswith("STREAMWISE_KAFKA__")
    }
    admin = make_admin(KafkaSettings(**base, client=kafka_client, replication_factor=1))
    admin.ensure_topics([f"{unique}.one"], partitions=2)
    with pytest.raises(StreamwiseError, match="(?i)replication.?factor"):
        make_admin(KafkaSettings(**base, client=kafka_client, replication_factor=3)).ensure_topics([f"{unique}.three"])
    admin.close()

    describe = KafkaAdminClient(bootstrap_servers=secure["STREAMWISE_DEV_SECURE_PLAINTEXT_SERVERS"])
    (topic,) = describe.describe_topics([f"{unique}.one"])
    describe.close()
    assert len(topic["partitions"]) == 2
    assert all(p["replica_nodes"] == [1] for p in topic["partitions"])


def _prometheus_query(url: str, query: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.request.quote(query)}", timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_metrics_over_https_with_basic_auth_are_scraped_by_prometheus(secure, unique, monkeypatch):
    """The runner's /metrics with dev/up-secure's certificate and credentials; the
    Prometheus it starts (scheme https, tls_config, basic_auth) reports the target up and
    has its series. Without the password, or over plain HTTP, nothing is served."""
    import base64
    import socket
    import ssl
    import threading
    import urllib.error

    from streamwise.core.settings import Settings

    from streamwise.runner import Runner

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {**_listener_env(secure, "sasl_ssl"), "STREAMWISE_METRICS__PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    cfg = phishing_pipeline(unique)
    produce(secure["STREAMWISE_DEV_SECURE_PLAINTEXT_SERVERS"], cfg.input.topic, iter_events("Phishing", limit=100))
    runner = Runner(cfg, Settings())
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    targets = Path(secure["STREAMWISE_DEV_SECURE_PROMETHEUS_TARGETS"]) / f"{unique}.json"
    try:
        targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"test": unique}}]))
        prom = secure["STREAMWISE_DEV_SECURE_PROMETHEUS_URL"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = _prometheus_query(prom, f'up{{test="{unique}"}}')
            series = _prometheus_query(prom, f'sum(streamwise_events_consumed_total{{test="{unique}"}})')
            if up and up[0]["value"][1] == "1" and series and float(series[0]["value"][1]) == 100:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"Prometheus did not scrape 100 events: up={up} series={series}")

        url = f"https://127.0.0.1:{port}/metrics"
        context = ssl.create_default_context(cafile=f"{secure['STREAMWISE_DEV_SECURE_CERTS']}/ca.pem")
        for user, password in [(None, None), ("prometheus", "wrong")]:
            request = urllib.request.Request(url)
            if user:
                request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5, context=context)
            assert refused.value.code == 401
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        # `streamwise top` reads it with the same settings.
        top = _streamwise(["top", "--once", "--interval", "0.5", "--url", url], _listener_env(secure, "sasl_ssl"), 60)
        assert top.returncode == 0, top.stderr
        assert url in top.stdout
    finally:
        targets.unlink(missing_ok=True)
        runner.stop()
        thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def token_endpoint():
    """An OAuth 2.0 token endpoint (client-credentials grant) issuing the unsigned JWTs
    that the broker's OAUTHBEARER listener accepts in dev/up-secure. Yields its URL and
    the form of every request it answered."""
    import base64
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, HTTPServer

    requests: list[dict[str, list[str]]] = []

    def part(claims: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            # RFC 6749 lets a client send its credentials in the form (kafka-python's
            # provider) or as HTTP basic auth (librdkafka).
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                form.update(client_id=[client_id], client_secret=[secret])
            requests.append(form)
            now = int(time.time())
            claims = {"sub": form["client_id"][0], "iat": now, "exp": now + 600}
            token = part({"alg": "none"}) + "." + part(claims) + "."
            body = json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/token", requests
    server.shutdown()


def test_oauthbearer_with_a_token_endpoint_runs_the_pipeline(secure, kafka_client, unique, token_endpoint):
    from streamwise.core.settings import KafkaSettings, Settings

    from streamwise.runner import Runner

    url, requests = token_endpoint
    plain = secure["STREAMWISE_DEV_SECURE_PLAINTEXT_SERVERS"]
    cfg = phishing_pipeline(unique)
    produce(plain, cfg.input.topic, iter_events("Phishing", limit=200))
    settings = Settings(snapshot={"enabled": False})
    settings.kafka = KafkaSettings(
        bootstrap_servers=secure["STREAMWISE_DEV_SECURE_OAUTH_SERVERS"], client=kafka_client, poll_timeout_ms=200,
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_endpoint=url,
        sasl_oauth_client_id="streamwise", sasl_oauth_client_secret=f"secret-{unique}",
        ssl_ca_file=f"{secure['STREAMWISE_DEV_SECURE_CERTS']}/ca.pem",
    )
    summary = Runner(cfg, settings).run(until_idle_s=1.0)
    assert summary.events_in == 200
    out = values(consume(plain, cfg.output.topic, 200))
    assert sorted(r["id"] for r in out) == list(range(200))
    assert requests and all(
        r["grant_type"] == ["client_credentials"] and r["client_secret"] == [f"secret-{unique}"] for r in requests
    )


@pytest.fixture
def sentinel(secure, tmp_path):
    """A Redis Sentinel, over TLS, watching dev/up-secure's Redis as master "streamwise"
    with its ACL user: what a user whose Redis fails over points streamwise at."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    certs = secure["STREAMWISE_DEV_SECURE_CERTS"]
    redis_port = secure["STREAMWISE_REDIS__URL"].rsplit(":", 1)[1].split("/")[0]
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport 0\ntls-port {port}\ntls-cert-file {certs}/server.pem\n"
        f"tls-key-file {certs}/server.key\ntls-ca-cert-file {certs}/ca.pem\ntls-auth-clients no\n"
        f"tls-replication yes\ndir {tmp_path}\n"
        f"sentinel monitor streamwise 127.0.0.1 {redis_port} 1\n"
        f"sentinel auth-user streamwise streamwise\n"
        f"sentinel auth-pass streamwise {secure['STREAMWISE_REDIS__PASSWORD']}\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "sentinel did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_snapshots_through_sentinel_over_tls_with_an_acl_user(secure, sentinel, unique):
    from streamwise.connectors.redis_state import open_state_store
    from streamwise.core.settings import RedisSettings, SnapshotSettings

    redis = RedisSettings(
        url="rediss:///0", username="streamwise", password=secure["STREAMWISE_REDIS__PASSWORD"],
        ssl_ca_file=secure["STREAMWISE_REDIS__SSL_CA_FILE"], sentinels=[sentinel], sentinel_master="streamwise",
    )
    store = open_state_store(redis, SnapshotSettings(signing_key="k" * 32))
    assert store is not None
    info = store.save(unique, 0, b"learned state", {(f"{unique}.events", 0): 42}, owner=None)
    latest = store.load_latest(unique, 0)
    assert latest is not None and latest.payload == b"learned state" and latest.info.epoch == info.epoch
    assert store.partitions(unique) == [0]
    assert store.where == "sentinel master streamwise/0"
    store.close()
