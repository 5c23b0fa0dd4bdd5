"""Router tests' shared fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from polyroute import Router, TextDelta, WireDelta
from polyroute.core.deltas import Delta
from polyroute.router import stream as stream_module


def _as_texts(out: list[Delta]) -> list[Delta]:
    """``out`` with each relayed run as the text deltas it carries."""
    return [
        piece
        for delta in out
        for piece in (
            [TextDelta(text) for text in delta.texts] if isinstance(delta, WireDelta) else [delta]
        )
    ]


@pytest.fixture(params=["decoded", "relayed as it came"])
def chunk_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: as written, and with every stream asking for pass-through in
    the format of the router's first entry that has one (``pass_through="openai"``, the
    gateway's chat completions, or ``"anthropic"``, its Messages), its deltas read back
    as texts: the consumer must see the same answer, relays and errors either way."""
    if request.param != "decoded":
        original = Router.stream

        def stream(self: Router, *args: Any, **kwargs: Any) -> Any:
            formats = [p.wire_format for p in self.providers if p.wire_format is not None]
            kwargs.setdefault("pass_through", formats[0] if formats else "openai")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Router, "stream", stream)
        deliverable = stream_module._DELIVERABLE
        monkeypatch.setitem(deliverable, "deltas", _as_texts)
        monkeypatch.setitem(deliverable, "batches", lambda out: (_as_texts(out),))
    return str(request.param)
