"""Judging rules against the policy and acting on the verdicts: shared by the event path and the sweep.

Group tags are read only when a rule matched something (they can exempt it). Offending rules are revoked
by rule id, one call per group and direction; a rule already gone counts as done. Alert-only findings
are announced once and then again only every ``remind_days`` (``FindingBook``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from automations.core.clock import iso
from automations.core.errors import error_code, error_text
from automations.core.iam import LEDGER, grants
from automations.security_groups.policy import SgPolicy, SgRule, Verdict

GONE_CODES = ("InvalidPermission.NotFound", "InvalidSecurityGroupRuleId.NotFound", "InvalidGroup.NotFound")
RUNBOOK = "docs/runbooks/security-group-remediation.md"
# FindingBook: one conditional put per alert-only finding.
FINDINGS_GRANTS = grants(LEDGER, "dynamodb:PutItem")
FILTER_VALUES_MAX = 200  # EC2 rejects more values in one filter (FilterLimitExceeded)


@dataclass
class Outcome:
    """What happened to one offending rule."""

    verdict: Verdict
    result: str  # revoked | already-gone | would-revoke | alerted | exempt | failed
    error: str | None = None


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
        for page in ec2.get_paginator("describe_tags").paginate(Filters=[{"Name": "resource-id", "Values": chunk}]):
            for t in page["Tags"]:
                tags.setdefault(t["ResourceId"], {})[t["Key"]] = t["Value"]
    return tags


def revoke(ec2: Any, verdicts: list[Verdict]) -> list[Outcome]:
    """Revoke by rule id, one call per group and direction; a rule already gone is done, not an error."""
    outcomes: list[Outcome] = []
    batches: dict[tuple[str, bool], list[Verdict]] = {}
    for v in verdicts:
        batches.setdefault((v.rule.group_id, v.rule.is_egress), []).append(v)
    for (group_id, egress), batch in batches.items():
        call = ec2.revoke_security_group_egress if egress else ec2.revoke_security_group_ingress
        try:
            call(GroupId=group_id, SecurityGroupRuleIds=[v.rule.rule_id for v in batch])
            outcomes += [Outcome(v, "revoked") for v in batch]
            continue
        except ClientError as exc:
            code, text = error_code(exc), error_text(exc)
            if code not in GONE_CODES or len(batch) == 1:
                result = "already-gone" if code in GONE_CODES else "failed"
                outcomes += [Outcome(v, result, None if result == "already-gone" else text) for v in batch]
                continue
        for v in batch:  # one of several was gone: the call is all-or-nothing, so go one by one
            try:
                call(GroupId=group_id, SecurityGroupRuleIds=[v.rule.rule_id])
                outcomes.append(Outcome(v, "revoked"))
            except ClientError as exc:
                code, text = error_code(exc), error_text(exc)
                outcomes.append(Outcome(v, "already-gone") if code in GONE_CODES else Outcome(v, "failed", text))
    return outcomes


def judge(ec2: Any, policy: SgPolicy, rules: list[SgRule], today: date) -> list[Verdict]:
    """Verdicts for the rules that break the policy. Group tags are fetched only when something matched."""
    suspects = [r for r in rules if policy.candidates(r)]
    if not suspects:
        return []
    tags = group_tags(ec2, (r.group_id for r in suspects))
    verdicts = []
    for rule in suspects:
        tagged = replace(rule, group_tags=tags.get(rule.group_id, {}))
        if verdict := policy.evaluate(tagged, today):
            verdicts.append(verdict)
    return verdicts


@dataclass
class FindingBook:
    """Alert-only findings already reported, so a rule left open is not re-announced every sweep.

    One item per rule id (ledger table); a finding is reported again after ``remind_days``."""

    table: Any
    remind_days: int = 7

    def first_report(self, rule: SgRule, now: datetime) -> bool:
        try:
            self.table.put_item(
                Item={
                    "pk": f"FINDING#{rule.account}#{rule.region}#{rule.rule_id or rule.group_id}",
                    "sk": "ALERT-ONLY",
                    "rule": rule.summary(),
                    "group_id": rule.group_id,
                    "reported_at": iso(now),
                    "expires_at": int((now + timedelta(days=self.remind_days)).timestamp()),
                },
                # DynamoDB's TTL deletes lazily: an expired item counts as gone.
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues={":now": int(now.timestamp())},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True


def enforce(
    ec2: Any,
    verdicts: list[Verdict],
    report_only: bool = False,
    findings: FindingBook | None = None,
    now: datetime | None = None,
) -> list[Outcome]:
    outcomes = [Outcome(v, "exempt") for v in verdicts if v.action == "exempt"]
    for v in (v for v in verdicts if v.action == "alert"):
        known = findings is not None and not findings.first_report(v.rule, now or datetime.now(UTC))
        outcomes.append(Outcome(v, "known" if known else "alerted"))
    to_revoke = [v for v in verdicts if v.action == "revoke"]
    if report_only:
        outcomes += [Outcome(v, "would-revoke") for v in to_revoke]
    elif to_revoke:
        outcomes += revoke(ec2, to_revoke)
    return outcomes
