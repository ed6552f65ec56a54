"""Service settings: where Kafka, Redis and the metrics endpoint are, and how to talk to them.

One :class:`Settings` object, read from (lowest to highest precedence) defaults, the
environment (``STREAMWISE_`` prefix, ``__`` between nested keys, e.g.
``STREAMWISE_KAFKA__BOOTSTRAP_SERVERS``) and CLI flags. Nothing else in the code base
reads the environment. What a *pipeline* does (topics, schema, models) lives in the
pipeline YAML instead: see :mod:`streamwise.pipeline_config`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from .errors import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
# AWS_MSK_IAM exists in kafka-python only (with botocore installed); librdkafka reaches
# MSK IAM through OAUTHBEARER with a signing callback, which streamwise does not ship.
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM"]


def split_bootstrap_entry(entry: str) -> tuple[str, str | None]:
    """One bootstrap entry as (host, port text): an optional listener name prefix
    (``SASL_SSL://``) dropped, an IPv6 host kept in its brackets, None for no port.

    >>> [split_bootstrap_entry(e) for e in ("b1:9093", " broker", "PLAINTEXT://10.0.0.1:9094", "[::1]:9095", "[::1]", "b1:")]
    [('b1', '9093'), ('broker', None), ('10.0.0.1', '9094'), ('[::1]', '9095'), ('[::1]', None), ('b1', '')]
    """
    hostport = entry.strip().split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":") if not hostport.endswith("]") else (hostport, "", "")
    return (host, port) if sep else (hostport, None)


def bootstrap_servers_problem(servers: str) -> str | None:
    """Why ``servers`` is not a comma-separated list of ``host[:port]``, or None. Both
    clients would otherwise take an empty or malformed list and retry it forever.

    Examples
    --------
    >>> bootstrap_servers_problem("b1:9092, b2:9092,[::1]:9093,broker") is None
    True
    >>> bootstrap_servers_problem("b1:90x2")
    "'b1:90x2': the port must be a number from 1 to 65535"
    """
    entries = [e.strip() for e in servers.split(",")]
    if not any(entries):
        return "empty; give host:port[,host:port]"
    for entry in entries:
        if not entry:
            return "an empty entry between commas"
        host, port = split_bootstrap_entry(entry)
        if not host or host in {"[", "[]"}:
            return f"{entry!r}: no host"
        if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
            return f"{entry!r}: the port must be a number from 1 to 65535"
    return None


class KafkaSettings(BaseModel):
    # A misspelt key in a dict or YAML is an error, as a misspelt env var is (Settings).
    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, servers: str) -> str:
        problem = bootstrap_servers_problem(servers)
        if problem:
            raise ValueError(problem)
        return servers

    # Which Kafka client library the connectors use (env STREAMWISE_KAFKA__CLIENT).
    # kafka-python is pure Python; confluent (librdkafka) costs far less CPU per record.
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    client_id: str = "streamwise"
    # Wait this long for a batch before looping again (lets SIGTERM be seen promptly):
    # at most 30 s, since a stop waits for the poll in progress.
    poll_timeout_ms: int = Field(500, ge=1, le=30_000)
    # Larger batches amortise the per-batch transaction: 5,000 gave ~25% more events/s
    # than 1,000 on kafka-python (bench, Phishing); a poll returns what is there sooner.
    max_poll_records: int = Field(5000, ge=1)
    # The broker and the fetcher must let an oversized event through, so that it
    # reaches validation and is dead-lettered with a reason instead of blocking the
    # partition. Events larger than the pipeline's max_event_bytes are rejected there.
    max_fetch_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    linger_ms: int = Field(5, ge=0)
    # Static group membership (KIP-345): a worker restarted after a crash takes its
    # partitions back at once instead of waiting out the session timeout. The runner
    # sets the instance id per worker slot when static_membership is on.
    static_membership: bool = True
    group_instance_id: str | None = None
    session_timeout_ms: int = Field(10_000, ge=1000)
    # cooperative-sticky moves only the partitions that must move in a rebalance. A
    # pipeline with a labels topic needs range, the assignor that keeps co-partitioned
    # topics together (events and labels of partition p on one worker); the runner
    # switches to it then.
    assignor: Literal["cooperative-sticky", "range"] = "cooperative-sticky"
    # exactly_once: outputs and consumed offsets commit in one Kafka transaction.
    # at_least_once: for brokers without transactions; a crash may repeat a batch's outputs.
    guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    # Short, so that a transaction left open by a killed worker with a different
    # transactional id cannot hold read_committed readers back for long.
    transaction_timeout_ms: int = Field(15_000, ge=1000)
    request_timeout_ms: int = Field(30_000, ge=1000)
    # The longest a worker may go between two polls before the group takes its
    # partitions away. A batch that runs longer than a quarter of it halves the next
    # poll's size (down to 1 record), so a slow model makes progress instead of being
    # fenced, rewound and fetched again.
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    # Several polls share one transaction (or one offset commit) until this much time
    # has passed since it began: fewer, larger commits. 0 commits after every poll.
    # 50: bench/commit_cadence.py (docs/benchmarks.md), four sweeps on both clients:
    # 1.1-1.4× the throughput of a commit per poll, as much as 100-250 gave, p99 within
    # the Kafka echo's every time (100-250 sometimes 2-4×; 1,000 always 3-9×).
    commit_interval_ms: int = Field(50, ge=0)
    # true: with the confluent client, a transaction commits (at least once: the flush
    # and the offset commit run) on a thread of its own while the worker polls and
    # processes the next batch, whose outputs wait in memory until that commit has
    # succeeded (dropped, and every partition rewound, if it failed: as for any failed
    # commit). The broker's round trips of a commit (~10 ms
    # here, ~5% of the time at the default interval) then cost no processing time. A
    # commit with a snapshot due after it is waited for, as with false. kafka-python
    # always waits: its commit is Python code that would compete with the batch.
    commit_in_background: bool = True
    # Broker errors (timeouts, coordinator moves, a restarting broker) are retried with
    # a backoff doubling from 0.1 s up to this bound; they never stop the worker.
    retry_backoff_max_ms: int = Field(5_000, ge=100)

    # ----- topics ---------------------------------------------------------------
    # false: the topics must exist (clusters where ACLs forbid creating them); a missing
    # one stops the start with a line naming it.
    create_topics: bool = True
    # None: the broker's default.replication.factor (KIP-464), which managed clusters
    # set to what they require (3 on Confluent Cloud and MSK).
    replication_factor: int | None = Field(None, ge=1)

    # ----- security: one model for both clients (see connectors/kafka_config.py) ----
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # OAUTHBEARER: the client-credentials grant against the identity provider's token
    # endpoint (OIDC), as Confluent Cloud and most OAuth-secured clusters use it.
    sasl_oauth_token_endpoint: str | None = None
    sasl_oauth_client_id: str | None = None
    sasl_oauth_client_secret: SecretStr | None = None
    sasl_oauth_scope: str | None = None
    # TLS: the CA that signed the brokers' certificates (default: the system's store),
    # and a client certificate and key for mutual TLS (PEM files).
    ssl_ca_file: FilePath | None = None
    ssl_cert_file: FilePath | None = None
    ssl_key_file: FilePath | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    # Anything else the chosen client understands, in that client's own spelling
    # (kafka-python: ``fetch_min_bytes``; confluent: ``fetch.min.bytes``); checked
    # against the client's known settings when the client is built. Hidden from repr:
    # it may carry credentials.
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict, repr=False)

    @model_validator(mode="after")
    def _consistent_security(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"sasl_mechanism: required with security_protocol {self.security_protocol}")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(
                f"sasl_mechanism: {self.sasl_mechanism} needs security_protocol SASL_SSL or SASL_PLAINTEXT,"
                f" not {self.security_protocol}"
            )
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(f"sasl_username, sasl_password: both required with sasl_mechanism {self.sasl_mechanism}")
        if self.sasl_mechanism == "OAUTHBEARER" and not (
            self.sasl_oauth_token_endpoint and self.sasl_oauth_client_id and self.sasl_oauth_client_secret
        ):
            raise ValueError(
                "sasl_oauth_token_endpoint, sasl_oauth_client_id, sasl_oauth_client_secret: required with"
                " sasl_mechanism OAUTHBEARER"
            )
        tls_files = [n for n in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file") if getattr(self, n) is not None]
        if tls_files and not tls:
            # Silently ignoring them is how a user ends up talking plaintext to a TLS port.
            raise ValueError(
                f"{', '.join(tls_files)}: set, but security_protocol {self.security_protocol} uses no TLS"
            )
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file, ssl_key_file: a client certificate and its key go together")
        return self


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def redis_url_problem(url: str, need_host: bool = True) -> str | None:
    """Why ``url`` cannot be a Redis URL, or None. Checked at start, so a typo is one
    line naming the key rather than redis-py's traceback on first use. The URL itself is
    never quoted: it may carry a password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it raises ValueError for a port that is not a number
    except ValueError as e:
        return f"not a Redis URL ({e})"
    if parts.scheme not in _REDIS_SCHEMES:
        given = f"{parts.scheme}://" if parts.scheme else "no scheme"
        return f"not a Redis URL: {given}; use redis://host:port/db, rediss:// (TLS) or unix:///path"
    if parts.scheme == "unix":
        return None if parts.path else "unix:// needs the socket's path, e.g. unix:///run/redis.sock"
    if not parts.hostname and need_host:
        # With Sentinel the host comes from the sentinels; the URL gives scheme and db.
        return f"{parts.scheme}:// needs a host, e.g. {parts.scheme}://127.0.0.1:6379/0"
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        return f"the database after the host must be a number, got {db!r}"
    return None


class RedisSettings(BaseModel):
    """Where the snapshots live. ``url`` may be ``redis://`` or ``rediss://`` (TLS); the
    other fields add what a URL carries badly: files, a separate ACL password, Sentinel."""

    model_config = ConfigDict(extra="forbid")

    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # An ACL user and its password (Redis 6+); override any in the URL.
    username: str | None = None
    password: SecretStr | None = None
    # TLS (rediss:// or Sentinel with ssl): CA, and a client certificate and key when the
    # server asks for one (tls-auth-clients yes).
    ssl_ca_file: FilePath | None = None
    ssl_cert_file: FilePath | None = None
    ssl_key_file: FilePath | None = None
    ssl_check_hostname: bool = True
    # Sentinel: host:port of each sentinel and the name of the monitored master; then
    # ``url`` gives only the database number and scheme (rediss:// for TLS).
    sentinels: list[str] = Field(default_factory=list)
    sentinel_master: str | None = None
    sentinel_password: SecretStr | None = None
    # Short: a Redis outage must be noticed (and the partition paused) promptly.
    socket_timeout_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> RedisSettings:
        problem = redis_url_problem(self.url.get_secret_value(), need_host=not self.sentinels)
        if problem:
            raise ValueError(f"url: {problem}")
        if bool(self.sentinels) != bool(self.sentinel_master):
            raise ValueError("sentinels, sentinel_master: Sentinel needs both the sentinels and the master's name")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file, ssl_key_file: a client certificate and its key go together")
        return self


# Keys that were public at some point (the compose file's old default, documentation
# examples): anyone could sign a snapshot with them.
_PUBLIC_KEYS = frozenset({"demo-only-change-me", "change-me", "changeme", "secret", "streamwise"})
MIN_SIGNING_KEY_BYTES = 32
_KEY_HINT = "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"


class SnapshotSettings(BaseModel):
    """When and how each partition's learning state is snapshotted to Redis."""

    enabled: bool = True
    # HMAC-SHA256 key; snapshots are refused on restore unless they carry a valid signature.
    signing_key: SecretStr | None = None
    # Several keys, comma-separated, newest first (STREAMWISE_SNAPSHOT__SIGNING_KEYS=new,old):
    # new snapshots are signed with the first, and restore with any, so a key can be
    # rotated without re-learning. signing_key, if also set, is one more verifying key.
    signing_keys: SecretStr | None = None
    # Accept a known public key (a local demo only: anyone can forge its snapshots).
    insecure_demo_key: bool = False
    every_events: int = Field(5_000, ge=1)
    every_seconds: float = Field(30.0, gt=0)
    keep: int = Field(3, ge=1)
    chunk_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # While Redis is down, keep processing this many events per partition past the
    # last snapshot, then pause consumption: a bound on what a crash would re-learn.
    max_unsnapshotted_events: int = Field(100_000, ge=1)
    # A partition whose snapshot cannot be read (Redis down) waits, paused, while the
    # others go on; its restore is retried with a backoff doubling up to this bound.
    restore_retry_max_seconds: float = Field(10.0, gt=0)
    # Redis lost a partition's snapshots (FLUSHALL, eviction, a new empty Redis) while
    # Kafka's committed offsets say one existed. replay: re-learn that partition from
    # the earliest offset (said in a log line and a metric); refuse: keep it paused and
    # say so until an operator acts, the other partitions going on.
    on_missing: Literal["replay", "refuse"] = "replay"

    def signing_key_list(self) -> list[bytes]:
        """The configured keys, the signing one first; :class:`ConfigError` (one line) when
        there is none, one is shorter than 32 bytes, or one is a known public key.

        Examples
        --------
        >>> SnapshotSettings(signing_keys="n" * 32 + ",o" + "o" * 31).signing_key_list() == [b"n" * 32, b"o" * 32]
        True
        >>> try:
        ...     SnapshotSettings(signing_key="x" * 16).signing_key_list()
        ... except ConfigError as e:
        ...     print(str(e)[:61])
        snapshot.signing_key: 16 bytes, at least 32 are needed; gener
        """
        given = [("snapshot.signing_keys", k.strip()) for k in _secret(self.signing_keys).split(",") if k.strip()]
        if _secret(self.signing_key):
            given.append(("snapshot.signing_key", _secret(self.signing_key)))
        if not given:
            raise ConfigError(
                "snapshot.signing_key: required to sign snapshots (set STREAMWISE_SNAPSHOT__SIGNING_KEY), "
                "or turn snapshots off with STREAMWISE_SNAPSHOT__ENABLED=false"
            )
        keys: list[bytes] = []
        for where, key in given:
            if key in _PUBLIC_KEYS:
                if not self.insecure_demo_key:
                    raise ConfigError(
                        f"{where}: a publicly known demo key, with which anyone can forge a snapshot; {_KEY_HINT} "
                        "(or set STREAMWISE_SNAPSHOT__INSECURE_DEMO_KEY=true for a throwaway local demo)"
                    )
            elif len(key.encode()) < MIN_SIGNING_KEY_BYTES:
                raise ConfigError(
                    f"{where}: {len(key.encode())} bytes, at least {MIN_SIGNING_KEY_BYTES} are needed; {_KEY_HINT}"
                )
            if key.encode() not in keys:
                keys.append(key.encode())
        return keys


def _secret(value: SecretStr | None) -> str:
    return "" if value is None else value.get_secret_value()


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    # 0 means: do not serve /metrics.
    port: int = Field(0, ge=0, le=65535)
    # HTTPS when both are set (PEM files).
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    # The CA that signed tls_cert_file, for `streamwise top` reading a self-signed endpoint.
    tls_ca_file: FilePath | None = None
    # HTTP basic auth when both are set; Prometheus' scrape config has basic_auth for it.
    basic_auth_username: str | None = None
    basic_auth_password: SecretStr | None = None

    @model_validator(mode="after")
    def _pairs(self) -> MetricsSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file, tls_key_file: HTTPS needs both")
        if (self.basic_auth_username is None) != (self.basic_auth_password is None):
            raise ValueError("basic_auth_username, basic_auth_password: basic auth needs both")
        return self


class GrafanaSettings(BaseModel):
    """Where ``streamwise dashboards push`` uploads to; the token is a service account's."""

    url: str = "http://127.0.0.1:3000"
    token: SecretStr = SecretStr("")


ENV_PREFIX = "STREAMWISE_"
# STREAMWISE_ variables that are not settings: CLI options' env vars and dev/ scripts'.
NOT_SETTINGS = frozenset({"STREAMWISE_PIPELINE", "STREAMWISE_WORKER_INDEX"})
NOT_SETTINGS_PREFIXES = ("STREAMWISE_DEV_",)


def _setting_names(model: type[BaseModel], prefix: str) -> dict[str, bool]:
    """Every env name a model's fields answer to, mapped to whether a deeper key may
    follow (a dict field takes any sub-key)."""
    out: dict[str, bool] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}".upper()
        kind = field.annotation
        # X | None is X here; any other union takes no sub-keys.
        if get_origin(kind) in (Union, UnionType):
            options = [a for a in get_args(kind) if a is not type(None)]
            kind = options[0] if len(options) == 1 else None
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out[key] = False
            out.update(_setting_names(kind, key + "__"))
        else:
            out[key] = get_origin(kind) in (dict, Mapping)
    return out


