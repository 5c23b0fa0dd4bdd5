"""``python -m benchmarks.affinity``: what affinity routing does for upstreams' prompt
caches (issue 27), with benchmarks/gateway.py's parts, one run.

Two simulated upstreams (``polyroute simulate``: OpenAI's format, each with its own
prefix cache as OpenAI documents one: prompts of 1024 tokens and more, cached prefixes
in steps of 128 tokens; a first chunk 20 ms plus 100 ms per 1000 tokens not read from
the cache) behind two ``polyroute serve`` processes sharing one redis-server, with
``balance: weighted``. Conversations of several turns: each opens with a short system
prompt all share and a long document of its own (about 3,000 tokens, what a chat about
a file or a retrieval result sends), and every turn sends the whole conversation so
far, its turns going to the two gateways in turn. The same load runs twice, each time on
fresh upstreams (cold caches) and an empty Redis: with ``affinity: {by: conversation}``
and without. Figures per run: the share of input tokens read from a cache after each
conversation's first turn (the target: at least 90% with affinity), and over all turns;
TTFT p50 and p90, after the first turn and over all; how many conversations stayed on
one entry.

  python -m benchmarks.affinity            # 200 conversations of 10 turns (about a minute)
  python -m benchmarks.affinity --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.__main__ import machine
from benchmarks.gateway import PEERS, cell, free_port, started
from polyroute.simulator.text import answer_words
from tests.redis_server import RedisServer

RUNS = ["no-affinity", "affinity"]
TARGET = 0.9
"""The share of input tokens read from a cache after each conversation's first turn,
with affinity, at least."""
SYSTEM = (
    "You are a careful research assistant. Answer from the document the user shared, "
    "quote it where you can, and say so when it does not hold the answer. "
)
DOCUMENT_WORDS = 2_200
"""About 12,000 characters: 3,000 tokens of the simulation's four characters each."""
CACHE = {"min_tokens": 1024, "step_tokens": 128, "ttl_s": 300, "ms_per_1k_uncached": 100}
LATENCY = {"first_chunk_ms": 20, "chunk_gap_ms": 2}
ANSWER_WORDS = 30


