"""Code blocks in README.md and docs/ run as written (endpoints pointed at local servers)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.upstreams.darkai import DarkAIUpstream

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


async def test_readme_provider_example_streams_from_a_local_server(
    darkai_upstream: DarkAIUpstream,
) -> None:
    (example,) = python_blocks(ROOT / "README.md")
    code = example.replace("http://127.0.0.1:8081/chat", darkai_upstream.url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode() == "Hello, world!"
    assert darkai_upstream.requests[0].body == {"query": "Tell me a joke.", "model": "gpt-4o"}


def test_provider_guide_example_is_a_working_provider() -> None:
    (example,) = python_blocks(ROOT / "docs" / "providers.md")
    namespace: dict[str, object] = {}
    exec(compile(example, "docs/providers.md", "exec"), namespace)
    echo = namespace["Echo"]
    from polyroute.core.sse import SSEEvent
    from polyroute.providers import STREAM_END

    provider = echo()  # type: ignore[operator]
    assert provider.get_model("echo") == "echo-1"
    assert provider.parse_event(SSEEvent('{"text": "hi"}')) == "hi"
    assert provider.parse_event(SSEEvent("[DONE]")) is STREAM_END
    assert len(example.splitlines()) < 40
