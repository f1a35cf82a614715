"""The local AWS as an organisation: the hub is its management account, the members are accounts
created through Organizations and moved into OUs, and the member roles arrive as a service-managed
StackSet with auto-deployment would bring them (template-stackset.yaml).

    Root (r-....)                      the hub, 123456789012: the management account
    |-- Workloads   ou-demo-workload
    |   |-- Prod    ou-demo-prodwkld   payments-prod 210987654321, analytics-prod 345678901234
    |   `-- Dev     ou-demo-devwklds   (empty: an account joining here is picked up by the next plan)
    `-- Sandbox     ou-demo-sandboxs   legacy-sandbox 456789012345, retired-sandbox 567890123456 (closed)

The demo's fleet document (opsbot/local/rules/fleet.yaml) includes Workloads and Sandbox. moto picks
random ids; the local shim lets the seed name them (aws_shims.py item 8), so they are the same on every
seed. ``join_account`` is what happens on AWS when someone creates an account in a target OU: the account
exists, sits in its OU, and the StackSet's auto-deployment creates the member roles in it. Nothing is
registered with opsbot: the next plan discovers it.

legacy-sandbox already had a member stack for another hub when it joined (``trusting``): its roles trust
that hub, so opsbot's AssumeRole is refused there (the demo's denied account; seed_roles.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from automations.core.fleet import Fleet, MemberAccount
from automations.core.organization import parents_up_to_root

ORGANIZATION_ACCESS_ROLE = "OrganizationAccountAccessRole"  # Organizations creates it in every account it creates
LOCAL_ID_TAG = "opsbot-local:id"  # aws_shims.py item 8: the id the seed wants instead of moto's random one


@dataclass(frozen=True)
class LocalOU:
    id: str
    name: str
    parent: str | None  # None: the root


@dataclass(frozen=True)
class LocalAccount:
    id: str
    name: str
    ou: str
    denied: bool = False  # joined with another hub's member stack: opsbot is refused there
    closed: bool = False  # closed after joining: SUSPENDED, never in the fleet


WORKLOADS, PROD, DEV, SANDBOX = "ou-demo-workload", "ou-demo-prodwkld", "ou-demo-devwklds", "ou-demo-sandboxs"
OUS = (
    LocalOU(WORKLOADS, "Workloads", None),
    LocalOU(PROD, "Prod", WORKLOADS),
    LocalOU(DEV, "Dev", WORKLOADS),
    LocalOU(SANDBOX, "Sandbox", None),
)
ACCOUNTS = (
    LocalAccount("210987654321", "payments-prod", PROD),
    LocalAccount("345678901234", "analytics-prod", PROD),
    LocalAccount("456789012345", "legacy-sandbox", SANDBOX, denied=True),
    LocalAccount("567890123456", "retired-sandbox", SANDBOX, closed=True),
)
# What the demo's StackSet deploys to (its DeploymentTargets), with auto-deployment: the fleet's OUs.
STACKSET_TARGETS = (WORKLOADS, SANDBOX)


@dataclass(frozen=True)
class StackSetMirror:
    """What the member StackSet deploys with: its parameters (from the fleet and the hub) and target OUs."""

    fleet: Fleet  # role_prefix, external_id
    hub_account: str
    region: str = "us-east-1"  # HubRegion: the stack instance that creates the (global) roles
    targets: tuple[str, ...] = STACKSET_TARGETS
    template: Path | None = None  # template-member.yaml by default (tests pass edited copies)

    def deploy(self, base: boto3.Session, account_id: str, name: str, *, trusting: str | None = None) -> list[str]:
        """The member roles, in ``account_id`` (as the StackSet's stack instance in ``region`` creates them)."""
        from opsbot.local.iam_roles import MEMBER_TEMPLATE
        from opsbot.local.seed_roles import OTHER_HUB_ACCOUNT, create_member_roles

        member = member_session(base, account_id)
        account = MemberAccount(account_id, name, (self.region,))
        return create_member_roles(
            member,
            self.fleet,
            account,
            self.hub_account,
            denied=trusting == OTHER_HUB_ACCOUNT,
            template=self.template or MEMBER_TEMPLATE,
        )


@dataclass
class SeededOrganization:
    root: str
    joined: list[str] = field(default_factory=list)  # the accounts joined (their roles from the StackSet mirror)
    lines: list[str] = field(default_factory=list)


def member_session(base: boto3.Session, account_id: str) -> boto3.Session:
    """A session in a member account through the role Organizations created there."""
    from opsbot.local.sessions import assumed_session

    return assumed_session(base, f"arn:aws:iam::{account_id}:role/{ORGANIZATION_ACCESS_ROLE}", "opsbot-local-stackset")


def _pages(client: Any, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
    return [item for page in client.get_paginator(operation).paginate(**params) for item in page[key]]


def create_organization(base: boto3.Session) -> str:
    """The hub's organisation (all features), made once; returns the root id."""
    org: Any = base.client("organizations")
    with contextlib.suppress(org.exceptions.AlreadyInOrganizationException):
        org.create_organization(FeatureSet="ALL")
    return str(org.list_roots()["Roots"][0]["Id"])


def create_ou(base: boto3.Session, parent: str, name: str, ou_id: str | None = None) -> str:
    """An OU under ``parent`` (the one already there by that name, on a second seed)."""
    org: Any = base.client("organizations")
    for ou in _pages(org, "list_organizational_units_for_parent", "OrganizationalUnits", ParentId=parent):
        if ou["Name"] == name:
            return str(ou["Id"])
    tags = [{"Key": LOCAL_ID_TAG, "Value": ou_id}] if ou_id else []
    made = org.create_organizational_unit(ParentId=parent, Name=name, Tags=tags)["OrganizationalUnit"]
    return str(made["Id"])


def join_account(
    base: boto3.Session,
    ou: str,
    name: str,
    *,
    stackset: StackSetMirror,
    account_id: str | None = None,
    trusting: str | None = None,
) -> str:
    """Create an account through Organizations (the management account's ``base`` session), move it into
    ``ou``, and let the StackSet's auto-deployment create its member roles if ``ou`` is one of its targets
    or under one. ``account_id``: the id to create it with (local only); ``trusting``: the hub account a
    member stack already there trusts instead (the StackSet's instance then leaves those roles alone).
    Returns the account id."""
    org: Any = base.client("organizations")
    existing = {a["Name"]: a for a in _pages(org, "list_accounts", "Accounts")}
    if name in existing:  # a second seed: the account is there, only its place and roles are made again
        new_id = str(existing[name]["Id"])
    else:
        tags = [{"Key": LOCAL_ID_TAG, "Value": account_id}] if account_id else []
        status = org.create_account(AccountName=name, Email=f"aws+{name}@opsbot.local", Tags=tags)
        new_id = str(status["CreateAccountStatus"]["AccountId"])
    parent = org.list_parents(ChildId=new_id)["Parents"][0]["Id"]
    if parent != ou:
        org.move_account(AccountId=new_id, SourceParentId=parent, DestinationParentId=ou)
    if {ou, *parents_up_to_root(org, ou)} & set(stackset.targets):
        stackset.deploy(base, new_id, name, trusting=trusting)
    return new_id


def seed_organization(
    base: boto3.Session,
    stackset: StackSetMirror,
    ous: Iterable[LocalOU] = OUS,
    accounts: Iterable[LocalAccount] = ACCOUNTS,
) -> SeededOrganization:
    """The demo's organisation: OUs, and each account joined to its OU (its roles from the StackSet)."""
    from opsbot.local.seed_roles import OTHER_HUB_ACCOUNT

    root = create_organization(base)
    seeded = SeededOrganization(root)
    made: dict[str, str] = {}
    for ou in ous:
        made[ou.id] = create_ou(base, made[ou.parent] if ou.parent else root, ou.name, ou.id)
    org: Any = base.client("organizations")
    for account in accounts:
        joined = join_account(
            base,
            made[account.ou],
            account.name,
            stackset=stackset,
            account_id=account.id,
            trusting=OTHER_HUB_ACCOUNT if account.denied else None,
        )
        seeded.joined.append(joined)
        if account.closed:
            with contextlib.suppress(org.exceptions.AccountAlreadyClosedException):
                org.close_account(AccountId=joined)
    names = {ou.id: ou.name for ou in ous}
    seeded.lines.append(
        f"organisation: hub {stackset.hub_account} manages {len(made)} OUs ({', '.join(names.values())}) and "
        f"{len(seeded.joined)} accounts; the member StackSet (auto-deployment) targets "
        f"{', '.join(names.get(t, t) for t in stackset.targets)}"
    )
    return seeded
