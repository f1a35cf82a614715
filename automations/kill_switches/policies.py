"""Kill-switch policies (``rules/kill_switches.yaml``): a CloudWatch alarm entering ALARM flips the
policy's targets; returning to OK restores them when the policy says so. The same file lists the
targets no kill switch may flip (``protected``; see ``protection.py``).

Only an EventBridge "CloudWatch Alarm State Change" from a fleet account and region is acted on, and
not while the alarm's actions are suppressed (a composite alarm's ``actionsSuppressedBy``). Each switch
remembers the time of the last change made to it, so a late or retried state older than that is
ignored (``as_of``). Configuration-change events (which also carry a state) and the payload CloudWatch
sends when a function is itself the alarm's action are not state changes opsbot acts on.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from automations.core import compiled
from automations.core.boundary import (
    ACCOUNT_ID,
    REGION,
    InputError,
    mapping,
    optional_mapping,
    optional_text,
    source_id,
    text,
    timestamp,
)
from automations.core.notify import Alert
from automations.core.rulebook import (
    LoadedDocument,
    Problem,
    RuleFile,
    RuleSource,
    load_document,
    load_schema,
    validate_document,
)
from automations.kill_switches import kinds as kinds_module
from automations.kill_switches.kinds import SWITCH_KINDS
from automations.kill_switches.protection import DEFAULT_TAG, Protection
from automations.kill_switches.switchboard import Actor, Result, Switchboard, Target

log = logging.getLogger(__name__)
SCHEMA = Path(__file__).with_name("schemas") / "kill_switches.schema.json"


def policies_schema() -> dict[str, Any]:
    """The file's schema, with the target prefixes of the kinds that may be flipped in member accounts."""
    schema = copy.deepcopy(load_schema(SCHEMA))
    prefixes = "|".join(kind.name for kind in SWITCH_KINDS if kind.in_members)
    item = schema["properties"]["policies"]["items"]["properties"]["targets"]["items"]
    item["pattern"] = f"^({prefixes}):[^\\s]+$"
    schema["properties"]["protected"]["properties"]["targets"]["items"]["pattern"] = f"^({prefixes}):[^\\s]+$"
    return schema


@dataclass(frozen=True)
class Policy:
    name: str
    alarm: str
    targets: tuple[str, ...]
    restore_on_ok: bool = False
    account: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class KillSwitchRules:
    """``rules/kill_switches.yaml``: the alarm policies, and what no kill switch may flip."""

    policies: tuple[Policy, ...] = ()
    protection: Protection = field(default_factory=Protection)


def _checks(doc: LoadedDocument) -> list[Problem]:
    seen: set[str] = set()
    problems = []
    for i, p in enumerate(doc.data["policies"]):
        if p["name"] in seen:
            problems.append(doc.problem(("policies", i, "name"), f"duplicate policy name {p['name']!r}"))
        seen.add(p["name"])
    return problems


# What a compiled kill_switches.yaml depends on besides its text (core/compiled.py): its schema, this
# loader, and the kinds (their names are the target prefixes the schema admits).
POLICIES_COMPILED_FROM = (SCHEMA, Path(__file__), Path(kinds_module.__file__))


def load_policies(path: str | Path, text: str | None = None) -> KillSwitchRules:
    """The Slack endpoint and the policy function read the form `make package` compiled when it was
    compiled from exactly this text (no YAML or JSON-schema at cold start); otherwise it validates."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    if (value := compiled.read(path, text, *POLICIES_COMPILED_FROM)) is not None:
        return rules_from_data(value)
    return rules_from_data(validated_policies(path, text))


def validated_policies(path: str | Path, text: str) -> dict[str, Any]:
    """The file's data, valid (``RulebookError`` with every problem as file:line otherwise)."""
    doc = load_document(path, text)
    validate_document(doc, policies_schema(), [_checks])
    return dict(doc.data)


