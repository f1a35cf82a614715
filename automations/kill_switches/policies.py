"""Kill-switch policies (``rules/kill_switches.yaml``): a CloudWatch alarm entering ALARM flips the
policy's targets; returning to OK restores them when the policy says so."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from automations.core.boundary import (
    ACCOUNT_ID,
    REGION,
    InputError,
    mapping,
    optional_mapping,
    source_id,
    text,
    timestamp,
)
from automations.core.notify import Alert
from automations.core.rulebook import LoadedDocument, Problem, RuleFile, load_document, load_schema, validate_document
from automations.kill_switches.kinds import SWITCH_KINDS
from automations.kill_switches.switchboard import Actor, Result, Switchboard, Target

log = logging.getLogger(__name__)
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


ALARM_STATES = ("ALARM", "OK", "INSUFFICIENT_DATA")
STATE_CHANGE = "CloudWatch Alarm State Change"


@dataclass(frozen=True)
class AlarmChange:
    """One alarm's state change, as the EventBridge event says it."""

    event_id: str
    alarm: str
    state: str
    previous: str | None
    account: str
    region: str
    at: datetime | None  # detail.state.timestamp


@dataclass(frozen=True)
class NotAnAlarmChange:
    event_id: str
    reason: str


def parse_alarm_event(event: Any) -> AlarmChange | NotAnAlarmChange:
    """The one parse step for alarm events. Only EventBridge "CloudWatch Alarm State Change" events are
    acted on; the payload CloudWatch sends when a Lambda function is itself an alarm action is refused
    with a reason (it is not forwarded by member accounts, and carries no EventBridge envelope)."""
    source = source_id(event)
    envelope = mapping(event, source, "event")
    event_id = source.removeprefix("event ")
    if "alarmData" in envelope and "detail" not in envelope:
        return NotAnAlarmChange(event_id, "a direct alarm-action payload: opsbot acts on EventBridge alarm events only")
    if envelope.get("detail-type") != STATE_CHANGE:
        return NotAnAlarmChange(event_id, f"not a {STATE_CHANGE!r} event ({str(envelope.get('detail-type'))[:60]!r})")
    detail = mapping(envelope.get("detail"), source, "detail")
    state = mapping(detail.get("state"), source, "detail.state")
    previous = optional_mapping(detail.get("previousState"), source, "detail.previousState")
    value = text(state.get("value"), source, "detail.state.value")
    if value not in ALARM_STATES:
        raise InputError(source, "detail.state.value", f"not an alarm state: {value[:40]!r}")
    try:
        at = timestamp(state.get("timestamp"), source, "detail.state.timestamp") if state.get("timestamp") else None
    except InputError:
        at = None  # the time only orders transitions; an odd one is not a reason to refuse the change
    prior = previous.get("value")
    return AlarmChange(
        event_id=event_id,
        alarm=text(detail.get("alarmName"), source, "detail.alarmName"),
        state=value,
        previous=prior if isinstance(prior, str) else None,
        account=text(envelope.get("account"), source, "account", pattern=ACCOUNT_ID),
        region=text(envelope.get("region"), source, "region", pattern=REGION),
        at=at,
    )


def on_alarm_event(event: Mapping[str, Any], policies: tuple[Policy, ...], board: Switchboard) -> list[Result]:
    """Act on one "CloudWatch Alarm State Change" event; returns what was done (empty: no policy).
    Raises ``InputError`` for an alarm event it cannot read."""
    change = parse_alarm_event(event)
    if isinstance(change, NotAnAlarmChange):
        log.info("alarm event %s ignored: %s", change.event_id, change.reason)
        return []
    return act_on(change, policies, board)


def act_on(change: AlarmChange, policies: tuple[Policy, ...], board: Switchboard) -> list[Result]:
    results: list[Result] = []
    for policy in (p for p in policies if p.alarm == change.alarm):
        # Alarm names repeat across accounts (StackSets): a pinned policy answers only its own alarm.
        if (policy.account and policy.account != change.account) or (policy.region and policy.region != change.region):
            continue
        account, region = policy.account or change.account, policy.region or change.region
        actor = Actor("policy", policy.name, f"{policy.name} ({change.alarm} {change.previous}->{change.state})")
        for spec in policy.targets:
            target = Target.parse(spec, account, region)
            if change.state == "ALARM":
                results.append(board.flip(target, actor, alarm=change.alarm, event_id=change.event_id))
            elif change.state == "OK" and policy.restore_on_ok:
                # Only what this policy flipped: a switch on-call flipped by hand stays until they restore it.
                flipped_by = (board.state(target) or {}).get("flipped_by") or {}
                if flipped_by.get("type") == "policy" and flipped_by.get("id") == policy.name:
                    results.append(board.restore(target, actor, alarm=change.alarm, event_id=change.event_id))
    return results


def policy_alert(event: Mapping[str, Any], results: list[Result]) -> Alert | None:
    """What on-call hears about a policy's flips and restores (None when nothing changed or failed)."""
    changed = [r for r in results if r.changed or r.outcome == "failed"]
    if not changed:
        return None
    change = parse_alarm_event(event)
    assert isinstance(change, AlarmChange)  # results exist only for a readable alarm change
    return Alert(
        kind="kill-switch",
        title=f"Kill switch policy: alarm {change.alarm} is {change.state}",
        severity="critical" if any(r.outcome == "failed" for r in changed) else "warning",
        summary=f"{len(changed)} switch action(s) in {change.account}/{change.region}.",
        details=[r.sentence() for r in changed],
        context="`opsbot killswitch status` · runbook: docs/runbooks/kill-switch.md",
    )
