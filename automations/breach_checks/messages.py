"""How a breach alert reads: one lifecycle event rendered for Slack (Block Kit) and SNS.

A function's concurrency alert carries the Kill switch button; the button names the alert, never the
function, so a press can only act on what the stored, still-open alert names.
"""

from __future__ import annotations

import json

from automations.breach_checks.alerts import Transition
from automations.breach_checks.kinds import CHECK_KINDS
from automations.core.clock import seconds_between
from automations.core.notify import KILL_SWITCH_FLIP, Alert


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def direction(previous: float | None, current: float | None, event: str) -> str:
    if current is None:
        return "no data this check"
    if event == "opened" or previous is None:
        return f"↑ new: crossed the threshold, now {current:.1f}%"
    delta = current - previous
    if abs(delta) < 0.05:
        return f"→ unchanged at {current:.1f}%"
    arrow = "↑" if delta > 0 else "↓"
    return f"{arrow} {previous:.1f}% → {current:.1f}% ({delta:+.1f} pts)"


def _since(start: str | None, now: str | None) -> str:
    seconds = seconds_between(start, now)
    if seconds is None:
        return ""
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60}m" if minutes >= 60 else f"{minutes}m"


def _headline(t: Transition) -> tuple[str, str]:
    """(title, summary): what happened, in one line and in a sentence or two."""
    s, m = t.state, t.measurement
    where = f"{s['account_name']}/{s['region']}"
    pct = s.get("percent")
    pct_text = f"{pct:.1f}%" if pct is not None else "no data"
    thresholds = s["thresholds"]
    label = {
        "opened": s["severity"].title(),
        "escalated": "Critical (escalated)",
        "reminder": f"Still open ({s['severity']})",
        "resolved": "Resolved",
    }[t.event]
    if m.check.endswith("-access"):
        summary = (
            f"The `{m.name}` check has not run in {s['account']}/{s['region']} since {s['opened_at']}: "
            f"{m.note}. Limits there are not being watched."
            if t.event != "resolved"
            else f"The `{m.name}` check runs again in {s['account']}/{s['region']}."
        )
        return f"{label}: opsbot cannot run {m.name} in {where}", summary
    if t.event == "resolved" and pct is None:
        summary = (
            f"{m.note or 'No longer measured.'} Open since {s['opened_at']}, peak {s.get('peak_percent') or 0:.1f}%."
        )
        return f"{label}: {s['name']} in {where}", summary
    if t.event == "resolved":
        summary = (
            f"{s['name']} is at {_num(s.get('usage'))} of {_num(s['limit'])} ({pct_text}), below "
            f"{thresholds['resolve_below']:g}%. Open {_since(s['opened_at'], s['resolved_at'])} "
            f"since {s['opened_at']}, peak {s.get('peak_percent') or 0:.1f}%." + (f" {m.note}" if m.note else "")
        )
        return f"{label}: {s['name']} back to {pct_text} in {where}", summary
    reading = (
        f"peaked at {_num(s.get('usage'))} of {_num(s['limit'])} ({pct_text}) {s['window']}".rstrip()
        if s.get("no_data_since") is None
        else f"has had no usage data since {s['no_data_since']}; last reading {pct_text}"
    )
    summary = (
        f"{s['name']} in {s['account']}/{s['region']} {reading}. Warns at "
        f"{thresholds['warn_percent']:g}%, critical at {thresholds['critical_percent']:g}%; "
        f"clears below {thresholds['resolve_below']:g}%."
    )
    return f"{label}: {s['name']} at {pct_text} in {where}", summary


def _facts(t: Transition, failure: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """(fields, details): the numbers, and the breakdown behind them."""
    s = t.state
    pct = s.get("percent")
    fields: list[tuple[str, str]] = [
        ("Quota", f"{s['name']}" + (f" ({s['quota_code']})" if s.get("quota_code") else "")),
        ("Account", f"{s['account_name']} ({s['account']})"),
        ("Region", s["region"]),
    ]
    if not failure:
        fields += [
            ("Usage / limit", f"{_num(s.get('usage'))} / {_num(s['limit'])}"),
            ("Percent", f"{pct:.1f}%" if pct is not None else "no data"),
            (
                "Since last check",
                direction(t.previous_percent, pct if s.get("no_data_since") is None else None, t.event),
            ),
        ]
    fields += [("Alert", f"`{s['alert_id']}`"), ("Opened", s["opened_at"])]
    details = list(s.get("breakdown") or [])
    if s.get("top"):
        details += ["Top functions by peak concurrency:", *s["top"]]
    target = s.get("target") or {}
    if target.get("function_arn"):
        details.append(f"Function: {target['function_arn']} (reserved {target.get('reserved_concurrency')})")
    if s.get("link"):
        details.append(f"<{s['link']}|Service Quotas console>")
    return fields, details


def alert_message(t: Transition) -> Alert:
    """Slack (Block Kit) and SNS rendering of a lifecycle event."""
    s = t.state
    failure = t.measurement.check.endswith("-access")
    title, summary = _headline(t)
    fields, details = _facts(t, failure)
    check = s["check"].removesuffix("-access")
    kind = CHECK_KINDS.get(check) if check in CHECK_KINDS else None
    runbook = kind.runbook if kind else "docs/runbooks/quota-breach.md"
    target = s.get("target") or {}
    # A function's concurrency alert carries its kill switch; the button names the alert, not the function.
    buttons: list[tuple[str, str, str, str | None]] = (
        [("Kill switch", KILL_SWITCH_FLIP, json.dumps({"alert_id": s["alert_id"]}), "danger")]
        if target.get("function_name") and t.event != "resolved" and not failure
        else []
    )
    return Alert(
        kind="breach-check-failed" if failure or kind is None else kind.alert_kind,
        title=title,
        severity="info" if t.event == "resolved" else s["severity"],
        summary=summary,
        fields=fields,
        details=details,
        context=f"alert `{s['alert_id']}` · `opsbot alerts` · runbook: {runbook}",
        buttons=buttons,
        data={
            "event": t.event,
            **{k: s.get(k) for k in ("alert_id", "status", "severity", "check", "key", "account", "region")},
            **{k: s.get(k) for k in ("service", "quota_code", "usage", "limit", "percent")},
            "previous_percent": t.previous_percent,
            "target": target or None,
        },
    )
