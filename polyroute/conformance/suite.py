"""The requests, what the client saw, and the verdict per fault.

The client is deliberately plain (aiohttp and polyroute's SSE decoder, not an SDK) and
reads a chat-completions stream as the official openai clients do: an event whose JSON
holds ``error`` is an error, ``data: [DONE]`` ends the stream, anything that is not
JSON is an error. The verdicts:

- ``visible_error``: an HTTP error status, an error event, a malformed chunk, a
  connection that broke, or a stream without its normal end (a chunk with a
  ``finish_reason``, then ``data: [DONE]``): a client can tell something went wrong.
- ``complete``: the normal end, and the whole expected answer, to the character.
- ``continued``: the same, with the backup asked to continue a cut answer on the way.
- ``silent_truncation``: the normal end, but not the expected answer: a client takes
  a cut (or spliced) answer for a complete one.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from polyroute.conformance.faults import (
    FAULTS,
    REFUSED,
    TOOLS,
    Fault,
    Ports,
    expected_call,
    expected_text,
    model_name,
    prompt,
)
from polyroute.conformance.upstreams import Exchanges, Upstreams
from polyroute.core.errors import ConfigError, UpstreamProtocolError
from polyroute.core.sse import SSEDecoder, excerpt

Outcome = Literal["complete", "continued", "visible_error", "silent_truncation"]
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Result:
    """The verdict on one fault."""

    fault: str
    outcome: Outcome
    detail: str


@dataclass
class Seen:
    """What the client saw of one streamed answer."""

    error: str | None = None
    """Why the client would raise, if it would."""
    text: str = ""
    calls: dict[int, list[str]] = field(default_factory=dict)
    """Tool calls by index: ``[name, arguments]``, fragments joined."""
    finish_reason: str | None = None
    done: bool = False
    """``data: [DONE]`` arrived."""
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the first text or tool call arrives (the fault upstream waits for it)."""


@dataclass(frozen=True)
class Target:
    """The gateway under test."""

    url: str
    """As an OpenAI SDK takes it: ``http://127.0.0.1:8000/v1``."""
    api_key: str | None = None
    model_prefix: str = "conformance"
    timeout_s: float = DEFAULT_TIMEOUT_S


async def run_suite(target: Target, ports: Ports) -> list[Result]:
    """Start the upstreams on ``ports``, send every fault's request through the gateway
    at once, and classify what came back, in the order of :data:`FAULTS`.

    Raises :class:`~polyroute.core.errors.ConfigError` when nothing answers at the
    gateway's address, or when a port is taken (see :class:`Upstreams`)."""
    async with Upstreams(ports) as upstreams, aiohttp.ClientSession() as session:
        await _check_reachable(target.url)
        seen = await asyncio.gather(
            *(
                observe(session, target, fault, upstreams.exchanges[fault.name].reached_client)
                for fault in FAULTS
            )
        )
        return [
            classify(fault, answer, upstreams.exchanges[fault.name])
            for fault, answer in zip(FAULTS, seen, strict=True)
        ]


