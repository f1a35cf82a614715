"""The event pattern deployed in template.yaml, created in moto's EventBridge, routes real CloudTrail
records for security-group changes to the handler, via the member account's forwarding rule, and
nothing else."""

from __future__ import annotations

import copy
import json
from typing import Any

import boto3

from opsbot.local.cloudtrail import put_on_bus
from opsbot.local.events import EventRouter, routes
from tests.conftest import ACCOUNT_A, FIXTURES
from tests.sg_events import record

REGION = "us-east-1"
HUB = "123456789012"  # moto's default account: the hub in these tests


def member_session(hub: boto3.Session, account: str) -> boto3.Session:
    creds = hub.client("sts").assume_role(RoleArn=f"arn:aws:iam::{account}:role/x", RoleSessionName="test")[
        "Credentials"
    ]
    return boto3.Session(
        region_name=REGION,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def fixture(path: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / path).read_text())["payload"]
    return payload


def test_routes_come_from_the_template():
    (route,) = [r for r in routes() if r.handler == "handlers.sg_events.handler"]
    assert route.pattern["detail"]["eventName"] == [
        "AuthorizeSecurityGroupIngress",
        "AuthorizeSecurityGroupEgress",
        "ModifySecurityGroupRules",
    ]


def test_real_records_routed_and_unrelated_ones_not(hub_session):
    router = EventRouter(hub_session)
    router.install()
    member = member_session(hub_session, ACCOUNT_A)
    router.install_member_forwarding(member, HUB, REGION)
    events = member.client("events")

    wanted = [
        "authorize_sg_ingress_modern",
        "authorize_sg_ingress_legacy",
        "authorize_sg_ingress_ipv6",
        "authorize_sg_ingress_group_name",
        "modify_sg_rules",
        "authorize_sg_egress",
    ]
    for name in wanted:
        put_on_bus(events, record(name))
    revoke = copy.deepcopy(record("authorize_sg_ingress_modern"))
    revoke["detail"]["eventName"] = "RevokeSecurityGroupIngress"  # opsbot's own revoke must not loop back
    for unrelated in (
        revoke,
        fixture("eventbridge/scheduled_event.json"),
        fixture("eventbridge/cloudwatch_alarm_state_change.json"),
    ):
        put_on_bus(events, unrelated)

    seen: list[tuple[str, dict[str, Any]]] = []
    delivered = router.deliver(lambda handler, event: seen.append((handler, event)))
    assert len(delivered) == len(wanted)
    assert {h for h, _ in seen} == {"handlers.sg_events.handler"}
    assert sorted(e["detail"]["eventID"] for _, e in seen) == sorted(record(n)["detail"]["eventID"] for n in wanted)
    # What arrives is the whole EventBridge envelope with the CloudTrail record as detail, as recorded.
    modern = next(e for _, e in seen if e["detail"]["eventID"] == record(wanted[0])["detail"]["eventID"])
    assert modern["detail-type"] == "AWS API Call via CloudTrail" and modern["source"] == "aws.ec2"
    assert modern["detail"] == record(wanted[0])["detail"]
