"""Run the real command line as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass
class Result:
    code: int
    out: str
    err: str


async def run_cli(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> Result:
    environment = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "polyroute",
        *args,
        cwd=cwd,
        env=environment,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate((stdin or "").encode()), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def start_simulate(
    config: Path, *, stderr: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """``polyroute simulate -c config`` started, its stdout (a line per upstream once all
    listen) piped; ``stderr`` as ``asyncio.create_subprocess_exec`` takes it."""
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "polyroute", "simulate", "-c", str(config)),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )


def simulated(name: str, models: list[str], **options: object) -> dict[str, object]:
    latency = {"first_chunk_ms": 0, "chunk_gap_ms": 0}
    return {
        "name": name,
        "type": "simulated",
        "models": models,
        "options": {"words": 5, "latency": latency, **options},
    }


def write_config(path: Path, *providers: dict[str, object], **settings: object) -> Path:
    settings.setdefault("default_model", "m")
    path.write_text(yaml.safe_dump({"providers": list(providers), **settings}))
    return path
