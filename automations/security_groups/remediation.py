"""Security-group auto-remediation: from a CloudTrail event (via EventBridge) to revoked rules.

The event is parsed once (``events.parse_event``). Modern records carry the new rules' ids: those are
judged as they are, with no describe of the group. Older records, groupName-only requests and
ModifySecurityGroupRules are resolved with DescribeSecurityGroupRules. A record that could not be fully
understood has its named groups' actual rules judged instead: a forbidden rule is never left in place
because the record was odd. Only offending rules are revoked, by rule id. A rule already gone counts
as done; only the caller whose revoke succeeded alerts, so two events racing for the same rule give one
revoke and one alert.

Once a rule is revoked the story is told whatever else fails: the alert and the ledger record are each
attempted, and only then is a failure of either raised (so the event is retried, then dead-lettered).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from automations.core.boundary import InputError, source_id
from automations.core.clock import iso
from automations.core.errors import error_code
from automations.core.fleet import AccountAccessError, SessionBroker
from automations.core.intake import report_unreadable
from automations.core.ledger import CONDITION_FAILED, Ledger
from automations.core.notify import Alert, Notifier
from automations.core.outbox import Outbox
from automations.security_groups.enforcement import (
    RUNBOOK,
    Outcome,
    RuleClaims,
    TagReader,
    describe_rules,
    enforce,
    group_tags,
    judge,
    outcome_line,
)
from automations.security_groups.events import Actor, Envelope, Ignored, SgChange, parse_event
from automations.security_groups.policy import SgPolicy, SgRule

log = logging.getLogger(__name__)

# In the member account: read the rules an event names (by id, by group, a groupName in the default VPC),
# the groups' tags (exemptions), and revoke by rule id.
CAPABILITY_NAME = "security-groups"  # the member role remediation acts as (template-member.yaml)
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


class StoryError(RuntimeError):
    """Opsbot acted, but telling it (alert or ledger record) failed; raised after both were attempted."""


@dataclass
class Remediation:
    envelope: Envelope
    outcomes: list[Outcome] = field(default_factory=list)
    ignored: str | None = None
    checked: int = 0
    read_groups: str | None = None  # why the groups' actual rules were judged instead of the record's

    @property
    def event_id(self) -> str:
        return self.envelope.event_id

    @property
    def event_name(self) -> str:
        return self.envelope.event_name

    @property
    def account(self) -> str:
        return self.envelope.account

    @property
    def region(self) -> str:
        return self.envelope.region

    @property
    def actor(self) -> Actor:
        return self.envelope.actor

    @property
    def event_time(self) -> datetime:
        return self.envelope.event_time

    @property
    def to_notify(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.to_announce]


def _group_id_by_name(ec2: Any, name: str) -> str | None:
    """groupName-only requests address a group in the default VPC (or EC2-Classic)."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    filters = [{"Name": "group-name", "Values": [name]}]
    if vpcs:
        filters.append({"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]})
    groups = ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
    return str(groups[0]["GroupId"]) if groups else None


def rules_to_judge(ec2: Any, change: SgChange) -> tuple[list[SgRule], str | None]:
    """The rules the event created or changed, as they are now; and, when the record could not be fully
    understood, why the named groups' actual rules (all of them) are judged instead."""
    env = change.envelope
    groups = list(change.groups)
    if change.group_name and not change.group_id and (found := _group_id_by_name(ec2, change.group_name)):
        groups.append(found)
    if change.unclear or (not change.rules and not change.rule_ids and not change.requested):
        if not groups:
            return [], "the group the record names no longer exists"
        why = ("; ".join(change.unclear) or "the record names no rule")[:1000]
        return describe_rules(ec2, env.account, env.region, Filters=[{"Name": "group-id", "Values": groups}]), why
    if change.modify:
        # A filter, not SecurityGroupRuleIds: a rule deleted meanwhile is simply absent (done), not an error.
        filters = [{"Name": "security-group-rule-id", "Values": list(change.rule_ids)}]
        return describe_rules(ec2, env.account, env.region, Filters=filters), None
    if change.rules:
        return list(change.rules), None
    # Older record: no rule ids. Find the rules the request asked for in the group as it is now.
    if not groups:
        return [], None  # the named group is gone: nothing left to revoke
    current = describe_rules(ec2, env.account, env.region, Filters=[{"Name": "group-id", "Values": groups}])
    asked = [r for r in current if r.is_egress == change.egress and any(w.same_as(r) for w in change.requested)]
    if not asked:  # revoked meanwhile, or the record does not say what it did: judge what the group holds
        return current, "no rule in the group matches what the record says was asked for"
    return asked, None


class Lookahead:
    """The round trips that need not wait for the dedupe write, started before it so they overlap it: the
    handler makes this, then Powertools Idempotency writes its in-progress record. At once, on threads:
    the groups' tags (the exemption lookup) and the claims on the rules that may be revoked (``RuleClaims``).
    What to read and claim is decided here, on the caller's thread (no I/O, well under a millisecond), so
    both requests are on the wire while the dedupe write is.

    Only for a modern record's rules, judged as they are; any other request, and any failure here, is read
    or claimed again when judging, as before. The tags are used only for exactly the groups read ahead,
    and only if the event is not a duplicate. Claiming ahead is safe because a claim never stops a revoke:
    a rule claimed here that turns out exempt (or a duplicate delivery's claim, which finds its own) keeps
    nothing open; the claim only lets a retry of this event recognise its own revoke."""

    def __init__(
        self, event: Mapping[str, Any], broker: SessionBroker, policy: SgPolicy, table: Any, now: datetime
    ) -> None:
        self._groups: frozenset[str] = frozenset()
        self._tags: Future[dict[str, dict[str, str]] | None] | None = None
        self._claims: Future[dict[str, str] | None] | None = None
        try:
            change = parse_event(event, now)
            if isinstance(change, Ignored) or change.unclear or change.modify or not change.rules:
                return
            rules = list(change.rules)
            suspects = policy.may_offend(rules)
            if not suspects or policy.needs_group_view(rules):
                return
        except Exception:  # the judging path parses again, and raises what it raises
            log.debug("no lookahead", exc_info=True)
            return
        env, member = change.envelope, broker.for_capability(CAPABILITY_NAME)
        self._groups = frozenset(suspects)
        self._tags = _LOOKAHEAD.submit(_tags_ahead, member, env, self._groups)
        if to_claim := policy.may_revoke(rules):
            by = f"event:{env.event_id}"
            self._claims = _LOOKAHEAD.submit(_claims_ahead, member, env, RuleClaims(table), to_claim, by, now)

    def tags(self, ec2: Any, group_ids: set[str]) -> dict[str, dict[str, str]]:
        """A ``TagReader``: the tags read ahead when they are of exactly these groups, else read now."""
        ahead = None
        if self._tags is not None and self._groups == frozenset(group_ids):
            try:
                ahead = self._tags.result()
            except Exception:  # the judging path reads again, and raises what it raises
                log.debug("no tags read ahead", exc_info=True)
        return ahead if ahead is not None else group_tags(ec2, group_ids)

    def claims(self) -> dict[str, str]:
        """The revoke claims made ahead (``RuleClaims.ahead``); none if they were not made or failed."""
        try:
            return (self._claims.result() if self._claims is not None else None) or {}
        except Exception:  # claimed again before the revoke, and raises what it raises
            log.debug("no claims made ahead", exc_info=True)
            return {}


def _tags_ahead(broker: SessionBroker, env: Envelope, groups: frozenset[str]) -> dict[str, dict[str, str]] | None:
    if not broker.fleet.covers(env.account, env.region):
        return None
    # The revoke's client (retries off: a throttled read here just fails the head start, and the judging
    # path reads again with retries), made here so that it exists by the time the revoke needs it.
    return group_tags(broker.client(env.account, env.region, "ec2", retries=False), groups)


def _claims_ahead(
    broker: SessionBroker, env: Envelope, claims: RuleClaims, rules: list[SgRule], by: str, now: datetime
) -> dict[str, str] | None:
    if not broker.fleet.covers(env.account, env.region):
        return None
    return {RuleClaims.revoke_key(rule): claims.revoke(rule, by, now) for rule in rules}


_LOOKAHEAD = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sg-lookahead")  # the tags, the claims


def remediate(
    change: SgChange,
    broker: SessionBroker,
    policy: SgPolicy,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    claims: RuleClaims | None = None,
    read_tags: TagReader | None = None,
) -> Remediation:
    """Judge and act on one parsed change, in the account/region it came from (if the fleet has it)."""
    env = change.envelope
    result = Remediation(env)
    if not broker.fleet.covers(env.account, env.region):
        # The hub bus admits the whole organization; opsbot acts only where the fleet says it may.
        result.ignored = f"{env.account}/{env.region} is not in the fleet (rules/fleet.yaml)"
        return result
    # Retries on, for reads; made on first use: a modern record read ahead never needs it.
    ec2 = broker.lazy_client(env.account, env.region, "ec2")
    rules, result.read_groups = rules_to_judge(ec2, change)
    if result.read_groups is None and policy.needs_group_view(rules):
        # A range that is harmless alone may complete a split with the group's other rules (the world in
        # two halves, in this call or an earlier one): judge the group's rules together.
        seen = {r.rule_id for r in rules}
        group_filter = [{"Name": "group-id", "Values": sorted({r.group_id for r in rules})}]
        rules += [
            r for r in describe_rules(ec2, env.account, env.region, Filters=group_filter) if r.rule_id not in seen
        ]
    now = clock()
    once = broker.client(env.account, env.region, "ec2", retries=False)  # revokes: opsbot retries, after looking
    verdicts = judge(ec2, policy, rules, now.date(), read_tags)
    result.outcomes = enforce(ec2, verdicts, claims=claims, now=now, by=f"event:{env.event_id}", once=once)
    gone = [o for o in result.outcomes if o.result == "already-gone"]
    if gone and result.read_groups is None and change.groups:
        # The record named a rule that is not there (revoked meanwhile, or the record was wrong): make sure
        # by judging the groups' actual rules, so an open rule the record misnamed does not stay.
        result.read_groups = "a rule the record named was already gone: the groups' rules were read"
        done = {o.verdict.rule.rule_id for o in result.outcomes}
        group_filter = [{"Name": "group-id", "Values": list(change.groups)}]
        more = [r for r in describe_rules(ec2, env.account, env.region, Filters=group_filter) if r.rule_id not in done]
        rules += more
        verdicts = judge(ec2, policy, more, now.date())
        result.outcomes += enforce(ec2, verdicts, claims=claims, now=now, by=f"event:{env.event_id}", once=once)
    result.checked = len(rules)
    return result


# One event's record and announcement are each one DynamoDB item (400 KB): a record naming thousands of
# rules keeps the counts of all of them, the first MAX_RECORDED_ACTIONS actions (failures and revokes
# first) and how many were left out; the announcement lists MAX_ALERT_DETAILS findings and MAX_ALERT_GROUPS
# groups. A recorded action is about 0.7 KB.
MAX_RECORDED_ACTIONS = 100
MAX_ALERT_DETAILS = 20
MAX_ALERT_GROUPS = 10
_FIRST = ("failed", "revoked", "alerted", "exempt")  # what is kept first when not everything can be


def _kept(outcomes: list[Outcome], limit: int) -> list[Outcome]:
    """All the outcomes in their order; or, when there are more than ``limit``, the ``limit`` that matter
    most (failures, then revokes, alerts, first uses of an exemption)."""
    if len(outcomes) <= limit:
        return list(outcomes)
    ranked = sorted(outcomes, key=lambda o: _FIRST.index(o.result) if o.result in _FIRST else len(_FIRST))
    return ranked[:limit]


def _listed(values: list[str], limit: int) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def remediation_record(rem: Remediation, now: datetime) -> dict[str, Any]:
    """One ledger item per event: who, what, before, what was revoked, outcome, latency. Every outcome is
    counted; at most MAX_RECORDED_ACTIONS are listed (``actions_omitted``: how many are not)."""
    counts = Counter(o.result for o in rem.outcomes)
    failed = counts["failed"]
    listed = _kept(rem.outcomes, MAX_RECORDED_ACTIONS)
    omitted = {"actions_omitted": len(rem.outcomes) - len(listed)} if len(listed) < len(rem.outcomes) else {}
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
        "read_groups": rem.read_groups,
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
                    "first_use": o.first_use or None,
                    "notes": list(o.verdict.notes) or None,
                    "rule_before": {k: v for k, v in o.verdict.rule.as_dict().items() if v not in (None, {})},
                },
            }
            for o in listed
        ],
        **omitted,
    }


