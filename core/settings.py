"""Service settings: where Kafka, Redis and the metrics endpoint are, and how to talk to them.

One :class:`Settings` object, read from (lowest to highest precedence) defaults, the
environment (``STREAMWISE_`` prefix, ``__`` between nested keys, e.g.
``STREAMWISE_KAFKA__BOOTSTRAP_SERVERS``) and CLI flags. Nothing else in the code base
reads the environment. What a *pipeline* does (topics, schema, models) lives in the
pipeline YAML instead: see :mod:`streamwise.pipeline_config`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Which Kafka client library the connectors use (env STREAMWISE_KAFKA__CLIENT).
    # kafka-python is pure Python; confluent (librdkafka) costs far less CPU per record.
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    client_id: str = "streamwise"
    # Wait this long for a batch before looping again (lets SIGTERM be seen promptly).
    poll_timeout_ms: int = Field(500, ge=1)
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
    commit_interval_ms: int = Field(100, ge=0)
    # Broker errors (timeouts, coordinator moves, a restarting broker) are retried with
    # a backoff doubling from 0.1 s up to this bound; they never stop the worker.
    retry_backoff_max_ms: int = Field(5_000, ge=100)


class RedisSettings(BaseModel):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")


class SnapshotSettings(BaseModel):
    """When and how each partition's learning state is snapshotted to Redis."""

    enabled: bool = True
    # HMAC-SHA256 key; snapshots are refused on restore unless they carry its signature.
    signing_key: SecretStr | None = None
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


class MetricsSettings(BaseModel):
    host: str = "127.0.0.1"
    # 0 means: do not serve /metrics.
    port: int = Field(0, ge=0, le=65535)


class GrafanaSettings(BaseModel):
    """Where ``streamwise dashboards push`` uploads to; the token is a service account's."""

    url: str = "http://127.0.0.1:3000"
    token: SecretStr = SecretStr("")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMWISE_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    snapshot: SnapshotSettings = SnapshotSettings()
    metrics: MetricsSettings = MetricsSettings()
    grafana: GrafanaSettings = GrafanaSettings()
