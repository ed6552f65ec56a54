"""The Grafana boards: checked-in JSON matches the code, loads back into the pinned SDK's
models, and queries only metrics the service exports."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from typer.testing import CliRunner

from streamwise import dashboards
from streamwise.cli import app
from streamwise.connectors.prometheus import PrometheusSensor

REPO = Path(__file__).resolve().parents[1]


def _board(name: str) -> dict:
    return json.loads((dashboards.DASHBOARD_DIR / f"{name}.json").read_text())


def test_checked_in_boards_match_the_code():
    # When this fails: run `streamwise dashboards render` and commit deploy/grafana/dashboards.
    assert dashboards.stale() == []
    result = CliRunner().invoke(app, ["dashboards", "render", "--check"])
    assert result.exit_code == 0, result.output


def test_a_stale_board_is_caught(tmp_path):
    dashboards.render(tmp_path)
    board = json.loads((tmp_path / "models.json").read_text())
    board["panels"][0]["title"] = "edited by hand"
    (tmp_path / "models.json").write_text(json.dumps(board))
    assert dashboards.stale(tmp_path) == ["models"]
    result = CliRunner().invoke(app, ["dashboards", "render", "--check", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "models" in result.output


@pytest.mark.parametrize("name", list(dashboards.BOARDS))
def test_board_loads_back_into_the_sdk_models_unchanged(name):
    path = dashboards.DASHBOARD_DIR / f"{name}.json"
    model = dashboards.load(path)
    assert type(model).__module__ == "grafana_foundation_sdk.models.dashboard"
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == json.loads(path.read_text())
    assert model.uid == f"streamwise-{name}" and model.panels


def test_the_pinned_sdk_build_is_installed():
    assert metadata.version("grafana-foundation-sdk") == dashboards.SDK_BUILD
    assert dashboards.SDK_BUILD.endswith("!" + dashboards.GRAFANA_VERSION)


def test_compose_runs_the_grafana_the_sdk_targets():
    compose = (REPO / "docker-compose.yml").read_text()
    assert f"grafana/grafana:{dashboards.GRAFANA_VERSION}" in compose


def test_every_panel_queries_the_provisioned_datasource_and_known_metrics():
    exported = set(PrometheusSensor("p", ["m"], "t").registry._names_to_collectors) | {"streamwise_snapshot_age_seconds"}
    provisioning = (REPO / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    assert f"uid: {dashboards.DATASOURCE_UID}" in provisioning
    n = 0
    for name in dashboards.BOARDS:
        board = _board(name)
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == dashboards.DATASOURCE_UID
            if panel["type"] == "alertlist":
                # No query: it lists the rules of the data source it names, for the pipelines on show.
                assert panel["options"]["datasource"] == dashboards.DATASOURCE_NAME
                assert f"name: {dashboards.DATASOURCE_NAME}" in provisioning and "manageAlerts: true" in provisioning
                assert '{pipeline=~"$pipeline"}' in panel["options"]["alertInstanceLabelFilter"]
                continue
            assert panel.get("targets"), f"{name}/{panel['title']}: no query"
        for title, expr in dashboards.panel_queries(board):
            used = set(re.findall(r"streamwise_[a-z_]+", expr))
            assert used and used <= exported, f"{name}/{title}: unknown {used - exported}"
            assert '{pipeline=~"$pipeline"' in expr, f"{name}/{title}: ignores the pipeline variable"
            n += 1
    assert n >= 25


def test_each_board_shows_what_the_issue_asks_for():
    def exprs(name: str) -> str:
        return " ".join(e for _, e in dashboards.panel_queries(_board(name)))

    overview = exprs("overview")
    for needed in ("streamwise_events_consumed_total", "histogram_quantile(0.5", "histogram_quantile(0.99",
                   "streamwise_consumer_lag_records", "streamwise_events_dead_lettered_total", "streamwise_snapshot_age_seconds"):
        assert needed in overview
    assert "ALERTS{" in overview and any(p["type"] == "alertlist" for p in _board("overview")["panels"])
    assert "ALERTS{" in json.dumps(_board("overview")["annotations"])
    models = exprs("models")
    assert "streamwise_model_metric" in models and "streamwise_model_champion" in models
    assert "drift" in json.dumps(_board("models")["annotations"]).lower()
    data = exprs("data")
    assert "streamwise_cleaner_events_total" in data and "imputed|clipped" in data and "deduplicated|late" in data


def test_docker_compose_accepts_the_stack_and_every_service_waits_for_healthy_ones():
    import shutil
    import subprocess

    import yaml

    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    check = subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    resolved = yaml.safe_load(subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True, timeout=60, check=True
    ).stdout)
    services = resolved["services"]
    assert set(services) == {"kafka", "redis", "streamwise", "producer", "prometheus", "grafana"}
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        for dep, how in svc.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} → {dep}: {how}"
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    assert services["streamwise"]["environment"]["STREAMWISE_METRICS__PORT"] == "9108"
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["streamwise:9108"]
    # The alerting rules are mounted beside the config that loads them.
    assert prom["rule_files"] == ["alerts.yml"] and (REPO / "deploy/prometheus/alerts.yml").is_file()
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in services["prometheus"]["volumes"]]
    assert any(m.startswith(str(REPO / "deploy/prometheus") + ":/etc/prometheus") for m in mounts), mounts


@pytest.mark.parametrize("check", [False, True], ids=["render", "check"])
def test_render_into_a_file_names_out_in_one_error(tmp_path, check):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["dashboards", "render", "--out", str(a_file), *(["--check"] if check else [])]
    )
    assert result.exit_code == 2, result.output
    assert f"Invalid value for --out: {a_file} is a file, not a directory" in result.output
    assert "Traceback" not in result.output


def test_render_into_a_directory_that_cannot_be_made_says_so_in_one_line(tmp_path):
    under_a_file = tmp_path / "a-file" / "boards"
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(app, ["dashboards", "render", "--out", str(under_a_file)])
    assert result.exit_code == 2, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"streamwise: cannot write {under_a_file}: ")
