from __future__ import annotations

import os
import re
import uuid

import pytest

from streamwise.core.settings import KafkaSettings, Settings


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """The real Kafka, Redis and Prometheus from dev/up: one set per test session."""
    from streamwise.devservices import ensure_dev_services

    return ensure_dev_services()


KAFKA_CLIENTS = ["kafka-python", "confluent"]


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test that talks to Kafka runs once per client library (ids ``kafka-python``
    and ``confluent``). The environment carries the choice too, so a ``streamwise``
    subprocess a test starts uses the same client."""
    monkeypatch.setenv("STREAMWISE_KAFKA__CLIENT", request.param)
    return request.param


@pytest.fixture
def bootstrap(services: dict[str, str], kafka_client: str) -> str:
    return services["STREAMWISE_KAFKA__BOOTSTRAP_SERVERS"]


@pytest.fixture
def settings(bootstrap: str, kafka_client: str) -> Settings:
    s = Settings()
    s.kafka = KafkaSettings(bootstrap_servers=bootstrap, poll_timeout_ms=200, client=kafka_client)
    return s


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A prefix for this test's topics and consumer groups, fresh on every run."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-")
    return f"t-{name}-{uuid.uuid4().hex[:6]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests under tests/integration talk to real services.
    for item in items:
        if f"{os.sep}integration{os.sep}" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
