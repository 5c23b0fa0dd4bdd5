"""The suite's upstreams: real aiohttp servers on 127.0.0.1, OpenAI's wire format.

- The fault upstream, on the base port, plays one fault per path
  (``/<fault>/v1/chat/completions``), every time it is asked.
- The backup, on the next port, answers every fault's request whole, and a request to
  continue a cut answer (by instruction or by prefill, as polyroute asks: docs/relay.md)
  with exactly the rest of it, using the simulator's reading of a continuation.
- Nothing may listen on the port after that (the connection-refused fault).

Both record, per fault, what they were asked, so the suite can tell an answer the
backup continued from one it gave whole, and a fault the gateway never exercised. A
fault that strikes mid-answer waits until the suite's client has received part of the
answer (or :data:`HOLD_S` has passed): the client then holds a part of the answer when
the upstream fails, whatever the gateway's timing, and the verdict does not change from
one run to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from aiohttp import web

from polyroute.conformance.faults import (
    FAULTS_BY_NAME,
    HOST,
    REFUSED,
    Ports,
    answer_pieces,
    expected_call,
    fault_named_in,
)
from polyroute.core.deltas import Delta, FinishDelta, TextDelta, ToolCallDelta, Usage, UsageDelta
from polyroute.core.errors import ConfigError
from polyroute.core.messages import CONTINUE_INSTRUCTION
from polyroute.core.sse import DONE_EVENT, OpenAIChunkEncoder, encode_event
from polyroute.simulator.server import read_conversation, tool_call
from polyroute.simulator.text import words_already_given

CHUNK_GAP_S = 0.005
"""Between two chunks: paced like a model, so that a gateway has passed the first chunks
on to its client before the fault strikes, as it would in production."""
CUT_AFTER = 12
"""Chunks of text before ``cut-mid-answer`` closes the connection."""
BROKEN_AT = 8
"""Chunks of text before the malformed chunk, and before the error event."""
CALL_FRAGMENTS_BEFORE_CUT = 3
HOLD_S = 2.0
"""How long a mid-answer fault waits for the client to receive part of the answer, for a
gateway that holds the answer back (polyroute holds tool calls until they are whole)."""
ARGUMENT_FRAGMENT = 8
"""Characters of a tool call's arguments per chunk, as models stream them."""


@dataclass
class Continuation:
    """A request to the backup to continue a cut answer."""

    mode: Literal["instruction", "prefill"]
    """``instruction`` (a user message asks to continue) or ``prefill`` (the
    conversation ends with the partial answer)."""
    partial_chars: int


@dataclass
class Exchanges:
    """What the upstreams were asked for one fault."""

    fault_requests: int = 0
    backup_requests: int = 0
    continuations: list[Continuation] = field(default_factory=list)
    reached_client: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the suite's client when the first text or tool call reaches it."""