async def _check_reachable(url: str) -> None:
    """Fail early on a wrong URL, rather than report nine visible errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, TimeoutError) as error:
        raise ConfigError(
            f"nothing answers at {url} ({type(error).__name__}: {error}): start the gateway "
            "first, with the config `polyroute conformance config` prints"
        ) from error
    writer.close()
    await writer.wait_closed()


def request_body(target: Target, fault: Fault) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model_name(target.model_prefix, fault.name),
        "messages": [{"role": "user", "content": prompt(fault.name)}],
        "stream": True,
    }
    if fault.calls_a_tool:
        body["tools"] = TOOLS
    return body


async def observe(
    session: aiohttp.ClientSession, target: Target, fault: Fault, reached: asyncio.Event
) -> Seen:
    """Send ``fault``'s request through the gateway and read the answer as a client;
    ``reached`` is set when the first text or tool call arrives."""
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    url = target.url.rstrip("/") + "/chat/completions"
    seen = Seen(reached=reached)
    try:
        async with asyncio.timeout(target.timeout_s):
            async with session.post(
                url, json=request_body(target, fault), headers=headers
            ) as answer:
                if answer.status != 200:
                    seen.error = f"HTTP {answer.status}: {_error_message(await answer.read())}"
                    return seen
                await _read_stream(answer, seen)
    except TimeoutError:
        seen.error = f"no end of the answer within {target.timeout_s:g} s"
    except aiohttp.ClientError as error:
        seen.error = f"the connection broke: {type(error).__name__}: {error}"
    return seen


async def _read_stream(answer: aiohttp.ClientResponse, seen: Seen) -> None:
    decoder = SSEDecoder(provider="gateway")
    try:
        async for data in answer.content.iter_any():
            for event in decoder.feed(data):
                if read_event(event.data, event.event, seen):
                    return
        for event in decoder.close():
            if read_event(event.data, event.event, seen):
                return
    except UpstreamProtocolError as error:
        seen.error = f"unreadable event stream: {error.message}"


def read_event(data: str, kind: str, seen: Seen) -> bool:
    """Read one event into ``seen``; True when the stream is over for the client."""
    if data.strip() == "[DONE]":
        seen.done = True
        return True
    try:
        chunk = json.loads(data)
    except ValueError:
        seen.error = f"a chunk that is not JSON: {excerpt(data, 60)}"
        return True
    if not isinstance(chunk, dict):
        seen.error = f"a chunk that is not a JSON object: {excerpt(data, 60)}"
        return True
    if kind == "error" or "error" in chunk:
        seen.error = f"an error event: {_message_of(chunk.get('error', chunk))}"
        return True
    try:
        for choice in chunk.get("choices") or []:
            _read_choice(choice, seen)
    except (AttributeError, TypeError, ValueError) as error:
        seen.error = f"a chunk the client cannot read ({error}): {excerpt(data, 60)}"
        return True
    return False


def _read_choice(choice: dict[str, Any], seen: Seen) -> None:
    delta = choice.get("delta") or {}
    seen.text += delta.get("content") or ""
    if delta.get("content") or delta.get("tool_calls"):
        seen.reached.set()
    for call in delta.get("tool_calls") or []:
        name_and_arguments = seen.calls.setdefault(int(call.get("index", 0)), ["", ""])
        function = call.get("function") or {}
        name_and_arguments[0] += function.get("name") or ""
        name_and_arguments[1] += function.get("arguments") or ""
    seen.finish_reason = choice.get("finish_reason") or seen.finish_reason


def classify(fault: Fault, seen: Seen, exchanges: Exchanges) -> Result:
    """The verdict on what the client saw, given what the upstreams were asked."""
    if seen.error is not None:
        after = f"after {len(seen.text)} characters, " if seen.text else ""
        after = "after part of a tool call, " if seen.calls else after
        return Result(fault.name, "visible_error", after + seen.error)
    if seen.finish_reason is None:
        end = "with [DONE]" if seen.done else "when the connection closed"
        return Result(fault.name, "visible_error", f"the stream ended {end}, no finish_reason")
    if not seen.done:
        detail = f"finish_reason {seen.finish_reason!r}, then the stream ended without [DONE]"
        return Result(fault.name, "visible_error", detail)
    mismatch = _mismatch(fault, seen)
    if mismatch is not None:
        ended = f"ended normally (finish_reason {seen.finish_reason!r}, [DONE])"
        return Result(fault.name, "silent_truncation", f"{ended}, but {mismatch}")
    note = _not_exercised(fault, exchanges)
    if exchanges.continuations:
        first = exchanges.continuations[0]
        detail = (
            f"the whole answer; the backup continued it after {first.partial_chars} "
            f"characters ({first.mode})"
        )
        return Result(fault.name, "continued", detail + note)
    whole = "the whole tool call" if fault.calls_a_tool else "the whole answer"
    source = ", from the backup" if exchanges.backup_requests else ""
    return Result(fault.name, "complete", whole + source + note)


def _mismatch(fault: Fault, seen: Seen) -> str | None:
    """How the answer differs from the expected one (``None``: it does not)."""
    if fault.calls_a_tool:
        name, arguments = expected_call()
        calls = [tuple(call) for _, call in sorted(seen.calls.items())]
        if seen.text or len(calls) != 1 or calls[0][0] != name:
            return f"the answer is not one call to {name} ({len(calls)} calls, {seen.text!r})"
        got = calls[0][1]
        if _same_json(got, arguments):
            return None
        return f"the call's arguments are {excerpt(got, 60)!r}, not {arguments!r}"
    expected = expected_text(fault.name)
    if seen.calls:
        return "it holds a tool call where text was expected"
    if seen.text == expected:
        return None
    if expected.startswith(seen.text):
        return f"it holds {len(seen.text)} of the {len(expected)} expected characters"
    at = next(
        (i for i, (a, b) in enumerate(zip(seen.text, expected, strict=False)) if a != b),
        min(len(seen.text), len(expected)),
    )
    return (
        f"it differs from the expected answer at character {at} "
        f"({len(seen.text)} characters, {len(expected)} expected)"
    )


def _same_json(got: str, expected: str) -> bool:
    try:
        return bool(json.loads(got) == json.loads(expected))
    except ValueError:
        return False


def _not_exercised(fault: Fault, exchanges: Exchanges) -> str:
    if fault.name == REFUSED or exchanges.fault_requests:
        return ""
    return "; but the gateway never called the fault's upstream: the fault was not exercised"


def _error_message(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return excerpt(body.decode("utf-8", "replace"), 100) or "(empty body)"
    detail = payload.get("error", payload) if isinstance(payload, dict) else payload
    return _message_of(detail)


def _message_of(detail: Any) -> str:
    message = detail.get("message", detail) if isinstance(detail, dict) else detail
    return excerpt(str(message), 100)