@contextmanager
def upstreams(folder: Path, cores: set[int]) -> Iterator[list[str]]:
    """Two simulated upstreams with prompt caches (``polyroute simulate``); their URLs."""
    profiles = [
        {"name": name, "format": "openai", "words": ANSWER_WORDS, "latency": LATENCY,
         "prompt_cache": CACHE}
        for name in ("up-a", "up-b")
    ]  # fmt: skip
    path = folder / f"affinity-sim-{free_port()}.yaml"
    path.write_text(yaml.safe_dump({"upstreams": profiles}))
    process = subprocess.Popen(
        [sys.executable, "-m", "polyroute", "simulate", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    assert process.stdout is not None
    try:
        lines = [process.stdout.readline().decode().split("\t") for _ in profiles]
        if any(len(line) != 3 for line in lines):
            raise RuntimeError(f"polyroute simulate did not start: {lines}")
        yield [line[2].strip() for line in lines]
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def gateway_config(folder: Path, bases: list[str], redis_url: str, affinity: bool) -> Path:
    entries = [
        {"name": name, "type": "openai", "base_url": base, "models": ["m"]}
        for name, base in zip(("a", "b"), bases, strict=True)
    ]
    config: dict[str, Any] = {
        "providers": entries,
        "balance": "weighted",
        "state": {"backend": "redis", "url": redis_url},
    }
    if affinity:
        config["affinity"] = {"by": "conversation", "ttl_s": 600}
    path = folder / f"affinity-{'on' if affinity else 'off'}-{free_port()}.json"
    path.write_text(json.dumps(config))
    return path


def opening(conversation: int, seed: str) -> list[dict[str, str]]:
    document = "".join(answer_words(f"{seed}:{conversation}", DOCUMENT_WORDS)).strip()
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Here is my document:\n\n{document}\n\nWhat is it about?"},
    ]


async def turn(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]
) -> dict[str, Any]:
    """One streamed turn: its TTFT, answer, usage and the entry that served it."""
    body = {
        "model": "m",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    began = time.perf_counter()
    ttft: float | None = None
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    provider = None
    async with session.post(url, json=body) as response:
        if response.status != 200:
            return {"error": f"HTTP {response.status}"}
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if text := choice["delta"].get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - began
                    pieces.append(text)
            if chunk.get("usage"):
                usage = chunk["usage"]
                provider = (chunk.get("polyroute") or {}).get("provider")
    details = usage.get("prompt_tokens_details") or {}
    return {
        "ttft_s": ttft,
        "answer": "".join(pieces),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached_tokens": details.get("cached_tokens", 0),
        "provider": provider,
    }


async def converse(
    urls: list[str], args: argparse.Namespace, seed: str
) -> list[list[dict[str, Any]]]:
    """Every conversation, ``args.concurrency`` at a time; each one's turns in order."""
    limit = asyncio.Semaphore(args.concurrency)
    timeout = aiohttp.ClientTimeout(total=120)

    async def one(session: aiohttp.ClientSession, number: int) -> list[dict[str, Any]]:
        async with limit:
            messages = opening(number, seed)
            turns = []
            for index in range(args.turns):
                url = urls[(number + index) % len(urls)]  # the gateways in turn
                done = await turn(session, url, messages)
                turns.append(done)
                if "error" in done:
                    break
                messages = [
                    *messages,
                    {"role": "assistant", "content": done["answer"]},
                    {"role": "user", "content": f"And what does it say next ({index + 1})?"},
                ]
            return turns

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return list(await asyncio.gather(*(one(session, n) for n in range(args.conversations))))


def decisions(urls: list[str]) -> dict[str, int]:
    """The gateways' decisions that needed Redis (pin reads, with affinity), summed: taken
    there (``shared``) or alone past ``timeout_ms`` (``local``)."""
    found = {"shared": 0, "local": 0}
    for url in urls:
        metrics = url.replace("/v1/chat/completions", "/metrics")
        with urllib.request.urlopen(metrics, timeout=10) as answer:
            text = answer.read().decode()
        for where, count in re.findall(
            r'^polyroute_state_decisions\{where="(\w+)"\} (\S+)$', text, re.M
        ):
            found[where] = found.get(where, 0) + int(float(count))
    return found


def percentile_ms(seconds: list[float], q: float) -> float | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def summarise(name: str, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
    turns = [done for turns in conversations for done in turns]
    errors = sum(1 for done in turns if "error" in done)
    later = [done for turns in conversations for done in turns[1:] if "error" not in done]
    ok = [done for done in turns if "error" not in done]

    def share(done: list[dict[str, Any]]) -> float | None:
        prompt = sum(d["prompt_tokens"] for d in done)
        return round(sum(d["cached_tokens"] for d in done) / prompt, 4) if prompt else None

    def ttfts(done: list[dict[str, Any]]) -> list[float]:
        return [d["ttft_s"] for d in done if d["ttft_s"] is not None]

    one_entry = sum(1 for turns in conversations if len({d.get("provider") for d in turns}) == 1)
    return {
        "run": name,
        "conversations": len(conversations),
        "turns": len(turns),
        "errors": errors,
        "cached_share_after_first": share(later),
        "cached_share_all": share(ok),
        "ttft_p50_after_first_ms": percentile_ms(ttfts(later), 0.5),
        "ttft_p90_after_first_ms": percentile_ms(ttfts(later), 0.9),
        "ttft_p50_ms": percentile_ms(ttfts(ok), 0.5),
        "ttft_mean_after_first_ms": round(statistics.fmean(ttfts(later)) * 1000, 2)
        if later
        else None,
        "input_tokens": sum(d["prompt_tokens"] for d in ok),
        "conversations_on_one_entry": one_entry,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    cores = set(os.sched_getaffinity(0))
    PEERS.mkdir(exist_ok=True)
    redis = RedisServer().start()
    rows = []
    try:
        for name in RUNS:
            redis.cli("FLUSHALL")
            with ExitStack() as stack:
                bases = stack.enter_context(upstreams(PEERS, cores))
                config = gateway_config(PEERS, bases, redis.url, affinity=name == "affinity")
                urls = []
                for _ in range(2):
                    port = free_port()
                    command = [sys.executable, "-m", "polyroute", "serve", "-c", str(config)]
                    command += ["--port", str(port), "--workers", "1"]
                    root = f"http://127.0.0.1:{port}"
                    stack.enter_context(started(command, f"{root}/healthz", cores))
                    urls.append(f"{root}/v1/chat/completions")
                began = time.perf_counter()
                conversations = asyncio.run(converse(urls, args, seed=name))
                row = summarise(name, conversations)
                row["seconds"] = round(time.perf_counter() - began, 1)
                row["state_decisions"] = decisions(urls)
                rows.append(row)
                print(f"  {name}: {row['turns']} turns in {row['seconds']} s", file=sys.stderr)
    finally:
        redis.close()
    settings = {
        "conversations": args.conversations,
        "turns": args.turns,
        "concurrency": args.concurrency,
        "document_words": DOCUMENT_WORDS,
        "answer_words": ANSWER_WORDS,
        "prompt_cache": CACHE,
        "latency": LATENCY,
    }
    return {"machine": machine(), "settings": settings, "rows": rows}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'run':<12} {'turns':>5} {'errors':>6} {'cached after 1st':>16} {'cached all':>10} "
        f"{'TTFT p50 after 1st':>18} {'p90':>8} {'TTFT p50 all':>12} {'on one entry':>12} "
        f"{'Redis local':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cached = (cell(r["cached_share_after_first"], ".1%"), cell(r["cached_share_all"], ".1%"))
        ttft = (
            cell(r["ttft_p50_after_first_ms"], ".1f"),
            cell(r["ttft_p90_after_first_ms"], ".1f"),
            cell(r["ttft_p50_ms"], ".1f"),
        )
        print(
            f"{r['run']:<12} {r['turns']:>5} {r['errors']:>6} {cached[0]:>16} {cached[1]:>10} "
            f"{ttft[0]:>15} ms {ttft[1]:>5} ms {ttft[2]:>9} ms "
            f"{r['conversations_on_one_entry']:>6}/{r['conversations']} "
            f"{r['state_decisions']['local']:>5}/{sum(r['state_decisions'].values())}"
        )
    found = next((r for r in rows if r["run"] == "affinity"), None)
    if found is not None:
        share = found["cached_share_after_first"]
        held = share is not None and share >= TARGET and found["errors"] == 0
        print(
            f"\ntarget: >= {TARGET:.0%} of input tokens cached after each conversation's first "
            f"turn with affinity: {cell(share, '.1%')}, {'met' if held else 'NOT met'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=50, help="conversations at once")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/affinity-results.json"))
    if "--quick" in sys.argv:  # smaller defaults; options given explicitly still win
        parser.set_defaults(conversations=12, turns=3, concurrency=6)
    args = parser.parse_args()
    outcome = run(args)
    print_table(outcome["rows"])
    args.out.write_text(json.dumps(outcome, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
