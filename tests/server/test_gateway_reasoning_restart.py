"""An upstream cut while it reasoned, before any text, through `polyroute serve`: the
answer restarts on the backup and the stream goes on in every dialect (nothing the
client was shown is taken back but reasoning), read by the official SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest
import pytest_asyncio

from tests.server.helpers import Upstreams, dialect_gateway
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")
HI = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, Upstreams]]:
    folder = tmp_path_factory.mktemp("reasoning")
    async with dialect_gateway(folder, cooldown={"failures": 1000}) as (url, upstreams):
        yield url, upstreams


@pytest.fixture(autouse=True)
def cut_while_reasoning(served: tuple[str, Upstreams]) -> None:
    _, upstreams = served
    upstreams.reset()
    upstreams.openai.default = Script(chunks=[{"reasoning_content": "Let me"}], reset_after=1)
    upstreams.backup.default = Script(chunks=[{"reasoning_content": "Rayleigh."}, "Blue."])


async def test_chat_completions_stream_goes_on_after_a_restart_in_reasoning(
    served: tuple[str, Upstreams],
) -> None:
    url, _ = served
    reasoning, text = [], []
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)  # type: ignore[arg-type]
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
            text.append(delta.content or "")
    assert "".join(text) == "Blue."
    assert "".join(reasoning) == "Let meRayleigh."  # what was shown stays shown


async def test_a_whole_chat_completion_keeps_only_the_new_reasoning(
    served: tuple[str, Upstreams],
) -> None:
    url, _ = served
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        answer = await client.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Blue."


async def test_messages_stream_ends_the_cut_thinking_block_and_goes_on(
    served: tuple[str, Upstreams],
) -> None:
    url, _ = served
    async with (
        anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0) as client,
        client.messages.stream(model="m", max_tokens=64, messages=HI) as stream,  # type: ignore[arg-type]
    ):
        message = await stream.get_final_message()
    kinds = [(block.type, getattr(block, "thinking", None) or getattr(block, "text", None))
             for block in message.content]  # fmt: skip
    assert kinds == [("thinking", "Let me"), ("thinking", "Rayleigh."), ("text", "Blue.")]


async def test_responses_stream_goes_on_after_a_restart_in_reasoning(
    served: tuple[str, Upstreams],
) -> None:
    url, _ = served
    kinds = []
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        stream = await client.responses.create(model="m", input="Why is the sky blue?", stream=True)
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.completed":
                assert event.response.output_text == "Blue."
    assert "response.completed" in kinds
    assert "error" not in kinds
