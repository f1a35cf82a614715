"""Security-group auto-remediation: from a CloudTrail event (via EventBridge) to revoked rules.

Modern records carry the new rules' ids in ``responseElements.securityGroupRuleSet``: those are
evaluated as they are, with no describe of the group. Older records (no rule set), groupName-only
requests and ModifySecurityGroupRules are resolved to rule ids with DescribeSecurityGroupRules.
Only the offending rules are revoked, by rule id: one CIDR of a multi-CIDR permission goes, the rest
stays. A rule already gone counts as done; only the caller whose revoke succeeded alerts, so two
events racing for the same rule give one revoke and one alert.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from automations.core.clock import iso, parse_time
from automations.core.fleet import AccountAccessError, SessionBroker
from automations.core.ledger import Ledger
from automations.core.notify import Alert, Notifier
from automations.security_groups.enforcement import RUNBOOK, FindingBook, Outcome, describe_rules, enforce, judge
from automations.security_groups.policy import SgPolicy, SgRule, normalise_protocol

HANDLED_EVENTS = ("AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress", "ModifySecurityGroupRules")
# In the member account: read the rules an event names (by id, by group, a groupName in the default VPC),
# the groups' tags (exemptions), and revoke by rule id.
MEMBER_ACTIONS = frozenset(
    {
        "ec2:DescribeSecurityGroupRules",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeVpcs",
        "ec2:DescribeTags",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupEgress",
    }
)


class EventError(ValueError):
    """An event opsbot cannot act on; the message names the event id."""


@dataclass(frozen=True)
class Actor:
    arn: str
    principal_type: str
    source_ip: str
    user_agent: str

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> Actor:
        identity = detail.get("userIdentity") or {}
        return cls(
            arn=identity.get("arn") or identity.get("principalId") or "unknown",
            principal_type=identity.get("type", "unknown"),
            source_ip=detail.get("sourceIPAddress", ""),
            user_agent=detail.get("userAgent", ""),
        )


@dataclass
class Remediation:
    event_id: str
    event_name: str
    account: str
    region: str
    actor: Actor
    event_time: datetime
    outcomes: list[Outcome] = field(default_factory=list)
    ignored: str | None = None
    checked: int = 0

    @property
    def to_notify(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result in ("revoked", "alerted", "failed")]


def _items(node: Any) -> list[Any]:
    """CloudTrail renders EC2 lists as {"items": [...]} (or {} when empty)."""
    if isinstance(node, dict):
        return list(node.get("items", []))
    return list(node or [])


def _requested_permissions(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Requested permissions, flattened one source each, from ipPermissions or the flat legacy form."""
    perms = _items(params.get("ipPermissions"))
    if not perms and params.get("ipProtocol") is not None:
        perms = [
            {
                "ipProtocol": params["ipProtocol"],
                "fromPort": params.get("fromPort"),
                "toPort": params.get("toPort"),
                "ipRanges": {"items": [{"cidrIp": params["cidrIp"]}]} if params.get("cidrIp") else {},
            }
        ]
    out = []
    for perm in perms:
        base = {
            "protocol": normalise_protocol(perm.get("ipProtocol")),
            "from_port": perm.get("fromPort"),
            "to_port": perm.get("toPort"),
        }
        out += [{**base, "cidr_ipv4": r.get("cidrIp")} for r in _items(perm.get("ipRanges"))]
        out += [{**base, "cidr_ipv6": r.get("cidrIpv6")} for r in _items(perm.get("ipv6Ranges"))]
        out += [{**base, "prefix_list_id": r.get("prefixListId")} for r in _items(perm.get("prefixListIds"))]
        out += [{**base, "referenced_group_id": g.get("groupId")} for g in _items(perm.get("groups"))]
    return out


def _same(rule: SgRule, wanted: Mapping[str, Any]) -> bool:
    def port(value: Any) -> int | None:
        return None if value is None else int(value)

    if rule.protocol != wanted["protocol"]:
        return False
    if rule.protocol != "all" and (port(wanted["from_port"]), port(wanted["to_port"])) != (
        rule.from_port,
        rule.to_port,
    ):
        return False
    return all(
        getattr(rule, key) == value for key, value in wanted.items() if key.startswith(("cidr", "prefix", "ref"))
    )


