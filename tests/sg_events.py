"""Real CloudTrail records (tests/fixtures/cloudtrail) re-addressed to the moto fleet.

Only identifiers change: the account/region, the group id and the rule ids moto assigned when the
test made the same change the record describes. Every other field stays as recorded.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.conftest import FIXTURES


def record(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / "cloudtrail" / f"{name}.json").read_text())["payload"]
    return payload


def _to_api(perm: dict[str, Any]) -> dict[str, Any]:
    """CloudTrail's rendering of an IpPermission -> the EC2 API (boto3) shape, to make the same change."""

    def items(key: str) -> list[dict[str, Any]]:
        node = perm.get(key) or {}
        return list(node.get("items", []))

    out: dict[str, Any] = {"IpProtocol": perm["ipProtocol"]}
    if perm.get("fromPort") is not None:
        out["FromPort"], out["ToPort"] = perm["fromPort"], perm["toPort"]
    out["IpRanges"] = [{"CidrIp": r["cidrIp"]} for r in items("ipRanges")]
    out["Ipv6Ranges"] = [{"CidrIpv6": r["cidrIpv6"]} for r in items("ipv6Ranges")]
    out["PrefixListIds"] = [{"PrefixListId": r["prefixListId"]} for r in items("prefixListIds")]
    out["UserIdGroupPairs"] = [{"GroupId": g["groupId"]} for g in items("groups")]
    return out


def permissions(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [_to_api(p) for p in event["detail"]["requestParameters"]["ipPermissions"]["items"]]


def readdress(
    event: dict[str, Any],
    account: str,
    region: str,
    group_id: str,
    created: list[dict[str, Any]] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The same record, as if it had happened in (account, region) to ``group_id``.

    ``created``: the SecurityGroupRules moto returned, matched in order to the record's rule set."""
    out = copy.deepcopy(event)
    out["account"], out["region"] = account, region
    if event_id:
        out["id"] = event_id
    detail = out["detail"]
    detail["recipientAccountId"], detail["awsRegion"] = account, region
    params = detail.get("requestParameters") or {}
    if "groupId" in params:
        params["groupId"] = group_id
    if "ModifySecurityGroupRulesRequest" in params:
        params["ModifySecurityGroupRulesRequest"]["GroupId"] = group_id
    items = ((detail.get("responseElements") or {}).get("securityGroupRuleSet") or {}).get("items", [])
    if created is not None and items:
        template = items[0]
        new_items = []
        for rule in created:
            item = dict(template)
            for key in ("cidrIpv4", "cidrIpv6", "prefixListId", "referencedGroupInfo"):
                item.pop(key, None)
            item.update(
                groupOwnerId=account,
                groupId=group_id,
                securityGroupRuleId=rule["SecurityGroupRuleId"],
                isEgress=rule["IsEgress"],
                ipProtocol=rule["IpProtocol"],
                fromPort=rule["FromPort"],
                toPort=rule["ToPort"],
                securityGroupRuleArn=f"arn:aws:ec2:{region}:{account}:security-group-rule/{rule['SecurityGroupRuleId']}",
            )
            for api, trail in (
                ("CidrIpv4", "cidrIpv4"),
                ("CidrIpv6", "cidrIpv6"),
                ("PrefixListId", "prefixListId"),
            ):
                if rule.get(api):
                    item[trail] = rule[api]
            new_items.append(item)
        detail["responseElements"]["securityGroupRuleSet"]["items"] = new_items
    return out


def without_rule_set(event: dict[str, Any]) -> dict[str, Any]:
    """The older form of the record: responseElements as CloudTrail wrote it before rule ids existed."""
    out = copy.deepcopy(event)
    response = out["detail"]["responseElements"]
    out["detail"]["responseElements"] = {"requestId": response["requestId"], "_return": True}
    return out
