"""docker-compose.yml ships no public secret and exposes nothing beyond this host by default."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _resolved(env: dict[str, str] | None = None) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    base = {"PATH": "/usr/bin:/bin:/usr/local/bin"}
    done = subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=True,
    )
    return yaml.safe_load(done.stdout)["services"]


def _host_ip(port: Any) -> str:
    # docker-compose 1.x writes "IP:HOST:CONTAINER/tcp"; Compose v2 a mapping.
    return port["host_ip"] if isinstance(port, dict) else str(port).rsplit(":", 2)[0]


def test_no_public_secret_and_loopback_ports_by_default() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert "demo-only-change-me" not in text and ":-admin}" not in text
    services = _resolved()
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert _host_ip(port) == "127.0.0.1", f"{name} publishes {port} beyond this host"
        env = svc.get("environment") or {}
        assert not env.get("STREAMWISE_SNAPSHOT__SIGNING_KEY"), f"{name}: a signing key in the file"
    assert "--requirepass" in services["redis"]["command"][2]
    assert "redis-cli --no-auth-warning -a" in services["redis"]["healthcheck"]["test"][1]
    assert "redis://:" in services["streamwise"]["command"][2]  # streamwise uses the password
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/var/lib/grafana/admin_password"
    assert not any("lifecycle" in arg for arg in services["prometheus"]["command"])


def test_secrets_given_in_the_environment_are_used_and_ports_can_be_opened_on_purpose() -> None:
    services = _resolved({"STREAMWISE_SNAPSHOT__SIGNING_KEY": "k" * 64, "BIND_ADDRESS": "0.0.0.0"})
    assert services["streamwise"]["environment"]["STREAMWISE_SNAPSHOT__SIGNING_KEY"] == "k" * 64
    assert {_host_ip(p) for svc in services.values() for p in svc.get("ports", [])} == {"0.0.0.0"}


@pytest.mark.parametrize(
    "service,path", [("redis", "/secret/password"), ("grafana", "/var/lib/grafana/admin_password")]
)
def test_generated_secrets_are_random_and_kept(service: str, path: str, tmp_path: Path) -> None:
    """The generating part of each service's start script, run in a scratch folder."""
    svc = _resolved()[service]
    script = (
        (svc.get("entrypoint") or svc["command"])[2].replace("$$", "$").replace(str(Path(path).parent), str(tmp_path))
    )
    script = script.split("exec ")[0]
    env = {"PATH": "/usr/bin:/bin"}
    subprocess.run(["sh", "-c", script], check=True, env=env)
    first = (tmp_path / Path(path).name).read_text()
    subprocess.run(["sh", "-c", script], check=True, env=env)
    assert len(first) >= 48 and (tmp_path / Path(path).name).read_text() == first  # kept across restarts
    (tmp_path / Path(path).name).unlink()
    subprocess.run(["sh", "-c", script], check=True, env=env)
    assert (tmp_path / Path(path).name).read_text() != first  # and not a fixed value
