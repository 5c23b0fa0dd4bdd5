"""Instructions per routed request, counted by callgrind: repeatable on a shared machine
where timings swing, so fit for "is it within 5%?" questions.

The client streams N answers (64 chunks, ten at a time) through a router with two
entries, from the benchmark upstream in its own process; the figure per request is
(count at N=400 - count at N=100) / 300, so start-up and imports cancel out.

  python -m benchmarks.instructions                      # text and tool-call streams
  python -m benchmarks.instructions --baseline-tree ../old   # and another checkout's text

Needs valgrind (`apt-get install valgrind`); takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

MESSAGES = [{"role": "user", "content": "Say something."}]
TOOLS = [{"type": "function", "function": {"name": "search"}}]
SMALL, LARGE = 100, 400


async def client_run(count: int, kind: str, base: str) -> None:
    """The measured client: ``count`` routed streams, ten at a time."""
    from polyroute import Router

    url = f"{base}/tools/v1" if kind == "tools" else f"{base}/v1"
    entry = {"type": "openai", "base_url": url, "models": ["bench"]}
    entry["options"] = {"include_usage": False}
    config = {"providers": [{"name": "a", **entry}, {"name": "b", **entry}]}
    router = Router.from_config({**config, "retry": {"attempts": 1}})

    async def one() -> None:
        if kind == "tools":
            async with router.stream("bench", MESSAGES, tools=TOOLS) as stream:
                async for _delta in stream.deltas():
                    pass
        else:
            async with router.stream("bench", MESSAGES) as stream:
                async for _text in stream:
                    pass

    for _ in range(count // 10):
        await asyncio.gather(*(one() for _ in range(10)))
    await router.aclose()


def count(kind: str, requests: int, base: str, tree: Path | None) -> int:
    """Instructions of one client run; with ``tree``, that checkout's polyroute (this
    file runs as a script, so PYTHONPATH comes before the installed package)."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, str(Path(__file__).resolve())]
    command += ["--client-run", str(requests), kind, base]
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())} if tree else None
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return int(re.findall(r"Collected : (\d+)", done.stderr)[-1])


def per_request(kind: str, base: str, tree: Path | None = None) -> float:
    return (count(kind, LARGE, base, tree) - count(kind, SMALL, base, tree)) / (LARGE - SMALL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument("--client-run", nargs=3, metavar=("N", "KIND", "BASE"))
    args = parser.parse_args()
    if args.client_run:
        requests, kind, base = args.client_run
        asyncio.run(client_run(int(requests), kind, base))
        return
    from benchmarks.__main__ import upstream

    with upstream(64, 0.0, None) as base:
        text = per_request("text", base)
        tools = per_request("tools", base)
        baseline = per_request("text", base, args.baseline_tree) if args.baseline_tree else None
    print(f"text stream:      {text / 1e6:.3f} M instructions per request")
    print(f"tool-call stream: {tools / 1e6:.3f} M ({tools / text:.2f}x the text stream)")
    if baseline is not None:
        print(f"baseline text:    {baseline / 1e6:.3f} M (this tree {text / baseline:.3f}x)")


if __name__ == "__main__":
    main()
