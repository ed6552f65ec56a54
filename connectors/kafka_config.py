"""The one place that turns :class:`~streamwise.core.settings.KafkaSettings` into each
Kafka client's own settings: kafka-python keyword arguments and librdkafka (confluent-kafka)
configuration dicts, for the consumer, the producer and the admin client.

Both clients get the same meaning from one settings model: the delivery settings the
runner relies on (read_committed, manual offsets, idempotence), the security settings
(TLS, mTLS, SASL PLAIN / SCRAM / OAUTHBEARER) and the user's ``extra`` pass-through,
which may add to the former but never redefine them.

Examples
--------
>>> from streamwise.core.settings import KafkaSettings
>>> s = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
...                   sasl_username="app", sasl_password="s3cret")
>>> c = confluent_security(s)
>>> c["security.protocol"], c["sasl.mechanism"], c["sasl.username"]
('SASL_SSL', 'SCRAM-SHA-512', 'app')
>>> k = kafka_python_security(s)
>>> k["sasl_mechanism"], k["sasl_plain_username"], k["ssl_check_hostname"]
('SCRAM-SHA-512', 'app', True)
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from streamwise.core.errors import ConfigError, ServiceUnavailableError
from streamwise.core.settings import KafkaSettings

# ----- security ---------------------------------------------------------------------


def _secret(value: Any) -> str | None:
    return None if value is None else value.get_secret_value()


def kafka_python_security(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python's keyword arguments for TLS and SASL (empty for PLAINTEXT)."""
    out: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.endswith("SSL"):
        out.update(
            ssl_cafile=str(settings.ssl_ca_file) if settings.ssl_ca_file else None,
            ssl_certfile=str(settings.ssl_cert_file) if settings.ssl_cert_file else None,
            ssl_keyfile=str(settings.ssl_key_file) if settings.ssl_key_file else None,
            ssl_password=_secret(settings.ssl_key_password),
            ssl_check_hostname=settings.ssl_check_hostname,
        )
    mechanism = settings.sasl_mechanism
    if mechanism is not None:
        out["sasl_mechanism"] = mechanism
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            out["sasl_plain_username"] = settings.sasl_username
            out["sasl_plain_password"] = _secret(settings.sasl_password)
        elif mechanism == "OAUTHBEARER":
            out["sasl_oauth_token_provider"] = _kafka_python_token_provider(settings)
        # AWS_MSK_IAM: kafka-python signs with botocore's credentials chain; nothing to pass.
    return out


