"""Security-group part of the local fleet: groups to judge, a person who opens SSH to the world,
the member accounts' forwarding rules and the hub's event routes (from the templates)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3

from opsbot.local.events import EventRouter

PERSON = "alice"  # a member-account engineer, for the demo's "someone opened SSH to the world"
INFRA_USER = "opsbot-local-infra"  # stands in for AWS's own delivery (EventBridge -> SQS -> Lambda)


def _policy(actions: list[str]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]})


def _user_keys(iam: Any, user: str, actions: list[str]) -> dict[str, str]:
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="local", PolicyDocument=_policy(actions))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    arn = iam.get_user(UserName=user)["User"]["Arn"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "arn": arn}


def seed_groups(member: boto3.Session, region: str, today: date | None = None) -> list[str]:
    """web (443/80 open: allowed), legacy-ssh (22 open: the sweep's catch), bastion (22 open, exempt)."""
    today = today or datetime.now(UTC).date()
    ec2: Any = member.client("ec2", region_name=region)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]

    def group(name: str, ports: list[int], tags: dict[str, str] | None = None) -> str:
        spec = [{"ResourceType": "security-group", "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()]}]
        gid = ec2.create_security_group(
            GroupName=name, Description=f"{name} (seeded)", VpcId=vpc, **({"TagSpecifications": spec} if tags else {})
        )["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=gid,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]} for p in ports
            ],
        )
        return str(gid)

    until = (today + timedelta(days=60)).isoformat()
    return [
        group("web-sg", [80, 443]),
        group("legacy-ssh", [22]),
        group("bastion", [22], {"opsbot:exempt-until": until, "opsbot:exempt-reason": "jump host, SEC-118"}),
    ]


def seed_security(
    base: boto3.Session, members: dict[str, boto3.Session], regions: dict[str, tuple[str, ...]]
) -> dict[str, Any]:
    """Groups and forwarding in every member account/region, the hub's routes, and the local identities."""
    hub_account = base.client("sts").get_caller_identity()["Account"]
    router = EventRouter(base)
    router.install()
    groups = 0
    for account, session in members.items():
        for region in regions[account]:
            groups += len(seed_groups(session, region))
            router.install_member_forwarding(session, hub_account, region)
    first = next(iter(members))
    person = _user_keys(
        members[first].client("iam"),
        PERSON,
        [
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeSecurityGroupRules",
            "events:PutEvents",
        ],
    )
    infra = _user_keys(base.client("iam"), INFRA_USER, ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueUrl"])
    return {
        "people": {PERSON: {**person, "account": first}},
        "infra_keys": infra,
        "event_queues": router.queues,
        "line": f"security: {groups} groups (web 80/443, legacy-ssh 22, exempt bastion); forwarding to the hub bus",
    }
