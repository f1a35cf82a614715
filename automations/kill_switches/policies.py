"""Kill-switch policies (``rules/kill_switches.yaml``): a CloudWatch alarm entering ALARM flips the
policy's targets; returning to OK restores them when the policy says so."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automations.core.notify import Alert
from automations.core.rulebook import LoadedDocument, Problem, RuleFile, load_document, load_schema, validate_document
from automations.kill_switches.kinds import SWITCH_KINDS
from automations.kill_switches.switchboard import Actor, Result, Switchboard, Target

SCHEMA = Path(__file__).with_name("schemas") / "kill_switches.schema.json"


def policies_schema() -> dict[str, Any]:
    """The file's schema, with the target prefixes of the kinds that may be flipped in member accounts."""
    schema = copy.deepcopy(load_schema(SCHEMA))
    prefixes = "|".join(kind.name for kind in SWITCH_KINDS if kind.in_members)
    item = schema["properties"]["policies"]["items"]["properties"]["targets"]["items"]
    item["pattern"] = f"^({prefixes}):[^\\s]+$"
    return schema


@dataclass(frozen=True)
class Policy:
    name: str
    alarm: str
    targets: tuple[str, ...]
    restore_on_ok: bool = False
    account: str | None = None
    region: str | None = None


def _checks(doc: LoadedDocument) -> list[Problem]:
    seen: set[str] = set()
    problems = []
    for i, p in enumerate(doc.data["policies"]):
        if p["name"] in seen:
            problems.append(doc.problem(("policies", i, "name"), f"duplicate policy name {p['name']!r}"))
        seen.add(p["name"])
    return problems


def load_policies(path: str | Path, text: str | None = None) -> tuple[Policy, ...]:
    doc = load_document(path, text)
    validate_document(doc, policies_schema(), [_checks])
    return tuple(
        Policy(
            name=p["name"],
            alarm=p["alarm"],
            targets=tuple(p["targets"]),
            restore_on_ok=p.get("restore_on_ok", False),
            account=p.get("account"),
            region=p.get("region"),
        )
        for p in doc.data["policies"]
    )


POLICIES_FILE = RuleFile("kill_switches.yaml", load_policies)


def on_alarm_event(event: Mapping[str, Any], policies: tuple[Policy, ...], board: Switchboard) -> list[Result]:
    """Act on one "CloudWatch Alarm State Change" event; returns what was done (empty: no policy)."""
    detail = event.get("detail") or {}
    alarm = detail.get("alarmName")
    state = (detail.get("state") or {}).get("value")
    previous = (detail.get("previousState") or {}).get("value")
    results: list[Result] = []
    event_account, event_region = str(event.get("account", "")), str(event.get("region", ""))
    for policy in (p for p in policies if p.alarm == alarm):
        # Alarm names repeat across accounts (StackSets): a pinned policy answers only its own alarm.
        if (policy.account and policy.account != event_account) or (policy.region and policy.region != event_region):
            continue
        account, region = policy.account or event_account, policy.region or event_region
        actor = Actor("policy", policy.name, f"{policy.name} ({alarm} {previous}->{state})")
        for spec in policy.targets:
            target = Target.parse(spec, account, region)
            if state == "ALARM":
                results.append(board.flip(target, actor, alarm=alarm, event_id=event.get("id")))
            elif state == "OK" and policy.restore_on_ok:
                # Only what this policy flipped: a switch on-call flipped by hand stays until they restore it.
                flipped_by = (board.state(target) or {}).get("flipped_by") or {}
                if flipped_by.get("type") == "policy" and flipped_by.get("id") == policy.name:
                    results.append(board.restore(target, actor, alarm=alarm, event_id=event.get("id")))
    return results


def policy_alert(event: Mapping[str, Any], results: list[Result]) -> Alert | None:
    """What on-call hears about a policy's flips and restores (None when nothing changed or failed)."""
    changed = [r for r in results if r.changed or r.outcome == "failed"]
    if not changed:
        return None
    detail = event.get("detail") or {}
    return Alert(
        kind="kill-switch",
        title=f"Kill switch policy: alarm {detail.get('alarmName')} is {(detail.get('state') or {}).get('value')}",
        severity="critical" if any(r.outcome == "failed" for r in changed) else "warning",
        summary=f"{len(changed)} switch action(s) in {event.get('account')}/{event.get('region')}.",
        details=[r.sentence() for r in changed],
        context="`opsbot killswitch status` · runbook: docs/runbooks/kill-switch.md",
    )
