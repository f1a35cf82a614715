"""Security-group remediation from real CloudTrail records, on moto."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from automations.core.fleet import AccountAccessError, Fleet, MemberAccount, SessionBroker
from automations.security_groups.policy import load_policy
from automations.security_groups.remediation import handle_event
from tests.conftest import ACCOUNT_A, ROOT_RULES, FakeLambdaContext
from tests.sg_events import NOW, POLICY, REGION, permissions, readdress, record, without_rule_set


def test_modern_record_revokes_by_rule_id_without_describing_the_group(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    sg.calls.clear()
    result = sg.handle(event)
    calls = list(sg.calls)

    assert result["counts"]["revoked"] == 1 and result["status"] == "SUCCEEDED"
    assert sg.rules(group) == []
    # No describe of the group: its tags (for exemptions), then the revoke.
    assert calls == ["DescribeTags", "RevokeSecurityGroupIngress"]
    run = sg.ledger.get_run(result["run_id"])
    detail = event["detail"]
    assert run["actor"] == {
        "arn": detail["userIdentity"]["arn"],
        "principal_type": "AssumedRole",
        "source_ip": "112.119.155.35",
        "user_agent": detail["userAgent"],
    }
    (action,) = run["actions"]
    assert (
        action["outcome"] == "revoked"
        and action["resource"]
        == event["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["securityGroupRuleId"]
    )
    assert action["detail"]["rule_before"]["cidr_ipv4"] == "0.0.0.0/0"
    assert action["detail"]["rule_before"]["from_port"] == 22
    assert run["latency_seconds"] == (NOW - datetime(2025, 6, 15, 10, 51, 12, tzinfo=UTC)).total_seconds()
    (message,) = sg.slack.messages()
    text = str(message["blocks"])
    assert "revoked" in message["blocks"][0]["text"]["text"]
    assert detail["userIdentity"]["arn"] in text and "112.119.155.35" in text and group in text


def test_legacy_record_without_rule_ids(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_legacy", group)
    assert "securityGroupRuleSet" not in event["detail"]["responseElements"]
    result = sg.handle(event)
    assert result["counts"]["revoked"] == 1
    assert sg.rules(group) == []
    assert "DescribeSecurityGroupRules" in sg.calls


def test_ipv4_and_ipv6_world_both_revoked(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_ipv6", group)
    result = sg.handle(event)
    assert result["counts"]["revoked"] == 2
    assert sg.rules(group) == []


def test_one_cidr_of_a_multi_cidr_permission(sg):
    group = sg.group()
    event = record("authorize_sg_ingress_modern")
    perms = permissions(event)
    perms[0]["IpRanges"].append({"CidrIp": "10.20.0.0/16"})  # same permission, a second, private range
    created = sg.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=perms)["SecurityGroupRules"]
    result = sg.handle(readdress(event, ACCOUNT_A, REGION, group, created))
    # The private /16 could complete a split with the group's other rules: the group (with its default
    # egress rule) is read and judged as a whole.
    assert result["counts"] == {"revoked": 1, "rules_checked": 3}
    ((left),) = sg.rules(group)
    assert left["CidrIpv4"] == "10.20.0.0/16" and left["FromPort"] == 22


def test_legacy_multi_cidr_found_by_describe(sg):
    group = sg.group()
    event = record("authorize_sg_ingress_legacy")
    event["detail"]["requestParameters"]["ipPermissions"]["items"][0]["ipRanges"]["items"].append(
        {"cidrIp": "192.168.0.0/24"}
    )
    sg.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=permissions(event))
    result = sg.handle(readdress(event, ACCOUNT_A, REGION, group))
    assert result["counts"]["revoked"] == 1
    assert [r["CidrIpv4"] for r in sg.rules(group)] == ["192.168.0.0/24"]


def test_group_name_only_request_in_the_default_vpc(sg):
    default = sg.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])[
        "SecurityGroups"
    ][0]["GroupId"]
    event = record("authorize_sg_ingress_group_name")
    assert "groupId" not in event["detail"]["requestParameters"]
    sg.ec2.authorize_security_group_ingress(GroupName="default", IpPermissions=permissions(event))
    result = sg.handle(without_rule_set(readdress(event, ACCOUNT_A, REGION, default)))
    assert result["counts"]["revoked"] == 1
    assert not [r for r in sg.rules(default) if r.get("CidrIpv4") == "0.0.0.0/0"]


def test_modify_security_group_rules(sg):
    group = sg.group()
    (rule,) = sg.ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}],
    )["SecurityGroupRules"]
    sg.ec2.modify_security_group_rules(
        GroupId=group,
        SecurityGroupRules=[
            {
                "SecurityGroupRuleId": rule["SecurityGroupRuleId"],
                "SecurityGroupRule": {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "CidrIpv4": "0.0.0.0/0",
                },
            }
        ],
    )
    event = readdress(record("modify_sg_rules"), ACCOUNT_A, REGION, group)
    event["detail"]["requestParameters"]["ModifySecurityGroupRulesRequest"]["SecurityGroupRule"][
        "SecurityGroupRuleId"
    ] = rule["SecurityGroupRuleId"]
    result = sg.handle(event)
    assert result["counts"]["revoked"] == 1
    assert sg.rules(group) == []


def test_modify_event_for_a_rule_deleted_meanwhile_is_done_not_an_error(sg):
    group = sg.group()
    (rule,) = sg.ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )["SecurityGroupRules"]
    sg.ec2.revoke_security_group_ingress(GroupId=group, SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]])
    event = readdress(record("modify_sg_rules"), ACCOUNT_A, REGION, group)
    event["detail"]["requestParameters"]["ModifySecurityGroupRulesRequest"]["SecurityGroupRule"][
        "SecurityGroupRuleId"
    ] = rule["SecurityGroupRuleId"]
    result = sg.handle(event)
    assert result["status"] == "SUCCEEDED" and result["counts"] == {"rules_checked": 0}
    assert sg.slack.messages() == []


def test_events_from_outside_the_fleet_are_ignored(sg):
    event = readdress(record("authorize_sg_ingress_modern"), "999999999999", REGION, "sg-0123456789abcdef0")
    result = sg.handle(event)
    assert "not in the fleet" in result["ignored"]
    assert "RevokeSecurityGroupIngress" not in sg.calls


def test_failed_call_with_error_code_is_ignored(sg):
    group = sg.group()
    sg.ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )  # someone else's rule: the failed call in the record changed nothing, so opsbot does nothing
    result = sg.handle(readdress(record("authorize_sg_ingress_error"), ACCOUNT_A, REGION, group))
    assert "Client.UnauthorizedOperation" in result["ignored"]
    assert len(sg.rules(group)) == 1 and sg.slack.messages() == []
    assert "RevokeSecurityGroupIngress" not in sg.calls


def test_referenced_group_and_prefix_list_rules_are_never_touched(sg):
    group, other = sg.group(), sg.group(name="other")
    prefix_list = sg.ec2.create_managed_prefix_list(
        PrefixListName="office", MaxEntries=2, AddressFamily="IPv4", Entries=[{"Cidr": "203.0.113.0/24"}]
    )["PrefixList"]["PrefixListId"]
    event = record("authorize_sg_ingress_legacy")
    perm = event["detail"]["requestParameters"]["ipPermissions"]["items"][0]
    perm["ipRanges"] = {}
    perm["groups"] = {"items": [{"groupId": other}]}
    perm["prefixListIds"] = {"items": [{"prefixListId": prefix_list}]}
    sg.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=permissions(event))
    result = sg.handle(readdress(event, ACCOUNT_A, REGION, group))
    assert result["counts"] == {"rules_checked": 2}
    assert len(sg.rules(group)) == 2 and sg.slack.messages() == []


def test_single_address_0_0_0_0_32_is_not_the_world(sg):
    group = sg.group()
    event = record("authorize_sg_ingress_legacy")
    event["detail"]["requestParameters"]["ipPermissions"]["items"][0]["ipRanges"]["items"][0]["cidrIp"] = "0.0.0.0/32"
    sg.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=permissions(event))
    result = sg.handle(readdress(event, ACCOUNT_A, REGION, group))
    assert result["counts"] == {"rules_checked": 2}  # the /32 and the group's default egress rule
    assert len(sg.rules(group)) == 1


def test_expired_exemption_no_longer_protects(sg):
    expired = sg.group({"opsbot:exempt-until": "2026-11-24", "opsbot:exempt-reason": "partner SFTP"}, name="a")
    valid = sg.group({"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "partner SFTP"}, name="b")
    assert sg.handle(sg.apply("authorize_sg_ingress_modern", expired))["counts"]["revoked"] == 1
    result = sg.handle(sg.apply("authorize_sg_ingress_modern", valid, event_id="other-event"))
    assert result["counts"] == {"exempt": 1, "rules_checked": 1}
    assert len(sg.rules(valid)) == 1
    run = sg.ledger.get_run(result["run_id"])
    assert "partner SFTP" in run["actions"][0]["detail"]["exempt_reason"]
    revoked, exempted = sg.slack.messages()
    assert "exemption expired on 2026-11-24" in str(revoked["blocks"])
    assert "exemption used for the first time" in exempted["text"] and valid in str(exempted["blocks"])


def test_an_exemption_is_announced_and_recorded_on_first_use_only(sg):
    group = sg.group({"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "vendor SFTP, SEC-77"})
    event = sg.apply("authorize_sg_ingress_modern", group)
    first = sg.handle(event)
    again = sg.handle(dict(event, id="a-later-event-for-the-same-rule"))
    assert first["counts"]["exempt"] == 1 and again["counts"]["exempt"] == 1
    (message,) = sg.slack.messages()
    assert "SEC-77" in str(message["blocks"]) and "until 2026-12-20" in str(message["blocks"])
    claim = sg.ledger.table.get_item(
        Key={"pk": f"EXEMPT#{ACCOUNT_A}#{REGION}#{group}#tag:2026-12-20", "sk": "EXEMPTION"}
    )
    assert claim["Item"]["reason"] == "vendor SFTP, SEC-77" and claim["Item"]["by"].startswith("event:")
    assert sg.ledger.get_run(again["run_id"])["actions"][0]["detail"].get("first_use") is None


@pytest.mark.parametrize(
    "tags",
    [
        {"opsbot:exempt-until": "2099-12-31", "opsbot:exempt-reason": "for ever"},
        {"opsbot:exempt-until": "2026-12-20"},
    ],
    ids=["beyond-the-30-day-horizon", "no-reason"],
)
def test_a_tag_exemption_without_a_reason_or_beyond_the_horizon_does_not_protect(sg, tags):
    group = sg.group(tags)
    result = sg.handle(sg.apply("authorize_sg_ingress_modern", group))
    assert result["counts"]["revoked"] == 1 and sg.rules(group) == []
    (message,) = sg.slack.messages()
    assert "exemption tag ignored" in str(message["blocks"])


def test_rule_revoked_by_someone_else_meanwhile(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    rule_id = event["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["securityGroupRuleId"]
    sg.ec2.revoke_security_group_ingress(GroupId=group, SecurityGroupRuleIds=[rule_id])
    result = sg.handle(event)
    assert result["status"] == "SUCCEEDED" and result["counts"]["already_gone"] == 1
    assert sg.slack.messages() == []


def test_two_events_for_the_same_rule_at_once_one_revoke_one_alert(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    twin = dict(event, id="a-second-event-id")
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda e=e: results.append(sg.handle(e))) for e in (event, twin)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["counts"].get("revoked", 0) for r in results) == [0, 1]
    # The loser finds the rule gone (claimed by the other event, or its own claim but the other's revoke
    # came first): it does not alert.
    (loser,) = [r for r in results if not r["counts"].get("revoked")]
    assert loser["counts"].get("handled_elsewhere", 0) + loser["counts"].get("already_gone", 0) == 1
    assert len(sg.slack.messages()) == 1


ALERT_ONLY = load_policy(
    "p.yaml",
    "rules:\n  - {name: broad-ssh, mode: alert-only, protocols: [tcp], ports: [22], source: {broader_than: {ipv4: 8}}}\n",
)


def test_alert_only_rule_alerts_and_leaves_the_rule(sg):
    group = sg.group()
    event = record("authorize_sg_ingress_legacy")
    event["detail"]["requestParameters"]["ipPermissions"]["items"][0]["ipRanges"]["items"][0]["cidrIp"] = "0.0.0.0/4"
    sg.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=permissions(event))
    result = sg.handle(readdress(event, ACCOUNT_A, REGION, group), ALERT_ONLY)
    assert result["counts"]["alerted"] == 1
    assert len(sg.rules(group)) == 1
    (message,) = sg.slack.messages()
    assert "alert-only" in message["blocks"][0]["text"]["text"]


def test_egress_rule(sg):
    policy = load_policy(
        "p.yaml",
        "rules:\n  - {name: no-c2-port, mode: remediate, direction: egress, protocols: [tcp], ports: [4444]}\n",
    )
    group = sg.group()
    event = record("authorize_sg_egress")
    created = sg.ec2.authorize_security_group_egress(GroupId=group, IpPermissions=permissions(event))
    result = sg.handle(readdress(event, ACCOUNT_A, REGION, group, created["SecurityGroupRules"]), policy)
    assert result["counts"]["revoked"] == 1
    egress = sg.ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])
    assert [r["FromPort"] for r in egress["SecurityGroupRules"] if r["IsEgress"]] == [-1]  # the default stays


def test_unreachable_account_raises_for_the_dead_letter_queue(sg, hub_session, monkeypatch):
    broker = SessionBroker(hub_session, Fleet((MemberAccount(ACCOUNT_A, "a", (REGION,)),), role_prefix="missing"))
    monkeypatch.setattr(
        SessionBroker,
        "_assume",
        lambda self, account, region, capability: (_ for _ in ()).throw(
            AccountAccessError(account, region, "AccessDenied", "not authorized to perform: sts:AssumeRole")
        ),
    )
    event = readdress(record("authorize_sg_ingress_modern"), ACCOUNT_A, REGION, "sg-0123456789abcdef0")
    with pytest.raises(AccountAccessError):
        handle_event(event, broker, POLICY, sg.ledger, sg.notifier)
    assert sg.ledger.get_run(f"sg-{event['id']}")["status"] == "FAILED"


def test_duplicate_delivery_through_the_handler_is_one_revoke_one_alert(sg, tmp_path, monkeypatch):
    """Powertools Idempotency keyed on the event id, persisted in DynamoDB (moto)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(
        f'external_id: opsbot-test\ndefault_regions: [{REGION}]\naccounts:\n  - {{id: "{ACCOUNT_A}"}}\n'
    )
    (rules / "tasks.yaml").write_text("tasks: []\n")
    (rules / "security_groups.yaml").write_text((ROOT_RULES / "security_groups.yaml").read_text())
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    monkeypatch.setenv("OPSBOT_SLACK_CHANNEL", "#sec")
    monkeypatch.setenv("OPSBOT_SLACK_API_URL", sg.slack.base_url)
    monkeypatch.setenv("OPSBOT_SLACK_SECRET_NAME", "opsbot/slack")
    hub = sg.broker.base_session
    hub.client("secretsmanager").create_secret(Name="opsbot/slack", SecretString="xoxb-test")
    from handlers import _wiring, sg_events

    _wiring.reset()
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    first = sg_events.handler(event, FakeLambdaContext())
    again = sg_events.handler(event, FakeLambdaContext())
    _wiring.reset()
    assert first == again and first["counts"]["revoked"] == 1
    assert len(sg.slack.messages()) == 1
    assert sg.rules(group) == []


