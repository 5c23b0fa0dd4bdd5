"""What both native providers share with the others: stalls time out, keys stay out of
reprs and errors, `providers --check` probes them, a proxy carries them."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyroute import TextDelta, Timeouts, UpstreamTimeout
from polyroute.providers import Anthropic, Gemini
from tests.cli.helpers import run_cli, write_config
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.gemini import GeminiUpstream
from tests.upstreams.proxy import RecordingProxy
from tests.upstreams.scripted import Script, ScriptedUpstream

HI = [{"role": "user", "content": "Hi"}]
KEY = "sk-native-secret-0123456789"


def native(kind: str, server: ScriptedUpstream, **kwargs: object) -> Anthropic | Gemini:
    cls = Anthropic if kind == "anthropic" else Gemini
    return cls(base_url=server.base_url, api_key=KEY, **kwargs)  # type: ignore[attr-defined,arg-type]


@pytest.fixture(params=["anthropic", "gemini"])
def served(
    request: pytest.FixtureRequest,
    anthropic_upstream: AnthropicUpstream,
    gemini_upstream: GeminiUpstream,
) -> tuple[str, ScriptedUpstream]:
    kind = str(request.param)
    return kind, anthropic_upstream if kind == "anthropic" else gemini_upstream


async def test_a_stall_mid_answer_is_an_idle_timeout(served: tuple[str, ScriptedUpstream]) -> None:
    kind, server = served
    server.default = Script(chunks=["Hello", "world"], stall_after=1)
    received = []

    async def consume() -> None:
        async with native(kind, server, timeout=Timeouts(idle=0.2)) as provider:
            async for delta in provider.stream("m", HI):
                received.append(delta)

    with pytest.raises(UpstreamTimeout):
        await consume()
    texts = [delta for delta in received if isinstance(delta, TextDelta)]
    assert texts == [TextDelta("Hello")]  # "Hello" came, then the silence


async def test_the_key_stays_out_of_reprs_and_errors(served: tuple[str, ScriptedUpstream]) -> None:
    kind, server = served
    server.default = Script(status=500, error_body=f"echo {KEY}")
    async with native(kind, server) as provider:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is not the point here
            _ = [d async for d in provider.stream("m", HI)]
        assert KEY not in repr(provider)
    assert KEY not in str(caught.value)


async def test_a_proxy_carries_the_requests(
    served: tuple[str, ScriptedUpstream], recording_proxy: RecordingProxy
) -> None:
    kind, server = served
    async with native(kind, server, proxy=recording_proxy.url()) as provider:
        text = "".join([getattr(d, "text", "") async for d in provider.stream("m", HI)])
    assert text == "Hello, world!"
    assert len(recording_proxy.requests) == 1


async def test_providers_check_probes_both(
    tmp_path: Path, anthropic_upstream: AnthropicUpstream, gemini_upstream: GeminiUpstream
) -> None:
    config = write_config(
        tmp_path / "r.yaml",
        {"name": "claude", "type": "anthropic", "base_url": anthropic_upstream.base_url,
         "api_key_env": "NATIVE_KEY", "models": ["claude-x"]},
        {"name": "gemini", "type": "gemini", "base_url": gemini_upstream.base_url,
         "api_key_env": "NATIVE_KEY", "models": ["gemini-x"]},
    )  # fmt: skip
    result = await run_cli(
        "providers", "-c", str(config), "--check", cwd=tmp_path, env={"NATIVE_KEY": KEY}
    )
    assert result.code == 0, result.out + result.err
    rows = {line.split()[0]: line for line in result.out.splitlines()[2:]}
    assert " ok claude-x: first chunk " in rows["claude"]
    assert " ok gemini-x: first chunk " in rows["gemini"]
    assert anthropic_upstream.requests[0].headers["x-api-key"] == KEY
    assert gemini_upstream.requests[0].headers["x-goog-api-key"] == KEY
    assert KEY not in result.out + result.err
