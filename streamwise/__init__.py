"""streamwise: streaming online learning on Kafka."""

from streamwise.core.errors import ConfigError, ServiceUnavailableError, StreamwiseError

__version__ = "0.1.0"
__all__ = ["ConfigError", "ServiceUnavailableError", "StreamwiseError", "__version__"]