def confluent_security(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka's properties for TLS and SASL."""
    out: dict[str, Any] = {"security.protocol": settings.security_protocol}
    if settings.security_protocol.endswith("SSL"):
        if settings.ssl_ca_file:
            out["ssl.ca.location"] = str(settings.ssl_ca_file)
        if settings.ssl_cert_file:
            out["ssl.certificate.location"] = str(settings.ssl_cert_file)
            out["ssl.key.location"] = str(settings.ssl_key_file)
        if settings.ssl_key_password is not None:
            out["ssl.key.password"] = _secret(settings.ssl_key_password)
        out["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_check_hostname else "none"
    mechanism = settings.sasl_mechanism
    if mechanism == "AWS_MSK_IAM":
        raise ConfigError(
            "kafka.sasl_mechanism: AWS_MSK_IAM works with kafka.client kafka-python only"
            " (librdkafka has no built-in MSK IAM signer); use SCRAM-SHA-512 on MSK with confluent"
        )
    if mechanism is not None:
        out["sasl.mechanism"] = mechanism
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            out["sasl.username"] = settings.sasl_username
            out["sasl.password"] = _secret(settings.sasl_password)
        elif mechanism == "OAUTHBEARER":
            out.update(
                {
                    "sasl.oauthbearer.method": "oidc",
                    "sasl.oauthbearer.token.endpoint.url": settings.sasl_oauth_token_endpoint,
                    "sasl.oauthbearer.client.id": settings.sasl_oauth_client_id,
                    "sasl.oauthbearer.client.secret": _secret(settings.sasl_oauth_client_secret),
                }
            )
            if settings.sasl_oauth_scope:
                out["sasl.oauthbearer.scope"] = settings.sasl_oauth_scope
    return out


class ClientCredentialsToken:
    """An OAuth 2.0 client-credentials token from ``endpoint``, fetched on first use and
    again shortly before it expires: what librdkafka's ``sasl.oauthbearer.method=oidc``
    does, for kafka-python, which asks a provider object for the token."""

    def __init__(self, endpoint: str, client_id: str, client_secret: str, scope: str | None = None) -> None:
        self._endpoint = endpoint
        self._form = {"grant_type": "client_credentials"}
        if scope:
            self._form["scope"] = scope
        # client_secret_basic, the method every server must accept (RFC 6749 2.3.1, which
        # also asks for the form-encoding of each part); librdkafka sends the same.
        pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
        self._authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.time() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def _fetch(self) -> None:
        body = urllib.parse.urlencode(self._form).encode()
        request = urllib.request.Request(
            self._endpoint,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": self._authorization},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                answer = json.loads(resp.read())
        except (OSError, ValueError) as e:
            # The message names the endpoint, never the client secret.
            raise ServiceUnavailableError(f"Kafka: OAuth token endpoint {self._endpoint} failed ({e})") from None
        if "access_token" not in answer:
            raise ServiceUnavailableError(f"Kafka: OAuth token endpoint {self._endpoint} returned no access_token")
        self._token = answer["access_token"]
        # Renew at 80% of the lifetime, as librdkafka does.
        self._renew_at = time.time() + 0.8 * float(answer.get("expires_in", 300))


def _kafka_python_token_provider(settings: KafkaSettings) -> Any:
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class _Provider(ClientCredentialsToken, AbstractTokenProvider):  # type: ignore[misc]
        pass

    return _Provider(
        str(settings.sasl_oauth_token_endpoint),
        str(settings.sasl_oauth_client_id),
        str(_secret(settings.sasl_oauth_client_secret)),
        settings.sasl_oauth_scope,
    )


# ----- extra: the pass-through, checked -----------------------------------------------


def with_extra(config: dict[str, Any], settings: KafkaSettings, known: frozenset[str] | None) -> dict[str, Any]:
    """``config`` plus ``settings.extra``: a key streamwise sets itself is refused (its
    guarantees rest on them; most have their own setting), and so is, where the client
    publishes its list (``known``), a key the client does not have.

    Examples
    --------
    >>> s = KafkaSettings(extra={"fetch.min.bytes": 1024})
    >>> with_extra({"group.id": "g"}, s, None)
    {'group.id': 'g', 'fetch.min.bytes': 1024}
    >>> with_extra({"group.id": "g"}, KafkaSettings(extra={"group.id": "x"}), None)
    Traceback (most recent call last):
    ...
    streamwise.core.errors.ConfigError: kafka.extra.group.id: set by streamwise itself; it cannot be overridden
    """
    out = dict(config)
    for key, value in settings.extra.items():
        if key in config:
            raise ConfigError(f"kafka.extra.{key}: set by streamwise itself; it cannot be overridden")
        if known is not None and key not in known:
            raise ConfigError(f"kafka.extra.{key}: not a {settings.client} setting")
        out[key] = value
    return out


# ----- kafka-python -----------------------------------------------------------------


def _kafka_python_known() -> dict[str, frozenset[str]]:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    return {
        "consumer": frozenset(KafkaConsumer.DEFAULT_CONFIG),
        "producer": frozenset(KafkaProducer.DEFAULT_CONFIG),
        "admin": frozenset(KafkaAdminClient.DEFAULT_CONFIG),
    }


def _kafka_python(settings: KafkaSettings, role: str, config: dict[str, Any]) -> dict[str, Any]:
    known = _kafka_python_known()
    # kafka-python's own metrics (its clients' metrics()) are read by nothing here:
    # streamwise counts what it exports itself. Recording them is Python work in the
    # clients' threads, per request and per batch, under the same GIL as the pipeline:
    # the service took ~1.2 µs/event less wall time and ~1.9 less CPU without them
    # (measured, Phishing ×40, exactly-once, alternating runs). kafka.extra may turn them on.
    if "metrics_enabled" in known[role] and "metrics_enabled" not in settings.extra:
        config = {"metrics_enabled": False, **config}
    # kafka-python's three classes refuse each other's keys: an extra key goes to the
    # roles that have it, and must belong to at least one.
    base = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        **kafka_python_security(settings),
        **config,
    }
    with_extra(base, settings, frozenset().union(*known.values()))
    _check_kafka_python_types(settings.extra)
    return {**base, **{k: v for k, v in settings.extra.items() if k in known[role]}}


def _check_kafka_python_types(extra: dict[str, Any]) -> None:
    """An extra value of another type than the key's default is refused at start:
    kafka-python reads its config only when it uses a key, so ``fetch_min_bytes: abc``
    would otherwise stop the service at its first poll with a ``struct.error``.
    Keys whose default is None, a list or a class take what kafka-python takes.

    Examples
    --------
    >>> _check_kafka_python_types({"fetch_min_bytes": 1024, "retries": 5, "check_crcs": False})
    >>> _check_kafka_python_types({"fetch_min_bytes": "abc"})
    Traceback (most recent call last):
    ...
    streamwise.core.errors.ConfigError: kafka.extra.fetch_min_bytes: must be an integer, got str 'abc'
    """
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    for key, value in extra.items():
        defaults = {type(cls.DEFAULT_CONFIG[key]) for cls in (KafkaConsumer, KafkaProducer, KafkaAdminClient)
                    if key in cls.DEFAULT_CONFIG}
        if len(defaults) != 1 or value is None:
            continue  # unknown here, typed differently per client class, or left to the client's default
        (kind,) = defaults
        if kind not in kinds:
            continue
        numbers = (int, float) if kind is float else (int,)
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, str) if kind is str else isinstance(value, numbers) and not isinstance(value, bool)
        )
        if not ok:
            raise ConfigError(f"kafka.extra.{key}: must be {kinds[kind]}, got {type(value).__name__} {value!r}")


