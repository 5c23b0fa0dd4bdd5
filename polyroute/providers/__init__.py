"""Provider base classes, the registry, and the built-in upstreams."""

from polyroute.providers.anthropic import Anthropic
from polyroute.providers.base import Provider
from polyroute.providers.compat import AsyncGeneratorProvider
from polyroute.providers.darkai import DarkAI
from polyroute.providers.gemini import Gemini
from polyroute.providers.openai import OpenAI
from polyroute.providers.registry import Registry, default_registry

__all__ = [
    "Anthropic",
    "AsyncGeneratorProvider",
    "DarkAI",
    "Gemini",
    "OpenAI",
    "Provider",
    "Registry",
    "default_registry",
]
