"""Every error streamwise raises on purpose derives from :class:`StreamwiseError`.

The CLI maps these to a one-line message and a non-zero exit; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class StreamwiseError(Exception):
    """Base of all errors streamwise raises deliberately."""


class ConfigError(StreamwiseError):
    """A configuration value is wrong. The message starts with the key path that is wrong."""


class ServiceUnavailableError(StreamwiseError):
    """A service (Kafka, Redis, Prometheus) cannot be reached; says which and where."""


class DeliveryError(StreamwiseError):
    """A record could not be written to Kafka; nothing was committed for its batch."""


class GroupMetadataRefused(DeliveryError):
    """The broker refused a transaction's offsets: the member or generation sent with
    them is not the group's (KIP-447 fencing: a zombie, or a consumer that has not yet
    learned of a rebalance)."""
