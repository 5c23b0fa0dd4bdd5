"""``python -m benchmarks.gateway``: polyroute serve against other gateways, one run.

Every gateway serves the same two local upstreams (``benchmarks.upstream``: 64 chunks
at once, and 64 chunks 10 ms apart) and is driven by the same load client, so the
figures differ only by the gateway in between:

  direct        the client talks to the upstream itself (the baseline for added TTFT)
  floor-proxy   the least an aiohttp server can do to relay a stream (benchmarks/
                floor_proxy.py): the floor for any Python gateway, polyroute's included
  polyroute     polyroute serve, 1 worker
  polyroute-messages   the same, spoken to in Anthropic's Messages (POST /v1/messages)
  polyroute-responses  the same, spoken to in OpenAI's Responses (POST /v1/responses)
  polyroute-2w  polyroute serve --workers 2
  litellm       LiteLLM proxy (litellm[proxy], pinned below, in its own venv)
  portkey       the Portkey gateway (npm @portkey-ai/gateway, pinned, with
                @hono/node-server 1.13.5, which its streaming needs, bound to 127.0.0.1)

The two dialect rows send their dialect's streamed request to the same OpenAI-format
upstreams (the gateway translates it, and writes the answer in the dialect's events),
each through a polyroute serve process of its own, so that each row's RSS is its own;
their CPU per stream is also given against the chat row's, within each repeat.

Each gateway runs in its own process pinned to its own core; the upstreams and the
load client share the other core. Workloads: concurrency 1, 50 and 200 with no delay
upstream (saturated) and 100 paced. For each repeat the gateways run one after another
in an order that rotates, and figures are medians over the repeats. Per run (workers
started spread over a warm-up, then the streams started in the next ``--seconds``;
see ``load``): streams/s, TTFT p50/p99 (to the first chunk with text) and the TTFT
added over direct, the gateway's CPU per stream (user + system time of its
processes), and its peak RSS.

  python -m benchmarks.gateway --setup   # install the peers into benchmarks/.peers (once)
  python -m benchmarks.gateway           # the full run (about 12 minutes)
  python -m benchmarks.gateway --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.__main__ import machine, upstream

PEERS = Path(__file__).resolve().parent / ".peers"
# Never float this pin: 1.82.7, 1.82.8 and 1.107.0 were pulled after a supply-chain
# compromise. 1.106.12 is the newest release whose [proxy] extra installs from PyPI here
# (later ones need litellm-proxy / litellm-proxy-extras builds that are not published).
LITELLM = "litellm[proxy]==1.106.12"
PORTKEY_PACKAGE = {
    "private": True,
    "dependencies": {"@portkey-ai/gateway": "1.15.2", "@hono/node-server": "1.13.5"},
    # The gateway's own dependency range takes a newer @hono/node-server, with which
    # its streaming fails ("TypeError: immutable"): force the one it needs.
    "overrides": {"@hono/node-server": "1.13.5"},
}
# The pinned build binds every interface; the benchmark serves on loopback only.
PORTKEY_LISTEN = ("e({fetch:Lu.fetch,port:Ku})", 'e({fetch:Lu.fetch,port:Ku,hostname:"127.0.0.1"})')
MASTER_KEY = "sk-bench-0123456789abcdef0123456789"
GATEWAYS = [
    "direct",
    "floor-proxy",
    "polyroute",
    "polyroute-messages",
    "polyroute-responses",
    "polyroute-2w",
    "litellm",
    "portkey",
]
WORKLOADS = [
    ("saturated", 1),
    ("saturated", 50),
    ("saturated", 200),
    ("paced", 100),
    ("relayed", 50),
]
RELAYING = {"polyroute"}
"""The rows measured on ``relayed`` (every stream cut halfway and continued by a second
entry): the floor proxy and direct cannot relay, and the dialects add nothing to it."""
PROMPT = "Say something."
MESSAGES = [{"role": "user", "content": PROMPT}]
EMBED_INPUTS = [f"a short passage to embed, number {index}" for index in range(16)]


@dataclass(frozen=True)
class Wire:
    """A client dialect as the load client speaks it: where it posts, what, and how it
    finds the first chunk with text and the end of a complete answer in the bytes."""

    path: str
    body: Callable[[str], dict[str, Any]]
    first_text: re.Pattern[bytes]
    end: bytes


WIRES = {
    "chat": Wire(
        "/v1/chat/completions",
        lambda model: {"model": model, "stream": True, "messages": MESSAGES},
        re.compile(rb'"content":\s*"token'),
        b"data: [DONE]",
    ),
    "messages": Wire(
        "/v1/messages",
        lambda model: {"model": model, "max_tokens": 1024, "stream": True, "messages": MESSAGES},
        re.compile(rb'event: content_block_delta\ndata: [^\n]*"text_delta",\s*"text":\s*"token'),
        b"event: message_stop\n",
    ),
    "responses": Wire(
        "/v1/responses",
        lambda model: {"model": model, "input": PROMPT, "stream": True},
        re.compile(rb'event: response\.output_text\.delta\ndata: [^\n]*"delta":\s*"token'),
        b"event: response.completed\n",
    ),
    # Not streamed: one JSON answer (benchmarks/embeddings.py); "first text" is the
    # first vector, the end the usage, which both the upstream and polyroute put last.
    "embeddings": Wire(
        "/v1/embeddings",
        lambda model: {"model": model, "input": EMBED_INPUTS, "encoding_format": "float"},
        re.compile(rb'"embedding":\s*\['),
        b'"total_tokens"',
    ),
    # The same in base64, as OpenAI's SDKs ask by default.
    "embeddings-base64": Wire(
        "/v1/embeddings",
        lambda model: {"model": model, "input": EMBED_INPUTS, "encoding_format": "base64"},
        re.compile(rb'"embedding":\s*"'),
        b'"total_tokens"',
    ),
}
SERVED = {
    "polyroute": ("chat", 1),
    "polyroute-messages": ("messages", 1),
    "polyroute-responses": ("responses", 1),
    "polyroute-2w": ("chat", 2),
    "polyroute-embeddings": ("embeddings", 1),  # benchmarks/embeddings.py's row
}
"""polyroute serve's rows: the dialect the load client speaks, and the workers."""
CHAT_ROW = "polyroute"
"""The row the dialect rows are measured against, in the same repeat."""
CPU_TARGET = ("saturated", 50, 1.15)
"""A dialect's CPU per stream at most this many times chat completions' (the issue's)."""
TTFT_TARGET = ("saturated", 1, 1.0)
"""A dialect's added TTFT p50 at most this many ms over direct (the issue's)."""


