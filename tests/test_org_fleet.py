"""The fleet from AWS Organizations: which accounts and regions a fleet document's ``organization`` takes,
the errors it names by file and line, a fleet that reads nothing until it is used, and a new account in a
target OU covered by the next run without a redeploy.

The organisation is moto's (in-process, the local shims for account:ListRegions and chosen ids), built by
the same code as the local AWS's (opsbot/local/organization.py): the hub manages it; member roles arrive
through the StackSet mirror.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from automations.core.fleet import Fleet, load_fleet
from automations.core.organization import FleetDiscoveryError
from automations.core.rulebook import RulebookError
from automations.core.runs import Trigger, plan_run, run_now
from automations.core.runtime import Settings, build_runtime
from opsbot.local import organization as local_org
from opsbot.local.aws_shims import shims
from opsbot.local.hub import LEDGER_TABLE, create_tables
from opsbot.local.organization import DEV, PROD, SANDBOX, WORKLOADS, StackSetMirror, join_account, member_session

HUB = "123456789012"  # moto's default account: the hub, the organisation's management account
PAYMENTS, ANALYTICS, LEGACY, RETIRED = (a.id for a in local_org.ACCOUNTS)
TASKS = "tasks:\n  - {name: snapshot-daily, kind: ebs-snapshot, schedule: 'cron(0 3 * * ? *)'}\n"
DOC = """role_prefix: opsbot
external_id: opsbot-test
organization:
{body}"""


def doc(body: str, **top: str) -> str:
    extra = "".join(f"{k}: {v}\n" for k, v in top.items())
    return extra + DOC.format(body=body)


class Calls:
    """Every Organizations and Account Management call the session's clients make, by operation."""

    def __init__(self, session: boto3.Session) -> None:
        self.seen: Counter[str] = Counter()
        self.fail: dict[str, str] = {}  # operation -> error code to answer with
        for service in ("organizations", "account"):
            session.events.register(f"before-call.{service}", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.seen[model.name] += 1
        if code := self.fail.get(model.name):
            raise ClientError({"Error": {"Code": code, "Message": "refused by the test"}}, model.name)

    def total(self) -> int:
        return sum(self.seen.values())


@pytest.fixture
def hub(aws: None) -> Iterator[boto3.Session]:
    with shims():
        yield boto3.Session(region_name="us-east-1")


@pytest.fixture
def stackset(hub: boto3.Session) -> StackSetMirror:
    fleet = load_fleet("fleet.yaml", doc(f"  include: [{WORKLOADS}]\n  regions: [us-east-1]"))
    return StackSetMirror(fleet, HUB)


@pytest.fixture
def no_roles(stackset: StackSetMirror) -> StackSetMirror:
    """A StackSet with no targets: discovery does not need member roles (creating them is the slow part)."""
    return StackSetMirror(stackset.fleet, HUB, targets=())


@pytest.fixture
def org(hub: boto3.Session, no_roles: StackSetMirror) -> local_org.SeededOrganization:
    """The demo's organisation: Workloads (Prod: payments, analytics; Dev: empty), Sandbox (legacy,
    retired and closed), without member roles (moto without IAM enforcement lets the hub in anyway)."""
    return local_org.seed_organization(hub, no_roles)


def discovered(hub: boto3.Session, body: str, **top: str) -> Fleet:
    return load_fleet("fleet.yaml", doc(body, **top)).discovering_with(hub)


# ---- which accounts ---------------------------------------------------------------------------------------
def test_an_included_ou_brings_every_account_of_the_ous_under_it(hub, org, no_roles) -> None:
    dev = join_account(hub, DEV, "payments-dev", stackset=no_roles)
    fleet = discovered(hub, f"  include: [{WORKLOADS}]\n  regions: [us-east-1]")
    assert [(a.id, a.name, a.regions) for a in fleet.accounts] == sorted(
        [(PAYMENTS, "payments-prod", ("us-east-1",)), (ANALYTICS, "analytics-prod", ("us-east-1",)),
         (dev, "payments-dev", ("us-east-1",))]
    )  # fmt: skip
    assert [a.name for a in discovered(hub, f"  include: [{PROD}]\n  regions: [us-east-1]").accounts] == [
        "payments-prod",
        "analytics-prod",
    ]
    root = org.root
    everyone = discovered(hub, f"  include: [{root}]\n  regions: [us-east-1]").accounts
    assert {a.id for a in everyone} == {PAYMENTS, ANALYTICS, LEGACY, dev}  # not the hub, not the closed one


def test_accounts_included_by_id_wherever_they_sit(hub, org) -> None:
    fleet = discovered(hub, f'  include: [{PROD}, "{LEGACY}"]\n  regions: [us-east-1]')
    assert [a.id for a in fleet.accounts] == [PAYMENTS, ANALYTICS, LEGACY]
    only = discovered(hub, f'  include: ["{ANALYTICS}", "999999999999"]\n  regions: [us-east-1]')
    assert [a.name for a in only.accounts] == ["analytics-prod"]  # an id not in the organisation: left out


def test_excluded_accounts_and_ous_are_left_out(hub, org, no_roles) -> None:
    join_account(hub, DEV, "payments-dev", stackset=no_roles)
    fleet = discovered(hub, f'  include: [{org.root}]\n  exclude: ["{ANALYTICS}", {WORKLOADS}]\n  regions: [us-east-1]')
    assert [a.name for a in fleet.accounts] == ["legacy-sandbox"]
    # An excluded OU under an included one prunes only its subtree; an OU included under an excluded one
    # is still walked (the nearest decides, as for one account below).
    pruned = discovered(hub, f"  include: [{WORKLOADS}]\n  exclude: [{DEV}]\n  regions: [us-east-1]")
    assert [a.name for a in pruned.accounts] == ["payments-prod", "analytics-prod"]
    nested = discovered(hub, f"  include: [{PROD}]\n  exclude: [{WORKLOADS}]\n  regions: [us-east-1]")
    assert [a.name for a in nested.accounts] == ["payments-prod", "analytics-prod"]


def test_suspended_accounts_and_the_management_account_are_never_in_the_fleet(hub, org) -> None:
    states = {a["Name"]: a["Status"] for a in hub.client("organizations").list_accounts()["Accounts"]}
    assert states["retired-sandbox"] == "SUSPENDED" and "master" in states  # moto's name for the hub
    fleet = discovered(hub, f'  include: [{SANDBOX}, "{RETIRED}", "{HUB}"]\n  regions: [us-east-1]')
    assert [a.name for a in fleet.accounts] == ["legacy-sandbox"]
    assert fleet.account(RETIRED) is None and fleet.account(HUB) is None


def test_listed_accounts_override_discovered_ones_and_stand_alone(hub, org) -> None:
    text = doc(
        f"  include: [{SANDBOX}]\n  regions: [us-east-1, eu-west-1]\n"
        f'accounts:\n  - {{id: "{LEGACY}", name: legacy, regions: [us-east-1]}}\n'
        '  - {id: "111111111111", name: outside, regions: [eu-west-1]}'
    )
    fleet = load_fleet("fleet.yaml", text).discovering_with(hub)
    assert [(a.name, a.regions) for a in fleet.accounts] == [("legacy", ("us-east-1",)), ("outside", ("eu-west-1",))]


# ---- which regions ---------------------------------------------------------------------------------------
def test_regions_configured_or_each_accounts_enabled_ones(hub, org) -> None:
    hub.client("account").enable_region(AccountId=PAYMENTS, RegionName="af-south-1")  # an opt-in region
    configured = discovered(hub, f"  include: [{PROD}]\n  regions: [eu-west-1, us-east-1]")
    assert {a.regions for a in configured.accounts} == {("eu-west-1", "us-east-1")}
    from_default = discovered(hub, f"  include: [{PROD}]", default_regions="[ap-south-1]")
    assert {a.regions for a in from_default.accounts} == {("ap-south-1",)}
    enabled = {a.name: a.regions for a in discovered(hub, f"  include: [{PROD}]\n  regions: enabled").accounts}
    assert len(enabled["analytics-prod"]) == 17 and "af-south-1" not in enabled["analytics-prod"]
    assert enabled["payments-prod"] == tuple(sorted([*enabled["analytics-prod"], "af-south-1"]))
    allowed = discovered(
        hub, f"  include: [{PROD}]\n  regions: enabled\n  allowed_regions: [af-south-1, us-east-1, me-south-1]"
    )
    assert {a.name: a.regions for a in allowed.accounts} == {
        "payments-prod": ("af-south-1", "us-east-1"),  # in the allow-list's order; me-south-1 is not enabled
        "analytics-prod": ("us-east-1",),
    }


def test_region_lookups_are_kept_longer_than_membership(hub, org, no_roles) -> None:
    now = [0.0]
    calls = Calls(hub)
    text = doc(f"  include: [{WORKLOADS}]\n  regions: enabled\n  allowed_regions: [us-east-1]")
    fleet = load_fleet("fleet.yaml", text).discovering_with(hub, clock=lambda: now[0])
    assert len(fleet.accounts) == 2 and calls.seen["ListRegions"] == 2
    assert len(fleet.targets()) == 2 and calls.total() == 2 + 3 * 2  # cached: 3 parents, 2 calls each
    join_account(hub, DEV, "payments-dev", stackset=no_roles)
    now[0] += 61  # membership is a minute old: read again, and only the new account's regions
    assert len(fleet.accounts) == 3 and calls.seen["ListRegions"] == 3
    now[0] += 3600
    fleet.accounts  # noqa: B018 - regions an hour old: every account's again
    assert calls.seen["ListRegions"] == 6


# ---- one account: what the event handlers ask ---------------------------------------------------------
def test_one_account_is_answered_as_a_whole_discovery_would_with_a_few_calls(hub, org, no_roles) -> None:
    dev = join_account(hub, DEV, "payments-dev", stackset=no_roles)
    body = f'  include: [{WORKLOADS}, "{LEGACY}"]\n  exclude: [{DEV}, "{ANALYTICS}"]\n  regions: [us-east-1]'
    whole = {a.id: a for a in discovered(hub, body).accounts}
    assert set(whole) == {PAYMENTS, LEGACY}
    calls = Calls(hub)
    fleet = discovered(hub, body)
    for account in (PAYMENTS, ANALYTICS, LEGACY, RETIRED, HUB, dev, "999999999999"):
        assert fleet.account(account) == whole.get(account), account
    assert calls.seen["ListAccountsForParent"] == calls.seen["ListChildren"] == 0  # never the whole organisation
    assert calls.total() <= 6 * 4  # DescribeAccount and ListParents up to the root, per account asked
    before = calls.total()
    assert fleet.account(PAYMENTS) == whole[PAYMENTS] and calls.total() == before  # cached


def test_a_failed_rediscovery_serves_the_last_fleet_for_a_while_then_fails_loudly(hub, org) -> None:
    now = [0.0]
    calls = Calls(hub)
    fleet = load_fleet("fleet.yaml", doc(f"  include: [{PROD}]\n  regions: [us-east-1]")).discovering_with(
        hub, clock=lambda: now[0]
    )
    assert len(fleet.accounts) == 2
    calls.fail["ListAccountsForParent"] = "TooManyRequestsException"
    now[0] += 120
    assert len(fleet.accounts) == 2  # stale, logged
    now[0] += 900
    with pytest.raises(FleetDiscoveryError, match=rf"ListAccountsForParent.*{PROD}.*TooManyRequestsException"):
        fleet.accounts  # noqa: B018
    missing = discovered(hub, "  include: [ou-demo-nowhere0]\n  regions: [us-east-1]")
    with pytest.raises(FleetDiscoveryError, match="ou-demo-nowhere0"):  # an OU that is not there is not "none"
        missing.accounts  # noqa: B018


def test_list_regions_with_an_account_id_is_the_management_accounts_only(hub, org) -> None:
    """The local shim answers as AWS does (aws_shims.py item 7)."""
    member = member_session(hub, PAYMENTS).client("account")
    with pytest.raises(ClientError, match="AccessDenied"):
        member.list_regions(AccountId=ANALYTICS)
    with pytest.raises(ClientError, match="ValidationException"):
        hub.client("account").list_regions(AccountId=HUB)
    assert len(member.list_regions(RegionOptStatusContains=["ENABLED", "ENABLED_BY_DEFAULT"])["Regions"]) == 17


# ---- the document ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("role_prefix: opsbot\n", "fleet.yaml:1: no accounts: list them under 'accounts' or discover them with"),
        (doc("  include: [ou-x]\n  regions: [us-east-1]"), "fleet.yaml:4: organization.include[0]: 'ou-x' does not"),
        (doc(f"  include: [{PROD}]"), "fleet.yaml:4: organization: no regions: set 'regions' (a list, or enabled)"),
        (
            doc(f"  include: [{PROD}]\n  regions: [us-east-1]\n  allowed_regions: [us-east-1]"),
            "fleet.yaml:6: organization.allowed_regions: allowed_regions narrows each account's enabled regions",
        ),
        (
            doc(f"  include: [{PROD}, {DEV}]\n  exclude: [{DEV}]\n  regions: [us-east-1]"),
            f"fleet.yaml:4: organization.include[1]: '{DEV}' is also excluded",
        ),
        (
            doc(f"  include: [{PROD}]\n  regions: everywhere"),
            "fleet.yaml:5: organization.regions: 'enabled' was expected",
        ),
        (
            doc(f"  include: [{PROD}]\n  regions: [us-east-1]\n  ous: [{DEV}]"),
            "fleet.yaml:6: organization.ous: unknown",
        ),
        (
            doc("  include: [210987654321]\n  regions: [us-east-1]"),
            "fleet.yaml:4: organization.include[0]: 210987654321 is not of type 'string'",
        ),
    ],
)
def test_document_errors_name_the_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(RulebookError) as err:
        load_fleet("fleet.yaml", text)
    assert str(err.value).startswith(expected), str(err.value)


