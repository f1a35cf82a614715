"""`opsbot runs` and `opsbot runs show`: runs and their units and actions, as terminal tables."""

from __future__ import annotations

from typing import Any

from automations.core.ledger import Ledger
from automations.core.runs import RunError
from opsbot.tables import table, took


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


def show_run(ledger: Ledger, run_id: str) -> str:
    run = ledger.get_run(run_id)
    if run is None:
        raise RunError(f"no run {run_id!r}")
    out = [runs_table([run]), ""]
    out.append(
        table(
            ["ACCOUNT", "REGION", "STATUS", "COUNTS", "ERROR"],
            [
                [
                    u["account"],
                    u["region"],
                    u["status"],
                    " ".join(f"{k}={v}" for k, v in sorted(u.get("counts", {}).items())),
                    u.get("error") or "",
                ]
                for u in ledger.units(run_id)
            ],
        )
    )
    if run.get("unknown_tasks"):
        out.append(
            "\nunknown task names in tags: "
            + "; ".join(f"{name} on {', '.join(res)}" for name, res in run["unknown_tasks"].items())
        )
    actions = run.get("actions") or ledger.actions(run_id)  # event-driven runs keep actions inline
    if run.get("actor"):
        actor = run["actor"]
        out.append(
            f"\n{run.get('event_name')} by {actor['arn']} ({actor['principal_type']}) from "
            f"{actor['source_ip']} [{actor['user_agent'][:60]}]; latency {run.get('latency_seconds')}s"
        )
    if run.get("close_reason"):
        out.append(f"closed by: {run['close_reason']}")
    if run.get("ignored"):
        out.append(f"ignored: {run['ignored']}")
    out.append("")
    out.append(
        table(
            ["ACCOUNT", "REGION", "RESOURCE", "ACTION", "OUTCOME", "IDS", "ERROR"],
            [
                [
                    a["account"],
                    a["region"],
                    a["resource"],
                    a["action"],
                    a["outcome"],
                    ",".join(a.get("created_ids", []) + a.get("deleted_ids", [])),
                    a.get("error") or "",
                ]
                for a in actions
            ],
        )
    )
    return "\n".join(out)
