"""What the operator's role (template.yaml OperatorRole) may do: everything the `opsbot` CLI does on AWS.

Composed, like each handler's ``PERMISSIONS``, from the plumbing's bundles and the kinds' own grants;
tests/test_permissions.py holds the template to it.
"""

from __future__ import annotations

from automations import catalog
from automations.core import iam
from automations.kill_switches.pause import PAUSE_GRANTS

# The CLI runs tasks and checks, lists runs and alerts, flips switches: the whole ledger, and its lists.
LEDGER_ALL = iam.grants(
    iam.LEDGER,
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "dynamodb:BatchWriteItem",
)
KIND_GRANTS = frozenset(
    g for registry in (catalog.TASK_KINDS, catalog.CHECK_KINDS) for kind in registry for g in kind.hub_grants
)
OPERATOR = (
    LEDGER_ALL
    | iam.LEDGER_LISTS
    | iam.PENDING_LIST
    | iam.READ_FLEET
    | iam.DISCOVER_FLEET
    | iam.MANIFEST_WRITE
    | iam.MANIFEST_READ
    | iam.NOTIFY
    | iam.assume_member_role(*(c.name for c in catalog.CAPABILITIES))
    | PAUSE_GRANTS
    | KIND_GRANTS
)
