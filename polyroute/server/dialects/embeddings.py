"""OpenAI's embeddings API (``POST /v1/embeddings``): a request body in, one
``embedding`` object per input out, as floats or as base64 (little-endian float32, as
OpenAI encodes them and its SDK asks by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from polyroute.core.embeddings import Embeddings, EncodingFormat
from polyroute.core.errors import InvalidRequestError
from polyroute.server.dialects import model_and_stream


@dataclass(frozen=True, slots=True)
class EmbeddingsCall:
    """A parsed embeddings request."""

    model: str | None
    inputs: list[str]
    dimensions: int | None
    encoding_format: EncodingFormat


def read_embeddings_body(body: Any) -> EmbeddingsCall:
    """The request in ``body``; raises :class:`InvalidRequestError` naming the key."""
    model, stream = model_and_stream(body)
    if stream:
        raise InvalidRequestError("stream: embeddings are not streamed")
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise InvalidRequestError(
            "input: a string or a non-empty list of strings (token arrays are not taken)"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise InvalidRequestError("dimensions: a positive integer")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequestError("encoding_format: float or base64")
    return EmbeddingsCall(model, inputs, dimensions, encoding)


def embeddings_body(embedded: Embeddings, call: EmbeddingsCall) -> bytes:
    """The ``list`` of ``embedding`` objects, in the inputs' order, with the usage: the
    upstream's bytes when it answered in OpenAI's format as asked, else encoded."""
    if embedded.embedded.body is not None:
        return embedded.embedded.body
    vectors = embedded.base64 if call.encoding_format == "base64" else embedded.vectors
    data = [
        {"object": "embedding", "index": index, "embedding": vector}
        for index, vector in enumerate(vectors)
    ]
    usage = embedded.usage
    tokens = {
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "total_tokens": usage.total_tokens if usage else 0,
    }
    return orjson.dumps({"object": "list", "data": data, "model": embedded.model, "usage": tokens})
