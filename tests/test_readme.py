"""The README's commands are the ones CI runs: keep them from drifting apart."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    test_command = ci_lines[-1]
    assert "pytest" in test_command
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert test_command in first_block.splitlines()
