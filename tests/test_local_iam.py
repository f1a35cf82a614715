"""The local AWS checks IAM as strictly as AWS where moto can, and the rest is checked from the templates.

- Every role template.yaml and template-member.yaml deploy is created locally from the template itself
  (opsbot/local/iam_roles.py): each function's own role, the operator's, one per member capability.
- A local run under those roles fails exactly where the template lacks a permission: removing one from a
  copy of the template and seeding from it turns the matching handler's run into AccessDenied.
- What moto does not evaluate (conditions of identity policies) is dropped locally, visibly, and the
  conditions that matter are checked here from the template text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError

from automations.core.fleet import AccountAccessError, SessionBroker, load_fleet
from automations.core.ledger import Ledger
from opsbot.cfn import load_template
from opsbot.local import lifecycle, server
from opsbot.local.cloudtrail import authorize_ingress_event, put_on_bus
from opsbot.local.demo_rules import assemble
from opsbot.local.events import WORKERS, EventRouter, FunctionError
from opsbot.local.hub import LEDGER_TABLE
from opsbot.local.iam_resources import trust_allows
from opsbot.local.iam_roles import HUB_TEMPLATE, MEMBER_TEMPLATE, Locals, create_roles, enforceable, template_roles
from opsbot.local.seed import DENIED_ACCOUNT_NAME, _member_session
from opsbot.local.seed_roles import hub_names
from opsbot.local.seed_security import PERSON
from opsbot.local.slack_standin import SlackStandIn

HUB, MEMBER = "123456789012", "210987654321"
REGION = "us-east-1"


def hub_roles(template: Path = HUB_TEMPLATE) -> Any:
    return template_roles(template, Locals(HUB, REGION, names={"FleetParameter": "/opsbot/fleet"}))


def member_roles(template: Path = MEMBER_TEMPLATE) -> Any:
    params = {"HubAccountId": HUB, "ExternalId": "the-external-id", "HubRegion": REGION}
    return template_roles(template, Locals(MEMBER, REGION, parameters=params))


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = document.get("Statement", [])
    return found if isinstance(found, list) else [found]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ---- the roles, from the templates ------------------------------------------------------------------
def test_every_hub_function_gets_its_own_role_with_its_templates_policies() -> None:
    template = load_template(HUB_TEMPLATE)
    functions = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    spec = hub_roles()
    by_function = {r.logical_id: r for r in spec.roles if r.handler}
    assert set(by_function) == set(functions)
    default_path = template["Globals"]["Function"]["RolePath"]
    for lid, function in functions.items():
        role = by_function[lid]
        assert role.handler == function["Properties"]["Handler"]
        assert role.path == function["Properties"].get("RolePath", default_path)
        refs = {p["Ref"] for p in function["Properties"].get("Policies", []) if "Ref" in p}
        assert set(role.managed) == refs
        assert len(role.inline) == sum(1 for p in function["Properties"].get("Policies", []) if "Ref" not in p)
    assert "OperatorRole" in {r.logical_id for r in spec.roles}


def test_every_intrinsic_is_resolved_with_the_local_values() -> None:
    for spec in (hub_roles(), member_roles()):
        for role in spec.roles:
            text = json.dumps([role.trust, role.inline])
            assert "Fn::" not in text and '"Ref"' not in text and "${" not in text, role.logical_id
        for policy in spec.managed:
            assert "${" not in json.dumps(policy.document), policy.logical_id
    fleet_read = next(p for p in hub_roles().managed if p.logical_id == "FleetReadPolicy")
    resources = [r for s in statements(fleet_read.document) for r in as_list(s["Resource"])]
    assert resources == [f"arn:aws:ssm:{REGION}:{HUB}:parameter/opsbot/fleet"]


def test_member_accounts_get_every_role_of_the_member_template() -> None:
    template = load_template(MEMBER_TEMPLATE)
    roles = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::IAM::Role"}
    assert {r.logical_id for r in member_roles().roles} == roles  # IsRoleRegion holds in the hub region
    elsewhere = template_roles(
        MEMBER_TEMPLATE,
        Locals(MEMBER, "eu-west-1", parameters={"HubAccountId": HUB, "ExternalId": "x", "HubRegion": REGION}),
    )
    conditional = {k for k in roles if template["Resources"][k].get("Condition") == "IsRoleRegion"}
    assert {r.logical_id for r in elsewhere.roles} == roles - conditional


def test_only_conditions_are_dropped_locally() -> None:
    """moto evaluates no identity-policy condition: an Allow's is dropped, a conditional Deny whole.
    Everything else reaches the local AWS exactly as the template has it."""
    for spec in (hub_roles(), member_roles()):
        documents = [d for r in spec.roles for d in r.inline.values()] + [p.document for p in spec.managed]
        for document in documents:
            local = statements(enforceable(document))
            expected = [
                {k: v for k, v in s.items() if k != "Condition"}
                for s in statements(document)
                if not (s.get("Condition") and s["Effect"] == "Deny")
            ]
            assert local == expected


# ---- what the local check does not evaluate, checked from the template text --------------------------
def test_member_trust_conditions_admit_exactly_the_hub_roles_that_may_assume_them() -> None:
    """Each member role's trust (ExternalId, aws:PrincipalArn) against each hub role's identity grant:
    a hub role that may call sts:AssumeRole on a member role is admitted by its trust, and no other
    hub role is. Evaluated on the resolved template text; the local AWS checks the same at run time."""
    hub, member = hub_roles(), member_roles()
    managed = {p.logical_id: p.document for p in hub.managed}
    member_trusting_hub = [
        r for r in member.roles if any("AWS" in (s.get("Principal") or {}) for s in statements(r.trust))
    ]
    assert member_trusting_hub, "no member role trusts the hub"
    admitted_any = False
    for role in hub.roles:
        documents = list(role.inline.values()) + [managed[m] for m in role.managed]
        grants = [
            resource
            for d in documents
            for s in statements(d)
            if s["Effect"] == "Allow" and "sts:AssumeRole" in as_list(s["Action"])
            for resource in as_list(s["Resource"])
        ]
        principal = role.arn(HUB)
        context = {"aws:PrincipalArn": principal, "aws:PrincipalAccount": HUB, "sts:ExternalId": "the-external-id"}
        for target in member_trusting_hub:
            may_call = any(re.fullmatch(g.replace("*", ".*"), target.arn(MEMBER)) for g in grants)
            admitted = trust_allows(target.trust, principal, HUB, context)
            assert may_call == admitted, f"{role.logical_id} -> {target.name}: grant {may_call}, trust {admitted}"
            admitted_any |= admitted
        # Without the ExternalId no trust admits anyone.
        for target in member_trusting_hub:
            assert not trust_allows(target.trust, principal, HUB, {**context, "sts:ExternalId": "wrong"})
    assert admitted_any


# ---- local runs under the templates' roles ---------------------------------------------------------
def drop_action(source: Path, target: Path, action: str, only_in: str | None = None) -> Path:
    """A copy of a template without ``action`` in any statement (of resource ``only_in``'s own
    policies, when given). Long-form intrinsics, which CloudFormation reads as well as the short tags."""
    template = load_template(source)
    dropped = 0

    def walk(node: Any) -> None:
        nonlocal dropped
        if isinstance(node, dict):
            if "Effect" in node and "Action" in node:
                actions = as_list(node["Action"])
                if action in actions:
                    node["Action"] = [a for a in actions if a != action]
                    dropped += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(template["Resources"][only_in]["Properties"]["Policies"] if only_in else template["Resources"])
    assert dropped, f"{action} is not in {source.name}"
    target.write_text(yaml.safe_dump(template, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The local AWS seeded as `opsbot local seed` does, with the demo's fleet; the environment as the
    CLI gets it (the operator role), restored afterwards."""
    work = tmp_path_factory.mktemp("local-iam")
    saved = dict(os.environ)
    rules = assemble(work / "rules")
    with (
        pytest.MonkeyPatch.context() as patch,
        server.running(work / "moto.log") as url,
        SlackStandIn("xoxb-local-iam") as slack,
    ):
        patch.setattr(lifecycle, "DEFAULT_RULES_DIR", rules, raising=False)
        os.environ["OPSBOT_RULES_DIR"] = str(rules)
        try:
            state = lifecycle.seed_into(url, slack.base_url, "xoxb-local-iam")
            from opsbot.environment import apply_local_environment

            apply_local_environment({"endpoint": url, **state})
            yield {"url": url, "state": state, "fleet": load_fleet(rules / "fleet.yaml"), "work": work}
        finally:
            WORKERS.close()
            os.environ.clear()
            os.environ.update(saved)


