"""``security-group-sweep``: the security-group policy over every group in every account/region, on a
schedule, catching what the CloudTrail events missed. The first sweep after rules/security_groups.yaml
changes only reports (``settings.sweep_report_only_after_rules_change``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automations.core.kinds import TASK_KINDS, KindEnv, TaskDefinition, TaskKind, UnitContext, UnitOutcome
from automations.core.ledger import Action
from automations.core.notify import Alert
from automations.core.runs import MAX_LISTED
from automations.security_groups.enforcement import RUNBOOK, RuleClaims, describe_rules, enforce, judge, outcome_line
from automations.security_groups.policy import POLICY_FILE

REPORTED = ("revoked", "would-revoke", "alerted", "failed")  # action outcomes listed in the announcement


@TASK_KINDS.register
class SecurityGroupSweep(TaskKind[None]):
    name = "security-group-sweep"
    capability = "security-groups"
    summary = "Every security group in every account/region against rules/security_groups.yaml."
    runbook = RUNBOOK
    noteworthy = ("revoked", "would_revoke", "alerted", "failed", "exempt_first_use")
    member_actions = frozenset(
        {
            "ec2:DescribeSecurityGroupRules",
            "ec2:DescribeTags",
            "ec2:RevokeSecurityGroupIngress",
            "ec2:RevokeSecurityGroupEgress",
        }
    )

    def options(self, raw: Mapping[str, Any]) -> None:
        return None

    def report_only_reason(self, task: TaskDefinition, env: KindEnv) -> str | None:
        policy = env.rules.get(POLICY_FILE)
        if not policy.sweep_report_only_after_rules_change:
            return None
        if env.ledger.swap_state("sg-policy-digest", policy.digest) == policy.digest:
            return None
        return f"first sweep after a change to rules/security_groups.yaml (digest {policy.digest}): report only"

    def run_unit(self, ctx: UnitContext[None]) -> UnitOutcome:
        """Apply the policy to every rule of every group in one account/region (report-only in dry-run)."""
        policy = ctx.env.rules.get(POLICY_FILE)
        claims = RuleClaims(ctx.env.ledger.table)
        ec2 = ctx.client("ec2")
        outcome = UnitOutcome()
        rules = describe_rules(ec2, ctx.account, ctx.region, PaginationConfig={"PageSize": 1000})
        outcome.counts["rules_checked"] = len(rules)
        now = ctx.now()
        verdicts = judge(ec2, policy, rules, now.date())
        for o in enforce(
            ec2,
            verdicts,
            report_only=ctx.dry_run,
            claims=claims,
            now=now,
            by=f"run:{ctx.run_id}",
            once=ctx.client("ec2", retries=False),
        ):
            outcome.counts[o.result.replace("-", "_")] += 1
            if o.first_use:
                outcome.counts["exempt_first_use"] += 1
            rule = o.verdict.rule
            ctx.record(
                Action(
                    ctx.account,
                    ctx.region,
                    rule.rule_id or rule.group_id,
                    "revoke-rule",
                    o.result,
                    error=o.error,
                    detail={
                        "group_id": rule.group_id,
                        "policy_rule": o.verdict.forbidden.name,
                        "rule": rule.summary(),
                        "exempt_reason": o.verdict.exempt_reason,
                        "first_use": o.first_use or None,
                        "notes": list(o.verdict.notes) or None,
                        "line": outcome_line(o),
                    },
                )
            )
        if outcome.counts["failed"]:
            outcome.problems.append(f"{outcome.counts['failed']} action(s) failed")
        return outcome

    def render(self, run: Mapping[str, Any], env: KindEnv) -> Alert:
        counts = run.get("counts", {})
        units = run.get("units", {})
        findings = [
            f"{a['account']}/{a['region']} {a['detail']['group_id']}: {a['detail']['line']}"
            for a in env.ledger.actions(run["run_id"])
            if a["outcome"] in REPORTED or a["detail"].get("first_use")
        ][:MAX_LISTED]
        return Alert(
            kind="sg-sweep",
            title=f"opsbot security-group sweep {run['status']}: {counts.get('revoked', 0)} revoked, "
            f"{counts.get('would_revoke', 0)} to revoke, {counts.get('alerted', 0)} alert-only",
            severity="critical" if counts.get("failed") or run["status"] != "SUCCEEDED" else "warning",
            summary=(
                f"Sweep `{run['run_id']}` checked {counts.get('rules_checked', 0)} rules in "
                f"{units.get('total', 0)} account/regions. "
                + (run.get("report_only_reason") or ("Report only (dry run)." if run.get("dry_run") else ""))
            ),
            fields=[
                ("Revoked", str(counts.get("revoked", 0))),
                ("Would revoke", str(counts.get("would_revoke", 0))),
                ("Alert-only findings", str(counts.get("alerted", 0))),
                ("Exempt", f"{counts.get('exempt', 0)} ({counts.get('exempt_first_use', 0)} first used)"),
                ("Failed", str(counts.get("failed", 0))),
            ],
            details=list(run.get("failures", [])) + findings,
            context=f"`opsbot runs show {run['run_id']}` · runbook: {RUNBOOK}",
        )
