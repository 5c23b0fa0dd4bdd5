"""OpenAI's chat completions (``POST /v1/chat/completions``): a request body in,
``chat.completion.chunk`` events or a whole ``chat.completion`` out, errors as OpenAI
error objects. The chunks are written by the one OpenAI-format encoder (core/sse.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from polyroute.core.deltas import (
    AssistantMessage,
    Delta,
    FinishDelta,
    ReasoningDelta,
    RestartDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageDelta,
    WireDelta,
)
from polyroute.core.errors import InvalidRequestError, PolyrouteError, UpstreamError
from polyroute.core.request import NativeRequest, RequestOptions
from polyroute.core.sse import DONE_EVENT, OpenAIChunkEncoder, encode_event
from polyroute.core.wire import WireFormat
from polyroute.router.stream import RouterStream
from polyroute.server.dialects import model_and_stream
from polyroute.server.dialects.errors import WireError, classify, openai_error, own_failure

# The keys of a chat-completions body the gateway reads itself or hands to the router
# by name; any other top-level key is a provider-specific one (the openai SDK's
# `extra_body` puts them there) and travels on in extra_body.
_OWN_KEYS = frozenset({"model", "messages", "stream", "stream_options"})
_OPTION_KEYS = frozenset(RequestOptions.model_fields) - {"extra_body"}
_PASSED_AS_THEY_ARE = frozenset({TextDelta, ToolCallDelta, ReasoningDelta})


def polyroute_facts(stream: RouterStream) -> dict[str, Any]:
    """What the gateway says of how an answer was served (headers, last event)."""
    facts: dict[str, Any] = {
        "provider": stream.provider,
        "model": stream.model,
        "attempts": len(stream.attempts),
    }
    cost = stream.cost
    facts["cost_usd"], facts["cost_status"] = cost.usd, cost.status
    if dropped := stream.dropped:
        facts["dropped"] = dropped
    if stream.cache is not None:
        facts["cache"] = stream.cache
    return facts


def takes_back_text(delta: RestartDelta) -> bool:
    """Whether a restart takes back text the client was sent: a stream cannot, so that
    one ends it (:func:`restart_error`). A restart after reasoning alone (an upstream cut
    while it reasoned) goes on: the new provider's reasoning follows what was shown."""
    return delta.discarded > 0


def restart_error(delta: RestartDelta) -> UpstreamError:
    """A stream cannot take back what it sent: a restarted answer ends it."""
    return UpstreamError(
        "the answer broke off and restarted on another provider; send the request again",
        provider=delta.provider,
        retryable=True,
    )


@dataclass(slots=True)
class ChatExchange:
    """A parsed chat-completions request, and its answer's encoder."""

    model: str | None
    messages: Any
    stream: bool
    include_usage: bool
    options: dict[str, Any]
    native: NativeRequest | None = None
    _encoder: OpenAIChunkEncoder | None = None
    _finish: str | None = None
    _said: tuple[bytes, bytes] = (b"", b"")
    """The id and model every chunk of the answer says, as JSON strings."""

    @property
    def pass_through(self) -> tuple[WireFormat, ...] | None:
        """A streamed answer takes an OpenAI-format upstream's text chunks as they came."""
        return ("openai",) if self.stream else None

    def collect(self, batch: list[Delta]) -> None:
        pass  # the whole answer is the stream's message

    async def whole(self, stream: RouterStream, request_id: str) -> dict[str, Any]:
        return completion(
            f"chatcmpl-{request_id}",
            stream.model or stream.requested_model,
            stream.message,
            stream.finish_reason,
            stream.usage,
        )

    def opening(self, stream: RouterStream, request_id: str) -> list[bytes]:
        model, chunk_id = stream.model or "", f"chatcmpl-{request_id}"
        self._encoder = OpenAIChunkEncoder(model, id=chunk_id)
        self._said = (orjson.dumps(chunk_id), orjson.dumps(model))
        return [encode_event(self._encoder.chunk({"role": "assistant", "content": ""}))]

    def encode(self, batch: list[Delta], out: list[bytes]) -> None:
        encoder = self._encoder
        assert encoder is not None, "opening() comes first"
        for delta in batch:
            if type(delta) in _PASSED_AS_THEY_ARE:
                out.append(encoder.encode(delta))
            elif isinstance(delta, WireDelta):
                out.append(self._relayed(delta, encoder))
            elif isinstance(delta, FinishDelta):
                self._finish = delta.reason  # it goes out last, with the usage
            elif isinstance(delta, RestartDelta):
                if takes_back_text(delta):
                    raise restart_error(delta)
            elif not isinstance(delta, UsageDelta):
                out.append(encoder.encode(delta))

    def _relayed(self, delta: WireDelta, encoder: OpenAIChunkEncoder) -> bytes:
        """The upstream's chunks as it sent them, but for the id and model, which say
        what every other chunk of the answer says; encoded anew when those cannot be
        rewritten in every chunk (a server that writes them otherwise, or whose chunks
        differ in them)."""
        said_id, said_model = self._said
        count = len(delta.texts)
        data = rewritten(delta.data, b'"id":', delta.id, said_id, count)
        if data is not None:
            data = rewritten(data, b'"model":', delta.model, said_model, count)
        if data is not None:
            return data
        return b"".join(encoder.encode(TextDelta(text)) for text in delta.texts)

    async def closing(self, stream: RouterStream) -> bytes:
        encoder = self._encoder
        assert encoder is not None, "opening() comes first"
        facts = polyroute_facts(stream)
        last: dict[str, Any] = {} if self.include_usage else {"polyroute": facts}
        events = [encode_event(encoder.chunk(finish_reason=self._finish or "stop", **last))]
        if self.include_usage:
            usage = stream.usage
            usage_chunk = encoder.chunk(usage=usage, polyroute=facts)
            if usage is None:
                usage_chunk["usage"] = None
            events.append(encode_event(usage_chunk))
        events.append(DONE_EVENT)
        return b"".join(events)

    def failure(self, error: WireError) -> bytes:
        return encode_event(error.body)


