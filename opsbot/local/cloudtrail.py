"""A local stand-in for CloudTrail -> EventBridge: after a call is made against the local AWS, build
the "AWS API Call via CloudTrail" event AWS would emit for it and put it on the caller's event bus.

The event is the recorded real one in ``records/`` (source named there) with the identifiers, request
and response replaced by those of the call actually made; field names and nesting stay as recorded.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from automations.core.clock import parse_time

RECORDS = Path(__file__).with_name("records")


def _items(values: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": values} if values else {}


def _permission(perm: dict[str, Any]) -> dict[str, Any]:
    """An EC2 API IpPermission as CloudTrail renders it in requestParameters."""
    return {
        "ipProtocol": perm["IpProtocol"],
        "fromPort": perm.get("FromPort"),
        "toPort": perm.get("ToPort"),
        "groups": _items([{"groupId": g["GroupId"]} for g in perm.get("UserIdGroupPairs", [])]),
        "ipRanges": _items([{"cidrIp": r["CidrIp"]} for r in perm.get("IpRanges", [])]),
        "ipv6Ranges": _items([{"cidrIpv6": r["CidrIpv6"]} for r in perm.get("Ipv6Ranges", [])]),
        "prefixListIds": _items([{"prefixListId": p["PrefixListId"]} for p in perm.get("PrefixListIds", [])]),
    }


def _rule_item(rule: dict[str, Any], account: str, region: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "groupOwnerId": account,
        "groupId": rule["GroupId"],
        "securityGroupRuleId": rule["SecurityGroupRuleId"],
        "isEgress": rule["IsEgress"],
        "ipProtocol": rule["IpProtocol"],
        "fromPort": rule["FromPort"],
        "toPort": rule["ToPort"],
    }
    for api, trail in (("CidrIpv4", "cidrIpv4"), ("CidrIpv6", "cidrIpv6"), ("PrefixListId", "prefixListId")):
        if rule.get(api):
            item[trail] = rule[api]
    item["securityGroupRuleArn"] = f"arn:aws:ec2:{region}:{account}:security-group-rule/{rule['SecurityGroupRuleId']}"
    return item


def authorize_ingress_event(
    *,
    account: str,
    region: str,
    user_arn: str,
    access_key_id: str,
    source_ip: str,
    group_id: str,
    permissions: list[dict[str, Any]],
    created_rules: list[dict[str, Any]],
    when: datetime | None = None,
) -> dict[str, Any]:
    """The event for an AuthorizeSecurityGroupIngress call made by an IAM user."""
    event = copy.deepcopy(json.loads((RECORDS / "authorize_sg_ingress.json").read_text())["payload"])
    when = when or datetime.now(UTC)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    event.update(id=str(uuid.uuid4()), account=account, region=region, time=stamp)
    detail = event["detail"]
    detail.update(
        eventTime=stamp,
        eventID=str(uuid.uuid4()),
        requestID=str(uuid.uuid4()),
        awsRegion=region,
        recipientAccountId=account,
        sourceIPAddress=source_ip,
        userAgent="aws-cli/2.18.17 md/awscrt#0.22.0 ua/2.0 os/linux#6.8 md/arch#x86_64 lang/python#3.12.6",
        # CloudTrail's userIdentity element for an IAM user (the recorded event was an assumed role).
        userIdentity={
            "type": "IAMUser",
            "principalId": access_key_id,
            "arn": user_arn,
            "accountId": account,
            "accessKeyId": access_key_id,
            "userName": user_arn.rsplit("/", 1)[-1],
        },
        requestParameters={
            "groupId": group_id,
            "ipPermissions": _items([_permission(p) for p in permissions]),
        },
    )
    detail["responseElements"] = {
        "requestId": detail["requestID"],
        "_return": True,
        "securityGroupRuleSet": _items([_rule_item(r, account, region) for r in created_rules]),
    }
    return event


def put_on_bus(events_client: Any, event: dict[str, Any]) -> None:
    """Emit the event on the caller's default bus, as CloudTrail's delivery to EventBridge does."""
    events_client.put_events(
        Entries=[
            {
                "Source": event["source"],
                "DetailType": event["detail-type"],
                "Detail": json.dumps(event["detail"]),
                "Resources": event.get("resources", []),
                "Time": parse_time(event["time"]),
            }
        ]
    )
