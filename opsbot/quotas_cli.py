"""`opsbot quotas check | runs` and `opsbot alerts`: the breach checks from the operator's terminal.

``quotas check`` runs the same plan -> units -> close steps as BreachCheckStateMachine (units in a
thread pool), so alerts open, escalate, remind and resolve exactly as the scheduled checks make them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from automations.breach_checks.alerts import AlertBook
from automations.breach_checks.checks import plan_check, recent_check_runs, run_checks_now
from automations.breach_checks.kinds import CHECK_KINDS
from automations.breach_checks.rules import QUOTAS_FILE, BreachRules
from automations.core.notify import Notifier
from automations.core.runs import Trigger
from automations.core.runtime import Runtime
from opsbot.tables import table, took

LEVELS = ("critical", "warning", "hold", "clear", "no_data")


def check_runs_table(runs: Iterable[Mapping[str, Any]]) -> str:
    rows = []
    for r in runs:
        c, u = r.get("counts", {}), r.get("units", {})
        rows.append(
            [
                r["run_id"],
                r["status"],
                r["started_at"],
                took(r),
                f"{u.get('succeeded', 0)}/{u.get('total', 0)}" if u else "-",
                sum(c.get(level, 0) for level in LEVELS),
                c.get("warning", 0),
                c.get("critical", 0),
                c.get("no_data", 0),
                c.get("unmonitored", 0),
                " ".join(f"{e}={c[e]}" for e in ("opened", "escalated", "reminder", "resolved") if c.get(e)) or "-",
                c.get("metric_calls", 0),
            ]
        )
    headers = ["RUN", "STATUS", "STARTED", "TOOK", "UNITS OK", "MEASURED", "WARN", "CRIT", "NO DATA"]
    return table([*headers, "UNMONITORED", "ALERT EVENTS", "GETMETRICDATA"], rows)


def alerts_table(alerts: Iterable[Mapping[str, Any]]) -> str:
    def usage(a: Mapping[str, Any]) -> str:
        if a.get("usage") is None:
            return "-"
        return f"{a['usage']:,.0f} / {a['limit']:,.0f}" if a.get("limit") else f"{a['usage']:,.0f}"

    rows = [
        [
            a["alert_id"],
            a["status"],
            a["severity"],
            f"{a.get('account_name', a['account'])} ({a['account']})",
            a["region"],
            a["name"] + (f" ({a['quota_code']})" if a.get("quota_code") else ""),
            usage(a),
            f"{a['percent']:.1f}%" if a.get("percent") is not None else (a.get("note") or "-")[:40],
            a["opened_at"],
            a.get("last_notified_at", ""),
        ]
        for a in sorted(alerts, key=lambda a: (a["account"], a["region"], a["key"]))
    ]
    return table(
        [
            "ALERT",
            "STATUS",
            "SEVERITY",
            "ACCOUNT",
            "REGION",
            "QUOTA",
            "USAGE / LIMIT",
            "PERCENT",
            "OPENED",
            "LAST SAID",
        ],
        rows,
    )


def run_checks(
    rt: Runtime,
    rules: BreachRules,
    notifier: Notifier | None,
    checks: Iterable[str],
    *,
    trigger: Trigger,
    accounts: list[str] | None = None,
    regions: list[str] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> list[dict[str, Any]]:
    now = clock or (lambda: datetime.now(UTC))
    book = AlertBook(rt.ledger.table, rt.settings.ledger_ttl_days, clock=now)
    runs = []
    for check in checks:
        plan = plan_check(
            rt.ledger,
            rt.fleet,
            rules,
            check,
            trigger,
            now(),
            accounts=accounts,
            regions=regions,
            manifests=rt.manifests,
        )
        runs.append(
            run_checks_now(
                plan,
                rules=rules,
                fleet=rt.fleet,
                broker=rt.broker,
                ledger=rt.ledger,
                book=book,
                notifier=notifier,
                clock=now,
                manifests=rt.manifests,
            )
        )
    return runs


def load_rules(rt: Runtime) -> BreachRules:
    return rt.rules.get(QUOTAS_FILE)


def quotas_check(rt: Runtime, notifier: Notifier | None, principal: str, args: Any) -> int:
    checks = [args.check] if args.check else CHECK_KINDS.names()
    runs = run_checks(
        rt,
        load_rules(rt),
        notifier,
        checks,
        trigger=Trigger(type="cli", principal=principal),
        accounts=args.account or None,
        regions=args.region or None,
    )
    print(check_runs_table(runs))
    failures = [f for r in runs for f in r.get("failures", [])]
    if failures:
        print("\nunits that could not check:\n  " + "\n  ".join(failures))
    print("\nopen alerts:")
    print(alerts_table(AlertBook(rt.ledger.table).open_alerts()))
    return 0 if all(r["status"] == "SUCCEEDED" for r in runs) else 1


def quotas_runs(rt: Runtime, limit: int) -> int:
    print(check_runs_table(recent_check_runs(rt.ledger, limit)))
    return 0


def alerts(rt: Runtime, alert_id: str | None) -> int:
    book = AlertBook(rt.ledger.table)
    if alert_id:
        found = book.get(alert_id)
        if found is None:
            print(f"no current alert {alert_id!r} (unknown, or superseded by a newer episode)")
            return 2
        print(alerts_table([found]))
        for line in [*found.get("breakdown", []), *found.get("top", [])]:
            print(f"  {line}")
        if found.get("target"):
            print(f"  target: {found['target']}")
        return 0
    print(alerts_table(book.open_alerts()))
    return 0
