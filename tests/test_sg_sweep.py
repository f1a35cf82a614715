"""The periodic sweep: the same policy over every group in every account/region, as a scheduled task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient

from automations.core.notify import Notifier
from automations.core.rulebook import RuleSource
from automations.core.runs import Trigger, plan_run, run_now
from automations.security_groups.policy import load_policy
from opsbot.local.slack_standin import SlackStandIn
from tests.conftest import ACCOUNT_A, ACCOUNT_B, ROOT_RULES, make_tasks

TASKS = make_tasks("tasks:\n  - {name: sg-sweep, kind: security-group-sweep, schedule: 'rate(1 hour)'}\n")
POLICY_TEXT = (ROOT_RULES / "security_groups.yaml").read_text()
WHEN = datetime(2026, 11, 25, 10, 5, tzinfo=UTC)


def open_group(ec2: Any, name: str, cidr: str, port: int = 22, tags: dict[str, str] | None = None) -> str:
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    kwargs: dict[str, Any] = {"GroupName": name, "Description": name, "VpcId": vpc}
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "security-group", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    group = ec2.create_security_group(**kwargs)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": cidr}]}],
    )
    return str(group)


def world_rules(ec2: Any, group: str) -> int:
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])["SecurityGroupRules"]
    return sum(1 for r in rules if not r["IsEgress"] and r.get("CidrIpv4") == "0.0.0.0/0")


def sweep(ledger, fleet, broker, notifier, policy_text=POLICY_TEXT, when=WHEN) -> dict[str, Any]:
    rules = RuleSource(ROOT_RULES, {"security_groups.yaml": load_policy("rules/security_groups.yaml", policy_text)})
    plan = plan_run(ledger, fleet, TASKS, "sg-sweep", Trigger("schedule"), when, rules=rules)
    return run_now(plan, TASKS, broker, ledger, notifier, rules=rules, clock=lambda: when)


def test_first_sweep_after_a_rules_change_reports_then_the_next_revokes(ledger, fleet, broker, member):
    a, b = member(ACCOUNT_A).ec2, member(ACCOUNT_B, "eu-west-1").ec2
    ssh = open_group(a, "legacy-ssh", "0.0.0.0/0")
    db = open_group(b, "old-db", "0.0.0.0/0", port=5432)
    web = open_group(a, "web", "0.0.0.0/0", port=443)
    bastion = open_group(
        a, "bastion", "0.0.0.0/0", tags={"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "SEC-9"}
    )
    with SlackStandIn("xoxb-t") as slack:
        notifier = Notifier(slack=WebClient("xoxb-t", base_url=slack.base_url), slack_channel="#sec")
        first = sweep(ledger, fleet, broker, notifier)
        assert first["dry_run"] is True and "report only" in first["report_only_reason"]
        assert first["counts"]["would_revoke"] == 2 and first["counts"]["exempt"] == 1
        assert world_rules(a, ssh) == 1 and world_rules(b, db) == 1

        second = sweep(ledger, fleet, broker, notifier, when=WHEN + timedelta(hours=1))
        assert second["dry_run"] is False and not second.get("report_only_reason")
        assert second["counts"]["revoked"] == 2
        assert world_rules(a, ssh) == 0 and world_rules(b, db) == 0
        assert world_rules(a, web) == 1 and world_rules(a, bastion) == 1  # allowed; exempt

        third = sweep(ledger, fleet, broker, notifier, when=WHEN + timedelta(hours=2))
        assert third["counts"].get("revoked", 0) == 0
        messages = slack.messages()
    # One alert per sweep that found something; the clean third sweep stays quiet.
    assert len(messages) == 2
    assert "2 to revoke" in messages[0]["blocks"][0]["text"]["text"]
    assert "2 revoked" in messages[1]["blocks"][0]["text"]["text"]
    assert ssh in str(messages[1]["blocks"]) and db in str(messages[1]["blocks"])
    # A changed rules file makes the next sweep report-only again.
    changed = sweep(ledger, fleet, broker, None, POLICY_TEXT + "\n# reviewed\n", WHEN + timedelta(hours=3))
    assert changed["dry_run"] is True


def test_report_only_after_change_can_be_switched_off(ledger, fleet, broker, member):
    a = member(ACCOUNT_A).ec2
    ssh = open_group(a, "legacy-ssh", "0.0.0.0/0")
    text = POLICY_TEXT.replace(
        "sweep_report_only_after_rules_change: true", "sweep_report_only_after_rules_change: false"
    )
    result = sweep(ledger, fleet, broker, None, text)
    assert result["dry_run"] is False and result["counts"]["revoked"] == 1
    assert world_rules(a, ssh) == 0


def test_an_alert_only_finding_is_announced_once_not_every_sweep(ledger, fleet, broker, member):
    a = member(ACCOUNT_A).ec2
    broad = open_group(a, "vendor-ssh", "0.0.0.0/4")  # alert-only here: broader than /8, not the world
    text = (
        "settings: {sweep_report_only_after_rules_change: false}\n"
        "rules:\n  - {name: broad-ssh, mode: alert-only, ports: [22], source: {broader_than: {ipv4: 8}}}\n"
    )
    rules = RuleSource(ROOT_RULES, {"security_groups.yaml": load_policy("rules/security_groups.yaml", text)})
    with SlackStandIn("xoxb-t") as slack:
        notifier = Notifier(slack=WebClient("xoxb-t", base_url=slack.base_url), slack_channel="#sec")
        results = []
        for hour in range(3):
            plan = plan_run(
                ledger, fleet, TASKS, "sg-sweep", Trigger("schedule"), WHEN + timedelta(hours=hour), rules=rules
            )
            results.append(run_now(plan, TASKS, broker, ledger, notifier, rules=rules))
        messages = slack.messages()
    assert [r["counts"].get("alerted", 0) for r in results] == [1, 0, 0]
    assert [r["counts"].get("known", 0) for r in results] == [0, 1, 1]
    (message,) = messages
    assert broad in str(message["blocks"]) and "1 alert-only" in message["blocks"][0]["text"]["text"]
    rules = a.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [broad]}])["SecurityGroupRules"]
    assert [r.get("CidrIpv4") for r in rules if not r["IsEgress"]] == ["0.0.0.0/4"]  # alert-only: left in place


def test_the_sweep_finds_a_split_the_events_missed_and_announces_exemptions_once_then_their_expiry(
    ledger, fleet, broker, member
):
    a = member(ACCOUNT_A).ec2
    split = open_group(a, "split-db", "52.0.0.0/8", port=5432)
    a.authorize_security_group_ingress(
        GroupId=split,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "IpRanges": [{"CidrIp": "54.0.0.0/8"}]}],
    )
    vendor = open_group(
        a, "vendor-sftp", "0.0.0.0/0", tags={"opsbot:exempt-until": "2026-12-01", "opsbot:exempt-reason": "SEC-31"}
    )
    text = POLICY_TEXT.replace(
        "sweep_report_only_after_rules_change: true", "sweep_report_only_after_rules_change: false"
    )
    with SlackStandIn("xoxb-t") as slack:
        notifier = Notifier(slack=WebClient("xoxb-t", base_url=slack.base_url), slack_channel="#sec")
        first = sweep(ledger, fleet, broker, notifier, text)
        second = sweep(ledger, fleet, broker, notifier, text, WHEN + timedelta(hours=1))
        expired = sweep(ledger, fleet, broker, notifier, text, WHEN + timedelta(days=7))
        messages = slack.messages()
    assert first["counts"]["revoked"] == 2 and first["counts"]["exempt_first_use"] == 1
    left = a.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [split]}])["SecurityGroupRules"]
    assert [r for r in left if not r["IsEgress"]] == []
    assert second["counts"]["exempt"] == 1 and "exempt_first_use" not in second["counts"]
    assert expired["counts"]["revoked"] == 1 and world_rules(a, vendor) == 0
    assert len(messages) == 2  # the first sweep (split + exemption first used), the expiry; not the quiet one
    assert "split: 2 rules of" in str(messages[0]["blocks"]) and "SEC-31" in str(messages[0]["blocks"])
    assert "exemption expired on 2026-12-01" in str(messages[1]["blocks"])
