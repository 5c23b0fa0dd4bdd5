"""polyroute: route streaming LLM chat requests across many providers.

The public API is what this module exports (``__all__``) plus ``polyroute.providers``;
every other module is private and may change without notice.
"""

from polyroute.core.attempts import Attempt, StreamReport
from polyroute.core.errors import (
    AllProvidersFailed,
    AuthenticationError,
    ConfigError,
    ContextLengthExceededError,
    InvalidMessagesError,
    InvalidRequestError,
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
from polyroute.router.config import (
    CooldownConfig,
    ProviderEntry,
    RetryConfig,
    RouterConfig,
    TimeoutsConfig,
    load_config,
)
from polyroute.router.health import HealthStore, InMemoryHealth
from polyroute.router.relay import StreamRestarted
from polyroute.router.router import Router
from polyroute.router.stream import RouterStream

__version__ = "0.1.0"

__all__ = [
    "AllProvidersFailed",
    "Attempt",
    "AuthenticationError",
    "ConfigError",
    "ContextLengthExceededError",
    "CooldownConfig",
    "HealthStore",
    "InMemoryHealth",
    "InvalidMessagesError",
    "InvalidRequestError",
    "Message",
    "Messages",
    "ModelNotSupportedError",
    "PolyrouteError",
    "ProviderEntry",
    "ProviderNotFoundError",
    "ProviderNotWorkingError",
    "RateLimitedError",
    "RetryConfig",
    "Router",
    "RouterConfig",
    "RouterStream",
    "StreamNotSupportedError",
    "StreamReport",
    "StreamRestarted",
    "Timeouts",
    "TimeoutsConfig",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "__version__",
    "configure_logging",
    "format_prompt",
    "load_config",
]
