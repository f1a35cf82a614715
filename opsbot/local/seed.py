"""Seed the local AWS with a realistic fleet: a hub and member accounts in several regions.

The hub is the management account of a local organisation (opsbot/local/organization.py): the members
are created through Organizations into OUs, their roles arrive as the member StackSet would deploy them,
and the demo's fleet document names OUs, so the fleet seeded here is the one the hub discovers.

IAM (opsbot/local/seed_roles.py): every member account gets the roles of template-member.yaml, and
the hub those of template.yaml (one per function, the operator's, ...), with the policies and trust
parsed from the templates; the CLI and each handler then run as their own role, so a call the code
makes but the template forgot fails locally with AccessDenied, as it would on AWS. The denied account's
member stack trusts another hub, so the hub's AssumeRole into it is refused.
Per member region: tagged and untagged instances with volumes, tagged and untagged volumes, and
pre-existing snapshots: opsbot's own for the task, people's, and one registered to an AMI.

``create_member_role`` / ``create_operator`` below are the older, looser identities (action names on
every resource, an IAM user for the hub) that in-process tests still use with moto's own IAM check.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from automations.core.fleet import Fleet
from automations.core.kinds import TaskDefinition
from automations.core.rulebook import DEFAULT_RULES_DIR
from automations.core.schedules import slot_label
from automations.core.tasks import load_tasks
from opsbot.cfn import PROJECT_ROOT, load_template
from opsbot.local.iam_roles import HUB_TEMPLATE, MEMBER_TEMPLATE
from opsbot.local.organization import StackSetMirror, seed_organization
from opsbot.local.seed_breaches import seed_breaches
from opsbot.local.seed_killswitch import seed_killswitch
from opsbot.local.seed_roles import create_hub_roles, create_member_roles
from opsbot.local.seed_security import seed_security
from opsbot.permissions import OPERATOR

DENIED_ACCOUNT_NAME = "legacy-sandbox"
OPERATOR_USER = "opsbot-operator"


@dataclass
class SeedReport:
    instances: int = 0
    volumes: int = 0
    snapshots: int = 0
    images: int = 0
    operator_keys: dict[str, str] = field(default_factory=dict)
    function_keys: dict[str, dict[str, str]] = field(default_factory=dict)  # handler -> role session
    security: dict[str, Any] = field(default_factory=dict)
    killswitch: dict[str, Any] = field(default_factory=dict)
    breaches: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


MEMBER_ROLE_PREFIX = "${RolePrefix}-"


def member_role_actions() -> dict[str, list[str]]:
    """capability -> every action template-member.yaml grants its role (``${RolePrefix}-<capability>``)."""
    template = load_template(PROJECT_ROOT / "template-member.yaml")
    roles: dict[str, list[str]] = {}
    for resource in template["Resources"].values():
        name = resource["Properties"].get("RoleName") if resource["Type"] == "AWS::IAM::Role" else None
        if not (isinstance(name, dict) and str(name.get("Fn::Sub", "")).startswith(MEMBER_ROLE_PREFIX)):
            continue
        actions: set[str] = set()
        for policy in resource["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                if statement["Effect"] != "Allow":
                    continue
                found = statement["Action"]
                actions.update([found] if isinstance(found, str) else found)
        roles[name["Fn::Sub"].removeprefix(MEMBER_ROLE_PREFIX)] = sorted(actions)
    return roles


def _policy(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def _member_session(base: boto3.Session, fleet: Fleet, account: str) -> boto3.Session:
    from opsbot.local.sessions import assumed_session

    return assumed_session(
        base, fleet.role_arn(account, "seed"), "opsbot-seed", external_id=fleet.external_id or "seed"
    )


def create_member_role(session: boto3.Session, fleet: Fleet, hub_account: str) -> None:
    """For in-process tests: one role per capability granting its template actions on every resource.
    The local AWS creates template-member.yaml's roles as they are instead (seed_roles.py)."""
    iam = session.client("iam")
    trust = _policy(
        [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{hub_account}:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": fleet.external_id or ""}},
            }
        ]
    )
    for capability, actions in member_role_actions().items():
        name = fleet.role_name(capability)
        with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
        iam.put_role_policy(
            RoleName=name,
            PolicyName=f"opsbot-{capability}",
            PolicyDocument=_policy([{"Effect": "Allow", "Action": actions, "Resource": "*"}]),
        )


