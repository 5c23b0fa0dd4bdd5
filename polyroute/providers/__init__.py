"""Provider base classes, the registry, and the built-in upstreams."""

from polyroute.providers.base import (
    STREAM_END,
    AsyncGeneratorProvider,
    BaseProvider,
    ParseResult,
)
from polyroute.providers.darkai import DarkAI
from polyroute.providers.openai import OpenAI
from polyroute.providers.registry import Registry, default_registry

__all__ = [
    "STREAM_END",
    "AsyncGeneratorProvider",
    "BaseProvider",
    "DarkAI",
    "OpenAI",
    "ParseResult",
    "Registry",
    "default_registry",
]