def unknown_env(environ: Mapping[str, str], model: type[BaseModel]) -> list[str]:
    """Messages for each ``STREAMWISE_`` variable in ``environ`` that names no setting.

    pydantic-settings drops such variables without a word, which turns a typo in a
    secret's name into a connection error far from its cause.

    Examples
    --------
    >>> unknown_env({"STREAMWISE_KAFKA__SASL_MECHANSIM": "PLAIN"}, Settings)
    ['STREAMWISE_KAFKA__SASL_MECHANSIM is not a setting (did you mean STREAMWISE_KAFKA__SASL_MECHANISM?)']
    >>> unknown_env({"STREAMWISE_KAFKA__EXTRA__FETCH_MIN_BYTES": "1", "STREAMWISE_DEV_X": "1"}, Settings)
    []
    """
    names = _setting_names(model, ENV_PREFIX)
    bad = []
    for var in sorted(environ):
        key = var.upper()
        if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS or key.startswith(NOT_SETTINGS_PREFIXES):
            continue
        if key in names or any(key.startswith(n + "__") for n, open_ in names.items() if open_):
            continue
        close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.8)
        bad.append(f"{var} is not a setting" + (f" (did you mean {close[0]}?)" if close else ""))
    return bad


def _one_line(e: ValidationError) -> str:
    """The first error as ``key.path: message``; never the value, which may be a secret."""
    errors = e.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    # A model validator's message starts with the field(s) it is about: join the paths.
    head, sep, rest = msg.partition(": ")
    if sep and where and re.fullmatch(r"[a-z_]+(, [a-z_]+)*", head):
        msg = ", ".join(f"{where}.{h}" for h in head.split(", ")) + ": " + rest
    else:
        msg = f"{where}: {msg}" if where else msg
    return msg + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