# For in-process tests only (the local AWS runs the CLI and each handler as their template roles): this
# user also stands in for the Slack endpoint, and without the local IAM shim (aws_shims.py item 6) moto
# names a transaction's action after the API (dynamodb:TransactWriteItems) where AWS checks each item's.
LOCAL_HUB_EXTRAS = frozenset({"sqs:SendMessage", "dynamodb:TransactWriteItems"})


def hub_actions() -> list[str]:
    """What the operator role may do in the hub (opsbot/permissions.py), as action names."""
    return sorted({g.action for g in OPERATOR if g.action != "sts:AssumeRole"} | LOCAL_HUB_EXTRAS)


def create_operator(session: boto3.Session, fleet: Fleet, allowed_accounts: list[str]) -> dict[str, str]:
    """An IAM user holding the operator's permissions (opsbot/permissions.py) on every resource: the
    hub identity of in-process tests. The local AWS uses template.yaml's OperatorRole instead."""
    iam = session.client("iam")
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_user(UserName=OPERATOR_USER)
    iam.put_user_policy(
        UserName=OPERATOR_USER,
        PolicyName="opsbot-hub",
        PolicyDocument=_policy(
            [
                {
                    "Effect": "Allow",
                    "Action": "sts:AssumeRole",
                    "Resource": [fleet.role_arn(a, c) for a in allowed_accounts for c in member_role_actions()],
                },
                {"Effect": "Allow", "Action": hub_actions(), "Resource": "*"},
            ]
        ),
    )
    key = iam.create_access_key(UserName=OPERATOR_USER)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def _tags(**tags: str) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def seed_region(
    session: boto3.Session,
    account_name: str,
    region: str,
    task: str,
    report: SeedReport,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    ec2: Any = session.client("ec2", region_name=region)
    image_id = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    env = "prod" if account_name.endswith("prod") else "dev"

    def instance(name: str, **tags: str) -> dict[str, Any]:
        spec = {"ResourceType": "instance", "Tags": _tags(Name=name, Environment=env, **tags)}
        inst = ec2.run_instances(
            ImageId=image_id,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            TagSpecifications=[spec],
            Placement={"AvailabilityZone": zone},
        )["Instances"][0]
        report.instances += 1
        return inst

    def volume(name: str, size: int = 20, **tags: str) -> str:
        spec = {"ResourceType": "volume", "Tags": _tags(Name=name, Environment=env, **tags)}
        report.volumes += 1
        vid: str = ec2.create_volume(AvailabilityZone=zone, Size=size, VolumeType="gp3", TagSpecifications=[spec])[
            "VolumeId"
        ]
        return vid

    web = instance("web-1", OpsTaskList=task, CostCenter="cc-1042")
    data = volume("web-1-data", 100)
    ec2.attach_volume(VolumeId=data, InstanceId=web["InstanceId"], Device="/dev/sdf")
    instance("db-1", OpsTaskList=f"{task.title()} snapshot-weekly", CostCenter="cc-2001")
    instance("batch-1")  # not opted in
    instance("etl-1", OpsTaskList="snapshot-dialy")  # a typo: reported as an unknown task, not a crash
    volume("logs-archive", 500, OpsTaskList=f"{task},snapshot-weekly")
    volume("scratch", 50)  # not opted in

    # An older opsbot snapshot of this volume registered as an AMI's root: retention must keep it.
    # (moto's RegisterImage makes its own backing snapshot, so that one is labelled as opsbot's.)
    image = ec2.register_image(
        Name=f"web-1-golden-{region}",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100}}],
    )
    backing = ec2.describe_images(ImageIds=[image["ImageId"]])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]
    ec2.create_tags(
        Resources=[backing["SnapshotId"]],
        Tags=_tags(
            **{
                "opsbot:task": task,
                "opsbot:slot": slot_label((now() - timedelta(days=9)).replace(hour=3, minute=0)),
                "opsbot:volume-id": data,
                "opsbot:run-id": "seed",
            }
        ),
    )
    # Then eight earlier opsbot snapshots of this task, and one that a person took by hand.
    # Retention may thin opsbot's only, and never the AMI's.
    history = [backing["SnapshotId"]]
    for days_ago in range(8, 0, -1):
        slot = slot_label((now() - timedelta(days=days_ago)).replace(hour=3, minute=0))
        snap = ec2.create_snapshot(
            VolumeId=data,
            Description=f"opsbot {task}: {data} slot {slot}",
            TagSpecifications=[
                {
                    "ResourceType": "snapshot",
                    "Tags": _tags(
                        **{
                            "opsbot:task": task,
                            "opsbot:slot": slot,
                            "opsbot:volume-id": data,
                            "opsbot:run-id": "seed",
                        }
                    ),
                }
            ],
        )
        history.append(snap["SnapshotId"])
    report.snapshots += len(history)
    report.images += 1
    ec2.create_snapshot(
        VolumeId=data,
        Description="before kernel upgrade (by hand)",
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": _tags(Name="manual-before-upgrade")}],
    )
    report.snapshots += 1
    report.lines.append(
        f"{account_name}/{region}: 4 instances, 2 loose volumes, {len(history) + 1} snapshots, "
        f"AMI {image['ImageId']} on {backing['SnapshotId']}"
    )


