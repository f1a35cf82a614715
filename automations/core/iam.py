"""What each role may do, declared next to the code that needs it.

A ``Grant`` is one IAM action on one resource of the hub template, named by its logical id (or by the
parameter its ARN is built from); ``"*"`` is for actions that take no resource ARN. Kinds declare the
actions they need in member accounts (``member_actions``) and in the hub (``hub_grants``); each handler
module declares ``PERMISSIONS``: its functions' grants, composed from the bundles below and its kinds'.
``tests/test_permissions.py`` compares these with template.yaml and template-member.yaml both ways, so
the declarations here are the only source of truth for what a role may do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Grant:
    action: str
    resource: str  # a logical id or parameter of template.yaml, "<id>/index/by-time" for the index, or "*"

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


def grants(resource: str, *actions: str) -> frozenset[Grant]:
    return frozenset(Grant(action, resource) for action in actions)


def actions_of(found: Iterable[Grant]) -> frozenset[str]:
    return frozenset(g.action for g in found)


LEDGER, LEDGER_INDEX, IDEMPOTENCY = "LedgerTable", "LedgerTable/index/by-time", "IdempotencyTable"
PENDING_INDEX = "LedgerTable/index/pending"

# ---- plumbing bundles ------------------------------------------------------------------------------
# Powertools Idempotency's DynamoDB persistence layer (get, put-if-absent, update, delete on failure).
IDEMPOTENCY_STORE = grants(
    IDEMPOTENCY, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"
)
# The fleet document (SSM parameter, re-read every few minutes so new accounts need no redeploy).
READ_FLEET = grants("FleetParameter", "ssm:GetParameter")
# The fleet's accounts from AWS Organizations (fleet document ``organization``; core/organization.py), in
# the organisation template.yaml's MemberOrganizationId names: only where the accounts are used, not
# where the fleet is only carried (a broker needs the role names, never the organisation).
DISCOVER_FLEET = grants(
    "MemberOrganizationId",
    "organizations:ListAccountsForParent",
    "organizations:ListChildren",
    "organizations:DescribeAccount",
    "organizations:ListParents",
    "account:ListRegions",
)


def assume_member_role(*capabilities: str) -> frozenset[Grant]:
    """Assume these capabilities' member roles (``<role_prefix>-<capability>``) in any member account; the
    member role's trust (ExternalId, this hub role's path) is the second lock."""
    return frozenset(Grant("sts:AssumeRole", f"MemberRole/{c}") for c in capabilities)


# SNS (an encrypted topic) and Slack (the bot token in Secrets Manager).
NOTIFY = (
    grants("AlertTopic", "sns:Publish")
    | grants("AlertTopicKey", "kms:GenerateDataKey", "kms:Decrypt")
    | grants("SlackBotTokenSecret", "secretsmanager:GetSecretValue")
)

# Ledger use, by step.
# A conditional put, read back when its condition fails (its own earlier attempt, reply lost?).
LEDGER_OPEN_RUN = grants(LEDGER, "dynamodb:PutItem", "dynamodb:GetItem")
LEDGER_RECORD_UNIT = grants(LEDGER, "dynamodb:PutItem", "dynamodb:BatchWriteItem")
# Close reads the run, its units (and actions, for the announcement), closes a dead unit's row, and closes
# the run conditionally with its announcement (one transaction: UpdateItem + PutItem).
LEDGER_CLOSE_RUN = grants(LEDGER, "dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:PutItem")
# The slot lock of a task run: taken at plan (read, conditional put), released at close.
SLOT_LOCK = grants(LEDGER, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem")
LEDGER_RECORD_EVENT = grants(LEDGER, "dynamodb:PutItem")
# Lists kept in the by-time index: open alerts by id, flipped switches.
LEDGER_LISTS = grants(LEDGER_INDEX, "dynamodb:Query")
# The sparse pending index: RUNNING runs by deadline, undelivered announcements, open breach alerts.
PENDING_LIST = grants(PENDING_INDEX, "dynamodb:Query")
# Unit manifests and the Distributed Map's results (ManifestBucket): Plan writes, Close reads.
MANIFEST_WRITE = grants("ManifestBucket", "s3:PutObject")
MANIFEST_READ = grants("ManifestBucket", "s3:GetObject")
# The outbox: an announcement written (in a transaction with its change, or alone), claimed, marked sent.
OUTBOX = grants(LEDGER, "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem")


@dataclass(frozen=True)
class Capability:
    """A capability's side of the member account: the policy it owns there and the actions it needs."""

    name: str
    member_policy: str  # its PolicyName in template-member.yaml
    member_actions: frozenset[str]


def member_actions_of(kinds: Iterable[object], *extra: Iterable[str]) -> frozenset[str]:
    """The union of the kinds' ``member_actions`` and of any other needs of the capability."""
    found: set[str] = set()
    for kind in kinds:
        found |= getattr(kind, "member_actions", frozenset())
    for more in extra:
        found |= set(more)
    return frozenset(found)