def test_latency_is_measured_from_event_time(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    event["detail"]["eventTime"] = (NOW - timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = sg.handle(event)
    assert sg.ledger.get_run(result["run_id"])["latency_seconds"] == 4.0


def test_alert_only_finding_from_two_events_alerts_once(sg):
    group = sg.group()
    event = record("authorize_sg_ingress_legacy")
    event["detail"]["requestParameters"]["ipPermissions"]["items"][0]["ipRanges"]["items"][0]["cidrIp"] = "0.0.0.0/4"
    sg.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=permissions(event))
    first = sg.handle(readdress(event, ACCOUNT_A, REGION, group), ALERT_ONLY)
    second = sg.handle(readdress(event, ACCOUNT_A, REGION, group, event_id="another-event-same-rule"), ALERT_ONLY)
    assert first["counts"]["alerted"] == 1 and second["counts"]["known"] == 1
    assert len(sg.slack.messages()) == 1


# ---- the world split into pieces: in one call and in two ---------------------------------------------
def legacy_event(sg, group: str, *cidrs: str, port: int = 3306, event_id: str | None = None) -> dict[str, Any]:
    """The recorded legacy AuthorizeSecurityGroupIngress, asking for ``cidrs`` on ``port``, applied."""
    event = record("authorize_sg_ingress_legacy")
    item = event["detail"]["requestParameters"]["ipPermissions"]["items"][0]
    item.update(fromPort=port, toPort=port)
    item["ipRanges"]["items"] = [{"cidrIp": c} for c in cidrs]
    sg.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=permissions(event))
    return readdress(event, ACCOUNT_A, REGION, group, **({"event_id": event_id} if event_id else {}))


