"""A ``base_url`` that ends in an endpoint path (pasted from an upstream's docs) would
be sent to ``.../chat/completions/chat/completions``: it is a config error that says
what to write instead."""

from __future__ import annotations

import pytest

from polyroute import ConfigError, Router
from polyroute.router.config import load_config


def config(kind: str, base_url: str) -> dict[str, object]:
    return {"providers": [{"name": "a", "type": kind, "base_url": base_url}]}


@pytest.mark.parametrize(
    ("kind", "base_url", "endpoint", "instead"),
    [
        ("openai", "http://127.0.0.1:8081/v1/chat/completions", "/chat/completions",
         "http://127.0.0.1:8081/v1"),
        ("openai", "https://h.example/openai/v1/responses/", "/responses",
         "https://h.example/openai/v1"),
        ("openai", "https://h.example/v1/embeddings", "/embeddings", "https://h.example/v1"),
        ("anthropic", "https://api.anthropic.com/v1/messages", "/messages",
         "https://api.anthropic.com"),
        ("gemini",
         "https://generativelanguage.googleapis.com/v1beta/models/g:streamGenerateContent?alt=sse",
         "/models/g:streamGenerateContent", "https://generativelanguage.googleapis.com"),
    ],
)  # fmt: skip
def test_an_endpoint_path_in_base_url_says_what_to_write(
    kind: str, base_url: str, endpoint: str, instead: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config(kind, base_url))
    assert str(caught.value) == (
        f"invalid config: providers.0.base_url: {base_url!r} ends in the endpoint path "
        f"{endpoint}, which the provider adds itself: write base_url: {instead} (or give "
        "the whole URL as api_endpoint)"
    )


def test_the_same_mistake_in_code_names_the_entry() -> None:
    with pytest.raises(
        ConfigError, match=r"providers\.0: base_url: .* write base_url: http://h/v1"
    ):
        Router([{"name": "a", "type": "openai", "base_url": "http://h/v1/chat/completions"}])


@pytest.mark.parametrize(
    ("kind", "base_url"),
    [
        ("openai", "http://127.0.0.1:8081/v1"),
        ("openai", "https://openrouter.ai/api/v1/"),
        ("anthropic", "https://api.anthropic.com"),
        ("gemini", "https://generativelanguage.googleapis.com"),
    ],
)
def test_a_base_url_without_an_endpoint_path_is_taken(kind: str, base_url: str) -> None:
    assert load_config(config(kind, base_url)).providers[0].base_url == base_url