def with_changes(section: BaseModel, option: str, **changes: Any) -> Any:
    """``section`` (e.g. ``settings.kafka``) with ``changes`` from a command-line option,
    validated as the settings themselves are (``model_copy`` validates nothing); a
    :class:`ConfigError` names ``option``, e.g. ``--bootstrap-servers: ...``."""
    try:
        return type(section).model_validate({**section.model_dump(), **changes})
    except ValidationError as e:
        line = _one_line(e)
        for key in changes:  # the option already names the key
            line = line.removeprefix(f"{key}: ")
        raise ConfigError(f"{option}: {line}") from None


class Settings(BaseSettings):
    """Raises :class:`~streamwise.core.errors.ConfigError` (one line, the key first) on an
    unknown ``STREAMWISE_`` variable or an invalid value, never a pydantic traceback;
    secrets show as ``**********`` in its repr."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    def __init__(self, **values: Any) -> None:
        unknown = unknown_env(os.environ, type(self))
        if unknown:
            raise ConfigError("; ".join(unknown))
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(_one_line(e)) from None
        except SettingsError as e:
            # A JSON value (a dict or list setting) that does not parse; pydantic-settings
            # names the section and the source, not the value.
            raise ConfigError(f"{e}: dict and list settings take JSON") from None

    # The explicit identity of this process (a StatefulSet pod name, say): names the
    # transactional id and the static group member id, so a restarted pod fences its
    # predecessor even under a new host name. Default: the host name.
    instance_id: str | None = None
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    snapshot: SnapshotSettings = SnapshotSettings()
    metrics: MetricsSettings = MetricsSettings()
    grafana: GrafanaSettings = GrafanaSettings()
