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


class PagedTable:
    """A table printed page by page without holding the pages: the header with the first page, each column
    as wide as its widest cell so far (a wider cell on a later page widens its column from there on)."""

    def __init__(self, headers: Sequence[str]) -> None:
        self.headers = [str(h) for h in headers]
        self.widths = [len(h) for h in self.headers]
        self.started = False

    def page(self, rows: Sequence[Sequence[object]]) -> str:
        cells = [["" if c is None else str(c) for c in row] for row in rows]
        self.widths = [max([w, *(len(r[i]) for r in cells)]) for i, w in enumerate(self.widths)]
        lines = [self._line(row) for row in cells]
        if not self.started:
            self.started = True
            lines[:0] = [self._line(self.headers), "  ".join("-" * w for w in self.widths)]
        return "\n".join(lines)

    def _line(self, row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, self.widths, strict=True)).rstrip()


def took(run: Mapping[str, Any]) -> str:
    """How long a run took, for a table ("-" while it runs)."""
    seconds = seconds_between(run.get("started_at"), run.get("ended_at"))
    return "-" if seconds is None else f"{seconds:.0f}s"