class ChatDialect:
    """``POST /v1/chat/completions``."""

    name = "chat"

    async def read(self, body: Any, headers: Mapping[str, str]) -> ChatExchange:
        return read_chat_body(body)

    def error(self, error: PolyrouteError) -> WireError:
        return openai_error(classify(error))

    def refusal(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> WireError:
        return openai_error(own_failure(status, message, code, param))


def read_chat_body(body: Any) -> ChatExchange:
    """The request in ``body`` (decoded JSON); raises :class:`InvalidRequestError`
    naming the key that is wrong. Messages and options are checked by the router."""
    model, stream = model_and_stream(body)
    if "messages" not in body:
        raise InvalidRequestError("messages: a list of messages is required")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidRequestError("stream_options must be an object")
    options = {key: value for key, value in body.items() if key in _OPTION_KEYS}
    extra = {key: value for key, value in body.items() if key not in _OWN_KEYS | _OPTION_KEYS}
    if isinstance(body.get("extra_body"), dict):  # sent literally by a client that nests it
        extra = {**extra.pop("extra_body"), **extra}
    if extra:
        options["extra_body"] = extra
    return ChatExchange(
        model=model,
        messages=body["messages"],
        stream=stream,
        include_usage=bool(stream_options.get("include_usage")),
        options=options,
    )


def rewritten(data: bytes, key: bytes, theirs: Any, ours: bytes, count: int) -> bytes | None:
    """``data`` with the JSON member ``key`` (``"id":``) saying ``ours`` (a JSON string
    or integer) rather than ``theirs`` in each of its ``count`` chunks (written with or
    without a space after the colon), or ``None`` when that is not what it holds."""
    if type(theirs) is not str and type(theirs) is not int:
        return None
    said = orjson.dumps(theirs)
    if said == ours:
        return data
    for space in (b"", b" "):
        old, new = key + space + said, key + space + ours
        replaced = data.replace(old, new)
        grew = len(replaced) - len(data)
        found = grew // (len(new) - len(old)) if grew else data.count(old)
        if found:
            return replaced if found == count else None
    return None


def completion(
    request_id: str,
    model: str,
    message: AssistantMessage,
    finish_reason: str | None,
    usage: Usage | None,
) -> dict[str, Any]:
    """A whole ``chat.completion`` object."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message_body(message),
                "logprobs": message.extra.get("logprobs"),
                "finish_reason": finish_reason or "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage.as_dict()
    return body


def message_body(message: AssistantMessage) -> dict[str, Any]:
    body = message.as_dict()
    if message.reasoning is not None:
        body["reasoning_content"] = message.reasoning
    body.update({k: v for k, v in message.extra.items() if k != "logprobs"})
    return body
