"""One simulated upstream as a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from typing import Any

from aiohttp import web

from polyroute.core.deltas import Delta, FinishDelta, TextDelta, ToolCallDelta, Usage, UsageDelta
from polyroute.core.errors import refusals_to_listen
from polyroute.core.messages import CONTINUE_INSTRUCTION
from polyroute.core.sse import DONE_EVENT, OpenAIChunkEncoder, encode_event, named_event
from polyroute.simulator.prefix_cache import CacheRead, PrefixCache, prompt_text
from polyroute.simulator.profile import SimulatedUpstream
from polyroute.simulator.text import answer_words, tag, words_already_given

PATHS = {"darkai": "/chat", "openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


class SimulatorServer:
    """Serves ``profile``'s wire format with its latency and failure shares.

    Decisions are drawn from ``random.Random(f"{seed}:{request number}")``: the same
    seed gives the same sequence of outcomes for the same sequence of requests.
    """

    def __init__(self, profile: SimulatedUpstream, host: str = "127.0.0.1") -> None:
        self.profile = profile
        self.host = host
        self.port = profile.port
        self.requests = 0
        self.outcomes: Counter[str] = Counter()
        """How each request was answered: ``ok``, ``status 503``, ``reset``, ``stall``, ``drop``."""
        self.prefix_cache = PrefixCache(profile.prompt_cache) if profile.prompt_cache else None
        """This upstream's own prompt cache (``prompt_cache`` in the profile), or ``None``."""
        self.cache_reads: list[CacheRead] = []
        """With a prompt cache: what each answered request's prompt found in it."""
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The endpoint a provider of this wire format posts to."""
        return self.base_url + PATHS[self.profile.format]

    @property
    def config_url(self) -> str:
        """What a provider entry for this upstream is given: ``base_url`` for the openai
        format (``http://127.0.0.1:8001/v1``; the provider adds ``/chat/completions``)
        and the anthropic one (``http://127.0.0.1:8001``; the provider adds
        ``/v1/messages``), ``api_endpoint`` for darkai's, which is the endpoint itself."""
        wire = self.profile.format
        if wire == "openai":
            return self.base_url + "/v1"
        return self.base_url if wire == "anthropic" else self.url

    async def start(self) -> SimulatorServer:
        """Listen; raises :class:`PortInUseError` when the profile's port is taken."""
        app = web.Application()
        app.router.add_post(PATHS[self.profile.format], self._answer)
        app.router.add_get("/v1/models", self._models)
        # handler_cancellation: a stalled answer ends when its client goes away.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            with refusals_to_listen(self.host, self.port):
                await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def _models(self, request: web.Request) -> web.Response:
        """``GET /v1/models`` as OpenAI answers it (any other name is answered too)."""
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "polyroute-simulator"}
            for name in self.profile.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        profile = self.profile
        number = self.requests
        self.requests += 1
        rng = random.Random(f"{profile.seed}:{number}")
        body: dict[str, Any] = await request.json()
        failures = profile.failures
        draw = rng.random()
        for status, share in failures.status.items():
            if draw < share:
                self.outcomes[f"status {status}"] += 1
                return web.json_response(
                    {"error": {"message": f"simulated {status}", "code": None}}, status=status
                )
            draw -= share
        if draw < failures.reset:
            self.outcomes["reset"] += 1
            return await _hang_up(request)
        draw -= failures.reset
        if draw < failures.stall:
            self.outcomes["stall"] += 1
            await asyncio.Event().wait()
        draw -= failures.stall
        drop_after = None
        if failures.drop_after and draw < failures.drop_after.rate:
            drop_after = failures.drop_after.chunks
        self.outcomes["drop" if drop_after is not None else "ok"] += 1

        pieces = self._answer_pieces(body, number)
        limit = max_tokens(body)
        cut = limit is not None and len(pieces) > limit  # one chunk counts as one token
        if cut:
            pieces = pieces[:limit]
        read = self._read_cache(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        extra_ms = 0.0
        if self.prefix_cache is not None and read is not None:
            extra_ms = self.prefix_cache.first_chunk_extra_ms(read)  # a hit comes sooner
        await self._pause(rng, profile.latency.first_chunk_ms + extra_ms)
        writer = _Writer(profile.format, str(body.get("model", "simulated")), read)
        await response.write(writer.opening())
        for index, piece in enumerate(pieces):
            if index == drop_after:
                return await _hang_up(request)
            if index:
                await self._pause(rng, profile.latency.chunk_gap_ms)
            await response.write(writer.piece(piece))
        await response.write(writer.ending(body, pieces, cut=cut))
        await response.write_eof()
        return response

    def _read_cache(self, body: dict[str, Any]) -> CacheRead | None:
        """What the prompt finds in this upstream's prompt cache (which then holds it)."""
        if self.prefix_cache is None:
            return None
        messages = _messages(self.profile.format, body)
        read = self.prefix_cache.read(prompt_text(body.get("tools"), messages))
        self.cache_reads.append(read)
        return read

    def _answer_pieces(self, body: dict[str, Any], number: int) -> list[Delta]:
        """The answer, one delta per chunk: a call to a tool when the request offers
        tools (openai format), else the tagged filler text."""
        profile = self.profile
        if profile.format == "openai" and (call := tool_call(body)) is not None:
            name, arguments = call
            pieces: list[Delta] = [ToolCallDelta(0, f"call_sim_{number}", name, "")]
            step = 8  # arguments in short fragments, as models stream them
            fragments = (arguments[i : i + step] for i in range(0, len(arguments), step))
            return pieces + [ToolCallDelta(0, arguments=fragment) for fragment in fragments]
        key, partial = read_conversation(profile.format, body)
        words = answer_words(key, profile.words)
        if partial is None:
            words = [tag(profile.name), *words]
        else:
            given = words_already_given(partial, words)
            words = words[max(0, given - profile.continuation_overlap) :]
        return [TextDelta(word) for word in words]

    async def _pause(self, rng: random.Random, milliseconds: float) -> None:
        delay = milliseconds + rng.uniform(0, self.profile.latency.jitter_ms)
        if delay:
            await asyncio.sleep(delay / 1000)


class _Writer:
    """One answer's bytes in the upstream's wire format; usage says what the prompt
    cache read (``read``), as each API reports it, when the upstream has one."""

    def __init__(self, wire: str, model: str, read: CacheRead | None) -> None:
        self.wire = wire
        self.model = model
        self.read = read
        self.encoder = OpenAIChunkEncoder(model, id="chatcmpl-simulated")

    def opening(self) -> bytes:
        if self.wire == "openai":
            return encode_event(self.encoder.chunk({"role": "assistant", "content": ""}))
        if self.wire == "darkai":
            return b""
        usage = {"input_tokens": 0, "output_tokens": 1, **self._anthropic_input()}
        message: dict[str, Any] = {
            "id": "msg_simulated",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        block = {"type": "text", "text": ""}
        start = {"type": "content_block_start", "index": 0, "content_block": block}
        return named_event("message_start", {"type": "message_start", "message": message}) + (
            named_event("content_block_start", start)
        )

    def piece(self, piece: Delta) -> bytes:
        if self.wire == "openai":
            return self.encoder.encode(piece)
        text = piece.text if isinstance(piece, TextDelta) else ""
        if self.wire == "darkai":
            return encode_event({"event": "text-chunk", "data": {"text": text}})
        delta = {"type": "text_delta", "text": text}
        event = {"type": "content_block_delta", "index": 0, "delta": delta}
        return named_event("content_block_delta", event)

    def ending(self, body: dict[str, Any], pieces: list[Delta], *, cut: bool) -> bytes:
        if self.wire == "darkai":
            return encode_event({"event": "stream-end", "data": {}})
        calls = pieces and isinstance(pieces[0], ToolCallDelta)
        reason = "length" if cut else "tool_calls" if calls else "stop"
        if self.wire == "anthropic":
            stop = {"type": "content_block_stop", "index": 0}
            delta = {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens" if cut else "end_turn"},
                "usage": {"output_tokens": len(pieces)},
            }
            return (
                named_event("content_block_stop", stop)
                + named_event("message_delta", delta)
                + named_event("message_stop", {"type": "message_stop"})
            )
        ending = self.encoder.encode(FinishDelta(reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            ending += self.encoder.encode(UsageDelta(self._openai_usage(len(pieces))))
        return ending + DONE_EVENT

    def _openai_usage(self, completion: int) -> Usage:
        read = self.read
        if read is None:
            return Usage(0, completion, completion)
        details = {"prompt_tokens_details": {"cached_tokens": read.cached_tokens}}
        return Usage(read.prompt_tokens, completion, read.prompt_tokens + completion, details)

    def _anthropic_input(self) -> dict[str, int]:
        """Anthropic's input fields: uncached input apart from cache reads and writes."""
        read = self.read
        if read is None:
            return {}
        uncached = read.prompt_tokens - read.cached_tokens - read.written_tokens
        return {
            "input_tokens": uncached,
            "cache_read_input_tokens": read.cached_tokens,
            "cache_creation_input_tokens": read.written_tokens,
        }


def max_tokens(body: dict[str, Any]) -> int | None:
    """The answer's limit in tokens (``max_completion_tokens``, else ``max_tokens``), or
    ``None``; a value that is not a count is ignored, as the limit is a simulation's."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def tool_call(body: dict[str, Any]) -> tuple[str, str] | None:
    """The call a simulated model makes, as (name, JSON arguments): to the tool that
    ``tool_choice`` names, else the first one; none when no tools are offered, when
    ``tool_choice`` is ``none``, or when the last message is a tool's result (the
    model then answers in text, so an agent loop ends)."""
    tools = [tool.get("function") or {} for tool in body.get("tools") or []]
    choice = body.get("tool_choice")
    messages = body.get("messages") or [{}]
    if not tools or choice == "none" or messages[-1].get("role") == "tool":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        tools = [tool for tool in tools if tool.get("name") == wanted] or tools
    function = tools[0]
    properties = (function.get("parameters") or {}).get("properties") or {}
    arguments = {name: _sample(schema) for name, schema in properties.items()}
    return str(function.get("name", "tool")), json.dumps(arguments)


def _sample(schema: dict[str, Any]) -> Any:
    """A value of a JSON-schema type, visibly made up."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    samples = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    return samples.get(kind, "simulated") if isinstance(kind, str) else "simulated"


_ROLE_LINE = re.compile(r"^(System|User|Assistant|Tool|Developer): ", re.MULTILINE)
_CUE = "\nAssistant:"


def read_conversation(wire: str, body: dict[str, Any]) -> tuple[str, str | None]:
    """The conversation a request is about (as a stable key: the same in every chat
    format) and, for a request to continue an answer, the partial answer it carries."""
    if wire != "darkai":
        messages = _messages(wire, body)
        partial = None
        if len(messages) >= 2 and messages[-1] == ("user", CONTINUE_INSTRUCTION):
            partial, messages = messages[-2][1], messages[:-2]
        elif messages and messages[-1][0] == "assistant":
            partial, messages = messages[-1][1], messages[:-1]
        return json.dumps(messages), partial
    query = str(body.get("query", ""))
    cue = query.rfind(_CUE)
    if cue < 0:
        return json.dumps([("user", query)]), None
    rest = query[cue + len(_CUE) :]
    parts = _ROLE_LINE.split(query[:cue])[1:]  # role, content, role, content...
    messages = [
        (role.lower(), text.removesuffix("\n"))
        for role, text in zip(parts[::2], parts[1::2], strict=True)
    ]
    return json.dumps(messages), (rest.removeprefix(" ") if rest else None)


def _messages(wire: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """A chat request's messages as (role, text): Anthropic's ``system`` first, content
    blocks' texts joined; a DarkAI request's prompt as one user message."""
    if wire == "darkai":
        return [("user", str(body.get("query", "")))]
    messages = []
    if wire == "anthropic" and (system := body.get("system")):
        messages.append(("system", _text(system)))
    for message in body.get("messages") or []:
        messages.append((str(message.get("role")), _text(message.get("content"))))
    return messages


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return str(content)


async def _hang_up(request: web.Request) -> web.StreamResponse:
    # Abort the TCP connection: the client sees a reset, as from a crashed upstream.
    transport = request.transport
    if transport is not None:
        transport.abort()
    await asyncio.Event().wait()  # cancelled by aiohttp once it sees the connection gone
    raise ConnectionAbortedError("simulated hang-up")
