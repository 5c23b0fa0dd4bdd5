"""A local server speaking DarkAI's wire format, with scriptable faults."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tests.upstreams.scripted import Chunk, Script, ScriptedUpstream

END_EVENT = {"event": "stream-end", "data": {}}


def text_event(text: str) -> dict[str, object]:
    return {"event": "text-chunk", "data": {"text": text}}


def encode_events(events: Sequence[object], line_end: bytes = b"\n") -> bytes:
    """Events as DarkAI frames them: one ``data: {json}`` line and a blank line each."""
    return b"".join(
        b"data: " + json.dumps(event).encode() + line_end + line_end for event in events
    )


class DarkAIUpstream(ScriptedUpstream):
    def __init__(self, default: Script | None = None) -> None:
        super().__init__("/chat", default)

    def encode_chunk(self, index: int, text: Chunk, script: Script, request: Any) -> bytes:
        assert isinstance(text, str), "DarkAI streams text only"
        return encode_events([text_event(text)], script.line_end)

    def encode_end(self, script: Script, request: Any) -> bytes:
        return encode_events([END_EVENT], script.line_end)
