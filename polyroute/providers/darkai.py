"""DarkAI (darkai.foundation): a prompt-format upstream streaming JSON lines.

Specified by the g4f-derived seed ``shared/seeds/000_4c44414efa0ec245.txt``. The
real service is gone, so ``working`` is False; a configuration can turn it on for
a compatible endpoint. Wire format: every ``data:`` line is one JSON event (the
seed reads line by line, so no blank line is needed between them)::

    data: {"event": "text-chunk", "data": {"text": "Hel"}}
    data: {"event": "stream-end", ...}
"""

from __future__ import annotations

from typing import Any

from polyroute.core.deltas import Delta, FinishDelta, TextDelta
from polyroute.core.errors import UpstreamError, UpstreamProtocolError
from polyroute.core.jsoncodec import loads
from polyroute.core.logging import get_logger
from polyroute.core.messages import continuation_prompt, format_prompt
from polyroute.core.request import ChatRequest
from polyroute.core.sse import SSEEvent, excerpt
from polyroute.providers.compat import AsyncGeneratorProvider

_log = get_logger()


class DarkAI(AsyncGeneratorProvider):
    """The DarkAI upstream: ``{"query": prompt, "model": model}`` in, text chunks out."""

    type_name = "darkai"
    url = "https://darkai.foundation/chat"
    api_endpoint = "https://darkai.foundation/chat"
    working = False
    default_model = "llama-3-70b"
    models = ["gpt-4o", "gpt-3.5-turbo", "llama-3-70b"]
    model_aliases = {"llama-3.1-70b": "llama-3-70b"}
    headers = {
        "accept": "text/event-stream",
        "content-type": "application/json",
        "user-agent": (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
        ),
    }
    framing = "lines"
    end_event_name = "stream-end"
    supports_continuation = True  # a prompt format: the partial answer goes after "Assistant:"
    prompt_format = True
    accepted_options = frozenset()  # the upstream takes none: every option given is dropped

    def build_request(
        self,
        model: str,
        request: ChatRequest,
        *,
        continue_from: str | None = None,
        prefill: bool | None = None,
    ) -> dict[str, Any]:
        # The upstream takes no sampling options; like the seed, it is sent none. A
        # prompt is always continued after its "Assistant:" cue, whatever ``prefill``.
        if continue_from:
            return {"query": continuation_prompt(request.messages, continue_from), "model": model}
        return {"query": format_prompt(request.messages), "model": model}

    def parse_event(self, event: SSEEvent, out: list[Delta]) -> bool:
        try:
            payload = loads(event.data)
            kind = payload["event"]
            if kind == "text-chunk":
                text = payload["data"]["text"]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
                if text:
                    out.append(TextDelta(text))
                return False
        except (ValueError, KeyError, TypeError) as error:
            raise UpstreamProtocolError(
                f"malformed event ({type(error).__name__}: {error}): {excerpt(event.data)}",
                provider=self.entry_name,
            ) from None
        if kind == "stream-end":
            out.append(FinishDelta("stop"))
            return True
        if kind == "error":
            raise UpstreamError(
                f"error event in the stream: {_error_message(payload)}", provider=self.entry_name
            )
        _log.debug("provider.unknown_event", provider=self.entry_name, upstream_event=str(kind))
        return False


def _error_message(payload: dict[str, Any]) -> str:
    detail = payload.get("data", payload.get("message"))
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("error") or detail
    return excerpt(str(detail)) if detail is not None else "(no message)"