def seed_dr_keys(members: dict[str, boto3.Session], tasks: dict[str, TaskDefinition]) -> list[str]:
    """The KMS key each DR copy task names (an alias), in its DR region of every account it copies into."""
    made = []
    for task in tasks.values():
        if task.kind != "ebs-snapshot-copy" or not task.options.kms_key_id.startswith("alias/"):
            continue
        for account in members:
            target = task.options.account or account
            if target not in members:
                continue
            kms: Any = members[target].client("kms", region_name=task.options.region)
            if any(a["AliasName"] == task.options.kms_key_id for a in kms.list_aliases()["Aliases"]):
                continue
            key = kms.create_key(Description=f"opsbot DR copies ({task.name})")["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName=task.options.kms_key_id, TargetKeyId=key)
            made.append(f"{task.options.kms_key_id} in {target}/{task.options.region}")
    return made


def seed_fleet(
    base: boto3.Session,
    fleet: Fleet,
    task: str = "snapshot-daily",
    *,
    hub_template: Path = HUB_TEMPLATE,
    member_template: Path = MEMBER_TEMPLATE,
) -> SeedReport:
    """Build the fleet. ``base`` uses the bootstrap keys, i.e. moto's default account (the hub).
    The templates' roles come from ``hub_template`` and ``member_template`` (tests pass edited copies)."""
    hub_account = base.client("sts").get_caller_identity()["Account"]
    report = SeedReport()
    joined: set[str] = set()
    if fleet.organization is not None:
        # The organisation first (accounts in OUs, their roles from the StackSet mirror); then the fleet
        # is what the hub discovers in it, as on AWS.
        organization = seed_organization(base, StackSetMirror(fleet, hub_account, template=member_template))
        report.lines.extend(organization.lines)
        joined.update(organization.joined)
        fleet = fleet.discovering_with(base)
    allowed = []
    members: dict[str, boto3.Session] = {}
    for account in fleet.accounts:
        member = members[account.id] = _member_session(base, fleet, account.id)
        denied = account.name == DENIED_ACCOUNT_NAME
        if account.id not in joined:  # a listed account outside the organisation: its member stack by hand
            create_member_roles(member, fleet, account, hub_account, denied=denied, template=member_template)
        if not denied:
            allowed.append(account.id)
        for region in account.regions:
            seed_region(member, account.name, region, task, report)
    dr = seed_dr_keys(members, load_tasks(DEFAULT_RULES_DIR / "tasks.yaml"))
    report.lines.append(f"DR copy keys: {'; '.join(dr) or 'none'}")
    report.security = seed_security(base, members, {a.id: a.regions for a in fleet.accounts})
    report.lines.append(report.security["line"])
    first = fleet.accounts[0].id
    report.killswitch = seed_killswitch(base, members[first], first)
    report.lines.append(report.killswitch["line"])
    report.breaches = seed_breaches(members, fleet)
    report.lines.append(report.breaches["line"])
    identities = create_hub_roles(base, fleet, hub_template)
    report.operator_keys = identities.operator
    report.function_keys = identities.functions
    report.lines.append(
        f"hub {hub_account}: {len(identities.roles)} roles from template.yaml ({len(identities.functions)} "
        f"functions, the operator's); their member roles trust the hub in {len(allowed)} of "
        f"{len(fleet.accounts)} accounts"
    )
    return report
