"""Settings refuse what they do not understand, with one line that names the key, and
never show a secret; the connectors turn them into each Kafka client's own settings."""

from __future__ import annotations

import pytest
from streamwise.connectors import kafka_config
from streamwise.core.errors import ConfigError
from streamwise.core.settings import KafkaSettings, Settings, unknown_env

SASL = {
    "STREAMWISE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMWISE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
    "STREAMWISE_KAFKA__SASL_USERNAME": "app",
    "STREAMWISE_KAFKA__SASL_PASSWORD": "pa55-word-never-shown",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    def set_env(values: dict[str, str]) -> None:
        for k, v in values.items():
            monkeypatch.setenv(k, v)

    return set_env


def test_a_misspelt_variable_is_refused_with_the_likely_key(env):
    env({**SASL, "STREAMWISE_KAFKA__SASL_MECHANSIM": "PLAIN"})
    with pytest.raises(ConfigError) as e:
        Settings()
    assert str(e.value) == (
        "STREAMWISE_KAFKA__SASL_MECHANSIM is not a setting (did you mean STREAMWISE_KAFKA__SASL_MECHANISM?)"
    )


def test_an_unknown_section_and_a_key_under_a_plain_value_are_refused():
    assert unknown_env({"STREAMWISE_KAFKAA__CLIENT": "x"}, Settings) == [
        "STREAMWISE_KAFKAA__CLIENT is not a setting (did you mean STREAMWISE_KAFKA__CLIENT?)"
    ]
    assert unknown_env({"STREAMWISE_KAFKA__CLIENT__X": "x"}, Settings) == [
        "STREAMWISE_KAFKA__CLIENT__X is not a setting (did you mean STREAMWISE_KAFKA__CLIENT?)"
    ]


def test_cli_and_dev_variables_and_dict_entries_are_not_settings_errors():
    assert unknown_env(
        {
            "STREAMWISE_PIPELINE": "p.yaml",
            "STREAMWISE_WORKER_INDEX": "1",
            "STREAMWISE_DEV_PROMETHEUS_URL": "http://x",
            "STREAMWISE_KAFKA__EXTRA__FETCH_MIN_BYTES": "1",
            "streamwise_kafka__client": "confluent",  # pydantic-settings reads names case-insensitively
            "OTHER": "x",
        },
        Settings,
    ) == []


def test_a_json_setting_that_does_not_parse_is_one_line(env):
    env({"STREAMWISE_KAFKA__EXTRA": "{fetch.min.bytes: 1"})
    with pytest.raises(ConfigError, match='^error parsing value for field "kafka" from source "EnvSettingsSource"'):
        Settings()


def test_sasl_from_the_environment_reaches_both_clients(env):
    env(SASL)
    s = Settings()
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == "pa55-word-never-shown"
    confluent = kafka_config.confluent_admin(s.kafka)
    assert confluent["security.protocol"] == "SASL_SSL" and confluent["sasl.password"] == "pa55-word-never-shown"
    assert confluent["ssl.endpoint.identification.algorithm"] == "https"
    kp = kafka_config.kafka_python_admin(s.kafka)
    assert kp["sasl_plain_password"] == "pa55-word-never-shown" and kp["ssl_check_hostname"] is True


def test_secrets_never_show_in_repr(env):
    extra = '{"sasl.oauthbearer.client.secret": "x-secret"}'
    env({**SASL, "STREAMWISE_REDIS__PASSWORD": "redis-secret", "STREAMWISE_KAFKA__EXTRA": extra})
    text = repr(Settings()) + str(Settings())
    for secret in ("pa55-word-never-shown", "redis-secret", "x-secret"):
        assert secret not in text


def test_help_does_not_show_a_secret_from_the_environment(env):
    from typer.testing import CliRunner

    from streamwise.cli import app

    env({"STREAMWISE_REDIS__URL": "redis://:hunter2@127.0.0.1:6379/0", **SASL})
    for command in (["run", "--help"], ["snapshots", "list", "--help"], ["--help"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        assert "hunter2" not in result.output and "pa55-word-never-shown" not in result.output


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "kafka.sasl_mechanism: required with security_protocol SASL_SSL"),
        ({"sasl_mechanism": "PLAIN"}, "kafka.sasl_mechanism: PLAIN needs security_protocol SASL_SSL or"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"},
         "kafka.sasl_username, kafka.sasl_password: both required"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "kafka.sasl_oauth_token_endpoint"),
        ({"ssl_ca_file": __file__}, "kafka.ssl_ca_file: set, but security_protocol PLAINTEXT uses no TLS"),
        ({"security_protocol": "SSL", "ssl_cert_file": __file__}, "kafka.ssl_cert_file, kafka.ssl_key_file"),
        ({"security_protocol": "SSL", "ssl_ca_file": "/no/such/ca.pem"}, "kafka.ssl_ca_file: Path does not point"),
        ({"sasl_mechanisms": "PLAIN"}, "kafka.sasl_mechanisms: Extra inputs are not permitted"),
    ],
)
def test_inconsistent_kafka_security_is_one_line_naming_the_key(kafka, message):
    with pytest.raises(ConfigError) as e:
        Settings(kafka=kafka)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_extra_is_checked_against_the_client_and_cannot_override_guarantees():
    kp = KafkaSettings(extra={"fetch_min_bytes": 1024, "compression_type": "gzip"})
    assert kafka_config.kafka_python_consumer(kp, "g")["fetch_min_bytes"] == 1024
    # A producer-only key goes to the producer only: kafka-python's consumer refuses it.
    assert "compression_type" not in kafka_config.kafka_python_consumer(kp, "g")
    assert kafka_config.kafka_python_producer(kp, None)["compression_type"] == "gzip"
    with pytest.raises(ConfigError, match=r"^kafka.extra.fetch.min.bytes: not a kafka-python setting$"):
        kafka_config.kafka_python_consumer(KafkaSettings(extra={"fetch.min.bytes": 1}), "g")
    # A value kafka-python would only trip over at its first poll (struct.error) is refused at start.
    with pytest.raises(ConfigError, match=r"^kafka.extra.fetch_min_bytes: must be an integer, got str 'abc'$"):
        kafka_config.kafka_python_consumer(KafkaSettings(extra={"fetch_min_bytes": "abc"}), "g")
    with pytest.raises(ConfigError, match=r"^kafka.extra.metadata_max_age_ms: must be an integer, got bool True$"):
        kafka_config.kafka_python_producer(KafkaSettings(extra={"metadata_max_age_ms": True}), None)
    assert kafka_config.kafka_python_producer(KafkaSettings(extra={"retries": 3.5}), None)["retries"] == 3.5
    with pytest.raises(ConfigError, match=r"^kafka.extra.isolation_level: set by streamwise itself"):
        kafka_config.kafka_python_consumer(KafkaSettings(extra={"isolation_level": "read_uncommitted"}), "g")
    with pytest.raises(ConfigError, match=r"^kafka.extra.enable.idempotence: set by streamwise itself"):
        kafka_config.confluent_producer(KafkaSettings(client="confluent", extra={"enable.idempotence": False}), None)