# Setup ------------------------------------------------------------------------------


def setup() -> None:
    """Install the peers, pinned, into benchmarks/.peers (not into the project's venv)."""
    PEERS.mkdir(exist_ok=True)
    venv = PEERS / "litellm"
    if not (venv / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "-q", LITELLM], check=True)
    portkey = PEERS / "portkey"
    portkey.mkdir(exist_ok=True)
    (portkey / "package.json").write_text(json.dumps(PORTKEY_PACKAGE, indent=2))
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=portkey, check=True
    )
    build = portkey / "node_modules" / "@portkey-ai" / "gateway" / "build"
    source = (build / "start-server.js").read_text()
    if source.count(PORTKEY_LISTEN[0]) != 1:
        raise SystemExit("the Portkey build changed: cannot bind it to 127.0.0.1")
    (build / "loopback-server.mjs").write_text(source.replace(*PORTKEY_LISTEN))


# Gateways ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Target:
    """Where the load client sends each workload, and the gateway's root process."""

    name: str
    urls: dict[str, str]
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    pid: int | None = None
    cores: str = "-"
    dialect: str = "chat"


def wait_until_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    """Poll ``url`` until it answers (a gateway prints readiness in its own way)."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the gateway exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)  # a process we do not control: polling is the only signal
    raise RuntimeError(f"{url}: not ready within {seconds} s")


@contextmanager
def started(
    command: list[str], ready: str, cores: set[int], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    try:
        wait_until_ready(ready, process)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def gateway(name: str, ups: dict[str, str], core: int, both: set[int], stack: ExitStack) -> Target:
    """Start gateway ``name`` in front of ``ups`` (workload -> upstream base URL)."""
    if name == "direct":
        return Target(name, {w: f"{base}/v1/chat/completions" for w, base in ups.items()})
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    urls = {w: f"{root}/v1/chat/completions" for w in ups}
    if name == "floor-proxy":
        cores = {core}
        command = [sys.executable, "-m", "benchmarks.floor_proxy", json.dumps(ups), str(port)]
        process = stack.enter_context(started(command, f"{root}/healthz", cores))
        urls = {w: f"{root}/{w}/v1/chat/completions" for w in ups}
        return Target(name, urls, {}, process.pid, str(core))
    if name in SERVED:
        dialect, workers = SERVED[name]
        cores = both if workers == 2 else {core}
        urls = {w: root + WIRES[dialect].path for w in ups}
        entries = [
            {"name": w, "type": "openai", "base_url": f"{base}/v1", "models": [w]}
            for w, base in ups.items()
        ]
        if "relayed" in ups:  # first an entry that always cuts the answer halfway
            cut = f"{ups['relayed']}/cut/v1"
            entries.insert(
                0, {"name": "cut", "type": "openai", "base_url": cut, "models": ["relayed"]}
            )
        config = PEERS / f"polyroute-{port}.json"
        # Never cooled down: every stream starts on the entry that cuts it.
        config.write_text(json.dumps({"providers": entries, "cooldown": {"failures": 1_000_000}}))
        command = [sys.executable, "-m", "polyroute", "serve", "-c", str(config)]
        command += ["--port", str(port), "--workers", str(workers)]
        process = stack.enter_context(started(command, f"{root}/healthz", cores))
    elif name == "litellm":
        cores = {core}
        model_list = [
            {
                "model_name": w,
                "litellm_params": {
                    "model": f"openai/{w}",
                    "api_base": f"{base}/v1",
                    "api_key": "x",
                },
            }
            for w, base in ups.items()
        ]
        config = PEERS / f"litellm-{port}.json"  # YAML is a superset of JSON
        config.write_text(json.dumps({"model_list": model_list}))
        command = [str(PEERS / "litellm" / "bin" / "litellm"), "--config", str(config)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        env = {
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: no fetch from GitHub
            "LITELLM_LOG": "ERROR",
        }
        ready = f"{root}/health/liveliness"
        process = stack.enter_context(started(command, ready, cores, env))
    elif name == "portkey":
        cores = {core}
        server = PEERS / "portkey/node_modules/@portkey-ai/gateway/build/loopback-server.mjs"
        command = ["node", str(server), f"--port={port}", "--headless"]
        process = stack.enter_context(started(command, root, cores, {"NODE_ENV": "production"}))
    else:
        raise SystemExit(f"unknown gateway {name!r}; choose from {', '.join(GATEWAYS)}")
    headers = {w: {"Authorization": f"Bearer {MASTER_KEY}"} for w in ups}
    if name == "portkey":
        for w, base in ups.items():
            headers[w] |= {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{base}/v1"}
    dialect = SERVED[name][0] if name in SERVED else "chat"
    return Target(name, urls, headers, process.pid, ",".join(map(str, sorted(cores))), dialect)


# Measuring the gateway's processes --------------------------------------------------


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if found := re.search(r"VmHWM:\s+(\d+) kB", status):
            total += int(found[1])
    return total / 1024


# The load client (its own process) --------------------------------------------------


async def load(
    url: str, headers: dict[str, str], model: str, concurrency: int, seconds: float, wire: Wire
) -> dict[str, Any]:
    """``concurrency`` workers, each sending one streamed request after another.

    Workers start spread over the warm-up (worker i after ``i / concurrency`` of it)
    and never wait for each other: a barrier (all workers finishing their warm-up
    streams, then starting together) makes every paced stream start and end in the
    same few milliseconds, and as their durations are equal they stay that way; the
    figures are then those of a thundering herd of 100 requests every 0.7 s, not of
    100 independent clients. Measured: the streams started in the ``seconds`` after
    the warm-up (the parent reads the gateway's CPU time at "measure" and "end").
    A stream counts when its answer reached ``wire``'s end (which follows no error);
    its latency is the time to the whole answer.
    """
    import aiohttp

    body = json.dumps(wire.body(model)).encode()
    first_text, end = wire.first_text, wire.end
    headers = {**headers, "Content-Type": "application/json"}
    ttfts: list[float] = []
    latencies: list[float] = []
    errors = 0
    cache: dict[str, int] = {}  # the x-polyroute-cache answers of the measured streams
    warm = min(1.0, seconds / 3)
    begin = time.perf_counter()
    measure_from = begin + warm
    until = measure_from + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        started = time.perf_counter()
        first: float | None = None
        seen, tail, ended = b"", b"", False
        async with session.post(url, data=body, headers=headers) as response:
            async for piece in response.content.iter_any():
                if first is None:
                    seen += piece
                    if first_text.search(seen):
                        first = time.perf_counter() - started
                if not ended:  # the end may be split across two reads
                    window = tail + piece
                    ended = end in window
                    tail = window[-len(end) :]
        latency = time.perf_counter() - started
        if not measure_from <= started < until:
            return
        if response.status != 200 or first is None or not ended:
            errors += 1
        else:
            ttfts.append(first)
            latencies.append(latency)
            said = response.headers.get("x-polyroute-cache", "none")
            cache[said] = cache.get(said, 0) + 1

    async def worker(session: aiohttp.ClientSession, index: int) -> None:
        await asyncio.sleep(warm * index / concurrency)
        while time.perf_counter() < until:
            await one(session)

    async def announce() -> None:
        await asyncio.sleep(measure_from - time.perf_counter())
        print("measure", flush=True)
        await asyncio.sleep(until - time.perf_counter())
        print("end", flush=True)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [worker(session, index) for index in range(concurrency)]
        await asyncio.gather(announce(), *workers)
    return {
        "streams": len(ttfts),
        "errors": errors,
        "cache": cache,
        "seconds": seconds,
        "ttft_p50_ms": percentile_ms(ttfts, 0.5),
        "ttft_p99_ms": percentile_ms(ttfts, 0.99),
        "latency_p50_ms": percentile_ms(latencies, 0.5),
        "latency_p99_ms": percentile_ms(latencies, 0.99),
    }


def percentile_ms(seconds: list[float], q: float) -> float | None:
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else None


def measure(
    target: Target,
    workload: str,
    concurrency: int,
    seconds: float,
    core: int,
    window: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """One load client's run against ``target``; ``window``: called as the measured
    window opens and as it closes (after the warm-up, before the last streams end)."""
    command = [sys.executable, "-m", "benchmarks.gateway", "--load", target.urls[workload]]
    command += [
        json.dumps(target.headers.get(workload, {})),
        workload,
        str(concurrency),
        str(seconds),
        target.dialect,
    ]
    client = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    assert client.stdout is not None
    pids = process_tree(target.pid) if target.pid else []
    if client.stdout.readline().strip() != "measure":
        raise RuntimeError(f"{target.name}: the load client failed")
    cpu_before = cpu_seconds(pids)
    if window:
        window[0]()
    if client.stdout.readline().strip() != "end":
        raise RuntimeError(f"{target.name}: the load client failed")
    cpu = cpu_seconds(pids) - cpu_before
    if window:
        window[1]()
    result: dict[str, Any] = json.loads(client.stdout.readline())
    client.wait(30)
    streams = max(result["streams"], 1)
    result["streams_per_s"] = result["streams"] / result["seconds"]
    result["cpu_ms_per_stream"] = 1000 * cpu / streams if pids else None
    result["peak_rss_mb"] = peak_rss_mb(pids) if pids else None
    return result


# The run ----------------------------------------------------------------------------


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def ratios(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> list[float]:
    """Per repeat, ``runs``' ``key`` over ``base``'s (a repeat where either has none: left out)."""
    return [r[key] / b[key] for r, b in zip(runs, base, strict=True) if r[key] and b[key]]


def median_ratio(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> float | None:
    """The median over repeats of ``runs``' ``key`` over ``base``'s in the same repeat."""
    found = ratios(runs, base, key)
    return statistics.median(found) if found else None


def median_added(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> float | None:
    """The median over repeats of ``runs``' ``key`` less ``base``'s in the same repeat."""
    found = [r[key] - b[key] for r, b in zip(runs, base, strict=True) if r[key] and b[key]]
    return statistics.median(found) if found else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstreams + client | the gateway
    both = set(available[:2])
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    PEERS.mkdir(exist_ok=True)
    with ExitStack() as stack:
        ups = {
            "saturated": stack.enter_context(upstream(64, 0.0, shared)),
            "paced": stack.enter_context(upstream(64, 10.0, shared)),
        }
        ups["relayed"] = ups["saturated"]  # its /cut route, then its whole answer
        targets = [gateway(name, ups, own, both, stack) for name in args.gateways]
        for repeat in range(args.repeats):
            for workload, concurrency in args.workloads:
                shift = repeat % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    if workload == "relayed" and target.name not in RELAYING:
                        continue
                    outcome = measure(target, workload, concurrency, args.seconds, shared)
                    results.setdefault((target.name, workload, concurrency), []).append(outcome)
                    print(
                        f"  {workload} c={concurrency} {target.name} repeat {repeat + 1}: "
                        f"{outcome['streams_per_s']:.0f} streams/s, errors {outcome['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
        cores = {target.name: target.cores for target in targets}
        dialects = {target.name: target.dialect for target in targets}
    rows = []
    for (name, workload, concurrency), runs in results.items():
        direct = results.get(("direct", workload, concurrency))
        chat = results.get((CHAT_ROW, workload, concurrency))
        row = {
            "gateway": name,
            "dialect": dialects[name],
            "cores": cores[name],
            "workload": workload,
            "concurrency": concurrency,
            "errors": sum(r["errors"] for r in runs),
            **{
                k: median(runs, k)
                for k in (
                    "streams_per_s",
                    "ttft_p50_ms",
                    "ttft_p99_ms",
                    "cpu_ms_per_stream",
                    "peak_rss_mb",
                )
            },
        }
        if direct:  # added TTFT: per repeat against direct, then the median
            for p in ("p50", "p99"):
                row[f"added_ttft_{p}_ms"] = median_added(runs, direct, f"ttft_{p}_ms")
        if chat and name in SERVED and dialects[name] != "chat":
            row |= against_chat(runs, chat)
        rows.append(row)
    order = {workload: index for index, workload in enumerate(args.workloads)}
    rows.sort(
        key=lambda r: (order[r["workload"], r["concurrency"]], args.gateways.index(r["gateway"]))
    )
    peers = {"litellm": LITELLM, "portkey": PORTKEY_PACKAGE["dependencies"]}
    settings = {"seconds": args.seconds, "repeats": args.repeats, "peers": peers}
    return {"machine": machine(), "settings": settings, "rows": rows}


def against_chat(runs: list[dict[str, Any]], chat: list[dict[str, Any]]) -> dict[str, Any]:
    """A dialect row against the chat row: per repeat (the two ran moments apart on a
    machine that drifts), then the median. ``ttft_p50_over_chat_ms`` is the dialect's
    time to the first text minus chat's."""
    pairs = list(zip(runs, chat, strict=True))

    def ratios(key: str) -> float | None:
        found = [r[key] / c[key] for r, c in pairs if r.get(key) and c.get(key)]
        return statistics.median(found) if found else None

    over = [
        r["ttft_p50_ms"] - c["ttft_p50_ms"]
        for r, c in pairs
        if r["ttft_p50_ms"] and c["ttft_p50_ms"]
    ]
    return {
        "cpu_vs_chat": ratios("cpu_ms_per_stream"),
        "streams_vs_chat": ratios("streams_per_s"),
        "ttft_p50_over_chat_ms": statistics.median(over) if over else None,
    }


def cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'workload':<10} {'conc':>4} {'gateway':<19} {'cores':<5} {'streams/s':>9} "
        f"{'+TTFT p50':>9} {'+p99':>8} {'CPU ms/stream':>13} {'RSS MB':>7} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['workload']:<10} {r['concurrency']:>4} {r['gateway']:<19} {r['cores']:<5} "
            f"{cell(r['streams_per_s'], '.0f'):>9} "
            f"{cell(r.get('added_ttft_p50_ms'), '.2f'):>9} "
            f"{cell(r.get('added_ttft_p99_ms'), '.2f'):>8} "
            f"{cell(r['cpu_ms_per_stream'], '.2f'):>13} "
            f"{cell(r['peak_rss_mb'], '.0f'):>7} {r['errors']:>6}"
        )