def rules_from_data(data: Mapping[str, Any]) -> KillSwitchRules:
    protected = data.get("protected") or {}
    return KillSwitchRules(
        policies=tuple(
            Policy(
                name=p["name"],
                alarm=p["alarm"],
                targets=tuple(p["targets"]),
                restore_on_ok=p.get("restore_on_ok", False),
                account=p.get("account"),
                region=p.get("region"),
            )
            for p in data["policies"]
        ),
        protection=Protection.of(protected.get("targets", ()), protected.get("tag", DEFAULT_TAG)),
    )


POLICIES_FILE = RuleFile("kill_switches.yaml", load_policies)


def protection_of(rules: RuleSource) -> Protection:
    """The deny-list every entry point passes to its switchboard; without the file, opsbot's own and the
    default tag are still protected."""
    return rules.get(POLICIES_FILE).protection if rules.exists(POLICIES_FILE) else Protection()


ALARM_STATES = ("ALARM", "OK", "INSUFFICIENT_DATA")
STATE_CHANGE = "CloudWatch Alarm State Change"
ALARM_SOURCE = "aws.cloudwatch"  # only AWS may send it: PutEvents refuses "aws." sources


@dataclass(frozen=True)
class AlarmChange:
    """One alarm's state change, as the EventBridge event says it."""

    event_id: str
    alarm: str
    state: str
    previous: str | None
    account: str
    region: str
    at: datetime  # detail.state.timestamp: orders this change against the switch's last one
    suppressed_by: str | None = None  # detail.state.actionsSuppressedBy (composite alarms)
    suppressed_reason: str | None = None


@dataclass(frozen=True)
class NotAnAlarmChange:
    event_id: str
    reason: str


def _direct_payload_source(envelope: Mapping[str, Any]) -> str:
    arn, at = envelope.get("alarmArn"), envelope.get("time")
    if isinstance(arn, str) and arn.strip():
        return f"alarm action {arn[:200]}" + (f" at {at[:40]}" if isinstance(at, str) else "")
    return "alarm action (no alarmArn)"


def parse_alarm_event(event: Any) -> AlarmChange | NotAnAlarmChange:
    """The one parse step for alarm events. Only EventBridge "CloudWatch Alarm State Change" events from
    CloudWatch are acted on; others (configuration changes, which also carry a state) are not alarm
    state changes. The payload CloudWatch sends when a Lambda function is itself an alarm action is
    refused with a designed error: it is recorded and announced, not dropped in silence."""
    source = source_id(event)
    envelope = mapping(event, source, "event")
    event_id = source.removeprefix("event ")
    if "alarmData" in envelope and "detail" not in envelope:
        where = _direct_payload_source(envelope)
        log.warning("refused a direct alarm-action payload (%s): opsbot acts on EventBridge alarm events only", where)
        raise InputError(
            where,
            "alarmData",
            "a direct alarm-action payload (CloudWatch invoked this function as the alarm's action): opsbot acts "
            f"only on EventBridge {STATE_CHANGE!r} events, which member accounts forward; remove this function "
            "from the alarm's actions",
        )
    if envelope.get("detail-type") != STATE_CHANGE:
        return NotAnAlarmChange(event_id, f"not a {STATE_CHANGE!r} event ({str(envelope.get('detail-type'))[:60]!r})")
    if envelope.get("source") != ALARM_SOURCE:
        return NotAnAlarmChange(event_id, f"not from {ALARM_SOURCE} ({str(envelope.get('source'))[:60]!r})")
    detail = mapping(envelope.get("detail"), source, "detail")
    state = mapping(detail.get("state"), source, "detail.state")
    previous = optional_mapping(detail.get("previousState"), source, "detail.previousState")
    value = text(state.get("value"), source, "detail.state.value")
    if value not in ALARM_STATES:
        raise InputError(source, "detail.state.value", f"not an alarm state: {value[:40]!r}")
    prior = previous.get("value")
    return AlarmChange(
        event_id=event_id,
        alarm=text(detail.get("alarmName"), source, "detail.alarmName"),
        state=value,
        previous=prior if isinstance(prior, str) else None,
        account=text(envelope.get("account"), source, "account", pattern=ACCOUNT_ID),
        region=text(envelope.get("region"), source, "region", pattern=REGION),
        # Without its time a state cannot be ordered against the switch's last change: refused, not guessed.
        at=timestamp(state.get("timestamp"), source, "detail.state.timestamp"),
        suppressed_by=optional_text(state.get("actionsSuppressedBy"), source, "detail.state.actionsSuppressedBy"),
        suppressed_reason=optional_text(
            state.get("actionsSuppressedReason"), source, "detail.state.actionsSuppressedReason"
        ),
    )


