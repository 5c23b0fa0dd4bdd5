"""README's first command, verbatim, in a fresh copy of the project: set up and run the main job."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    block = (ROOT / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


async def test_first_readme_command_streams_an_answer_on_a_fresh_copy(tmp_path: Path) -> None:
    first = readme_commands()[0]
    assert "polyroute chat" in first
    copy = tmp_path / "polyroute"
    for name in project_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    environment = {
        k: v for k, v in os.environ.items() if k not in ("POLYROUTE_CONFIG", "VIRTUAL_ENV")
    }
    process = await asyncio.create_subprocess_shell(
        first,
        cwd=copy,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 600)
    assert process.returncode == 0, err.decode()[-2000:]
    assert out.decode().startswith("[simulated ")
    assert "route.done" in err.decode()