WORLD_ONLY = load_policy(
    "p.yaml",
    "rules:\n  - {name: no-world-db, mode: remediate, protocols: [tcp], ports: [3306], source: {world: true}}\n",
)


def test_the_world_in_two_halves_in_one_call_is_revoked(sg):
    group = sg.group()
    result = sg.handle(legacy_event(sg, group, "0.0.0.0/1", "128.0.0.0/1", "203.0.113.0/24"), WORLD_ONLY)
    assert result["counts"]["revoked"] == 2
    assert [r["CidrIpv4"] for r in sg.rules(group)] == ["203.0.113.0/24"]  # the office range stays
    (message,) = sg.slack.messages()
    assert "split: 2 rules of" in str(message["blocks"])


def test_the_world_in_two_halves_in_two_calls_revokes_both(sg):
    group = sg.group()
    first = sg.handle(legacy_event(sg, group, "0.0.0.0/1"), WORLD_ONLY)
    assert first["counts"].get("revoked", 0) == 0  # half the world is not the world
    second = sg.handle(legacy_event(sg, group, "128.0.0.0/1", event_id="the-second-call"), WORLD_ONLY)
    assert second["counts"]["revoked"] == 2  # the new half and the earlier one
    assert sg.rules(group) == []


def test_two_public_slash_8s_in_two_calls_are_broad_with_the_shipped_rules(sg):
    group = sg.group()
    assert sg.handle(legacy_event(sg, group, "52.0.0.0/8", port=5432))["counts"].get("revoked", 0) == 0
    second = sg.handle(legacy_event(sg, group, "54.0.0.0/8", port=5432, event_id="the-second-call"))
    assert second["counts"]["revoked"] == 2 and sg.rules(group) == []
    run = sg.ledger.get_run(second["run_id"])
    assert {a["detail"]["policy_rule"] for a in run["actions"]} == {"no-broad-ranges-on-admin-and-database-ports"}
    assert all(a["detail"]["notes"][0].startswith("split: 2 rules") for a in run["actions"])