def on_alarm_event(event: Mapping[str, Any], rules: KillSwitchRules, board: Switchboard) -> list[Result]:
    """Act on one "CloudWatch Alarm State Change" event; returns what was done (empty: no policy, or not
    a state change opsbot acts on). Raises ``InputError`` for an alarm event it cannot read or refuses."""
    change = parse_alarm_event(event)
    if isinstance(change, NotAnAlarmChange):
        log.info("alarm event %s ignored: %s", change.event_id, change.reason)
        return []
    return act_on(change, rules.policies, board)


def act_on(change: AlarmChange, policies: tuple[Policy, ...], board: Switchboard) -> list[Result]:
    # Alarm names repeat across accounts (StackSets): a pinned policy answers only its own alarm.
    matching = [
        p
        for p in policies
        if p.alarm == change.alarm
        and (not p.account or p.account == change.account)
        and (not p.region or p.region == change.region)
    ]
    if not matching:
        return []
    # Any account of the organisation may put events on the hub bus: only the fleet's are acted on.
    if outside := board.in_fleet(change.account, change.region):
        log.warning("alarm event %s (%s) not acted on: %s", change.event_id, change.alarm, outside)
        return []
    results: list[Result] = []
    for policy in matching:
        actor = Actor("policy", policy.name, f"{policy.name} ({change.alarm} {change.previous}->{change.state})")
        for spec in policy.targets:
            target = Target.parse(spec, change.account, change.region)
            if change.state == "ALARM":
                action = "flip"
            elif change.state == "OK" and policy.restore_on_ok and _flipped_by(board, target, policy):
                action = "restore"
            else:
                continue
            context: dict[str, Any] = {"alarm": change.alarm, "event_id": change.event_id}
            if change.suppressed_by:  # CloudWatch itself holds the alarm's actions back: so does opsbot
                reason = f"the alarm's actions are suppressed by {change.suppressed_by}"
                if change.suppressed_reason:
                    reason += f" ({change.suppressed_reason})"
                results.append(board.decline(target, actor, action, "suppressed", reason, **context))
            elif action == "flip":
                results.append(board.flip(target, actor, as_of=change.at, **context))
            else:
                results.append(board.restore(target, actor, as_of=change.at, **context))
    return results


def _flipped_by(board: Switchboard, target: Target, policy: Policy) -> bool:
    """Only what this policy flipped is restored on OK: a switch on-call flipped by hand stays until they
    restore it."""
    flipped = board.state(target) or {}
    by = flipped.get("flipped_by") or {}
    return bool(flipped.get("flipped")) and by.get("type") == "policy" and by.get("id") == policy.name


ATTENTION = ("failed", "refused", "drifted")


def policy_alert(event: Mapping[str, Any], results: list[Result]) -> Alert | None:
    """What on-call hears about a policy's flips and restores (None when nothing changed or needs them):
    a change, a failure, a refusal (a protected target) or a restore refused because of drift."""
    changed = [r for r in results if r.changed or r.outcome in ATTENTION]
    if not changed:
        return None
    change = parse_alarm_event(event)
    assert isinstance(change, AlarmChange)  # results exist only for a readable alarm change
    return Alert(
        kind="kill-switch",
        title=f"Kill switch policy: alarm {change.alarm} is {change.state}",
        severity="critical" if any(r.outcome in ATTENTION for r in changed) else "warning",
        summary=f"{len(changed)} switch action(s) in {change.account}/{change.region}.",
        details=[r.sentence() for r in changed],
        context="`opsbot killswitch status` · runbook: docs/runbooks/kill-switch.md",
    )