def test_librdkafka_refuses_an_unknown_extra_key_by_name():
    from streamwise.connectors.confluent import ConfluentAdmin

    with pytest.raises(ConfigError, match="fetch.mim.bytes"):
        ConfluentAdmin(KafkaSettings(client="confluent", extra={"fetch.mim.bytes": 1}))


def test_msk_iam_is_refused_on_the_confluent_client():
    s = KafkaSettings(client="confluent", security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM")
    with pytest.raises(ConfigError, match="AWS_MSK_IAM works with kafka.client kafka-python only"):
        kafka_config.confluent_admin(s)
    assert kafka_config.kafka_python_admin(s.model_copy(update={"client": "kafka-python"}))["sasl_mechanism"] == (
        "AWS_MSK_IAM"
    )


def test_mtls_files_reach_both_clients():
    s = KafkaSettings(security_protocol="SSL", ssl_ca_file=__file__, ssl_cert_file=__file__, ssl_key_file=__file__,
                      ssl_key_password="k", ssl_check_hostname=False)
    c = kafka_config.confluent_consumer(s, "g")
    assert (c["ssl.ca.location"], c["ssl.certificate.location"], c["ssl.key.location"]) == (__file__,) * 3
    assert c["ssl.key.password"] == "k" and c["ssl.endpoint.identification.algorithm"] == "none"
    k = kafka_config.kafka_python_consumer(s, "g")
    assert (k["ssl_cafile"], k["ssl_certfile"], k["ssl_keyfile"], k["ssl_password"]) == (__file__,) * 3 + ("k",)
    assert k["ssl_check_hostname"] is False


def test_no_failure_message_contains_the_password():
    password = "Zq9-xP-unlikely-7Hk"
    s = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password=password)
    reports = ["SaslAuthenticationFailedError: invalid credentials", "certificate verify failed",
               "alert bad certificate", "socket disconnected", "nothing known"]
    messages = [str(kafka_config.connect_error(s, reports[i:], "timeout")) for i in range(len(reports))]
    assert len(set(messages)) == len(messages)  # each report gives its own explanation
    assert all(password not in m for m in messages)


def test_instance_id_names_the_transactional_and_member_id(env):
    from support import phishing_pipeline

    from streamwise.runner import Runner

    env({"STREAMWISE_INSTANCE_ID": "scorer-0"})
    runner = Runner(phishing_pipeline("p"), Settings(), worker_index=2)
    assert runner.worker_id == "streamwise-p.scorer-0.2"


def test_a_poll_longer_than_a_stop_may_wait_is_refused_at_its_key(env):
    # SIGTERM waits for the poll in progress: 100,000,000,000 ms made a worker unstoppable.
    env({"STREAMWISE_KAFKA__POLL_TIMEOUT_MS": "100000000000"})
    with pytest.raises(Exception, match="poll_timeout_ms") as e:
        Settings()
    assert "30000" in str(e.value)


def test_a_short_session_timeout_gets_a_heartbeat_within_it():
    # kafka-python refused to start when the session was under its 3 s heartbeat.
    short = KafkaSettings(session_timeout_ms=2000)
    assert kafka_config.kafka_python_consumer(short, "g")["heartbeat_interval_ms"] == 666
    assert kafka_config.confluent_consumer(short, "g")["heartbeat.interval.ms"] == 666
    assert kafka_config.kafka_python_consumer(KafkaSettings(), "g")["heartbeat_interval_ms"] == 3000
