"""docs/conformance.md shows what the command prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from polyroute.conformance.cli import main
from polyroute.conformance.faults import FAULTS

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["config", *argv]) == 0
    return capsys.readouterr().out


def test_the_guides_polyroute_config_is_what_config_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert yaml_blocks()[0] == printed(capsys)


def test_the_guides_litellm_config_is_what_config_for_litellm_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert yaml_blocks()[1] == printed(capsys, "--for", "litellm")


def test_the_guide_lists_every_fault_as_the_suite_plays_it() -> None:
    table = GUIDE.read_text().split("| fault | what the fault upstream does |")[1]
    table = table.split("\n\n")[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (.+) \|$", table, flags=re.MULTILINE)
    assert [(f.name, f.summary) for f in FAULTS] == rows
