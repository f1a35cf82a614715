"""The local fleet's IAM: the roles of template-member.yaml in every member account and those of
template.yaml in the hub (opsbot/local/iam_roles.py parses them), and sessions of the hub roles for
each function and for the operator CLI.

The "denied account" (seed.DENIED_ACCOUNT_NAME) gets the member template deployed for another hub
account, as a member stack pointed at the wrong hub would be: its roles' trust names that account, so
the hub's sts:AssumeRole is refused by the trust policy (checked by the local shim, aws_shims.py item 6)
though the hub roles' own policies allow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from automations.core.fleet import Fleet, MemberAccount
from opsbot.local import hub
from opsbot.local.events import queue_routes
from opsbot.local.iam_roles import HUB_TEMPLATE, MEMBER_TEMPLATE, Locals, create_roles, role_credentials, template_roles

OTHER_HUB_ACCOUNT = "999999999999"  # the hub a denied account's member stack trusts instead of ours
OPERATOR_ROLE = "OperatorRole"  # template.yaml's role for the `opsbot` CLI


@dataclass
class HubIdentities:
    operator: dict[str, str]  # the OperatorRole session: what the CLI and the demo's CLI steps run as
    functions: dict[str, dict[str, str]]  # handler (module.function) -> its function role's session
    roles: dict[str, str] = field(default_factory=dict)  # logical id -> role ARN


def _fleet_parameters(fleet: Fleet) -> dict[str, Any]:
    """Fleet settings under the parameter names the templates use (old and new member role naming)."""
    out: dict[str, Any] = {}
    pairs = (("role_prefix", ("RolePrefix", "MemberRolePrefix")), ("role_name", ("RoleName", "MemberRoleName")))
    for attr, names in pairs:
        value = getattr(fleet, attr, None)
        if isinstance(value, str):
            out.update(dict.fromkeys(names, value))
    return out


def create_member_roles(
    member: boto3.Session,
    fleet: Fleet,
    account: MemberAccount,
    hub_account: str,
    *,
    denied: bool = False,
    template: Path = MEMBER_TEMPLATE,
) -> list[str]:
    """Every role template-member.yaml deploys, as its stack in the account's first region would."""
    region = account.regions[0]
    parameters = {
        **_fleet_parameters(fleet),
        "HubAccountId": OTHER_HUB_ACCOUNT if denied else hub_account,
        "ExternalId": fleet.external_id or "",
        "HubRegion": region,  # the stack that creates the (global) roles: IsRoleRegion holds
    }
    spec = template_roles(template, Locals(account.id, region, parameters=parameters))
    create_roles(member, spec)
    return [r.name for r in spec.roles]


def _organization_parameters(base: boto3.Session) -> dict[str, str]:
    """MemberOrganizationId: the organisation the hub manages (the fleet's discovery grants name it)."""
    org: Any = base.client("organizations")
    try:
        return {"MemberOrganizationId": org.describe_organization()["Organization"]["Id"]}
    except org.exceptions.AWSOrganizationsNotInUseException:
        return {}


def hub_names(base: boto3.Session) -> dict[str, str]:
    """The local names of the hub resources template.yaml's policies name (secrets: their ARNs)."""
    sm = base.client("secretsmanager")
    names = {
        "LedgerTable": hub.LEDGER_TABLE,
        "IdempotencyTable": hub.IDEMPOTENCY_TABLE,
        "FleetParameter": hub.FLEET_PARAMETER,
        "ManifestBucket": hub.MANIFEST_BUCKET,
        "AlertTopic": hub.TOPIC_NAME,
        **{r.queue: r.local_name for r in queue_routes()},
    }
    from opsbot.local.seed_killswitch import SIGNING_SECRET_NAME

    for lid, name in (("SlackBotTokenSecret", hub.SLACK_SECRET_NAME), ("SlackSigningSecret", SIGNING_SECRET_NAME)):
        try:
            names[lid] = sm.describe_secret(SecretId=name)["ARN"]
        except sm.exceptions.ResourceNotFoundException:
            continue
    return names


def create_hub_roles(base: boto3.Session, fleet: Fleet, template: Path = HUB_TEMPLATE) -> HubIdentities:
    """template.yaml's roles in the hub, and a session of each function's role and of the operator's.
    Before IAM enforcement is on: the seeder stands in for Lambda (and for the person who assumes the
    operator role with MFA), which the trust policies name."""
    account = base.client("sts").get_caller_identity()["Account"]
    region = base.region_name or "us-east-1"
    parameters = {**_fleet_parameters(fleet), **_organization_parameters(base)}
    spec = template_roles(template, Locals(account, region, parameters=parameters, names=hub_names(base)))
    arns = create_roles(base, spec)
    functions = {r.handler: role_credentials(base, arns[r.logical_id], r.logical_id) for r in spec.roles if r.handler}
    operator = role_credentials(base, arns[OPERATOR_ROLE], "opsbot-operator")
    return HubIdentities(operator=operator, functions=functions, roles=arns)