def test_a_compiled_fleet_keeps_what_to_discover_not_what_was_discovered() -> None:
    """The package-time compiled form (core/compiled.py, the SG handler's cold start) is the document."""
    import json

    from automations.core.fleet import fleet_from_dict, fleet_to_dict

    text = doc(
        f'  include: [{WORKLOADS}, "{LEGACY}"]\n  exclude: [{DEV}]\n  regions: enabled\n  allowed_regions: [us-east-1]'
    )
    fleet = load_fleet("fleet.yaml", text)
    again = fleet_from_dict(json.loads(json.dumps(fleet_to_dict(fleet))))
    assert again == fleet and again.organization == fleet.organization
    assert again.organization is not None and again.organization.regions is None


def test_the_demo_fleet_is_the_demos_organisation(hub, tmp_path) -> None:
    from opsbot.local.demo_rules import DEMO_RULES_DIR

    fleet = load_fleet(DEMO_RULES_DIR / "fleet.yaml")
    local_org.seed_organization(hub, StackSetMirror(fleet, HUB))
    found = fleet.discovering_with(hub).accounts
    assert [(a.name, a.regions) for a in found] == [
        ("payments-prod", ("us-east-1", "eu-west-1")),
        ("analytics-prod", ("us-east-1", "eu-west-1")),
        ("legacy-sandbox", ("us-east-1",)),  # listed: its regions win over discovery's
    ]
    roles = member_session(hub, PAYMENTS).client("iam").list_roles()["Roles"]
    assert {"opsbot-snapshots", "opsbot-security-groups", "opsbot-breach-checks", "opsbot-kill-switches"} <= {
        r["RoleName"] for r in roles
    }


