"""polyroute: route streaming LLM chat requests across many providers.

The public API is what this module exports (``__all__``) plus ``polyroute.providers``;
every other module is private and may change without notice.
"""

from polyroute.core.attempts import Attempt
from polyroute.core.deltas import (
    AssistantMessage,
    Delta,
    ExtraDelta,
    FinishDelta,
    ReasoningDelta,
    ReasoningSignatureDelta,
    RedactedReasoningDelta,
    RestartDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageDelta,
    WireDelta,
)
from polyroute.core.embeddings import Embedded, Embeddings
from polyroute.core.errors import (
    AllProvidersFailed,
    AuthenticationError,
    BudgetExceededError,
    CapabilityNotSupportedError,
    ConfigError,
    ContextLengthExceededError,
    GatewayOverloaded,
    InvalidMessagesError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    PortInUseError,
    PrefillRefusedError,
    ProviderNotFoundError,
    ProviderNotWorkingError,
    RateLimitedError,
    StreamNotSupportedError,
    ToolCallInterruptedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.core.http import Timeouts
from polyroute.core.logging import configure_logging
from polyroute.core.messages import Message, Messages, format_prompt
from polyroute.core.pricing import Cost, Price
from polyroute.core.request import NativeRequest
from polyroute.router.config import (
    CooldownConfig,
    ProviderEntry,
    RetryConfig,
    RouterConfig,
    TimeoutsConfig,
    load_config,
)
from polyroute.router.health import HealthStore, InMemoryHealth
from polyroute.router.observe import AttemptRecord, RequestLabels, RequestObserver, RequestRecord
from polyroute.router.relay import StreamRestarted
from polyroute.router.router import EntryStatus, Router, TokenCount
from polyroute.router.stream import RouterStream
from polyroute.router.sync import SyncRouter, SyncRouterStream
from polyroute.telemetry.config import TelemetryConfig
from polyroute.telemetry.observer import Tracing

__version__ = "0.1.0"

__all__ = [
    "AllProvidersFailed",
    "AssistantMessage",
    "Attempt",
    "AttemptRecord",
    "AuthenticationError",
    "BudgetExceededError",
    "CapabilityNotSupportedError",
    "ConfigError",
    "ContextLengthExceededError",
    "CooldownConfig",
    "Cost",
    "Delta",
    "Embedded",
    "Embeddings",
    "EntryStatus",
    "ExtraDelta",
    "FinishDelta",
    "GatewayOverloaded",
    "HealthStore",
    "InMemoryHealth",
    "InvalidMessagesError",
    "InvalidRequestError",
    "Message",
    "Messages",
    "ModelNotSupportedError",
    "NativeRequest",
    "PolyrouteError",
    "PortInUseError",
    "PrefillRefusedError",
    "Price",
    "ProviderEntry",
    "ProviderNotFoundError",
    "ProviderNotWorkingError",
    "RateLimitedError",
    "ReasoningDelta",
    "ReasoningSignatureDelta",
    "RedactedReasoningDelta",
    "RequestLabels",
    "RequestObserver",
    "RequestRecord",
    "RestartDelta",
    "RetryConfig",
    "Router",
    "RouterConfig",
    "RouterStream",
    "StreamNotSupportedError",
    "StreamRestarted",
    "SyncRouter",
    "SyncRouterStream",
    "TelemetryConfig",
    "TextDelta",
    "Timeouts",
    "TimeoutsConfig",
    "TokenCount",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallInterruptedError",
    "Tracing",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "Usage",
    "UsageDelta",
    "WireDelta",
    "__version__",
    "configure_logging",
    "format_prompt",
    "load_config",
]
