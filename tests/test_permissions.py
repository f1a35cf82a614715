"""The roles in template.yaml and template-member.yaml hold exactly what the code declares it needs.

The declarations are next to the code: each kind's ``member_actions`` / ``hub_grants``, each capability's
member policy (``automations.catalog.CAPABILITIES``), each handler module's ``PERMISSIONS`` and the
operator's (``opsbot.permissions.OPERATOR``). These tests are the only place the two are compared, both
ways: a permission the code needs and the role lacks fails, and so does one the role holds and nothing
declares.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from automations import catalog
from automations.core.iam import Grant
from opsbot.permissions import OPERATOR
from tests.test_templates import as_list, load_cfn, resources

ROOT = Path(__file__).resolve().parent.parent
# Actions that take no resource ARN (Service Authorization Reference), so "*" is their only form.
NO_RESOURCE_ACTIONS = {
    "servicequotas:ListServiceQuotas",
    "servicequotas:ListAWSDefaultServiceQuotas",
    "cloudwatch:GetMetricData",
    "lambda:GetAccountSettings",
    "lambda:ListFunctions",
    "events:ListRules",
    "scheduler:ListScheduleGroups",
    "scheduler:ListSchedules",
}


@pytest.fixture(scope="module")
def hub() -> dict[str, Any]:
    return load_cfn(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def member() -> dict[str, Any]:
    return load_cfn(ROOT / "template-member.yaml")


def resource_name(template: dict[str, Any], resource: Any) -> str:
    """What a statement's Resource is on, in the terms ``Grant`` uses: the logical id or parameter it
    names ("<id>/index/by-time" for the index), else the ARN's resource part ("rule/opsbot-*"), or "*"."""
    if resource == "*":
        return "*"
    text = json.dumps(resource)
    if member_role := re.search(r"role/\$\{MemberRolePrefix\}-([a-z-]+)", text):
        return f"MemberRole/{member_role[1]}"  # iam.assume_member_role(capability)
    names = set(template["Resources"]) | set(template.get("Parameters", {}))
    tokens = re.findall(r"\$\{([A-Za-z0-9]+)[.}]", text) + re.findall(r'"([A-Za-z0-9]+)"', text)
    referenced = [token for token in tokens if token in names]
    if referenced:
        index = re.search(r"/index/([\w*-]+)", text)
        return referenced[0] + (f"/index/{index[1]}" if index else "")
    arn = resource["Fn::Sub"] if isinstance(resource, dict) else str(resource)
    return arn.rsplit(":", 1)[-1]


def statements_of(template: dict[str, Any], policies: Iterable[Any]) -> list[dict[str, Any]]:
    """Inline documents and referenced managed policies (AWS::IAM::ManagedPolicy) alike."""
    found = []
    for policy in policies:
        if isinstance(policy, dict) and "Ref" in policy:
            managed = template["Resources"][policy["Ref"]]
            assert managed["Type"] == "AWS::IAM::ManagedPolicy", policy
            found += managed["Properties"]["PolicyDocument"]["Statement"]
        elif isinstance(policy, dict) and "PolicyDocument" in policy:
            found += policy["PolicyDocument"]["Statement"]
        else:
            assert isinstance(policy, dict) and "Statement" in policy, f"no SAM policy templates: {policy!r}"
            found += policy["Statement"]
    return found


def granted(template: dict[str, Any], statements: Iterable[dict[str, Any]]) -> set[Grant]:
    out = set()
    for s in statements:
        assert s["Effect"] == "Allow", s
        for action in as_list(s["Action"]):
            for resource in as_list(s["Resource"]):
                out.add(Grant(action, resource_name(template, resource)))
    return out


def difference(declared: Iterable[Grant], held: set[Grant]) -> dict[str, list[str]]:
    declared = set(declared)
    return {
        "missing from the role": sorted(map(str, declared - held)),
        "held but declared by nothing": sorted(map(str, held - declared)),
    }


def function_grants(hub: dict[str, Any]) -> dict[str, tuple[str, set[Grant]]]:
    return {
        fn["Properties"]["Handler"]: (lid, granted(hub, statements_of(hub, fn["Properties"].get("Policies", []))))
        for lid, fn in resources(hub, "AWS::Serverless::Function").items()
    }


def declared_for(handler: str) -> frozenset[Grant]:
    module, _, function = handler.rpartition(".")
    permissions: dict[str, frozenset[Grant]] = importlib.import_module(module).PERMISSIONS
    assert function in permissions, f"{module}.PERMISSIONS declares nothing for {function}"
    return permissions[function]


# ---- the hub ------------------------------------------------------------------------------------------
def test_each_function_holds_exactly_what_its_handler_declares(hub: dict[str, Any]) -> None:
    functions = function_grants(hub)
    assert len(functions) >= 10
    for handler, (lid, held) in functions.items():
        diff = difference(declared_for(handler), held)
        assert diff == {"missing from the role": [], "held but declared by nothing": []}, f"{lid} ({handler})"


