"""The suite's results as a table for people, or as JSON for programs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from polyroute.conformance.suite import Result


def silent_truncations(results: Sequence[Result]) -> int:
    return sum(result.outcome == "silent_truncation" for result in results)


def as_json(gateway: str, results: Sequence[Result]) -> str:
    """``{"gateway", "results": [{"fault", "outcome", "detail"}], "silent_truncations"}``."""
    document = {
        "gateway": gateway,
        "results": [{"fault": r.fault, "outcome": r.outcome, "detail": r.detail} for r in results],
        "silent_truncations": silent_truncations(results),
    }
    return json.dumps(document, indent=2)


def as_table(gateway: str, results: Sequence[Result]) -> str:
    """One line per fault, columns padded, then a verdict line."""
    rows = [("fault", "outcome", "detail"), *((r.fault, r.outcome, r.detail) for r in results)]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    lines = [f"gateway {gateway}", ""]
    for fault, outcome, detail in rows:
        lines.append(f"{fault.ljust(widths[0])}  {outcome.ljust(widths[1])}  {detail}".rstrip())
    counts = Counter(result.outcome for result in results)
    summary = ", ".join(f"{count} {outcome}" for outcome, count in counts.items())
    silent = silent_truncations(results)
    verdict = f"{silent} silent truncation(s)" if silent else "no silent truncation"
    lines += ["", f"{verdict} ({summary})"]
    return "\n".join(lines)