# ---- nothing read until it is used ----------------------------------------------------------------------
def rules_dir(tmp_path: Path, fleet_text: str) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "fleet.yaml").write_text(fleet_text)
    (rules / "tasks.yaml").write_text(TASKS)
    return rules


def test_a_runtime_reads_the_fleet_and_the_organisation_only_when_the_accounts_are_used(hub, org, tmp_path) -> None:
    create_tables(hub)
    text = doc(f"  include: [{WORKLOADS}]\n  regions: [us-east-1]")
    reads: list[str] = []

    def parameter() -> str:  # what a handler would hand in: a (cached) read of the fleet parameter
        reads.append("GetParameter")
        return text

    calls = Calls(hub)
    rt = build_runtime(Settings(LEDGER_TABLE, rules_dir(tmp_path, "accounts: []\n")), hub, fleet_text=parameter)
    from handlers._kill_switches import switchboard

    rt.ledger.get_run("nothing")  # the ledger, the rules and the switchboard: what the Slack endpoint uses
    assert switchboard(rt).target_for_alert("brk-1") is None
    assert reads == [] and calls.total() == 0
    assert rt.broker.fleet.role_arn(PAYMENTS, "snapshots") == f"arn:aws:iam::{PAYMENTS}:role/opsbot-snapshots"
    assert reads and calls.total() == 0  # role names come from the document alone
    assert [a.name for a in rt.fleet.accounts] == ["payments-prod", "analytics-prod"]
    assert calls.seen["ListAccountsForParent"] == 3


