"""Draw docs/relay_timeline.png from the router's real events.

Two requests run through simulated upstreams on 127.0.0.1: one whose first provider
drops the connection mid-answer (the answer is relayed), and one whose first provider
never starts (a hedge wins). Their structlog events, time-stamped, become one timeline
each. Run: .venv/bin/pip install -e '.[docs]' && .venv/bin/python docs/relay_timeline.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import structlog
from structlog.testing import LogCapture

from polyroute import Router

OUT = Path(__file__).with_name("relay_timeline.png")
PROMPT = [{"role": "user", "content": "Tell me about Alice"}]


def simulated(name: str, wire: str, first_chunk_ms: float, **failures: Any) -> dict[str, Any]:
    latency = {"first_chunk_ms": first_chunk_ms, "chunk_gap_ms": 25}
    return {
        "name": name,
        "type": "simulated",
        "models": ["m"],
        "options": {"format": wire, "words": 24, "latency": latency, "failures": failures},
    }


RELAY = {
    "providers": [
        simulated("first (openai)", "openai", 120, drop_after={"rate": 1.0, "chunks": 10}),
        simulated("second (darkai)", "darkai", 90),
    ],
}
HEDGE = {
    "providers": [simulated("stalled", "openai", 120, stall=1.0), simulated("hedge", "darkai", 90)],
    "hedge": {"after_ms": 300},
}


async def record(config: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    capture = LogCapture()
    structlog.configure(processors=[structlog.processors.TimeStamper(fmt=None), capture])
    try:
        async with Router.from_config({"retry": {"attempts": 1}, **config}) as router:
            text = await router.complete_text("m", PROMPT)
    finally:
        structlog.reset_defaults()
    return capture.entries, text


def draw(axis: Any, events: list[dict[str, Any]], title: str) -> None:
    start = events[0]["timestamp"]

    def ms(event: dict[str, Any]) -> float:
        return float(event["timestamp"] - start) * 1000

    lanes: dict[str, float] = {}
    opened: dict[str, float] = {}
    end = ms(events[-1])
    for event in events:
        name, provider = event["event"], event.get("provider")
        if name == "attempt.start":
            lanes.setdefault(provider, len(lanes))
            opened[provider] = ms(event)
        elif name in ("attempt.failed", "attempt.hedge_lost") and provider in opened:
            lane = lanes[provider]
            colour = "tab:red" if name == "attempt.failed" else "tab:gray"
            axis.broken_barh(
                [(opened[provider], ms(event) - opened[provider])],
                (lane - 0.3, 0.6),
                color=colour,
                alpha=0.8,
            )
            label = "dropped" if name == "attempt.failed" else "hedge lost: cancelled"
            axis.annotate(label, (ms(event), lane + 0.35), fontsize=8, ha="right")
            del opened[provider]
        elif name == "stream.first_chunk" or name == "route.relay":
            target = provider or event["to_provider"]
            axis.plot([ms(event)], [lanes.get(target, 0)], marker="v", color="black")
            text = (
                "first chunk"
                if name == "stream.first_chunk"
                else (f"relay: {event['chars']} chars kept, gap {event['gap_ms']:.0f} ms")
            )
            axis.annotate(text, (ms(event), lanes.get(target, 0) - 0.45), fontsize=8)
        elif name == "attempt.hedge":
            axis.axvline(ms(event), color="tab:orange", linestyle="--")
            axis.annotate(
                f" hedge started after {event['after_ms']:.0f} ms",
                (ms(event), -0.7),
                fontsize=8,
                color="tab:orange",
            )
    for provider, begun in opened.items():
        axis.broken_barh([(begun, end - begun)], (lanes[provider] - 0.3, 0.6), color="tab:green")
    axis.set_yticks(list(lanes.values()), list(lanes))
    axis.set_ylim(-0.8, len(lanes) - 0.2)
    axis.set_xlabel("ms since route.start")
    axis.set_title(title, fontsize=10)


async def main() -> None:
    relay_events, relay_text = await record(RELAY)
    hedge_events, _ = await record(HEDGE)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5))
    draw(top, relay_events, "Relay: the first provider drops mid-answer; the second continues it")
    draw(bottom, hedge_events, "Hedge: no first chunk within 300 ms; a second request wins")
    figure.tight_layout()
    figure.savefig(OUT, dpi=110)
    print(f"wrote {OUT} ({len(relay_text)} chars relayed answer)")


if __name__ == "__main__":
    asyncio.run(main())
