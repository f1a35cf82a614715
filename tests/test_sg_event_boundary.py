"""The security-group event boundary: real records, their messy twins, and records that cannot be read.

Twins are the same real record as another producer would write it (a SIEM export without a zone, ports
as strings, null or absent ``items``). Each twin must do exactly what its clean record does.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from automations.core.boundary import InputError
from automations.security_groups.events import Ignored, SgChange, parse_event
from tests.conftest import ACCOUNT_A
from tests.sg_events import REGION, permissions, readdress, record, without_rule_set


def world_ssh(sg: Any, name: str = "app") -> tuple[str, dict[str, Any]]:
    """A group with SSH open to the world, and the real modern record of that change, re-addressed."""
    group = sg.group(name=name)
    return group, sg.apply("authorize_sg_ingress_modern", group, event_id=f"00000000-0000-4000-8000-{name:0>12}"[:36])


def open_rules(sg: Any, group: str) -> list[str]:
    return [r.get("CidrIpv4") or r.get("CidrIpv6") for r in sg.rules(group) if r.get("FromPort") == 22]


def zone_less(event: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(event)
    out["detail"]["eventTime"] = out["detail"]["eventTime"].replace("T", " ").replace("Z", ".000")
    out["time"] = out["time"].replace("Z", "")
    return out


def string_ports(event: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(event)
    for item in out["detail"]["responseElements"]["securityGroupRuleSet"]["items"]:
        item["fromPort"], item["toPort"] = str(item["fromPort"]), f" {item['toPort']} "
    for perm in out["detail"]["requestParameters"]["ipPermissions"]["items"]:
        perm["fromPort"], perm["toPort"] = str(perm["fromPort"]), str(perm["toPort"])
    return out


def null_items(event: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(event)
    for perm in out["detail"]["requestParameters"]["ipPermissions"]["items"]:
        perm["ipv6Ranges"] = None
        perm.pop("prefixListIds", None)
        perm["groups"] = {"items": None}
    return out


@pytest.mark.parametrize("twin", [zone_less, string_ports, null_items], ids=lambda f: f.__name__)
def test_a_messy_twin_does_exactly_what_its_clean_record_does(sg, twin):
    clean_group, clean = world_ssh(sg, "clean")
    twin_group, base = world_ssh(sg, "twin")
    clean_result = sg.handle(clean)
    twin_result = sg.handle(twin(base))
    for key in ("status", "ignored", "counts"):
        assert twin_result[key] == clean_result[key], key
    assert clean_result["counts"]["revoked"] == 1
    assert open_rules(sg, clean_group) == open_rules(sg, twin_group) == []
    clean_run, twin_run = sg.ledger.get_run(clean_result["run_id"]), sg.ledger.get_run(twin_result["run_id"])
    assert clean_run["latency_seconds"] == twin_run["latency_seconds"]  # the zone-less time read as UTC
    assert [a["outcome"] for a in twin_run["actions"]] == [a["outcome"] for a in clean_run["actions"]]
    assert len([m for m in sg.slack.messages() if "revoked" in m["text"]]) == 2


def test_a_zone_less_legacy_record_is_revoked_and_recorded_not_crashed(sg):
    """The measured bug: a SIEM-exported record without a zone revoked, then crashed before the record."""
    group = sg.group()
    sg.ec2.authorize_security_group_ingress(
        GroupId=group, IpPermissions=permissions(record("authorize_sg_ingress_legacy"))
    )
    event = zone_less(readdress(record("authorize_sg_ingress_legacy"), ACCOUNT_A, REGION, group))
    result = sg.handle(event)
    assert result["counts"]["revoked"] == 1 and open_rules(sg, group) == []
    assert sg.ledger.get_run(result["run_id"])["status"] == "SUCCEEDED"


def test_the_flat_cidr_ip_request_form_is_understood(sg):
    """`aws ec2 authorize-security-group-ingress --cidr ...` records the flat form (fixtures README)."""
    group = sg.group()
    sg.ec2.authorize_security_group_ingress(
        GroupId=group, IpProtocol="tcp", FromPort=3306, ToPort=3306, CidrIp="0.0.0.0/0"
    )
    event = without_rule_set(readdress(record("authorize_sg_ingress_modern"), ACCOUNT_A, REGION, group))
    event["detail"]["requestParameters"] = {
        "groupId": group,
        "ipProtocol": "tcp",
        "fromPort": "3306",
        "toPort": 3306,
        "cidrIp": "0.0.0.0/0",
        "ipPermissions": {},
    }
    result = sg.handle(event)
    assert result["counts"]["revoked"] == 1


def test_an_unreadable_rule_in_the_record_has_its_group_judged_instead(sg):
    """Fail closed: ports that are not numbers do not leave the world-open rule in place."""
    group, event = world_ssh(sg)
    event["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["fromPort"] = "ssh"
    result = sg.handle(event)
    assert result["counts"]["revoked"] == 1 and open_rules(sg, group) == []
    run = sg.ledger.get_run(result["run_id"])
    assert "fromPort: expected a number, got 'ssh'" in run["read_groups"]


def test_a_misnamed_rule_id_is_checked_against_the_group(sg):
    """The record names a rule that is not there: the group's actual rules are judged before giving up."""
    group, event = world_ssh(sg)
    event["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["securityGroupRuleId"] = "sgr-0000000000"
    result = sg.handle(event)
    assert result["counts"]["revoked"] == 1 and open_rules(sg, group) == []


def test_an_event_that_names_no_group_is_a_designed_error_recorded_and_announced_once_an_hour(sg):
    group, event = world_ssh(sg)
    broken = copy.deepcopy(event)
    broken["detail"]["requestParameters"] = {"ipPermissions": {"items": []}}
    broken["detail"]["responseElements"] = None
    for n in range(3):
        broken["id"] = f"broken-{n}"
        with pytest.raises(InputError) as err:
            sg.handle(broken)
        assert err.value.source == f"event broken-{n}" and err.value.field == "detail.requestParameters.groupId"
    runs = [sg.ledger.get_run(f"unreadable-security-group-event-broken-{n}") for n in range(3)]
    assert all(r["status"] == "FAILED" and r["field"] == "detail.requestParameters.groupId" for r in runs)
    alerts = [m for m in sg.slack.messages() if "could not read" in m["text"]]
    assert len(alerts) == 1  # three unreadable records, one announcement this hour
    assert open_rules(sg, group) == ["0.0.0.0/0"]  # nothing named: left for the sweep (and the DLQ)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda e: e.pop("detail"), "detail"),
        (lambda e: e["detail"].pop("eventName"), "detail.eventName"),
        (lambda e: e.update(account="12345", detail={**e["detail"], "recipientAccountId": None}), "account"),
        (lambda e: e.update(region=42, detail={**e["detail"], "awsRegion": None}), "region"),
    ],
)
def test_designed_errors_name_the_event_and_the_field(mutate, field):
    event = copy.deepcopy(record("authorize_sg_ingress_modern"))
    mutate(event)
    with pytest.raises(InputError) as err:
        parse_event(event)
    assert err.value.source == f"event {event['id']}" and err.value.field == field


