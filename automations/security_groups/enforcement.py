"""Judging rules against the policy and acting on the verdicts: shared by the event path and the sweep.

Each group's rules are judged together (``SgPolicy.evaluate_all``: a split world is the world). Group tags
are read only for groups where something may break the policy (they can exempt it). Offending rules are
revoked by rule id, one call per group and direction; a rule already gone counts as done. Alert-only
findings are announced once and then again only every ``remind_days``; an exemption is announced the
first time it is used for a group; each revoke is claimed before it is made (``RuleClaims``), and made
before the exemption and alert-only claims are written (it is the urgent part).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from automations.core.clock import iso
from automations.core.errors import error_code, error_text, retryable
from automations.core.iam import LEDGER, grants
from automations.security_groups.policy import SgPolicy, SgRule, Verdict

GONE_CODES = ("InvalidPermission.NotFound", "InvalidSecurityGroupRuleId.NotFound", "InvalidGroup.NotFound")
RUNBOOK = "docs/runbooks/security-group-remediation.md"
# RuleClaims: one conditional put (and a read-back when it fails) per finding or revoke.
FINDINGS_GRANTS = grants(LEDGER, "dynamodb:PutItem", "dynamodb:GetItem")
FILTER_VALUES_MAX = 200  # EC2 rejects more values in one filter (FilterLimitExceeded)


@dataclass
class Outcome:
    """What happened to one offending rule."""

    verdict: Verdict
    result: str  # revoked | already-gone | would-revoke | alerted | known | exempt | handled-elsewhere | failed
    error: str | None = None
    first_use: bool = False  # exempt: the first time this exemption was used for this group (announced)

    @property
    def to_announce(self) -> bool:
        return self.result in ("revoked", "alerted", "failed") or (self.result == "exempt" and self.first_use)


def outcome_line(o: Outcome) -> str:
    """One finding, as announcements list it: what happened, to which rule, why, and any notes."""
    rule = o.verdict.rule
    line = f"{o.result}: {rule.rule_id} {rule.summary()} (rule {o.verdict.forbidden.name})"
    if o.result == "exempt":
        line += f": exempt by {o.verdict.exempt_reason}"
    extra = [*o.verdict.notes, *([o.error] if o.error else [])]
    return line + (f" — {'; '.join(extra)}" if extra else "")


def describe_rules(ec2: Any, account: str, region: str, **kwargs: Any) -> list[SgRule]:
    rules = []
    for page in ec2.get_paginator("describe_security_group_rules").paginate(**kwargs):
        rules += [SgRule.from_api(account, region, r) for r in page["SecurityGroupRules"]]
    return rules


def group_tags(ec2: Any, group_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """Tags of the groups: DescribeTags (one call for an event's group), not a describe of the groups."""
    ids = sorted(set(group_ids))
    tags: dict[str, dict[str, str]] = {g: {} for g in ids}
    for start in range(0, len(ids), FILTER_VALUES_MAX):
        chunk = ids[start : start + FILTER_VALUES_MAX]
        request: dict[str, Any] = {"Filters": [{"Name": "resource-id", "Values": chunk}]}
        while True:  # the pages by hand: a paginator loads botocore's paginator models (a cold-start cost)
            page = ec2.describe_tags(**request)
            for t in page["Tags"]:
                tags.setdefault(t["ResourceId"], {})[t["Key"]] = t["Value"]
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
    return tags


REVOKE_ATTEMPTS = 6


def revoke(ec2: Any, verdicts: list[Verdict], once: Any = None) -> list[Outcome]:
    """Revoke by rule id, one call per group and direction; a rule already gone is done, not an error.

    ``once`` is a client with botocore's retries off: a revoke whose reply was lost must not be re-sent
    blindly, or its own success comes back as "not found". After an error opsbot looks first: a rule
    that is gone after our call was in flight was revoked by it; only one gone before we tried is
    "already-gone" (someone else got there first)."""
    outcomes: list[Outcome] = []
    batches: dict[tuple[str, bool], list[Verdict]] = {}
    for v in verdicts:
        batches.setdefault((v.rule.group_id, v.rule.is_egress), []).append(v)
    for (group_id, egress), batch in batches.items():
        outcomes += _revoke_batch(ec2, once or ec2, group_id, egress, batch)
    return outcomes


def _revoke_batch(ec2: Any, once: Any, group_id: str, egress: bool, batch: list[Verdict]) -> list[Outcome]:
    call = once.revoke_security_group_egress if egress else once.revoke_security_group_ingress
    left, out, in_flight = list(batch), list[Outcome](), False
    for attempt in range(REVOKE_ATTEMPTS):
        try:
            call(GroupId=group_id, SecurityGroupRuleIds=[v.rule.rule_id for v in left])
            return out + [Outcome(v, "revoked") for v in left]
        except ClientError as exc:
            code, text = error_code(exc), error_text(exc)
            if code in GONE_CODES and len(left) == 1:
                return [*out, Outcome(left[0], "revoked" if in_flight else "already-gone")]
            if code not in GONE_CODES and not retryable(exc):
                return out + [Outcome(v, "failed", text) for v in left]
            error = text
        except BotoCoreError as exc:
            error = f"{type(exc).__name__}: {exc}"
        # Gone rules (one of several, or after a call that may have been applied) are looked up, not guessed.
        in_flight = in_flight or error.split(":")[0] not in GONE_CODES
        present = {r.rule_id for r in describe_rules(ec2, "", "", Filters=[{"Name": "group-id", "Values": [group_id]}])}
        for v in [v for v in left if v.rule.rule_id not in present]:
            out.append(Outcome(v, "revoked" if in_flight else "already-gone"))
        left = [v for v in left if v.rule.rule_id in present]
        if not left:
            return out
        time.sleep(min(4.0, 0.25 * 2**attempt))
    return out + [Outcome(v, "failed", error) for v in left]


TagReader = Callable[[Any, set[str]], dict[str, dict[str, str]]]


def judge(
    ec2: Any, policy: SgPolicy, rules: list[SgRule], today: date, read_tags: TagReader | None = None
) -> list[Verdict]:
    """Verdicts for the rules that break the policy, each group's rules judged together (a split world is
    the world). Group tags (conditions, exemptions) are read only for groups where something may break it;
    ``read_tags`` (by default ``group_tags``) may hand back tags read ahead (``remediation.TagLookahead``)."""
    suspects = policy.may_offend(rules)
    if not suspects:
        return []
    tags = (read_tags or group_tags)(ec2, suspects)
    tagged = [replace(r, group_tags=tags.get(r.group_id, {})) if r.group_id in suspects else r for r in rules]
    return policy.evaluate_all(tagged, today)


NEW, MINE, THEIRS = "new", "mine", "theirs"
CLAIM_HOURS = 1  # a revoke claim outlives any retry of the event or unit that made it


@dataclass
class RuleClaims:
    """Who revoked a rule: one claim per rule id in the ledger table, written before the revoke is sent.

    A claim never stops a revoke. EC2 lets only one revoke of a rule id succeed, and only the caller whose
    revoke succeeded announces it, so two events racing for one rule give one revoke and one alert, and a
    claim that turns out not to be needed (a rule found exempt, claimed ahead by
    ``remediation.Lookahead``; a claimant that died before revoking) cannot keep a forbidden rule open.
    What a claim gives is memory across a lost process: a retry of the same event (its first attempt died
    after revoking) finds its own claim, so the rule it finds gone is the one it revoked, and it is
    announced. Alert-only findings are claimed for ``remind_days``, so a rule left open is announced once
    a week, not on every sweep."""

    table: Any
    remind_days: int = 7
    ahead: dict[str, str] = field(default_factory=dict)  # revoke claims already made: key -> NEW/MINE/THEIRS

    def _claim(self, pk: str, sk: str, by: str, until: datetime, now: datetime, **attrs: Any) -> str:
        try:
            self.table.put_item(
                Item={"pk": pk, "sk": sk, "by": by, "at": iso(now), "expires_at": int(until.timestamp()), **attrs},
                # DynamoDB's TTL deletes lazily: an expired item counts as gone.
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues={":now": int(now.timestamp())},
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            held = self.table.get_item(Key={"pk": pk, "sk": sk}, ConsistentRead=True).get("Item") or {}
            return MINE if held.get("by") == by else THEIRS
        return NEW

    @staticmethod
    def revoke_key(rule: SgRule) -> str:
        return f"REVOKE#{rule.account}#{rule.region}#{rule.rule_id or rule.group_id}"

    def revoke(self, rule: SgRule, by: str, now: datetime) -> str:
        pk = self.revoke_key(rule)
        if (held := self.ahead.pop(pk, None)) is not None:
            return held
        return self._claim(pk, "REVOKE", by, now + timedelta(hours=CLAIM_HOURS), now, group_id=rule.group_id)

    def exemption_used(self, verdict: Verdict, now: datetime, by: str) -> bool:
        """Whether this is the first use of the verdict's exemption for its group (then it is announced).
        The claim is the ledger's record of it: which exemption, why, until when, first used by whom."""
        use, rule = verdict.exemption, verdict.rule
        if use is None:
            return False
        pk = f"EXEMPT#{rule.account}#{rule.region}#{rule.group_id}#{use.ident}"
        ends = datetime.combine(use.until, datetime.min.time(), UTC) if use.until else now + timedelta(days=365)
        attrs = {"group_id": rule.group_id, "source": use.source, "reason": use.reason, "exempt_until": str(use.until)}
        return self._claim(pk, "EXEMPTION", by, ends + timedelta(days=30), now, **attrs) != THEIRS

    def first_report(self, rule: SgRule, now: datetime, by: str = "") -> bool:
        pk = f"FINDING#{rule.account}#{rule.region}#{rule.rule_id or rule.group_id}"
        until = now + timedelta(days=self.remind_days)
        return self._claim(pk, "ALERT-ONLY", by, until, now, rule=rule.summary(), group_id=rule.group_id) != THEIRS


def enforce(
    ec2: Any,
    verdicts: list[Verdict],
    report_only: bool = False,
    claims: RuleClaims | None = None,
    now: datetime | None = None,
    by: str = "",
    once: Any = None,
) -> list[Outcome]:
    """Act on the verdicts: revokes first (each claimed, then made), then alert-only findings once and
    first uses of exemptions (claimed). A rule found gone is "revoked" when the claim is this caller's
    from an earlier attempt, "handled-elsewhere" when another caller claimed it, else "already-gone"."""
    now = now or datetime.now(UTC)
    to_revoke = [v for v in verdicts if v.action == "revoke"]
    acted: list[Outcome] = []
    if report_only:
        acted = [Outcome(v, "would-revoke") for v in to_revoke]
    elif to_revoke:
        held = {id(v): claims.revoke(v.rule, by, now) if claims else NEW for v in to_revoke}
        for outcome in revoke(ec2, to_revoke, once):
            if outcome.result == "already-gone" and held[id(outcome.verdict)] == MINE:
                outcome.result = "revoked"  # by this event's earlier attempt, whose story was never told
            elif outcome.result == "already-gone" and held[id(outcome.verdict)] == THEIRS:
                outcome.result = "handled-elsewhere"  # revoked first by another caller (its revoke tells it)
            acted.append(outcome)
    outcomes = [
        Outcome(v, "exempt", first_use=claims is None or claims.exemption_used(v, now, by))
        for v in verdicts
        if v.action == "exempt"
    ]
    for v in (v for v in verdicts if v.action == "alert"):
        known = claims is not None and not claims.first_report(v.rule, now, by)
        outcomes.append(Outcome(v, "known" if known else "alerted"))
    return outcomes + acted