def remediation_alert(rem: Remediation, run_id: str, latency: float) -> Alert:
    revoked = [o for o in rem.outcomes if o.result == "revoked"]
    failed = [o for o in rem.outcomes if o.result == "failed"]
    group_ids = sorted({o.verdict.rule.group_id for o in rem.to_notify})
    shown = _kept(rem.to_notify, MAX_ALERT_DETAILS)
    more = len(rem.to_notify) - len(shown)
    if failed:
        severity, title = "critical", "Forbidden security-group rule could NOT be revoked"
    elif revoked:
        severity, title = "warning", "Forbidden security-group rule revoked"
    elif any(o.result == "alerted" for o in rem.outcomes):
        severity, title = "warning", "Forbidden security-group rule found (alert-only)"
    else:
        severity, title = "warning", "Security-group exemption used for the first time"
    return Alert(
        kind="sg-remediation",
        title=title,
        severity=severity,
        summary=(
            f"{rem.event_name} by `{rem.actor.arn}` on {_listed(group_ids, MAX_ALERT_GROUPS)} in "
            f"{rem.account}/{rem.region}; "
            f"{len(revoked)} rule(s) revoked {latency:.1f}s after the call."
        ),
        fields=[
            ("Account / region", f"{rem.account} / {rem.region}"),
            ("Group", _listed(group_ids, MAX_ALERT_GROUPS)),
            ("Who", f"{rem.actor.arn} ({rem.actor.principal_type})"),
            ("Source IP", rem.actor.source_ip or "-"),
            ("User agent", (rem.actor.user_agent or "-")[:120]),
            ("Event", rem.event_id),
        ],
        details=[outcome_line(o) for o in shown],
        context=(f"{more} more finding(s) not listed · " if more else "")
        + f"`opsbot runs show {run_id}` · restore or exempt: {RUNBOOK}",
    )