def bootstrap(url: str) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=server.BOOTSTRAP_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server.BOOTSTRAP_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )


def reseed_changed_roles(local: dict[str, Any], template: Path, edited: Path) -> None:
    """The roles whose documents differ between ``template`` and ``edited``, again from ``edited``, in
    the hub or in the first member account (IAM enforcement off meanwhile, as seeding does)."""
    url, fleet = local["url"], local["fleet"]
    server.set_enforce_iam(url, False)
    try:
        base = bootstrap(url)
        if template.name == HUB_TEMPLATE.name:
            session, loc = base, Locals(HUB, REGION, names=hub_names(base))
        else:
            account = fleet.accounts[0]
            session = _member_session(base, fleet, account.id)
            params = {"HubAccountId": HUB, "ExternalId": fleet.external_id or "", "HubRegion": account.regions[0]}
            params["RolePrefix"] = fleet.role_prefix
            loc = Locals(account.id, account.regions[0], parameters=params)
        before, after = template_roles(template, loc), template_roles(edited, loc)
        changed = tuple(r for r in after.roles if r not in before.roles)
        assert changed, f"{edited.name}: no role changed"
        create_roles(session, replace(after, roles=changed))
    finally:
        server.set_enforce_iam(url, True)


def open_to_the_world(local: dict[str, Any], port: int) -> tuple[list[Any], str, list[int]]:
    """A person opens ``port`` to the world on web-sg; the event goes member bus -> hub rule ->
    handlers.sg_events (in its process, as its role). Returns the handler results, the group, and the
    ports still open to the world afterwards."""
    state = local["state"]
    person = state["people"][PERSON]
    alice = boto3.Session(
        aws_access_key_id=person["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=person["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )
    ec2: Any = alice.client("ec2")
    group = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["web-sg"]}])["SecurityGroups"][0]
    permissions: list[Any] = [
        {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    ]
    created = ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=permissions)
    event = authorize_ingress_event(
        account=person["account"],
        region=REGION,
        user_arn=person["arn"],
        access_key_id=person["AWS_ACCESS_KEY_ID"],
        source_ip="198.51.100.23",
        group_id=group["GroupId"],
        permissions=permissions,
        created_rules=created["SecurityGroupRules"],
    )
    put_on_bus(alice.client("events"), event)
    infra = state["infra_keys"]
    router = EventRouter(
        boto3.Session(
            aws_access_key_id=infra["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=infra["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
        )
    )
    router.attach(state["event_queues"])
    results = [result for _, result in router.deliver()]
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])
    world = sorted(
        r["FromPort"] for r in rules["SecurityGroupRules"] if not r["IsEgress"] and r.get("CidrIpv4") == "0.0.0.0/0"
    )
    return results, group["GroupId"], world