class Upstreams:
    """The fault upstream and the backup on ``ports``; use as ``async with``.

    Raises :class:`ConfigError` on entry when a port is taken, or when something listens
    on the port that must refuse connections.
    """

    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self.exchanges = {name: Exchanges() for name in FAULTS_BY_NAME}
        self._runners: list[web.AppRunner] = []
        self._number = 0

    async def __aenter__(self) -> Upstreams:
        await _check_refused(self.ports.refused)
        try:
            await self._serve(self.ports.faults, "/{fault}/v1/chat/completions", self._fault)
            await self._serve(self.ports.backup, "/v1/chat/completions", self._backup)
        except OSError as error:
            await self.aclose()
            taken = error.errno == errno.EADDRINUSE
            why = "one of them is taken" if taken else f"they cannot be opened: {error}"
            raise ConfigError(
                f"the suite's upstreams need ports {self.ports.faults} and "
                f"{self.ports.backup} on {HOST}, and {why}: choose others with "
                "--upstreams-port (and give the gateway the config printed for them)"
            ) from error
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop both servers; answers still stalled end with their connections."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def _serve(
        self, port: int, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> None:
        app = web.Application()
        app.router.add_post(path, handler)
        # handler_cancellation: a stalled answer ends when the gateway gives up on it.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, HOST, port).start()

    async def _fault(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["fault"]
        if name not in FAULTS_BY_NAME or name == REFUSED:
            return _error(404, f"no fault {name!r} at this path", "not_found_error")
        exchanges = self.exchanges[name]
        exchanges.fault_requests += 1
        body = await request.json()
        play = _PLAYS[name]
        return await play(request, self._encoder(body), exchanges.reached_client)

    async def _backup(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        name = fault_named_in(body.get("messages"))
        if name is None:
            return _error(400, "no conformance fault named in the messages", "invalid_request")
        exchanges = self.exchanges[name]
        exchanges.backup_requests += 1
        pieces = _backup_answer(body, name, exchanges)
        encoder = self._encoder(body)
        response = await _open(request, encoder)
        await _write(response, encoder, pieces)
        await response.write(_ending(encoder, body, pieces))
        await response.write_eof()
        return response

    def _encoder(self, body: dict[str, Any]) -> OpenAIChunkEncoder:
        self._number += 1
        model = str(body.get("model", "conformance"))
        return OpenAIChunkEncoder(model, id=f"chatcmpl-conformance-{self._number}")


def _backup_answer(body: dict[str, Any], name: str, exchanges: Exchanges) -> list[Delta]:
    """The whole answer, or (asked to continue) exactly the rest of it."""
    if (call := tool_call(body)) is not None:
        return _call_pieces(*call)
    pieces = answer_pieces(name)
    _, partial = read_conversation("openai", body)
    if partial:
        messages = body.get("messages") or [{}]
        is_instructed = messages[-1].get("content") == CONTINUE_INSTRUCTION
        continuation = Continuation("instruction" if is_instructed else "prefill", len(partial))
        exchanges.continuations.append(continuation)
        # The tag is always delivered whole (it is the first chunk): only words remain.
        words = pieces[1:]
        pieces = words[words_already_given(partial, words) :]
    return [TextDelta(piece) for piece in pieces]


def _call_pieces(name: str, arguments: str) -> list[Delta]:
    """A call to a tool: its name first, then its arguments in fragments."""
    fragments = [
        arguments[i : i + ARGUMENT_FRAGMENT] for i in range(0, len(arguments), ARGUMENT_FRAGMENT)
    ]
    first: Delta = ToolCallDelta(0, "call_conformance", name, "")
    return [first, *(ToolCallDelta(0, arguments=fragment) for fragment in fragments)]


# The faults, one coroutine each ---------------------------------------------------

Play = Callable[[web.Request, OpenAIChunkEncoder, asyncio.Event], Awaitable[web.StreamResponse]]
"""How one fault answers: the request, the encoder of its chunks, and the event its
client sets once part of the answer reached it."""


async def _cut_mid_answer(
    request: web.Request, encoder: OpenAIChunkEncoder, reached_client: asyncio.Event
) -> web.StreamResponse:
    response = await _open(request, encoder)
    await _write(response, encoder, _text("cut-mid-answer")[:CUT_AFTER])
    await _hold(reached_client)
    await _hang_up(request)


async def _cut_in_tool_call(
    request: web.Request, encoder: OpenAIChunkEncoder, reached_client: asyncio.Event
) -> web.StreamResponse:
    response = await _open(request, encoder)
    call = _call_pieces(*expected_call())
    await _write(response, encoder, call[: 1 + CALL_FRAGMENTS_BEFORE_CUT])
    await _hold(reached_client)
    await _hang_up(request)


async def _stall_before_first_chunk(
    request: web.Request, encoder: OpenAIChunkEncoder, reached_client: asyncio.Event
) -> web.StreamResponse:
    await _open(request, None)
    await _stall()


async def _stall_after_first_chunk(
    request: web.Request, encoder: OpenAIChunkEncoder, reached_client: asyncio.Event
) -> web.StreamResponse:
    response = await _open(request, encoder)
    await _write(response, encoder, _text("stall-after-first-chunk")[:1])
    await _stall()


async def _malformed_chunk(
    request: web.Request, encoder: OpenAIChunkEncoder, reached_client: asyncio.Event
) -> web.StreamResponse:
    pieces = _text("malformed-chunk")
    response = await _open(request, encoder)
    await _write(response, encoder, pieces[:BROKEN_AT])
    await _hold(reached_client)
    # The next piece's chunk with its JSON cut short: a gateway that skips it and goes
    # on loses that piece of the answer without a word.
    whole = encoder.encode(pieces[BROKEN_AT])
    await response.write(whole[: len(whole) // 2] + b"\n\n")
    await _write(response, encoder, pieces[BROKEN_AT + 1 :])
    await response.write(_ending(encoder, {}, pieces))
    await response.write_eof()
    return response


async def _error_event(
    request: web.Request, encoder: OpenAIChunkEncoder, reached_client: asyncio.Event
) -> web.StreamResponse:
    response = await _open(request, encoder)
    await _write(response, encoder, _text("error-event")[:BROKEN_AT])
    await _hold(reached_client)
    # As OpenAI's API does when a stream fails: an error object, then the end of the body.
    error = {"message": "conformance: the model is overloaded", "type": "server_error"}
    await response.write(encode_event({"error": {**error, "param": None, "code": None}}))
    await response.write_eof()
    return response


async def _rate_limited(
    request: web.Request, encoder: OpenAIChunkEncoder, reached_client: asyncio.Event
) -> web.StreamResponse:
    return _error(429, "conformance: rate limit reached", "rate_limit_exceeded", retry_after=1)


async def _unavailable(
    request: web.Request, encoder: OpenAIChunkEncoder, reached_client: asyncio.Event
) -> web.StreamResponse:
    return _error(503, "conformance: the service is unavailable", "server_error")


_PLAYS: dict[str, Play] = {
    "cut-mid-answer": _cut_mid_answer,
    "cut-in-tool-call": _cut_in_tool_call,
    "stall-before-first-chunk": _stall_before_first_chunk,
    "stall-after-first-chunk": _stall_after_first_chunk,
    "malformed-chunk": _malformed_chunk,
    "error-event": _error_event,
    "rate-limited-429": _rate_limited,
    "unavailable-503": _unavailable,
}


# Writing answers ------------------------------------------------------------------


def _text(fault: str) -> list[Delta]:
    return [TextDelta(piece) for piece in answer_pieces(fault)]


async def _open(request: web.Request, encoder: OpenAIChunkEncoder | None) -> web.StreamResponse:
    """Status 200 and the headers, sent at once; then (given an ``encoder``), as OpenAI
    does, the chunk that opens the assistant's message."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if encoder is not None:
        opening = encoder.chunk({"role": "assistant", "content": ""})
        await response.write(encode_event(opening))
    return response


async def _write(
    response: web.StreamResponse, encoder: OpenAIChunkEncoder, pieces: list[Delta]
) -> None:
    for piece in pieces:
        await asyncio.sleep(CHUNK_GAP_S)
        await response.write(encoder.encode(piece))


def _ending(encoder: OpenAIChunkEncoder, body: dict[str, Any], pieces: list[Delta]) -> bytes:
    calls = bool(pieces) and isinstance(pieces[0], ToolCallDelta)
    ending = encoder.encode(FinishDelta("tool_calls" if calls else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        ending += encoder.encode(UsageDelta(Usage(8, len(pieces), 8 + len(pieces))))
    return ending + DONE_EVENT


def _error(status: int, message: str, code: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    error = {"message": message, "type": code, "param": None, "code": code}
    return web.json_response({"error": error}, status=status, headers=headers)


async def _hold(reached_client: asyncio.Event) -> None:
    """Until part of the answer reached the client, or :data:`HOLD_S` passed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reached_client.wait(), HOLD_S)


async def _hang_up(request: web.Request) -> NoReturn:
    # Abort the connection without ending the chunked body: the gateway sees its
    # upstream vanish mid-answer, as when a provider's server crashes.
    if request.transport is not None:
        request.transport.abort()
    await _stall()  # aiohttp cancels this handler once the connection is gone


async def _stall() -> NoReturn:
    await asyncio.Event().wait()  # until the gateway hangs up, or the suite stops
    raise AssertionError("unreachable: an event nobody sets")


async def _check_refused(port: int) -> None:
    """The connection-refused fault needs a port where nothing listens."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    except (OSError, TimeoutError):
        return
    writer.close()
    await writer.wait_closed()
    raise ConfigError(
        f"something listens on {HOST}:{port}, where the connection-refused fault needs "
        "nothing: choose other ports with --upstreams-port"
    )