# ---- THE test: a new account in a target OU is in the next run ----------------------------------------------
def test_a_new_account_in_a_target_ou_is_covered_by_the_next_run_without_a_redeploy(
    hub, org, stackset, tmp_path, monkeypatch
) -> None:
    """The hub's runtime is built once (a warm container, or a long-lived CLI session): the fleet document
    and the environment never change. An account joins Workloads/Dev, its roles come from the StackSet's
    auto-deployment; the next scheduled run plans its units and snapshots its volume."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # the discovery cache's clock
    create_tables(hub)
    text = doc(f"  include: [{WORKLOADS}]\n  regions: [us-east-1, eu-west-1]")
    rt = build_runtime(Settings(LEDGER_TABLE, rules_dir(tmp_path, text)), hub)

    def daily_run(day: datetime) -> tuple[Any, dict[str, Any]]:
        plan = plan_run(rt.ledger, rt.fleet, rt.tasks, "snapshot-daily", Trigger("schedule"), day)
        return plan, run_now(plan, rt.tasks, rt.broker, rt.ledger, None, rules=rt.rules)

    first_day = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    plan, result = daily_run(first_day)
    assert {u.account for u in plan.units} == {PAYMENTS, ANALYTICS} and result["status"] == "SUCCEEDED"

    new = join_account(hub, DEV, "payments-dev", stackset=stackset)
    member = member_session(hub, new)
    assert "opsbot-snapshots" in {r["RoleName"] for r in member.client("iam").list_roles()["Roles"]}
    ec2: Any = member.client("ec2", region_name="eu-west-1")
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    volume = ec2.create_volume(
        AvailabilityZone=zone,
        Size=10,
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "OpsTaskList", "Value": "snapshot-daily"}]}],
    )["VolumeId"]

    now[0] += 61  # the next day's run comes long after the minute the organisation is trusted for
    plan, result = daily_run(first_day + timedelta(days=1))
    assert {(u.account, u.region) for u in plan.units if u.account == new} == {(new, "us-east-1"), (new, "eu-west-1")}
    assert result["status"] == "SUCCEEDED" and result["units"]["total"] == 6
    units = {(u["account"], u["region"]): u for u in rt.ledger.units(result["run_id"])}
    assert units[(new, "eu-west-1")]["status"] == "SUCCEEDED"
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume]}])
    assert [s["Tags"] for s in snapshots["Snapshots"] if {"Key": "opsbot:task", "Value": "snapshot-daily"} in s["Tags"]]


# ---- the StackSet --------------------------------------------------------------------------------------------
def test_the_stackset_deploys_the_member_template_to_the_target_ous_with_its_parameters() -> None:
    """template-stackset.yaml: service-managed, auto-deployment, the member template's parameters passed
    through with the same constraints (kept in step with template-member.yaml)."""
    from opsbot.cfn import PROJECT_ROOT, load_template

    stackset = load_template(PROJECT_ROOT / "template-stackset.yaml")
    member = load_template(PROJECT_ROOT / "template-member.yaml")
    (resource,) = stackset["Resources"].values()
    props = resource["Properties"]
    assert resource["Type"] == "AWS::CloudFormation::StackSet" and props["PermissionModel"] == "SERVICE_MANAGED"
    assert props["AutoDeployment"] == {"Enabled": True, "RetainStacksOnAccountRemoval": False}
    assert props["Capabilities"] == ["CAPABILITY_NAMED_IAM"] and props["CallAs"] == {"Ref": "CallAs"}
    assert stackset["Parameters"]["CallAs"]["AllowedValues"] == ["SELF", "DELEGATED_ADMIN"]
    assert props["OperationPreferences"]["RegionConcurrencyType"] == "PARALLEL"
    assert {"FailureTolerancePercentage", "MaxConcurrentPercentage"} <= set(props["OperationPreferences"])
    (group,) = props["StackInstancesGroup"]
    assert group["DeploymentTargets"] == {"OrganizationalUnitIds": {"Ref": "OrganizationalUnitIds"}}
    passed = {p["ParameterKey"]: p["ParameterValue"] for p in props["Parameters"]}
    assert set(passed) == set(member["Parameters"]) - {"AlarmTopicArn"}  # a topic per account: not one value
    constraints = ("Type", "Default", "AllowedPattern", "AllowedValues", "MinValue", "MaxValue", "MinLength", "NoEcho")
    for name, value in passed.items():
        mine, theirs = stackset["Parameters"][name], member["Parameters"][name]
        assert {k: mine.get(k) for k in constraints} == {k: theirs.get(k) for k in constraints}, name
        expected = {"Fn::Join": [",", {"Ref": name}]} if theirs["Type"] == "CommaDelimitedList" else {"Ref": name}
        assert value == expected, name