def ledger_text(run_id: str) -> str:
    ledger = Ledger(boto3.Session(region_name=REGION).resource("dynamodb").Table(LEDGER_TABLE))
    return json.dumps([ledger.get_run(run_id), ledger.units(run_id), ledger.actions(run_id)], default=str)


def test_the_untouched_templates_let_the_handler_revoke_as_its_own_role(local_aws: dict[str, Any]) -> None:
    results, _, world = open_to_the_world(local_aws, 22)
    (result,) = results
    assert result["status"] == "SUCCEEDED" and result["counts"]["revoked"] == 1, result
    assert 22 not in world


def test_without_revoke_in_the_member_template_the_handler_is_denied(local_aws: dict[str, Any], tmp_path: Path) -> None:
    member = drop_action(MEMBER_TEMPLATE, tmp_path / "template-member.yaml", "ec2:RevokeSecurityGroupIngress")
    reseed_changed_roles(local_aws, MEMBER_TEMPLATE, member)
    try:
        results, _, world = open_to_the_world(local_aws, 3389)
    finally:
        reseed_changed_roles(local_aws, member, MEMBER_TEMPLATE)
    (result,) = results
    assert result["status"] != "SUCCEEDED", result
    assert 3389 in world  # still open: the revoke was refused
    recorded = ledger_text(result["run_id"])
    assert "AccessDenied" in recorded and "ec2:RevokeSecurityGroupIngress" in recorded


def test_without_putitem_in_the_functions_own_policy_the_handler_is_denied(
    local_aws: dict[str, Any], tmp_path: Path
) -> None:
    hub = drop_action(HUB_TEMPLATE, tmp_path / "template.yaml", "dynamodb:PutItem", only_in="SgEventFunction")
    reseed_changed_roles(local_aws, HUB_TEMPLATE, hub)
    try:
        with pytest.raises(FunctionError) as failed:
            open_to_the_world(local_aws, 5432)
    finally:
        reseed_changed_roles(local_aws, hub, HUB_TEMPLATE)
    message = str(failed.value)
    assert "AccessDenied" in message and "dynamodb:PutItem" in message and "SgEventFunctionRole" in message


def test_the_cli_runs_as_the_operator_role_and_the_denied_account_refuses_it(local_aws: dict[str, Any]) -> None:
    fleet = local_aws["fleet"]
    operator = boto3.Session(region_name=REGION)  # the environment apply_local_environment set
    arn = operator.client("sts").get_caller_identity()["Arn"]
    assert re.fullmatch(rf"arn:aws:sts::{HUB}:assumed-role/[\w+=,.@-]*OperatorRole[\w+=,.@-]*/.+", arn), arn
    view = SessionBroker(operator, fleet).for_capability("snapshots")
    denied = next(a for a in fleet.accounts if a.name == DENIED_ACCOUNT_NAME)
    allowed = next(a for a in fleet.accounts if a.name != DENIED_ACCOUNT_NAME)
    view.client(allowed.id, REGION, "ec2").describe_volumes()
    with pytest.raises(AccountAccessError) as refused:
        view.client(denied.id, REGION, "ec2").describe_volumes()
    assert refused.value.code == "AccessDenied"
    # All of it under enforcement: moto's bootstrap keys are refused now.
    with pytest.raises(ClientError, match=r"InvalidClientTokenId"):
        bootstrap(local_aws["url"]).client("sts").get_caller_identity()