def print_dialects(rows: list[dict[str, Any]]) -> None:
    """The dialect rows against chat completions, and the targets, from this run."""
    found = [r for r in rows if r.get("cpu_vs_chat") is not None]
    if not found:
        return
    print("\npolyroute's dialects against chat completions (median of per-repeat figures):")
    for r in found:
        print(
            f"  {r['workload']} c={r['concurrency']} {r['dialect']}: "
            f"CPU/stream {cell(r['cpu_vs_chat'], '.2f')}x chat, "
            f"streams/s {cell(r['streams_vs_chat'], '.2f')}x, "
            f"TTFT p50 {cell(r['ttft_p50_over_chat_ms'], '+.2f')} ms over chat, "
            f"added TTFT p50 {cell(r.get('added_ttft_p50_ms'), '.2f')} ms"
        )
    for r in found:
        if (r["workload"], r["concurrency"]) == CPU_TARGET[:2]:
            held = "met" if r["cpu_vs_chat"] <= CPU_TARGET[2] else "NOT met"
            print(
                f"  target: {r['dialect']} CPU/stream <= {CPU_TARGET[2]}x chat at "
                f"c={CPU_TARGET[1]}: {r['cpu_vs_chat']:.2f}x, {held}"
            )
        if (r["workload"], r["concurrency"]) == TTFT_TARGET[:2]:
            added = r.get("added_ttft_p50_ms")
            held = "met" if added is not None and added <= TTFT_TARGET[2] else "NOT met"
            print(
                f"  target: {r['dialect']} added TTFT p50 <= {TTFT_TARGET[2]:g} ms at "
                f"c={TTFT_TARGET[1]}: {cell(added, '.2f')} ms, {held}"
            )


