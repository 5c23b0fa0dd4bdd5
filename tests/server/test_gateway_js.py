"""The gateway driven by the official JavaScript client (npm `openai`, pinned), when
node is on the machine: apps in any language are the gateway's users."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.server.helpers import gateway
from tests.upstreams.openai import OpenAIUpstream

NPM_OPENAI = "openai@6.49.0"  # the newest line that runs on the Node.js 20 of this machine
SCRIPT = """
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Hi" }];
const whole = await client.chat.completions.create({ model: "m", messages });
const stream = await client.chat.completions.create({
  model: "m", messages, stream: true, stream_options: { include_usage: true },
});
let text = "";
let last = null;
for await (const chunk of stream) {
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  last = chunk;
}
let error = null;
try {
  await client.chat.completions.create({ model: "nope", messages });
} catch (e) {
  error = [e.status, e.constructor.name, e.code];
}
console.log(JSON.stringify({ whole: whole.choices[0].message.content, text, last, error }));
"""

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="node is not installed")


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the pinned npm package installed and the client script."""
    folder = tmp_path_factory.mktemp("node")
    (folder / "package.json").write_text('{"type": "module", "private": true}')
    npm = shutil.which("npm")
    assert npm is not None
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", NPM_OPENAI],
        cwd=folder,
        check=True,
        timeout=300,
    )
    (folder / "client.mjs").write_text(SCRIPT)
    return folder


@pytest.fixture
def config(tmp_path: Path, openai_upstream: OpenAIUpstream) -> Path:
    entry = {"name": "up", "type": "openai", "base_url": openai_upstream.base_url, "models": ["m"]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"providers": [entry]}))
    return path


async def test_the_javascript_client_streams_and_gets_typed_errors(
    node_client: Path, config: Path
) -> None:
    async with gateway(config) as served:
        process = await asyncio.create_subprocess_exec(
            "node",
            "client.mjs",
            f"{served.url}/v1",
            cwd=node_client,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["whole"] == "Hello, world!"
    assert result["text"] == "Hello, world!"
    assert result["last"]["usage"]["total_tokens"] == 7
    facts = {
        "provider": "up",
        "model": "m",
        "attempts": 1,
        "cost_usd": None,
        "cost_status": "unpriced",
    }
    assert result["last"]["polyroute"] == facts
    assert result["error"] == [404, "NotFoundError", "model_not_found"]