def test_ipv6_halves_of_the_world_are_the_world(sg):
    group = sg.group()
    event = record("authorize_sg_ingress_ipv6")
    perms = permissions(event)
    for perm in perms:
        perm["IpRanges"] = []
        perm["Ipv6Ranges"] = [{"CidrIpv6": "::/1"}, {"CidrIpv6": "8000::/1"}]
    created = sg.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=perms)["SecurityGroupRules"]
    result = sg.handle(readdress(event, ACCOUNT_A, REGION, group, created))
    assert result["counts"]["revoked"] == len(created) and sg.rules(group) == []


def test_a_notifier_that_cannot_be_built_after_the_revoke_loses_neither_record_nor_announcement(sg):
    """The Slack token is read only after the revoke; if that read fails, the revoke is still recorded
    and its announcement waits in the outbox for the sweeper (on-call is told, later)."""
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)

    def broken() -> Any:
        raise RuntimeError("secretsmanager: throttled")

    result = handle_event(event, sg.broker, POLICY, sg.ledger, broken, clock=lambda: NOW)
    assert result["counts"]["revoked"] == 1 and sg.rules(group) == []
    assert sg.ledger.get_run(result["run_id"])["status"] == "SUCCEEDED"
    (entry,) = [i for i in sg.ledger.table.scan()["Items"] if i["pk"] == f"OUTBOX#sg#{event['id']}"]
    assert entry.get("pending_pk") == "OUTBOX"  # not delivered yet: the sweeper will
