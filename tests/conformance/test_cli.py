"""`polyroute conformance config|run`: the printed configs, usage errors (exit 2), ports."""

from __future__ import annotations

import argparse
import socket

import pytest
import yaml

from polyroute.conformance.cli import add_subcommands, execute, main
from polyroute.conformance.faults import FAULTS
from polyroute.router.config import load_config
from tests.conformance.command import conformance


def test_config_prints_a_polyroute_config_for_the_given_ports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "--upstreams-port", "9300", "--model", "gw"]) == 0
    config = load_config(yaml.safe_load(capsys.readouterr().out))
    entries = {entry.name: entry for entry in config.providers}
    assert entries["cut-mid-answer"].base_url == "http://127.0.0.1:9300/cut-mid-answer/v1"
    assert entries["cut-mid-answer"].models == ["gw-cut-mid-answer"]
    assert entries["connection-refused"].base_url == "http://127.0.0.1:9302/v1"
    assert entries["backup"].base_url == "http://127.0.0.1:9301/v1"
    assert entries["backup"].models == [f"gw-{fault.name}" for fault in FAULTS]
    assert entries["backup"].priority > max(e.priority for e in config.providers[:-1])


def test_config_for_litellm_falls_back_from_every_fault_to_the_backup_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "--for", "litellm", "--upstreams-port", "9300"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    models = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert models["conformance-backup"]["api_base"] == "http://127.0.0.1:9301/v1"
    assert models["conformance-malformed-chunk"]["model"] == "openai/conformance-malformed-chunk"
    fallbacks = config["router_settings"]["fallbacks"]
    assert fallbacks == [{f"conformance-{f.name}": ["conformance-backup"]} for f in FAULTS]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["run"],
        ["run", "127.0.0.1:8000/v1"],
        ["run", "http://127.0.0.1:8000/v1", "--upstreams-port", "65534"],
        ["run", "http://127.0.0.1:8000/v1", "--timeout", "soon"],
        ["config", "--for", "nginx"],
        ["config", "--upstreams-port", "ninety"],
    ],
)
def test_a_usage_error_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: polyroute conformance" in capsys.readouterr().err


async def test_the_command_exits_2_on_a_usage_error_as_a_process() -> None:
    code, out, err = await conformance("run", "--json")
    assert (code, out) == (2, "")
    assert "the following arguments are required: URL" in err


def test_a_taken_upstream_port_exits_2_and_says_which(
    upstreams_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", upstreams_port + 1))
        taken.listen()
        argv = ["run", "http://127.0.0.1:1/v1", "--upstreams-port", str(upstreams_port)]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"need ports {upstreams_port} and {upstreams_port + 1} on 127.0.0.1, and one" in err
    assert "--upstreams-port" in err


def test_a_listener_on_the_refused_port_exits_2(
    upstreams_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", upstreams_port + 2))
        listening.listen()
        argv = ["run", "http://127.0.0.1:1/v1", "--upstreams-port", str(upstreams_port)]
        assert main(argv) == 2
    assert f"something listens on 127.0.0.1:{upstreams_port + 2}" in capsys.readouterr().err


async def test_the_subcommands_mount_under_another_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As `polyroute conformance ...` will: a parent parser, its handler awaited."""
    parser = argparse.ArgumentParser(prog="polyroute")
    commands = parser.add_subparsers(dest="command", required=True)
    add_subcommands(commands.add_parser("conformance").add_subparsers(dest="action", required=True))
    args = parser.parse_args(["conformance", "config", "--upstreams-port", "9400"])
    assert await execute(args) == 0
    assert "base_url: http://127.0.0.1:9401/v1" in capsys.readouterr().out


def test_a_gateway_that_is_not_there_exits_2(
    upstreams_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        assert main(["run", url, "--upstreams-port", str(upstreams_port)]) == 2
    assert f"nothing answers at {url}" in capsys.readouterr().err