def handle_event(
    event: Mapping[str, Any],
    broker: SessionBroker,
    policy: SgPolicy,
    ledger: Ledger,
    notifier: Notifier | Callable[[], Notifier | None] | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ahead: Lookahead | None = None,
) -> dict[str, Any]:
    """Parse, remediate, then tell: alert and one ledger record. Designed errors (an event that cannot be
    read, a member account that cannot be reached) are recorded and raised for the dead-letter queue.

    ``notifier`` may be a function that returns it: it is then asked for only after opsbot has acted (the
    Slack token is a Secrets Manager read that need not come before the revoke). ``ahead``: the tags and
    claims the handler started before the dedupe write (``Lookahead``)."""
    now = clock()
    try:
        parsed = parse_event(event, now)
        if isinstance(parsed, Ignored):
            rem = Remediation(parsed.envelope, ignored=parsed.reason)
        else:
            member = broker.for_capability(CAPABILITY_NAME)  # the security-groups member role
            claims = RuleClaims(ledger.table, ahead=ahead.claims() if ahead else {})
            rem = remediate(parsed, member, policy, clock, claims, ahead.tags if ahead else None)
    except InputError as exc:
        report_unreadable("security-group event", event, exc, ledger, _resolve(notifier), now, RUNBOOK)
        raise
    except AccountAccessError as exc:
        # Recorded, then raised so the event goes to the dead-letter queue for a retry.
        event_id = source_id(event).removeprefix("event ")
        ledger.record_event(
            f"sg-{event_id}",
            {
                "task": "sg-remediation",
                "status": "FAILED",
                "error": str(exc),
                "trigger": {"type": "event", "event_id": event_id},
            },
        )
        raise
    return tell(rem, ledger, _resolve(notifier), clock())


