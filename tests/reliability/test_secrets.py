"""API keys from the environment and proxy credentials never show: not in log events,
exception messages, reprs, or the command line's output (-v and --debug included)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from polyroute import AllProvidersFailed, Router, load_config
from tests.cli.helpers import run_cli
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.proxy import RecordingProxy
from tests.upstreams.scripted import Script

KEY = "sk-live-polyroute-0123456789abcdefSECRET"
PROXY_PASSWORD = "proxy-pa55word-SECRET"


def config_for(upstream: OpenAIUpstream, proxy: RecordingProxy) -> dict[str, object]:
    return {
        "providers": [
            {
                "name": "paid",
                "type": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "TEST_KEY",
                "proxy": proxy.url(f"alice:{PROXY_PASSWORD}"),
                "models": ["m"],
            },
        ],
        "retry": {"attempts": 1},
    }


def echoing_upstream(upstream: OpenAIUpstream) -> None:
    # Real upstreams quote part of a refused key back; this one quotes all of it.
    body = {"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}}
    upstream.default = Script(status=401, error_body=json.dumps(body))


async def test_nothing_in_process_shows_the_key_or_the_proxy_password(
    openai_upstream: OpenAIUpstream,
    recording_proxy: RecordingProxy,
    json_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_KEY", KEY)
    echoing_upstream(openai_upstream)
    config = config_for(openai_upstream, recording_proxy)
    shown: list[str] = []
    with capture_logs() as captured:
        router = Router.from_config(config)
        async with router:
            with pytest.raises(AllProvidersFailed) as caught:
                await router.complete_text("m", [{"role": "user", "content": "Hi"}])
        shown += [
            repr(router),
            repr(router.providers[0]),
            repr(load_config(config)),
            str(load_config(config)),
        ]
    error = caught.value
    shown += [
        str(error),
        repr(error),
        *(repr(a) + str(a.error) + repr(a.error) for a in error.attempts),
    ]
    shown += [json.dumps(event, default=str) for event in captured]
    shown.append(json_log.getvalue())
    assert recording_proxy.requests  # the proxy, with its credentials, was really used
    assert openai_upstream.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    everything = "\n".join(shown)
    assert "Incorrect API key provided" in everything
    assert KEY not in everything
    assert PROXY_PASSWORD not in everything


async def test_cli_output_shows_neither_with_verbose_or_debug(
    openai_upstream: OpenAIUpstream, recording_proxy: RecordingProxy, tmp_path: Path
) -> None:
    echoing_upstream(openai_upstream)
    config = tmp_path / "r.yaml"
    config.write_text(
        yaml.safe_dump({**config_for(openai_upstream, recording_proxy), "default_model": "m"})
    )
    env = {"TEST_KEY": KEY}
    runs = await asyncio.gather(  # independent runs, an interpreter each: at once
        run_cli("chat", "-c", str(config), "-vv", "Hi", cwd=tmp_path, env=env),
        run_cli("--debug", "chat", "-c", str(config), "-vv", "Hi", cwd=tmp_path, env=env),
        run_cli("providers", "-c", str(config), "--check", "-vv", cwd=tmp_path, env=env),
    )
    assert [run.code for run in runs] == [1, 1, 1]  # the check fails: the key is refused
    assert "Traceback" in runs[1].err
    for run in runs:
        assert KEY not in run.out + run.err
        assert PROXY_PASSWORD not in run.out + run.err


async def test_a_proxy_password_echoed_in_plain_text_is_masked(
    darkai_upstream: DarkAIUpstream, recording_proxy: RecordingProxy, json_log: io.StringIO
) -> None:
    password = "plain-echo-pw-7731"
    darkai_upstream.default = Script(status=502, error_body=f"proxy said: bad password {password}")
    entry = {
        "name": "dark",
        "type": "darkai",
        "api_endpoint": darkai_upstream.url,
        "working": True,
        "proxy": recording_proxy.url(f"bob:{password}"),
    }
    with capture_logs() as captured:
        async with Router.from_config({"providers": [entry], "retry": {"attempts": 1}}) as router:
            with pytest.raises(AllProvidersFailed) as caught:
                await router.complete_text("gpt-4o", [{"role": "user", "content": "Hi"}])
    (attempt,) = caught.value.attempts
    shown = [str(caught.value), repr(attempt.error), attempt.error.body, json_log.getvalue()]  # type: ignore[union-attr]
    shown += [json.dumps(event, default=str) for event in captured]
    everything = "\n".join(shown)
    assert recording_proxy.requests
    assert "proxy said: bad password ***" in everything
    assert password not in everything
