"""``provider.embed`` for the OpenAI and Gemini types against local servers speaking
their embeddings formats, which the official SDKs read first to prove they are real."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from google import genai
from google.genai import types
from openai import AsyncOpenAI

from polyroute import (
    AuthenticationError,
    CapabilityNotSupportedError,
    InvalidRequestError,
    ModelNotSupportedError,
    RateLimitedError,
    Router,
    UpstreamProtocolError,
    UpstreamStatusError,
    Usage,
)
from polyroute.core.embeddings import Embedded
from polyroute.providers import DarkAI, Gemini, OpenAI, Provider
from tests.upstreams import gemini as gemini_wire
from tests.upstreams import openai as openai_wire
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.gemini import GeminiUpstream, gemini_error
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script, ScriptedUpstream

TEXTS = ["alpha", "beta gamma", "delta"]
OPENAI_KEY = "sk-test-0123456789"
GEMINI_KEY = "AIza-test-0123456789"


def openai_for(server: OpenAIUpstream, **kwargs: Any) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=OPENAI_KEY, **kwargs)


def gemini_for(server: GeminiUpstream, **kwargs: Any) -> Gemini:
    return Gemini(base_url=server.base_url, api_key=GEMINI_KEY, **kwargs)


def openai_error(message: str, code: str | None, kind: str) -> str:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


# The capability ------------------------------------------------------------------------


def test_only_the_types_with_an_embeddings_format_declare_them() -> None:
    assert Provider.supports_embeddings is False
    assert DarkAI.supports_embeddings is False
    assert (OpenAI.supports_embeddings, Gemini.supports_embeddings) == (True, True)
    assert OpenAI(supports_embeddings=False).supports_embeddings is False
    assert DarkAI(supports_embeddings=True).supports_embeddings is True


async def test_the_entry_flag_reaches_the_provider() -> None:
    router = Router(
        [
            {"name": "off", "type": "openai", "supports_embeddings": False},
            {"name": "on", "type": "openai"},
        ]
    )
    try:
        off, on = router.providers
        assert (off.supports_embeddings, on.supports_embeddings) == (False, True)
    finally:
        await router.aclose()


async def test_a_type_without_embeddings_raises_before_sending(
    darkai_upstream: DarkAIUpstream,
) -> None:
    async with DarkAI(api_endpoint=darkai_upstream.url, working=True) as provider:
        with pytest.raises(
            CapabilityNotSupportedError, match="does not support embeddings"
        ) as info:
            await provider.embed("gpt-4o", ["hi"])
    assert info.value.capabilities == ["embeddings"]
    assert info.value.provider == "darkai"
    assert darkai_upstream.requests == []


async def test_turning_the_flag_on_for_a_type_without_a_format_still_refuses(
    darkai_upstream: DarkAIUpstream,
) -> None:
    provider = DarkAI(api_endpoint=darkai_upstream.url, supports_embeddings=True)
    async with provider:
        with pytest.raises(CapabilityNotSupportedError):
            await provider.embed("gpt-4o", ["hi"])
    assert darkai_upstream.requests == []


async def test_an_entry_with_the_flag_off_refuses(openai_upstream: OpenAIUpstream) -> None:
    async with openai_for(openai_upstream, supports_embeddings=False) as provider:
        with pytest.raises(CapabilityNotSupportedError):
            await provider.embed("local-embed", ["hi"])
    assert openai_upstream.requests == []


@pytest.mark.parametrize(
    ("inputs", "dimensions", "match"),
    [([], None, "non-empty list"), (["a", 1], None, "strings"), (["a"], 0, "dimensions")],
)
async def test_a_bad_request_is_refused_before_sending(
    openai_upstream: OpenAIUpstream, inputs: list[Any], dimensions: int | None, match: str
) -> None:
    async with openai_for(openai_upstream) as provider:
        with pytest.raises(InvalidRequestError, match=match):
            await provider.embed("local-embed", inputs, dimensions=dimensions)
    assert openai_upstream.requests == []


# OpenAI ---------------------------------------------------------------------------------


async def test_openai_embed_posts_floats_and_reads_vectors_by_index(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.reverse_embeddings = True  # data[] last first: only index tells
    async with openai_for(openai_upstream) as provider:
        embedded = await provider.embed("local-embed", TEXTS)
    assert embedded == Embedded(
        [openai_wire.embedding_for(text) for text in TEXTS],
        Usage(prompt_tokens=4, total_tokens=4),
    )
    (request,) = openai_upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/embeddings")
    assert request.body == {"model": "local-embed", "input": TEXTS, "encoding_format": "float"}
    assert request.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"


async def test_openai_embed_in_base64_keeps_the_upstreams_form_and_bytes(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with openai_for(openai_upstream) as provider:
        embedded = await provider.embed("local-embed", TEXTS, encoding_format="base64")
    assert openai_upstream.requests[0].body["encoding_format"] == "base64"
    assert embedded.body is not None  # OpenAI's list, in order, as asked: relayable as is
    sent = json.loads(embedded.body)
    assert embedded.base64 == [item["embedding"] for item in sent["data"]]  # not re-encoded
    assert embedded.vectors == [openai_wire.embedding_for(text) for text in TEXTS]


def _packed(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _answer(form: str, model: str = "local-embed", order: list[int] | None = None) -> bytes:
    """An OpenAI embeddings answer for TEXTS in ``form``, its ``data`` in ``order``."""
    vectors = [openai_wire.embedding_for(text) for text in TEXTS]
    data = [
        {"object": "embedding", "index": i, "embedding": _packed(v) if form == "base64" else v}
        for i, v in enumerate(vectors)
    ]
    data = [data[i] for i in order or range(len(data))]
    usage = {"prompt_tokens": 4, "total_tokens": 4}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


@pytest.mark.parametrize(
    ("asked", "raw"),
    [
        ("float", _answer("float", order=[2, 0, 1])),
        ("base64", _answer("base64", order=[1, 0, 2])),
        ("float", _answer("float", model="other")),
        ("base64", _answer("float")),  # a server without base64
        ("float", _answer("base64")),
    ],
    ids=["out of order", "base64 out of order", "another model", "floats", "base64"],
)
async def test_an_answer_not_as_asked_is_read_but_not_relayable(
    openai_upstream: OpenAIUpstream, asked: Any, raw: bytes
) -> None:
    openai_upstream.then(Script(raw=raw))
    async with openai_for(openai_upstream) as provider:
        embedded = await provider.embed("local-embed", TEXTS, encoding_format=asked)
    assert embedded.body is None
    expected = [openai_wire.embedding_for(text) for text in TEXTS]
    assert embedded.vectors == expected
    assert embedded.base64 == [_packed(vector) for vector in expected]


async def test_base64_letters_are_checked_when_decoded(openai_upstream: OpenAIUpstream) -> None:
    """Shape at once (a malformed answer hands over); letters on decoding, which a
    relayed answer never needs."""
    openai_upstream.then(Script(raw=b'{"data": [{"index": 0, "embedding": "AAC!Pw=="}]}'))
    async with openai_for(openai_upstream) as provider:
        embedded = await provider.embed("local-embed", ["one"], encoding_format="base64")
    assert embedded.base64 == ["AAC!Pw=="]
    with pytest.raises(UpstreamProtocolError, match="does not decode"):
        _ = embedded.vectors


@pytest.mark.parametrize("form", ["float", "base64"])
async def test_an_answer_as_asked_is_relayable_as_it_came(
    openai_upstream: OpenAIUpstream, form: Any
) -> None:
    openai_upstream.then(Script(raw=_answer(form)))
    async with openai_for(openai_upstream) as provider:
        embedded = await provider.embed("local-embed", TEXTS, encoding_format=form)
    assert embedded.body == _answer(form)


async def test_openai_embed_asks_for_dimensions(openai_upstream: OpenAIUpstream) -> None:
    async with openai_for(openai_upstream) as provider:
        embedded = await provider.embed("local-embed", ["one", "two"], dimensions=3)
    assert embedded.vectors == [openai_wire.embedding_for(t, 3) for t in ("one", "two")]
    assert openai_upstream.requests[0].body["dimensions"] == 3


# Gemini ---------------------------------------------------------------------------------


async def test_gemini_embed_sends_one_request_per_input(gemini_upstream: GeminiUpstream) -> None:
    async with gemini_for(gemini_upstream) as provider:
        embedded = await provider.embed("gemini-embedding-001", TEXTS)
    assert embedded == Embedded(
        [gemini_wire.embedding_for(text) for text in TEXTS],
        Usage(prompt_tokens=4, total_tokens=4),
    )
    (request,) = gemini_upstream.requests
    assert (request.method, request.path) == (
        "POST",
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
    )
    model = "models/gemini-embedding-001"
    assert request.body == {
        "requests": [
            {"model": model, "content": {"role": "user", "parts": [{"text": t}]}} for t in TEXTS
        ]
    }
    assert request.headers["x-goog-api-key"] == GEMINI_KEY
    assert "Authorization" not in request.headers


async def test_gemini_embed_asks_for_output_dimensionality(
    gemini_upstream: GeminiUpstream,
) -> None:
    async with gemini_for(gemini_upstream) as provider:
        embedded = await provider.embed("gemini-embedding-001", ["one", "two"], dimensions=5)
    assert embedded.vectors == [gemini_wire.embedding_for(t, 5) for t in ("one", "two")]
    sent = gemini_upstream.requests[0].body["requests"]
    assert [item["outputDimensionality"] for item in sent] == [5, 5]


async def test_gemini_answer_without_usage_metadata_has_no_usage(
    gemini_upstream: GeminiUpstream,
) -> None:
    gemini_upstream.then(Script(raw=b'{"embeddings": [{"values": [0.5, -0.25]}]}'))
    async with gemini_for(gemini_upstream) as provider:
        embedded = await provider.embed("gemini-embedding-001", ["one"])
    assert embedded == Embedded([[0.5, -0.25]], None)


# Errors ---------------------------------------------------------------------------------

OPENAI_ERRORS = [
    pytest.param(
        "openai",
        404,
        openai_error("The model `nope` does not exist", "model_not_found", "invalid_request_error"),
        ModelNotSupportedError,
        id="openai-404-model",
    ),
    pytest.param(
        "openai",
        429,
        openai_error("Rate limit reached", "rate_limit_exceeded", "requests"),
        RateLimitedError,
        id="openai-429",
    ),
    pytest.param(
        "openai",
        401,
        openai_error("Incorrect API key", "invalid_api_key", "invalid_request_error"),
        AuthenticationError,
        id="openai-401",
    ),
    pytest.param("openai", 500, '{"error": "boom"}', UpstreamStatusError, id="openai-500"),
]
GEMINI_ERRORS = [
    pytest.param(
        "gemini",
        404,
        gemini_error(404, "NOT_FOUND", "models/nope is not found for API version v1beta"),
        ModelNotSupportedError,
        id="gemini-404-model",
    ),
    pytest.param(
        "gemini",
        429,
        gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded"),
        RateLimitedError,
        id="gemini-429",
    ),
    pytest.param(
        "gemini",
        403,
        gemini_error(403, "PERMISSION_DENIED", "The caller does not have permission"),
        AuthenticationError,
        id="gemini-403",
    ),
    pytest.param(
        "gemini",
        500,
        gemini_error(500, "INTERNAL", "internal error"),
        UpstreamStatusError,
        id="gemini-500",
    ),
]


def server_and_provider(
    kind: str, openai_upstream: OpenAIUpstream, gemini_upstream: GeminiUpstream
) -> tuple[ScriptedUpstream, Provider]:
    if kind == "openai":
        return openai_upstream, openai_for(openai_upstream)
    return gemini_upstream, gemini_for(gemini_upstream)


@pytest.mark.parametrize(("kind", "status", "body", "expected"), [*OPENAI_ERRORS, *GEMINI_ERRORS])
async def test_error_statuses_become_the_typed_errors_of_chat(
    openai_upstream: OpenAIUpstream,
    gemini_upstream: GeminiUpstream,
    kind: str,
    status: int,
    body: str,
    expected: type[Exception],
) -> None:
    server, provider = server_and_provider(kind, openai_upstream, gemini_upstream)
    server.then(Script(status=status, error_body=body, headers={"Retry-After": "7"}))
    async with provider:
        with pytest.raises(expected) as info:
            await provider.embed("nope", ["hi"])
    error = info.value
    assert type(error) is expected
    if isinstance(error, ModelNotSupportedError):
        assert (error.model, error.provider) == ("nope", kind)
    if isinstance(error, RateLimitedError):
        assert (error.retryable, error.retry_after) == (True, 7.0)
    if expected is UpstreamStatusError:
        assert isinstance(error, UpstreamStatusError)
        assert (error.status, error.retryable) == (500, True)
    if isinstance(error, AuthenticationError):
        assert error.retryable is False


@pytest.mark.parametrize(
    ("kind", "raw", "match"),
    [
        ("openai", b'{"object": "list"}', "missing key 'data'"),
        ("openai", b'{"data": [{"index": 0, "embedding": "AAAA"}]}', r"data\[0\]\.embedding"),
        ("openai", b'{"data": [{"index": 0, "embedding": [1, null]}]}', "NoneType"),
        (
            "openai",
            b'{"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}]}',
            r"data\[1\]\.index 0",
        ),
        (
            "openai",
            b'{"data": [{"index": 0, "embedding": [1]}, {"index": 2, "embedding": [2]}]}',
            r"index runs \[0, 2\]",
        ),
        (  # false == 0 and true == 1: in order to a list's comparison, not to ours
            "openai",
            b'{"data": [{"index": false, "embedding": [1]}, {"index": true, "embedding": [2]}]}',
            r"data\[0\]\.index False is not a new integer",
        ),
        ("openai", b'{"data": [{"index": 0, "embedding": [1]}]}', "1 embeddings for 2 inputs"),
        ("openai", b"not json", "invalid JSON"),
        ("openai", b'{"data": []}', "data is not a non-empty list"),
        ("openai", b'{"data": [{"index": 0, "embedding": "\xc3\xa9AAA"}]}', "is not base64"),
        ("openai", b'{"data": [{"index": 0, "embedding": "AA==AAAA"}]}', "is not base64"),
        (  # one form for the whole answer: floats after base64 are not base64
            "openai",
            b'{"data": [{"index": 0, "embedding": "AACAPw=="}, {"index": 1, "embedding": [1]}]}',
            r"data\[1\]\.embedding is not base64",
        ),
        ("gemini", b'{"embedding": {"values": [1]}}', "missing key 'embeddings'"),
        ("gemini", b'{"embeddings": [{"values": [1]}, {"values": []}]}', r"embeddings\[1\]"),
        ("gemini", b'{"embeddings": [{"values": [1, "2"]}, {"values": [2]}]}', "str '2'"),
        ("gemini", b'{"embeddings": [{"values": [1]}]}', "1 embeddings for 2 inputs"),
    ],
)
async def test_a_malformed_answer_names_what_is_wrong(
    openai_upstream: OpenAIUpstream,
    gemini_upstream: GeminiUpstream,
    kind: str,
    raw: bytes,
    match: str,
) -> None:
    server, provider = server_and_provider(kind, openai_upstream, gemini_upstream)
    server.then(Script(raw=raw))
    async with provider:
        with pytest.raises(UpstreamProtocolError, match=match) as info:
            await provider.embed("m", ["one", "two"])
    assert info.value.provider == kind
    assert info.value.retryable is False


# The test servers speak the real formats --------------------------------------------------


@pytest.mark.parametrize("encoding", ["base64 (the default)", "float"])
async def test_the_official_openai_sdk_reads_the_local_embeddings(
    openai_upstream: OpenAIUpstream, encoding: str
) -> None:
    client = AsyncOpenAI(base_url=openai_upstream.base_url, api_key="k", max_retries=0)
    try:
        if encoding == "float":
            answer = await client.embeddings.create(
                model="local-embed", input=TEXTS, dimensions=5, encoding_format="float"
            )
        else:  # the SDK asks for base64 and decodes it to floats itself
            answer = await client.embeddings.create(model="local-embed", input=TEXTS, dimensions=5)
    finally:
        await client.close()
    assert [item.embedding for item in answer.data] == [
        openai_wire.embedding_for(text, 5) for text in TEXTS
    ]
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (4, 4)
    sent = openai_upstream.requests[0].body
    assert sent["encoding_format"] == encoding.split()[0]
    # What polyroute sends is what the SDK sends, given floats.
    async with openai_for(openai_upstream) as provider:
        await provider.embed("local-embed", TEXTS, dimensions=5)
    ours = openai_upstream.requests[1].body
    assert ours == {**sent, "encoding_format": "float"}


async def test_the_official_gemini_sdk_reads_the_local_embeddings(
    gemini_upstream: GeminiUpstream,
) -> None:
    options = types.HttpOptions(base_url=gemini_upstream.base_url, api_version="v1beta")
    client = genai.Client(api_key="k", http_options=options)
    try:
        answer = await client.aio.models.embed_content(
            model="gemini-embedding-001",
            contents=TEXTS,
            config=types.EmbedContentConfig(output_dimensionality=6),
        )
    finally:
        await client.aio.aclose()
    assert answer.embeddings is not None
    assert [item.values for item in answer.embeddings] == [
        gemini_wire.embedding_for(text, 6) for text in TEXTS
    ]
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.prompt_token_count == 4
    sdk = gemini_upstream.requests[0]
    # What polyroute sends is what the SDK sends, to the same place.
    async with gemini_for(gemini_upstream) as provider:
        await provider.embed("gemini-embedding-001", TEXTS, dimensions=6)
    ours = gemini_upstream.requests[1]
    assert (ours.path, ours.body) == (sdk.path, sdk.body)
