"""polyroute: route streaming LLM chat requests across many providers.

The public API is what this module exports (``__all__``) plus ``polyroute.providers``;
every other module is private and may change without notice.
"""

from polyroute.core.attempts import Attempt
from polyroute.core.errors import (
    AllProvidersFailed,
    AuthenticationError,
    ConfigError,
    InvalidMessagesError,
    ModelNotSupportedError,
    PolyrouteError,
    ProviderNotFoundError,
    ProviderNotWorkingError,
    RateLimitedError,
    StreamNotSupportedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.core.http import Timeouts
from polyroute.core.logging import configure_logging
from polyroute.core.messages import Message, Messages, format_prompt

__version__ = "0.1.0"

__all__ = [
    "AllProvidersFailed",
    "Attempt",
    "AuthenticationError",
    "ConfigError",
    "InvalidMessagesError",
    "Message",
    "Messages",
    "ModelNotSupportedError",
    "PolyrouteError",
    "ProviderNotFoundError",
    "ProviderNotWorkingError",
    "RateLimitedError",
    "StreamNotSupportedError",
    "Timeouts",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "__version__",
    "configure_logging",
    "format_prompt",
]
