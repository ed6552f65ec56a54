"""All I/O of streamwise: the Kafka source, sink and admin, the Redis state store, the
Prometheus sensor and endpoint, and the Grafana client. Imports only :mod:`streamwise.core`.

:func:`make_source`, :func:`make_sink` and :func:`make_admin` are the one place that turns
settings into client objects, so no code above this package knows which Kafka client
library is in use.
"""

from __future__ import annotations

from streamwise.core.settings import KafkaSettings

from .base import Admin, Sink, Source
from .records import ConsumedRecord, OutgoingRecord

__all__ = ["Admin", "ConsumedRecord", "OutgoingRecord", "Sink", "Source", "make_admin", "make_sink", "make_source"]


# Each client's module is imported only when chosen: a user of one need not load the other.
def make_source(settings: KafkaSettings, group_id: str) -> Source:
    if settings.client == "confluent":
        from .confluent import ConfluentSource

        return ConfluentSource(settings, group_id)
    from .kafka_python import KafkaPythonSource

    return KafkaPythonSource(settings, group_id)


def make_sink(settings: KafkaSettings, transactional_id: str | None = None) -> Sink:
    """A producer; with a ``transactional_id``, one that writes in Kafka transactions."""
    if settings.client == "confluent":
        from .confluent import ConfluentSink

        return ConfluentSink(settings, transactional_id)
    from .kafka_python import KafkaPythonSink

    return KafkaPythonSink(settings, transactional_id)


def make_admin(settings: KafkaSettings) -> Admin:
    if settings.client == "confluent":
        from .confluent import ConfluentAdmin

        return ConfluentAdmin(settings)
    from .kafka_python import KafkaPythonAdmin

    return KafkaPythonAdmin(settings)
