"""`opsbot runs` and `opsbot runs show`: runs and their units and actions, as terminal tables.

A run can have 17,000 units (1,000 accounts x 17 regions) and more actions: `runs show` prints the run,
a summary (units by status and the failures, from the run record; counted from the units while it
runs), then one page of units and one of actions, each with the command that prints the next page.
`--all` prints every page, one page in memory at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from automations.core.ledger import Ledger, Page
from automations.core.runs import RunError
from opsbot.tables import PagedTable, table, took

DEFAULT_PAGE_SIZE = 50
UNITS, ACTIONS = "units", "actions"
UNIT_HEADERS = ("ACCOUNT", "REGION", "STATUS", "COUNTS", "ERROR")
ACTION_HEADERS = ("ACCOUNT", "REGION", "RESOURCE", "ACTION", "OUTCOME", "IDS", "ERROR")


def runs_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        c, u = r.get("counts", {}), r.get("units", {})
        rows.append(
            [
                r["run_id"],
                r["task"],
                r.get("slot"),
                r.get("trigger", {}).get("type"),
                r["status"]
                + (" (dry run)" if r.get("dry_run") else "")
                + (" (reaped)" if str(r.get("close_reason") or "").startswith("reaped") else ""),
                r["started_at"],
                took(r),
                # Snapshots taken or copied (or that would be, in a dry run).
                sum(c.get(k, 0) for k in ("created", "would_create", "copied", "would_copy")),
                c.get("skipped_existing", 0),
                c.get("deleted", c.get("would_delete", 0)),
                c.get("failed", 0),
                f"{u.get('succeeded', 0)}/{u.get('total', 0)}" if u else "-",
            ]
        )
    return table(
        [
            "RUN",
            "TASK",
            "SLOT",
            "TRIGGER",
            "STATUS",
            "STARTED",
            "TOOK",
            "CREATED",
            "SKIPPED",
            "DELETED",
            "FAILED",
            "UNITS OK",
        ],
        rows,
    )


def _unit_row(u: Mapping[str, Any]) -> list[Any]:
    return [
        u["account"],
        u["region"],
        u.get("status"),
        " ".join(f"{k}={v}" for k, v in sorted(u.get("counts", {}).items())),
        u.get("error") or "",
    ]


def _action_row(a: Mapping[str, Any]) -> list[Any]:
    return [
        a["account"],
        a["region"],
        a["resource"],
        a["action"],
        a["outcome"],
        ",".join(a.get("created_ids", []) + a.get("deleted_ids", [])),
        a.get("error") or "",
    ]


def _by_status(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "total" and v)


def summary(ledger: Ledger, run: Mapping[str, Any]) -> list[str]:
    """Units by status and the failures: from the run record once it closed; while it runs, counted from
    the units (read page by page, statuses only)."""
    units, lines = run.get("units"), []
    if isinstance(units, Mapping) and units:
        lines.append(f"units: {units.get('total', 0)} ({_by_status(units) or 'none'})")
    elif (counts := ledger.unit_counts(run["run_id"])) or run.get("status") == "RUNNING":  # event runs: none
        lines.append(f"units recorded so far: {sum(counts.values())} ({_by_status(counts) or 'none'})")
    failures = run.get("failures") or []
    if failures:
        lines.append("failures:")
        lines += [f"  {f}" for f in failures]
    return lines


def _listing(
    pages: Iterator[Page],
    headers: tuple[str, ...],
    row: Callable[[Mapping[str, Any]], list[Any]],
    all_pages: bool,
    more: str,
) -> Iterator[str]:
    """A list as a table, one page (or every page) at a time, then how to continue it."""
    printer = PagedTable(headers)
    for page in pages:
        yield printer.page([row(item) for item in page.items])
        if page.next_token is None:
            return
        if not all_pages:
            yield f"more: {more} --next {page.next_token}"
            return


def show_run_lines(
    ledger: Ledger,
    run_id: str,
    *,
    section: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    token: str | None = None,
    all_pages: bool = False,
) -> Iterator[str]:
    """`opsbot runs show`, as blocks of text to print as they come (one page of items in memory).

    ``section`` None: the run, its summary, the first page of units and of actions (every page with
    ``all_pages``). ``section`` "units" or "actions": that list only, from ``token`` (a page's
    continuation token). Raises RunError for an unknown run, TokenError / LimitError (ValueError) for a
    token or page size the ledger refuses."""
    run = ledger.get_run(run_id)
    if run is None:
        raise RunError(f"no run {run_id!r}")
    size = f" --page-size {page_size}" if page_size != DEFAULT_PAGE_SIZE else ""
    more = f"opsbot runs show {run_id}{size}"
    inline = run.get("actions") or None  # event-driven runs keep their (few) actions inline

    if section == UNITS:
        yield from _listing(
            ledger.unit_pages(run_id, page_size, token), UNIT_HEADERS, _unit_row, all_pages, f"{more} --units"
        )
        return
    if section == ACTIONS:
        if inline is not None:
            yield table(ACTION_HEADERS, [_action_row(a) for a in inline])
            return
        yield from _listing(
            ledger.action_pages(run_id, page_size, token), ACTION_HEADERS, _action_row, all_pages, f"{more} --actions"
        )
        return

    yield "\n".join([runs_table([run]), "", *summary(ledger, run), ""])
    yield from _listing(ledger.unit_pages(run_id, page_size), UNIT_HEADERS, _unit_row, all_pages, f"{more} --units")
    extras = []
    if run.get("unknown_tasks"):
        extras.append(
            "\nunknown task names in tags: "
            + "; ".join(f"{name} on {', '.join(res)}" for name, res in run["unknown_tasks"].items())
        )
    if run.get("actor"):
        actor = run["actor"]
        extras.append(
            f"\n{run.get('event_name')} by {actor['arn']} ({actor['principal_type']}) from "
            f"{actor['source_ip']} [{actor['user_agent'][:60]}]; latency {run.get('latency_seconds')}s"
        )
    if run.get("close_reason"):
        extras.append(f"closed by: {run['close_reason']}")
    if run.get("ignored"):
        extras.append(f"ignored: {run['ignored']}")
    yield "\n".join([*extras, ""])
    if inline is not None:
        yield table(ACTION_HEADERS, [_action_row(a) for a in inline])
    else:
        yield from _listing(
            ledger.action_pages(run_id, page_size), ACTION_HEADERS, _action_row, all_pages, f"{more} --actions"
        )


def show_run(ledger: Ledger, run_id: str, **options: Any) -> str:
    """`opsbot runs show` as one text (the first page of units and of actions unless ``all_pages``)."""
    return "\n".join(show_run_lines(ledger, run_id, **options))