# Focused runs (benchmarks.cache, .console, .embeddings, ...) -------------------------

FIGURES = ("streams_per_s", "ttft_p50_ms", "ttft_p99_ms", "cpu_ms_per_stream", "peak_rss_mb")
"""What :func:`measure` reports that a row gives as the median of its repeats."""
Point = TypeVar("Point", bound=Hashable)


def serve_polyroute(
    name: str,
    config: dict[str, Any],
    workload: str,
    core: int,
    stack: ExitStack,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    tree: Path | None = None,
) -> Target:
    """``polyroute serve`` with ``config`` (one worker, on ``core``, stopped with
    ``stack``): the target of row ``name``, its chat URL asked for ``workload``. Give
    ``port`` when the config names it (a file per gateway); set the target's ``headers``
    after, when they come from the running gateway (a key made by its admin API).
    ``tree``: a directory holding another copy of the ``polyroute`` package to run
    (benchmarks/relay_bounds.py's patched one), rather than this checkout's."""
    port = port or free_port()
    root = f"http://127.0.0.1:{port}"
    path = PEERS / f"polyroute-{name}-{port}.json"
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "polyroute"]
    if tree is not None:
        start = f"import sys; sys.path.insert(0, {str(tree)!r})"
        command = [sys.executable, "-c", start + "; from polyroute.cli import main; main()"]
    command += ["serve", "-c", str(path), "--port", str(port), "--workers", "1"]
    process = stack.enter_context(started(command, f"{root}/healthz", {core}, env=env))
    return Target(name, {workload: root + WIRES["chat"].path}, {}, process.pid, str(core))