def test_revokes_unknown_names_and_failed_calls_are_ignored_with_a_reason():
    revoke = copy.deepcopy(record("authorize_sg_ingress_modern"))
    revoke["detail"]["eventName"] = "RevokeSecurityGroupIngress"
    unknown = copy.deepcopy(record("authorize_sg_ingress_modern"))
    unknown["detail"]["eventName"] = "CreateSecurityGroup"
    failed = record("authorize_sg_ingress_error")
    reasons = [parse_event(e) for e in (revoke, unknown, failed)]
    assert all(isinstance(r, Ignored) for r in reasons)
    assert [r.reason for r in reasons if isinstance(r, Ignored)] == [
        "RevokeSecurityGroupIngress only removes rules",
        "not a security-group rule change (CreateSecurityGroup)",
        "the call failed (Client.UnauthorizedOperation): nothing was changed",
    ]


@pytest.mark.parametrize("name", ["authorize_sg_ingress_ipv6", "authorize_sg_egress", "modify_sg_rules"])
def test_every_real_record_parses_to_typed_values(name):
    # Elastic sanitised the egress record's account to nine digits: re-address it to a real-length one.
    change = parse_event(readdress(record(name), ACCOUNT_A, REGION, "sg-0123456789abcdef0"))
    assert isinstance(change, SgChange) and change.unclear == ()
    assert change.groups and change.envelope.event_time.tzinfo is not None


def test_ipv6_record_requests_both_world_ranges():
    change = parse_event(record("authorize_sg_ingress_ipv6"))
    assert isinstance(change, SgChange)
    assert {(r.cidr_ipv4, r.cidr_ipv6) for r in change.requested} == {("0.0.0.0/0", None), (None, "::/0")}
    assert json.dumps(record("authorize_sg_ingress_ipv6")).count("::/0") == 1
