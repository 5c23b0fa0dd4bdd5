"""The bounds' patches (benchmarks/relay_bounds.patch, benchmarks/observability_bounds.patch)
still apply to this tree, and the patched package imports: a bound that no longer
applies would stop its benchmark, found only when someone next runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import observability_bounds, relay_bounds


@pytest.mark.parametrize(
    ("patch", "module"),
    [
        (relay_bounds.PATCH, "polyroute.server.app"),
        (observability_bounds.PATCH, "polyroute.router.observe_floor"),
    ],
    ids=["relay", "observability"],
)
def test_the_bound_applies_and_its_package_imports(
    tmp_path: Path, patch: Path, module: str
) -> None:
    tree = relay_bounds.bounded_copy(tmp_path, patch)
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); import {module} as m; print(m.__file__)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().startswith(str(tree))
