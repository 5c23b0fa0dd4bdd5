"""`python -m polyroute.conformance ...` as users run it: a subprocess."""

from __future__ import annotations

import asyncio
import sys


async def conformance(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``polyroute conformance ARGS``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "polyroute.conformance",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
