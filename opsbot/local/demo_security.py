"""The demo's security chapter: someone opens SSH to the world in a member account; the CloudTrail
event goes through the member's forwarding rule and the hub's rule (both from the templates) to the
handler, which revokes it; then the first sweep after a rules change reports what events missed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3

from automations.core.notify import Notifier
from automations.core.runs import Trigger, plan_run, run_now
from automations.core.runtime import Runtime
from opsbot.local.cloudtrail import authorize_ingress_event, put_on_bus
from opsbot.local.events import EventRouter
from opsbot.local.seed_security import PERSON
from opsbot.runs_view import runs_table, show_run

REGION = "us-east-1"
SSH_TO_THE_WORLD: list[Any] = [
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
]


def _session(keys: dict[str, str]) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )


def _ingress(ec2: Any, group: str) -> list[str]:
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])["SecurityGroupRules"]
    return sorted(f"{r['IpProtocol']} {r['FromPort']} from {r.get('CidrIpv4')}" for r in rules if not r["IsEgress"])


def security_chapter(
    state: dict[str, Any], rt: Runtime, notifier: Notifier, say: Callable[[str], None]
) -> dict[str, Any]:
    person = state["people"][PERSON]
    alice = _session(person)
    ec2: Any = alice.client("ec2")
    web = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["web-sg"]}])["SecurityGroups"][0]
    say(f"{PERSON} opens SSH to the world on web-sg ({web['GroupId']}) in {person['account']}/{REGION}")
    created = ec2.authorize_security_group_ingress(GroupId=web["GroupId"], IpPermissions=SSH_TO_THE_WORLD)
    print("  web-sg ingress now:", _ingress(ec2, web["GroupId"]))
    event = authorize_ingress_event(
        account=person["account"],
        region=REGION,
        user_arn=person["arn"],
        access_key_id=person["AWS_ACCESS_KEY_ID"],
        source_ip="198.51.100.23",
        group_id=web["GroupId"],
        permissions=SSH_TO_THE_WORLD,
        created_rules=created["SecurityGroupRules"],
    )
    put_on_bus(alice.client("events"), event)  # what CloudTrail's delivery to EventBridge does
    say("member rule -> hub bus -> hub rule (patterns from the templates) -> handlers.sg_events.handler")
    router = EventRouter(_session(state["infra_keys"]))
    router.attach(state["event_queues"])
    delivered = router.deliver()
    for route, result in delivered:
        print(f"  {route.handler}: {result}")
    print("  web-sg ingress after:", _ingress(ec2, web["GroupId"]))
    run_id = delivered[0][1]["run_id"]
    say(f"opsbot runs show {run_id}")
    print(show_run(rt.ledger, run_id))

    say("opsbot run sg-sweep — the first sweep after a change to rules/security_groups.yaml only reports")
    plan = plan_run(
        rt.ledger,
        rt.fleet,
        rt.tasks,
        "sg-sweep",
        Trigger("cli"),
        datetime.now(UTC),
        rules=rt.rules,
        manifests=rt.manifests,
    )
    sweep = run_now(
        plan, rt.tasks, rt.broker, rt.ledger, notifier, rules=rt.rules, manifests=rt.manifests, caps=rt.caps
    )
    print(runs_table([sweep]))
    return sweep
