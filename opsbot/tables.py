"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from automations.core.clock import seconds_between


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def took(run: Mapping[str, Any]) -> str:
    """How long a run took, for a table ("-" while it runs)."""
    seconds = seconds_between(run.get("started_at"), run.get("ended_at"))
    return "-" if seconds is None else f"{seconds:.0f}s"