def session_timeout_refused(settings: KafkaSettings) -> ConfigError:
    """The broker refused the consumer group's session timeout when it joined: a
    setting, not an outage, so the worker stops with it instead of retrying for ever."""
    return ConfigError(
        f"kafka.session_timeout_ms: the broker at {settings.bootstrap_servers} refuses {settings.session_timeout_ms} ms; "
        "it must lie within the broker's group.min.session.timeout.ms and group.max.session.timeout.ms "
        "(Kafka's defaults: 6000 and 1800000)"
    )


def transaction_timeout_refused(settings: KafkaSettings) -> ConfigError:
    """The broker refused the producer's transaction timeout: a setting to fix."""
    return ConfigError(
        f"kafka.transaction_timeout_ms: the broker at {settings.bootstrap_servers} refuses "
        f"{settings.transaction_timeout_ms} ms; it must be at most the broker's transaction.max.timeout.ms "
        "(Kafka's default: 900000)"
    )


def heartbeat_ms(settings: KafkaSettings) -> int:
    """Both clients' default (3 s), or a third of a shorter session timeout: a heartbeat
    must come well within the session, and kafka-python refuses to start otherwise.

    >>> heartbeat_ms(KafkaSettings()), heartbeat_ms(KafkaSettings(session_timeout_ms=2000))
    (3000, 666)
    """
    return min(3000, settings.session_timeout_ms // 3)


def kafka_python_consumer(settings: KafkaSettings, group_id: str) -> dict[str, Any]:
    """kafka-python ``KafkaConsumer`` keyword arguments."""
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    config: dict[str, Any] = {
        "group_id": group_id,
        "group_instance_id": settings.group_instance_id,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": heartbeat_ms(settings),
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "partition_assignment_strategy": [
            CooperativeStickyAssignor if settings.assignor == "cooperative-sticky" else RangePartitionAssignor
        ],
        # Offsets move only when the runner commits them (or a transaction does).
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": settings.max_fetch_bytes,
        "fetch_max_bytes": settings.max_fetch_bytes,
        "request_timeout_ms": max(settings.request_timeout_ms, 305_000 // 10),
    }
    # How long the broker holds a fetch that finds nothing new (kafka-python: 500 ms).
    # The lag is read on the same connection and waits behind that fetch: the report at
    # the end of a stream (and every idle check of a run until idle) took ~450 ms with
    # 500 and ~46 with 100 (measured). A record that arrives ends the wait at once, so
    # latency does not change; an idle consumer asks 10 times a second instead of 2.
    if "fetch_max_wait_ms" not in settings.extra:
        config["fetch_max_wait_ms"] = 100
    return _kafka_python(settings, "consumer", config)


def kafka_python_producer(settings: KafkaSettings, transactional_id: str | None) -> dict[str, Any]:
    """kafka-python ``KafkaProducer`` keyword arguments; transactional with an id."""
    config: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.linger_ms,
        "max_request_size": settings.max_request_bytes,
        "request_timeout_ms": settings.request_timeout_ms,
    }
    # librdkafka's default batch.size, for the same batching on both clients (kafka.extra
    # may still set another). kafka-python's own 16 KiB closes a batch every ~45
    # prediction records, and each batch costs Python work in the producer and its
    # sender thread: 20,000 records produced exactly-once took 49 µs each with it and 30
    # with this (measured).
    if "batch_size" not in settings.extra:
        config["batch_size"] = 1_000_000
    # The broker answers the first AddPartitionsToTxn of a transaction with
    # CONCURRENT_TRANSACTIONS while it still writes the previous commit's markers, and
    # kafka-python 3.0.12 sleeps retry_backoff_ms (100 by default) before every resent
    # transactional request: it works out the 20 ms the Java client waits there, then
    # sleeps the configured value instead. About one transaction in ten stalled 100 ms
    # (measured, commits back to back); produced exactly-once in transactions of 1,000,
    # a record took 28 µs with 100 and 19 with 20. Produce retries and metadata refreshes
    # back off by it too: 20 ms is still far from a busy loop.
    if "retry_backoff_ms" not in settings.extra:
        config["retry_backoff_ms"] = 20
    if transactional_id is not None:
        config["transactional_id"] = transactional_id
        config["transaction_timeout_ms"] = settings.transaction_timeout_ms
    return _kafka_python(settings, "producer", config)


def kafka_python_reader(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python ``KafkaConsumer`` keyword arguments for reading a topic outside any
    consumer group (``connectors/topic_reader.py``), committed records only."""
    return _kafka_python(
        settings,
        "consumer",
        {
            "group_id": None,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            "max_partition_fetch_bytes": settings.max_fetch_bytes,
            "fetch_max_bytes": settings.max_fetch_bytes,
        },
    )


def kafka_python_admin(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python ``KafkaAdminClient`` keyword arguments."""
    return _kafka_python(settings, "admin", {})


# ----- confluent-kafka (librdkafka) ----------------------------------------------------


def _confluent(settings: KafkaSettings, config: dict[str, Any]) -> dict[str, Any]:
    # librdkafka publishes no list of its properties to Python; an unknown key is
    # refused when the client is built (connectors/confluent.py names it).
    base = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        **confluent_security(settings),
        **config,
    }
    return with_extra(base, settings, None)


def confluent_consumer(settings: KafkaSettings, group_id: str) -> dict[str, Any]:
    """The librdkafka consumer settings that match the kafka-python consumer's."""
    config: dict[str, Any] = {
        "group.id": group_id,
        # Offsets move only when the runner commits them (or a transaction does).
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": settings.assignor,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": heartbeat_ms(settings),
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        # An oversized event must reach validation and be dead-lettered, not stall the
        # partition; librdkafka wants its receive buffer above the fetch size.
        "fetch.max.bytes": settings.max_fetch_bytes,
        "max.partition.fetch.bytes": settings.max_fetch_bytes,
        "receive.message.max.bytes": max(100_000_000, settings.max_fetch_bytes + 512),
        "socket.timeout.ms": settings.request_timeout_ms,
    }
    if settings.group_instance_id is not None:
        config["group.instance.id"] = settings.group_instance_id
    return _confluent(settings, config)


def confluent_producer(settings: KafkaSettings, transactional_id: str | None) -> dict[str, Any]:
    """The librdkafka producer settings that match the kafka-python producer's."""
    config: dict[str, Any] = {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": settings.linger_ms,
        "message.max.bytes": settings.max_request_bytes,
        "request.timeout.ms": settings.request_timeout_ms,
        # Successful deliveries are not reported back to Python at all: a callback per
        # record would cost more than producing it. Failures still are.
        "delivery.report.only.error": True,
    }
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
        config["transaction.timeout.ms"] = settings.transaction_timeout_ms
    return _confluent(settings, config)


def confluent_admin(settings: KafkaSettings) -> dict[str, Any]:
    """The librdkafka admin client settings."""
    return _confluent(settings, {})


# ----- failures: one line that names the problem ----------------------------------------

# kafka-python gives up on a broker it cannot bootstrap from after this long (its default
# is 30 s). The TCP probe before it has already found the port open, so what is left to
# wait for is TLS and SASL, which take milliseconds to a second when they work.
BOOTSTRAP_TIMEOUT_MS = 6_000


def explain_failure(settings: KafkaSettings, reports: list[str]) -> str | None:
    """What the client's own error reports say went wrong, as one line for a user, or
    None when nothing in them is about TLS or authentication. The reports come from the
    client's logs, which name mechanisms and certificates but never a password.

    Examples
    --------
    >>> s = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
    ...                   sasl_username="app", sasl_password="pw")
    >>> explain_failure(s, ["Connection lost: SaslAuthenticationFailedError: invalid credentials"])
    "SASL authentication failed (PLAIN as user 'app'): check kafka.sasl_username and kafka.sasl_password"
    """
    text = " ".join(reports).lower()
    if "sasl" in text and ("authentication" in text or "invalid credentials" in text):
        return (
            f"SASL authentication failed ({settings.sasl_mechanism} as user {settings.sasl_username!r}):"
            " check kafka.sasl_username and kafka.sasl_password"
        )
    if "certificate verify failed" in text or "certificate_verify_failed" in text:
        where = f"kafka.ssl_ca_file ({settings.ssl_ca_file})" if settings.ssl_ca_file else "the system's CA store"
        reason = "its name does not match" if "hostname" in text or "ip address mismatch" in text else "not signed by"
        return f"TLS: the broker's certificate could not be verified ({reason} {where})"
    if "bad certificate" in text or "certificate required" in text or "alert" in text and "certificate" in text:
        if settings.ssl_cert_file is None:
            return "TLS: the broker requires a client certificate: set kafka.ssl_cert_file and kafka.ssl_key_file"
        return f"TLS: the broker refused the client certificate kafka.ssl_cert_file ({settings.ssl_cert_file})"
    if settings.sasl_mechanism and "socket disconnected" in text and "ssl" not in text.replace("ssltransport", ""):
        # kafka-python often sees only the close that follows a refused SASL exchange
        # (the broker's error answer is lost with it); TLS worked, so the credentials did not.
        return (
            f"SASL authentication failed ({settings.sasl_mechanism} as user {settings.sasl_username!r}): the broker"
            " closed the connection during authentication; check kafka.sasl_username and kafka.sasl_password"
        )
    if "wrong version number" in text or "record layer failure" in text or "packet length too long" in text:
        return f"TLS: the listener does not speak {settings.security_protocol} (check kafka.security_protocol)"
    if "unsupported sasl mechanism" in text or "unsupportedsaslmechanism" in text:
        return f"the broker does not offer SASL mechanism {settings.sasl_mechanism} on this listener"
    return None


def connect_error(settings: KafkaSettings, reports: list[str], fallback: str) -> Exception:
    """The error to raise when a client could not connect: a :class:`ConfigError` when the
    reports show the settings are wrong (credentials, certificates), else a
    :class:`ServiceUnavailableError` with ``fallback`` as its reason."""
    explained = explain_failure(settings, reports)
    if explained is not None:
        return ConfigError(f"Kafka at {settings.bootstrap_servers}: {explained}")
    # Something answered and then dropped the connection: a plaintext client that gets
    # that is most likely talking to a TLS or SASL listener.
    hint = ""
    if reports and settings.security_protocol == "PLAINTEXT":
        hint = "; if the listener uses TLS or SASL, set kafka.security_protocol"
    return ServiceUnavailableError(f"Kafka: no broker answered at {settings.bootstrap_servers} ({fallback}){hint}")


def missing_topic(topic: str) -> ConfigError:
    """The error for a topic that does not exist when streamwise may not create it."""
    return ConfigError(
        f"kafka.create_topics is false and topic {topic} does not exist: create it"
        " (or set STREAMWISE_KAFKA__CREATE_TOPICS=true)"
    )