def _resolve(notifier: Notifier | Callable[[], Notifier | None] | None) -> Notifier | None:
    """The notifier, asked for after opsbot acted. If building it fails (the Slack token read), the record
    and its announcement are still written: the outbox keeps it and the sweeper delivers it later."""
    if notifier is None or isinstance(notifier, Notifier):
        return notifier
    try:
        return notifier()
    except Exception:
        log.exception("the notifier could not be built; the announcement waits in the outbox")
        return None


def tell(rem: Remediation, ledger: Ledger, notifier: Notifier | None, now: datetime) -> dict[str, Any]:
    """The ledger record and the announcement in one write (the outbox), then the delivery.

    A retried event finds its announcement written already and keeps it (no second one). If the write
    itself fails after opsbot acted, the alert goes out directly before the error is raised: on-call
    hears of a revoke even when the ledger is down."""
    run_id, announcement = f"sg-{rem.event_id}", f"sg#{rem.event_id}"
    record = remediation_record(rem, now)
    alert = remediation_alert(rem, run_id, record["latency_seconds"]) if rem.to_notify else None
    outbox = Outbox(ledger.table, notifier, ledger.clock)
    keep = rem.ignored is None or bool(rem.outcomes)
    try:
        if alert is not None and keep:
            entry = {"Item": outbox.item(announcement, alert), "ConditionExpression": "attribute_not_exists(pk)"}
            try:
                ledger.transact({"Put": {"Item": ledger.event_item(run_id, record)}}, {"Put": entry})
            except ClientError as exc:
                if error_code(exc) not in CONDITION_FAILED:
                    raise
                ledger.record_event(run_id, record)  # the announcement is there from an earlier attempt
        elif keep:
            ledger.record_event(run_id, record)
        elif alert is not None:
            outbox.add(announcement, alert)
    except Exception as exc:
        log.exception("ledger record for %s failed", run_id)
        if alert is not None and notifier is not None:
            notifier.send(alert, announcement)
        raise StoryError(f"{run_id}: acted and announced, but not recorded: {exc}") from exc
    failures = outbox.deliver(announcement) if alert is not None else []
    return {
        "run_id": run_id,
        "status": record["status"],
        "ignored": rem.ignored,
        "counts": record["counts"],
        "notify_failures": failures,
    }