def _group_id_by_name(ec2: Any, name: str) -> str:
    """groupName-only requests address a group in the default VPC (or EC2-Classic)."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    filters = [{"Name": "group-name", "Values": [name]}]
    if vpcs:
        filters.append({"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]})
    groups = ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
    if not groups:
        raise EventError(f"no security group named {name!r} in the default VPC")
    return str(groups[0]["GroupId"])


def rules_from_event(ec2: Any, account: str, region: str, detail: Mapping[str, Any]) -> list[SgRule]:
    """The rules the event created or changed, as they are now."""
    name = detail["eventName"]
    params = detail.get("requestParameters") or {}
    response = detail.get("responseElements") or {}
    if name == "ModifySecurityGroupRules":
        request = params.get("ModifySecurityGroupRulesRequest", params)
        entries = request.get("SecurityGroupRule") or request.get("SecurityGroupRules") or []
        entries = entries if isinstance(entries, list) else [entries]
        ids = [e["SecurityGroupRuleId"] for e in entries if e.get("SecurityGroupRuleId")]
        if not ids:
            return []
        # A filter, not SecurityGroupRuleIds: a rule deleted meanwhile is simply absent (done), not an error.
        return describe_rules(ec2, account, region, Filters=[{"Name": "security-group-rule-id", "Values": ids}])
    rule_set = _items(response.get("securityGroupRuleSet"))
    if rule_set:
        return [SgRule.from_api(account, region, item) for item in rule_set]
    # Older record: no rule ids. Find the rules the request asked for in the group as it is now.
    group_id = params.get("groupId") or _group_id_by_name(ec2, params["groupName"])
    egress = name == "AuthorizeSecurityGroupEgress"
    wanted = _requested_permissions(params)
    current = describe_rules(ec2, account, region, Filters=[{"Name": "group-id", "Values": [group_id]}])
    return [r for r in current if r.is_egress == egress and any(_same(r, w) for w in wanted)]


def _event_time(detail: Mapping[str, Any], envelope: Mapping[str, Any]) -> datetime:
    raw = detail.get("eventTime") or envelope.get("time")
    return parse_time(str(raw)) if raw else datetime.now(UTC)


def remediate_event(
    event: Mapping[str, Any],
    broker: SessionBroker,
    policy: SgPolicy,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    findings: FindingBook | None = None,
) -> Remediation:
    """Act on one EventBridge "AWS API Call via CloudTrail" event, in the account/region it came from."""
    event_id = event.get("id") or "(no id)"
    detail = event.get("detail")
    if not isinstance(detail, Mapping) or "eventName" not in detail:
        raise EventError(f"event {event_id}: not a CloudTrail API-call event (no detail.eventName)")
    account = event.get("account") or detail.get("recipientAccountId")
    region = event.get("region") or detail.get("awsRegion")
    if not account or not region:
        raise EventError(f"event {event_id}: no account/region to act in")
    result = Remediation(
        event_id, detail["eventName"], account, region, Actor.from_detail(detail), _event_time(detail, event)
    )
    if detail["eventName"] not in HANDLED_EVENTS:
        result.ignored = f"not a security-group rule change ({detail['eventName']})"
        return result
    if detail.get("errorCode"):
        result.ignored = f"the call failed ({detail['errorCode']}): nothing was changed"
        return result
    member = broker.fleet.account(account)
    if member is None or region not in member.regions:
        # The hub bus admits the whole organization; opsbot acts only where the fleet says it may.
        result.ignored = f"{account}/{region} is not in the fleet (rules/fleet.yaml)"
        return result
    ec2 = broker.client(account, region, "ec2")
    try:
        rules = rules_from_event(ec2, account, region, detail)
    except EventError as exc:  # e.g. the named group was deleted meanwhile: nothing left to revoke
        result.ignored = str(exc)
        return result
    result.checked = len(rules)
    now = clock()
    result.outcomes = enforce(ec2, judge(ec2, policy, rules, now.date()), findings=findings, now=now)
    return result


def remediation_record(rem: Remediation, now: datetime) -> dict[str, Any]:
    """One ledger item per event: who, what, before, what was revoked, outcome, latency."""
    counts = Counter(o.result for o in rem.outcomes)
    failed = counts["failed"]
    return {
        "task": "sg-remediation",
        "kind": "security-group-event",
        "trigger": {"type": "event", "event_id": rem.event_id, "event_time": iso(rem.event_time)},
        "status": "FAILED" if failed else "SUCCEEDED",
        "account": rem.account,
        "region": rem.region,
        "event_name": rem.event_name,
        "actor": rem.actor.__dict__,
        "ignored": rem.ignored,
        "counts": {k.replace("-", "_"): v for k, v in counts.items()} | {"rules_checked": rem.checked},
        "latency_seconds": round((now - rem.event_time).total_seconds(), 3),
        "ended_at": iso(now),
        "actions": [
            {
                "account": rem.account,
                "region": rem.region,
                "resource": o.verdict.rule.rule_id or o.verdict.rule.group_id,
                "action": "revoke-rule",
                "outcome": o.result,
                "error": o.error,
                "detail": {
                    "group_id": o.verdict.rule.group_id,
                    "policy_rule": o.verdict.forbidden.name,
                    "mode": o.verdict.forbidden.mode,
                    "exempt_reason": o.verdict.exempt_reason,
                    "rule_before": {k: v for k, v in o.verdict.rule.as_dict().items() if v not in (None, {})},
                },
            }
            for o in rem.outcomes
        ],
    }


def remediation_alert(rem: Remediation, run_id: str, latency: float) -> Alert:
    revoked = [o for o in rem.outcomes if o.result == "revoked"]
    failed = [o for o in rem.outcomes if o.result == "failed"]
    group_ids = sorted({o.verdict.rule.group_id for o in rem.to_notify})
    if failed:
        severity, verb = "critical", "could NOT be revoked"
    elif revoked:
        severity, verb = "warning", "revoked"
    else:
        severity, verb = "warning", "found (alert-only)"
    return Alert(
        kind="sg-remediation",
        title=f"Forbidden security-group rule {verb}",
        severity=severity,
        summary=(
            f"{rem.event_name} by `{rem.actor.arn}` on {', '.join(group_ids)} in {rem.account}/{rem.region}; "
            f"{len(revoked)} rule(s) revoked {latency:.1f}s after the call."
        ),
        fields=[
            ("Account / region", f"{rem.account} / {rem.region}"),
            ("Group", ", ".join(group_ids)),
            ("Who", f"{rem.actor.arn} ({rem.actor.principal_type})"),
            ("Source IP", rem.actor.source_ip or "-"),
            ("User agent", (rem.actor.user_agent or "-")[:120]),
            ("Event", rem.event_id),
        ],
        details=[
            f"{o.result}: {o.verdict.rule.rule_id} {o.verdict.rule.summary()} "
            f"(rule {o.verdict.forbidden.name}){f' — {o.error}' if o.error else ''}"
            for o in rem.to_notify
        ],
        context=f"`opsbot runs show {run_id}` · restore or exempt: {RUNBOOK}",
    )


def handle_event(
    event: Mapping[str, Any],
    broker: SessionBroker,
    policy: SgPolicy,
    ledger: Ledger,
    notifier: Notifier | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Remediate, record (one ledger write), and notify when something was revoked, found or failed."""
    try:
        rem = remediate_event(event, broker, policy, clock, FindingBook(ledger.table))
    except AccountAccessError as exc:
        # Recorded, then raised so the event goes to the dead-letter queue for a retry.
        ledger.record_event(
            f"sg-{event.get('id')}",
            {
                "task": "sg-remediation",
                "status": "FAILED",
                "error": str(exc),
                "trigger": {"type": "event", "event_id": event.get("id")},
            },
        )
        raise
    now = clock()
    run_id = f"sg-{rem.event_id}"
    record = remediation_record(rem, now)
    if rem.ignored is None or rem.outcomes:
        ledger.record_event(run_id, record)
    if rem.to_notify and notifier is not None:
        notifier.send(remediation_alert(rem, run_id, record["latency_seconds"]))
    return {"run_id": run_id, "status": record["status"], "ignored": rem.ignored, "counts": record["counts"]}
