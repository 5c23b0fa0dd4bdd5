"""The public surface is what `polyroute` and `polyroute.providers` export: a change
to it must be deliberate (and documented), so it is pinned here."""

from __future__ import annotations

import polyroute
import polyroute.providers

PUBLIC = {
    *("AllProvidersFailed", "AssistantMessage", "Attempt", "AuthenticationError"),
    *("CapabilityNotSupportedError", "ConfigError", "ContextLengthExceededError"),
    *("CooldownConfig", "Delta", "ExtraDelta", "FinishDelta", "HealthStore", "InMemoryHealth"),
    *("InvalidMessagesError", "InvalidRequestError", "Message", "Messages"),
    *("ModelNotSupportedError", "PolyrouteError", "ProviderEntry", "ProviderNotFoundError"),
    *("ProviderNotWorkingError", "RateLimitedError", "ReasoningDelta", "RestartDelta"),
    *("RetryConfig", "Router", "RouterConfig", "RouterStream", "StreamNotSupportedError"),
    *("StreamRestarted", "SyncRouter", "SyncRouterStream", "TextDelta", "Timeouts"),
    *("TimeoutsConfig", "ToolCall", "ToolCallDelta", "ToolCallInterruptedError"),
    *("UpstreamConnectionError", "UpstreamError", "UpstreamProtocolError"),
    *("UpstreamStatusError", "UpstreamTimeout", "Usage", "UsageDelta", "__version__"),
    *("configure_logging", "format_prompt", "load_config"),
    *("NativeRequest", "ReasoningSignatureDelta", "RedactedReasoningDelta", "TokenCount"),
    *("EntryStatus", "Embedded", "Embeddings", "Cost", "Price", "BudgetExceededError"),
    "PortInUseError",
    "PrefillRefusedError",
    "GatewayOverloaded",
    *("AttemptRecord", "RequestLabels", "RequestObserver", "RequestRecord"),
    *("TelemetryConfig", "Tracing"),
    "WireDelta",
}
PROVIDERS = {
    "Gemini",
    "Anthropic",
    "AsyncGeneratorProvider",
    "DarkAI",
    "OpenAI",
    "Provider",
    "Registry",
    "default_registry",
}


def test_the_public_names_are_exactly_these() -> None:
    assert set(polyroute.__all__) == PUBLIC
    assert set(polyroute.providers.__all__) == PROVIDERS


def test_every_public_name_exists_and_is_documented() -> None:
    for module, names in ((polyroute, PUBLIC), (polyroute.providers, PROVIDERS)):
        for name in names - {"__version__", "Messages", "Delta"}:
            member = getattr(module, name)
            assert member.__doc__, f"{module.__name__}.{name} has no docstring"