def test_every_handler_module_declares_only_functions_the_template_deploys(hub: dict[str, Any]) -> None:
    deployed = set(function_grants(hub))
    for path in sorted((ROOT / "handlers").glob("[a-z]*.py")):
        module = importlib.import_module(f"handlers.{path.stem}")
        for function in getattr(module, "PERMISSIONS", {}):
            assert f"handlers.{path.stem}.{function}" in deployed, f"{path.name}: {function} is not in template.yaml"


def test_operator_role_holds_exactly_what_the_cli_declares(hub: dict[str, Any]) -> None:
    role = hub["Resources"]["OperatorRole"]["Properties"]
    policies = [*role.get("Policies", []), *({"Ref": r["Ref"]} for r in role.get("ManagedPolicyArns", []))]
    diff = difference(OPERATOR, granted(hub, statements_of(hub, policies)))
    assert diff == {"missing from the role": [], "held but declared by nothing": []}


def test_the_comparison_notices_a_removed_and_an_extra_permission(hub: dict[str, Any]) -> None:
    """The test above bites: drop one action from a function's role, add another, and both are reported."""
    held = set(function_grants(hub)["handlers.scheduled_task.unit"][1])
    held.discard(Grant("dynamodb:BatchWriteItem", "LedgerTable"))
    held.add(Grant("dynamodb:Scan", "LedgerTable"))
    diff = difference(declared_for("handlers.scheduled_task.unit"), held)
    assert diff == {
        "missing from the role": ["dynamodb:BatchWriteItem on LedgerTable"],
        "held but declared by nothing": ["dynamodb:Scan on LedgerTable"],
    }


def test_no_wildcard_actions_and_star_resources_only_where_the_api_takes_none(hub: dict[str, Any]) -> None:
    grants = {g for _, held in function_grants(hub).values() for g in held} | set(OPERATOR)
    for g in grants:
        assert "*" not in g.action, g
        if g.resource == "*":
            assert g.action in NO_RESOURCE_ACTIONS, g


# ---- member accounts ------------------------------------------------------------------------------------
def member_policies(member: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every member role's grants (Allow), by policy name; the kill-switch role's Deny guard is apart
    (tests/test_templates.py)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for role in resources(member, "AWS::IAM::Role").values():
        for p in role["Properties"].get("Policies", []):
            allows = [s for s in p["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
            if allows and "RoleName" in role["Properties"]:
                found[p["PolicyName"]] = allows
    return found


def test_each_capability_owns_one_member_policy_with_exactly_its_actions(member: dict[str, Any]) -> None:
    policies = member_policies(member)
    assert sorted(policies) == sorted(c.member_policy for c in catalog.CAPABILITIES)
    for capability in catalog.CAPABILITIES:
        held = {a for s in policies[capability.member_policy] for a in as_list(s["Action"])}
        declared = set(capability.member_actions)
        assert sorted(declared - held) == [], f"{capability.name}: missing from {capability.member_policy}"
        assert sorted(held - declared) == [], f"{capability.name}: {capability.member_policy} holds unused actions"


def test_every_registered_kind_belongs_to_a_capability() -> None:
    owned = set().union(*(c.member_actions for c in catalog.CAPABILITIES))
    registries = (catalog.TASK_KINDS, catalog.CHECK_KINDS, catalog.SWITCH_KINDS)
    for registry in registries:
        for kind in registry:
            if getattr(kind, "in_members", True):
                assert kind.member_actions <= owned, f"{registry.sort} {kind.name}"


def test_member_actions_on_every_resource_are_read_only(member: dict[str, Any]) -> None:
    for name, statements in member_policies(member).items():
        for s in statements:
            if s["Resource"] == "*":
                for action in as_list(s["Action"]):
                    verb = action.split(":")[1]
                    assert verb.startswith(("Describe", "Get", "List")), f"{name}: {action} on every resource"


def test_each_kind_acts_as_the_member_role_that_holds_its_actions() -> None:
    """A kind's units assume its capability's member role (``<prefix>-<capability>``): that role must hold
    every action the kind needs, and the names used by the code must be the capabilities' names."""
    from automations.breach_checks.checks import CAPABILITY_NAME as CHECKS
    from automations.kill_switches.switchboard import CAPABILITY_NAME as SWITCHES
    from automations.security_groups.remediation import CAPABILITY_NAME as SECURITY_GROUPS

    by_name = {c.name: c for c in catalog.CAPABILITIES}
    for kind in catalog.TASK_KINDS:
        assert kind.member_actions <= by_name[kind.capability].member_actions, kind.name
    for name, kinds in ((CHECKS, catalog.CHECK_KINDS), (SWITCHES, [k for k in catalog.SWITCH_KINDS if k.in_members])):
        for kind in kinds:
            assert kind.member_actions <= by_name[name].member_actions, kind.name
    assert SECURITY_GROUPS in by_name
