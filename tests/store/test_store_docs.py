"""docs/store.md's code blocks, as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from polyroute.store import load_store_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "store.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("block", blocks("yaml"))
def test_every_store_section_in_the_docs_loads(block: str) -> None:
    load_store_config(yaml.safe_load(block)["store"])


def test_the_python_example_prints_what_the_docs_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (example,) = blocks("python")
    (output,) = blocks("text")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(DOC), "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == output
    assert (tmp_path / "polyroute.db").exists()