def rotated_runs(
    targets: list[Target],
    repeats: int,
    points: list[Point],
    run_one: Callable[[Target, Point], dict[str, Any]],
    first: int = 0,
) -> dict[tuple[str, Point], list[dict[str, Any]]]:
    """Each target at each point (a concurrency, or what else a run varies), ``repeats``
    times: repeat by repeat, point by point, the targets in an order that rotates between
    repeats, so that the machine's drift hits all alike. The outcomes of ``run_one`` by
    (target name, point), in the repeats' order; a line on stderr for each. ``first``:
    the number of the first repeat (:func:`fresh_runs` runs one at a time)."""
    results: dict[tuple[str, Point], list[dict[str, Any]]] = {}
    for repeat in range(first, first + repeats):
        for point in points:
            shift = repeat % len(targets)
            for target in targets[shift:] + targets[:shift]:
                outcome = run_one(target, point)
                results.setdefault((target.name, point), []).append(outcome)
                where = point if isinstance(point, tuple) else (point,)
                label = " ".join(f"c={p}" if isinstance(p, int) else str(p) for p in where)
                print(
                    f"  {label} {target.name} repeat {repeat + 1}: "
                    f"{outcome['streams_per_s']:.0f}/s, errors {outcome['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def no_errors(target: Target, outcome: dict[str, Any]) -> None:
    """A focused run's check of each outcome: it stops at the first error."""
    if outcome["errors"] or not outcome["streams"]:
        raise SystemExit(f"{target.name}: {outcome['errors']} errors")


def focused_runs(
    targets: list[Target],
    args: argparse.Namespace,
    workload: str,
    core: int,
    check: Callable[[Target, dict[str, Any]], None] = no_errors,
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """:func:`rotated_runs` over ``args.concurrency`` of :func:`measure` (the load client
    on ``core`` for ``args.seconds``), each outcome checked by ``check``."""
    run_one = _one_run(args, workload, core, check)
    return rotated_runs(targets, args.repeats, args.concurrency, run_one)


def focused_fresh_runs(
    start: Callable[[ExitStack], list[Target]],
    args: argparse.Namespace,
    workload: str,
    core: int,
    check: Callable[[Target, dict[str, Any]], None] = no_errors,
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """:func:`focused_runs` of gateways started anew every repeat (:func:`fresh_runs`)."""
    run_one = _one_run(args, workload, core, check)
    return fresh_runs(start, args.repeats, args.concurrency, run_one)


def fresh_runs(
    start: Callable[[ExitStack], list[Target]],
    repeats: int,
    points: list[Point],
    run_one: Callable[[Target, Point], dict[str, Any]],
) -> dict[tuple[str, Point], list[dict[str, Any]]]:
    """:func:`rotated_runs` with every gateway started anew for each repeat (``start``
    starts them in the stack it is given, which stops them after the repeat). Two
    processes of the same code and config differ by several per cent in CPU per stream
    for as long as they run (measured: 0.92 to 1.03 ms, five processes of the plain
    gateway, three 4 s windows each, within-process spread about half that), so a ratio
    of one process to another is only as good as that pair: processes started anew
    each repeat average it out, as the rotation does the machine's drift."""
    results: dict[tuple[str, Point], list[dict[str, Any]]] = {}
    for repeat in range(repeats):
        with ExitStack() as stack:
            measured = rotated_runs(start(stack), 1, points, run_one, first=repeat)
        for point, outcomes in measured.items():
            results.setdefault(point, []).extend(outcomes)
    return results


def _one_run(
    args: argparse.Namespace,
    workload: str,
    core: int,
    check: Callable[[Target, dict[str, Any]], None],
) -> Callable[[Target, int], dict[str, Any]]:
    def run_one(target: Target, concurrency: int) -> dict[str, Any]:
        outcome = measure(target, workload, concurrency, args.seconds, core)
        check(target, outcome)
        return outcome

    return run_one


def medians(runs: list[dict[str, Any]], figures: tuple[str, ...] = FIGURES) -> dict[str, Any]:
    """Each of ``figures`` as the median over ``runs`` (None where none has it)."""
    return {figure: median(runs, figure) for figure in figures}


def focused_main(
    doc: str | None,
    results: str,
    concurrency: list[int],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    show: Callable[[list[dict[str, Any]]], None],
    *,
    seconds: float = 5.0,
    repeats: int = 3,
    rows: list[str] | None = None,
    required: tuple[str, ...] = (),
) -> None:
    """The command line of a focused run (benchmarks.embeddings, benchmarks.cache...):
    ``--concurrency``, ``--seconds``, ``--repeats``, ``--quick``, ``--out`` (``results``),
    and with ``rows`` ``--rows``: some of them, ``required`` among them; runs, shows the
    rows and writes the JSON."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--concurrency", default=",".join(map(str, concurrency)))
    parser.add_argument("--seconds", type=float, default=seconds)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(results))
    if rows is not None:
        parser.add_argument("--rows", default=",".join(rows), help=f"of {', '.join(rows)}")
    if "--quick" in sys.argv:  # smaller defaults; options given explicitly still win
        parser.set_defaults(seconds=1.0, repeats=1)
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if rows is not None:
        args.rows = args.rows.split(",")
        if set(args.rows) - set(rows) or set(required) - set(args.rows):
            needed = f" (with {', '.join(required)})" if required else ""
            parser.error(f"--rows: some of {', '.join(rows)}{needed}")
    outcome = run(args)
    show(outcome["rows"])
    args.out.write_text(json.dumps(outcome, indent=2))
    print(f"\nwrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--setup", action="store_true", help="install the peers, then stop")
    parser.add_argument("--gateways", default=",".join(GATEWAYS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gateway-results.json"))
    parser.add_argument("--load", nargs=6, help=argparse.SUPPRESS)
    if "--quick" in sys.argv:  # smaller defaults; options given explicitly still win
        parser.set_defaults(seconds=1.0, repeats=1)
    args = parser.parse_args()
    if args.load:
        url, headers, model, concurrency, seconds, dialect = args.load
        outcome = asyncio.run(
            load(url, json.loads(headers), model, int(concurrency), float(seconds), WIRES[dialect])
        )
        print(json.dumps(outcome), flush=True)
        return
    if args.setup:
        setup()
        return
    args.gateways = args.gateways.split(",")
    args.workloads = WORKLOADS
    if args.quick:
        args.workloads = [("saturated", 1), ("paced", 10), ("relayed", 5)]
    results = run(args)
    print_table(results["rows"])
    print_dialects(results["rows"])
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
