"""Real CloudTrail records (tests/fixtures/cloudtrail) re-addressed to the moto fleet.

Only identifiers change: the account/region, the group id and the rule ids moto assigned when the
test made the same change the record describes. Every other field stays as recorded.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from slack_sdk import WebClient

from automations.core.fleet import SessionBroker
from automations.core.notify import Notifier
from automations.security_groups.policy import load_policy
from automations.security_groups.remediation import handle_event
from opsbot.local.slack_standin import SlackStandIn
from tests.conftest import ACCOUNT_A, FIXTURES, ROOT_RULES

POLICY = load_policy(ROOT_RULES / "security_groups.yaml")
REGION = "us-east-1"
NOW = datetime(2026, 11, 25, 10, 0, 3, tzinfo=UTC)


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


# ---- the `sg` fixture: a member region, the ledger, Slack, and every EC2 call made --------------
@dataclass
class Sg:
    ec2: Any
    broker: SessionBroker
    ledger: Any
    notifier: Notifier
    slack: SlackStandIn
    calls: list[str]

    def group(self, tags: dict[str, str] | None = None, name: str = "app") -> str:
        vpc = self.ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        kwargs: dict[str, Any] = {"GroupName": name, "Description": "test", "VpcId": vpc}
        if tags:
            kwargs["TagSpecifications"] = [
                {"ResourceType": "security-group", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            ]
        return str(self.ec2.create_security_group(**kwargs)["GroupId"])

    def rules(self, group_id: str) -> list[dict[str, Any]]:
        rules = self.ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group_id]}])
        return [r for r in rules["SecurityGroupRules"] if not r["IsEgress"]]

    def handle(self, event: dict[str, Any], policy=POLICY) -> dict[str, Any]:
        return handle_event(event, self.broker, policy, self.ledger, self.notifier, clock=lambda: NOW)

    def apply(self, name: str, group_id: str, **kw: Any) -> dict[str, Any]:
        """Make the change the recorded event describes, then return the record re-addressed to it."""
        event = record(name)
        created = self.ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=permissions(event))
        return readdress(event, ACCOUNT_A, REGION, group_id, created["SecurityGroupRules"], **kw)


@pytest.fixture
def sg(ledger, broker) -> Any:
    # The clients remediation uses: the security-groups member role (a view shares the broker's cache).
    broker = broker.for_capability("security-groups")
    ec2 = broker.client(ACCOUNT_A, REGION, "ec2")
    calls: list[str] = []
    # Both clients the broker hands out: the revoke goes through the one without botocore retries.
    for client in (ec2, broker.client(ACCOUNT_A, REGION, "ec2", retries=False)):
        client.meta.events.register("before-send.ec2", lambda **kw: calls.append(_action(kw)))
    with SlackStandIn("xoxb-test") as slack:
        notifier = Notifier(slack=WebClient("xoxb-test", base_url=slack.base_url), slack_channel="#sec")
        yield Sg(ec2, broker, ledger, notifier, slack, calls)


def _action(kw: dict[str, Any]) -> str:
    body = kw["request"].body
    body = body.decode() if isinstance(body, bytes) else str(body)
    return next((p.split("=", 1)[1] for p in body.split("&") if p.startswith("Action=")), "?")
