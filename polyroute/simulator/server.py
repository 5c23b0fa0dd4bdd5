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
from polyroute.core.sse import DONE_EVENT, OpenAIChunkEncoder, encode_event
from polyroute.simulator.profile import SimulatedUpstream
from polyroute.simulator.text import answer_words, tag, words_already_given

PATHS = {"darkai": "/chat", "openai": "/v1/chat/completions"}


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
        format (``http://127.0.0.1:8001/v1``; the provider adds ``/chat/completions``),
        ``api_endpoint`` for darkai's, which is the endpoint itself."""
        return self.base_url + "/v1" if self.profile.format == "openai" else self.url

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
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await self._pause(rng, profile.latency.first_chunk_ms)
        encoder = OpenAIChunkEncoder(str(body.get("model", "simulated")), id="chatcmpl-simulated")
        if profile.format == "openai":
            await response.write(encode_event(encoder.chunk({"role": "assistant", "content": ""})))
        for index, piece in enumerate(pieces):
            if index == drop_after:
                return await _hang_up(request)
            if index:
                await self._pause(rng, profile.latency.chunk_gap_ms)
            if profile.format == "openai":
                await response.write(encoder.encode(piece))
            else:
                text = piece.text if isinstance(piece, TextDelta) else ""
                await response.write(encode_event({"event": "text-chunk", "data": {"text": text}}))
        await response.write(self._ending(encoder, body, pieces, cut=cut))
        await response.write_eof()
        return response

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

    def _ending(
        self, encoder: OpenAIChunkEncoder, body: dict[str, Any], pieces: list[Delta], *, cut: bool
    ) -> bytes:
        if self.profile.format == "darkai":
            return encode_event({"event": "stream-end", "data": {}})
        calls = pieces and isinstance(pieces[0], ToolCallDelta)
        reason = "length" if cut else "tool_calls" if calls else "stop"
        ending = encoder.encode(FinishDelta(reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            ending += encoder.encode(UsageDelta(Usage(0, len(pieces), len(pieces))))
        return ending + DONE_EVENT

    async def _pause(self, rng: random.Random, milliseconds: float) -> None:
        delay = milliseconds + rng.uniform(0, self.profile.latency.jitter_ms)
        if delay:
            await asyncio.sleep(delay / 1000)


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
    """The conversation a request is about (as a stable key) and, for a request to
    continue an answer, the partial answer it carries."""
    if wire == "openai":
        messages = [(str(m.get("role")), str(m.get("content"))) for m in body.get("messages") or []]
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


async def _hang_up(request: web.Request) -> web.StreamResponse:
    # Abort the TCP connection: the client sees a reset, as from a crashed upstream.
    transport = request.transport
    if transport is not None:
        transport.abort()
    await asyncio.Event().wait()  # cancelled by aiohttp once it sees the connection gone
    raise ConnectionAbortedError("simulated hang-up")
