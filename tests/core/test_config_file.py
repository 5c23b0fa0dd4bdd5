"""Config files: syntax errors point at file:line:column with the line and a caret;
empty files and unknown keys say so, with the closest known key."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyroute import ConfigError, Router
from polyroute.core.config_file import read_config_file
from polyroute.router.config import validate
from polyroute.simulator.profile import SimulatorConfig


def problem(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        read_config_file(path)
    return str(caught.value)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "r.yaml",
            "providers:\n  - name: a\n    type: [openai\n",
            "r.yaml:3:11: while parsing a flow sequence: expected ',' or ']', but got "
            "'<stream end>'\n      type: [openai\n            ^",
        ),
        (
            "r.yaml",
            "providers:\n  - name: a\n     type: x\n",
            "r.yaml:3:10: mapping values are not allowed here\n       type: x\n           ^",
        ),
        (
            "r.toml",
            '[[providers]]\nname = "a"\ntype = \n',
            "r.toml:3:8: Invalid value\n  type = \n         ^",
        ),
        (
            "r.json",
            '{"providers": [\n  {"name": "a",, "type": "x"}\n]}\n',
            "r.json:2:16: Expecting property name enclosed in double quotes\n"
            '    {"name": "a",, "type": "x"}\n                 ^',
        ),
    ],
)
def test_syntax_errors_show_the_line_and_a_caret(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert problem(path) == f"{tmp_path}/{expected}"


def test_an_empty_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("\n  \n")
    (tmp_path / "comments.yaml").write_text("# providers: later\n")
    assert problem(tmp_path / "empty.yaml") == f"{tmp_path}/empty.yaml is empty"
    assert problem(tmp_path / "comments.yaml").endswith("comments.yaml is empty (only comments)")


def test_unknown_keys_get_the_closest_known_one_wherever_they_are() -> None:
    config = {
        "providers": [{"name": "a", "type": "simulated", "modles": ["m"]}],
        "retry": {"atempts": 2},
        "per_model": {"m": {"ordr": "latency"}},
        "gateway": {"keys": [{"name": "k", "key_env": "K", "rmp": 5}]},
        "zzz": 1,
    }
    with pytest.raises(ConfigError) as caught:
        Router.from_config(config)
    message = str(caught.value)
    assert "providers.0.modles: unknown key (did you mean `models`?)" in message
    assert "retry.atempts: unknown key (did you mean `attempts`?)" in message
    assert "per_model.m.ordr: unknown key (did you mean `order`?)" in message
    assert "gateway.keys.0.rmp: unknown key (did you mean `rpm`?)" in message
    assert "zzz: unknown key;" in message or message.endswith("zzz: unknown key")


def test_a_simulator_file_and_a_router_config_are_told_apart(tmp_path: Path) -> None:
    sim = tmp_path / "sim.yaml"
    sim.write_text("upstreams:\n  - {name: a}\n")
    with pytest.raises(
        ConfigError, match=r"is a simulator file \(upstreams:\).*polyroute simulate -c"
    ):
        Router.from_config(str(sim))
    assert validate(SimulatorConfig, read_config_file(sim)).upstreams[0].name == "a"
