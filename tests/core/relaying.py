"""Reading an answer as a pass-through reader does, for the readers' property tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from polyroute import PolyrouteError
from polyroute.core.deltas import Delta, TextDelta, WireDelta
from polyroute.core.sse import SSEDecoder
from polyroute.core.wire import EventRunReader, Relayed
from polyroute.providers.base import Provider


def read_through(
    answer: bytes,
    cuts: list[int],
    provider: Provider,
    reader: Callable[[SSEDecoder], EventRunReader] | None,
) -> tuple[list[Delta], list[WireDelta], str | None]:
    """The deltas ``provider``'s parser gives (relayed runs as their texts), the runs
    relayed and the error's message, reading ``answer`` in pieces cut at ``cuts``
    through ``reader`` (``None``: the SSE decoder alone, nothing relayed)."""
    parse = provider.stream_parser()
    decoder = SSEDecoder(provider="up")
    feeding: SSEDecoder | EventRunReader = decoder if reader is None else reader(decoder)
    deltas: list[Delta] = []
    relayed: list[WireDelta] = []
    bounds = [0, *cuts, len(answer)]
    pieces = [answer[a:b] for a, b in itertools.pairwise(bounds)]
    try:
        batches: list[list[Relayed]] = [list(feeding.feed(p)) for p in pieces]
        batches.append(list(feeding.close()))
    except PolyrouteError as error:  # raised by the decoder, before any parsing
        return deltas, relayed, str(error)
    try:
        for batch in batches:
            for event in batch:
                if isinstance(event, WireDelta):
                    relayed.append(event)
                    deltas += [TextDelta(text) for text in event.texts]
                elif parse(event, deltas):
                    return deltas, relayed, None
    except PolyrouteError as error:
        return deltas, relayed, str(error)
    return deltas, relayed, "no end"
