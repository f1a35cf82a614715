"""The ledger: every run, unit of work and action opsbot takes, recorded in one DynamoDB table.

Single-table layout (pk / sk):
  RUN#<run_id> / RUN                               the run: task, trigger, slot, scope, status, counts
  RUN#<run_id> / UNIT#<account>#<region>           one unit of work (task, account, region)
  RUN#<run_id> / ACTION#<account>#<region>#<res>#<action>   one action on one resource
An event-driven remediation is one item (RUN#sg-<event id> / RUN) with its actions inside.
GSI ``by-time`` (gsi1pk = "RUN", gsi1sk = started_at#run_id) lists recent runs newest first.
Every item carries ``expires_at`` (epoch seconds) for DynamoDB TTL.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from automations.core.clock import iso, utcnow

RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
PARTIAL = "PARTIAL"
FAILED = "FAILED"
RUNS_INDEX = "by-time"
RUN_LIST_KEY = "RUN"  # gsi1pk of task runs in the by-time index; check runs use their own key
# The sparse "pending" index lists what is not finished: RUNNING runs (by deadline, for the reaper) and
# undelivered announcements (automations.core.outbox). Items leave it when they finish.
PENDING_INDEX = "pending"
OPEN_RUNS = "RUN"
CONDITION_FAILED = ("ConditionalCheckFailedException", "TransactionCanceledException")


def new_token() -> str:
    """A request token: written with a conditional change, so a retry whose condition fails because the
    first attempt was applied (its reply lost) can recognise its own success by reading it back."""
    return secrets.token_hex(8)


def plain(value: Any) -> Any:
    """DynamoDB returns Decimal; callers want ints (counts) and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def query_all(table: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item a Query matches, across pages (DynamoDB returns at most 1 MB a page), as plain values."""
    while True:
        resp = table.query(**kwargs)
        yield from (plain(i) for i in resp["Items"])
        if "LastEvaluatedKey" not in resp:
            return
        kwargs = {**kwargs, "ExclusiveStartKey": resp["LastEvaluatedKey"]}


def to_dynamo(value: Any) -> Any:
    """DynamoDB takes no float and no None attribute: Decimal (4 places is plenty for percents and
    seconds), and None values are left out."""
    if isinstance(value, float):
        return Decimal(str(round(value, 4)))
    if isinstance(value, Mapping):
        return {k: to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [to_dynamo(v) for v in value]
    return value


def transact(table: Any, *operations: dict[str, Any]) -> None:
    """Several writes to the table, all or none (TransactWriteItems). Each operation is {"Put": {...}} or
    {"Update": {...}} with plain values: the resource's client serialises them, as for the table."""
    items = []
    for op in operations:
        ((kind, spec),) = op.items()
        spec = {**spec, "TableName": table.name}
        for field_ in ("Item", "Key", "ExpressionAttributeValues"):
            if field_ in spec:
                spec[field_] = to_dynamo(spec[field_])
        items.append({kind: spec})
    table.meta.client.transact_write_items(TransactItems=items)


@dataclass
class Action:
    """One thing done (or deliberately not done) to one resource."""

    account: str
    region: str
    resource: str
    action: str
    outcome: str  # e.g. created, skipped-existing, deleted, kept-ami, failed, would-create, would-delete
    error: str | None = None
    created_ids: list[str] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ledger:
    table: Any  # boto3 DynamoDB Table resource
    ttl_days: int = 90
    clock: Callable[[], datetime] = utcnow

    def _expiry(self) -> int:
        return int((self.clock() + timedelta(days=self.ttl_days)).timestamp())

    # ---- conditional writes that recognise their own success ---------------------------------
    def transact(self, *operations: dict[str, Any]) -> None:
        transact(self.table, *operations)

    # ---- runs -------------------------------------------------------------------------
    def open_run(self, run_id: str, deadline: datetime, **attrs: Any) -> dict[str, Any]:
        """Open a run, listed as pending until it closes (the reaper closes it if ``deadline`` passes)."""
        started = iso(self.clock())
        item = {
            "pk": f"RUN#{run_id}",
            "sk": "RUN",
            "run_id": run_id,
            "status": RUNNING,
            "started_at": started,
            "deadline": iso(deadline),
            "gsi1pk": RUN_LIST_KEY,
            "gsi1sk": f"{started}#{run_id}",
            "pending_pk": OPEN_RUNS,
            "pending_sk": f"{iso(deadline)}#{run_id}",
            "expires_at": self._expiry(),
            "token": new_token(),
            **attrs,
        }
        try:
            self.table.put_item(Item=to_dynamo(item), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            stored = self.get_run(run_id) if exc.response["Error"]["Code"] in CONDITION_FAILED else None
            if stored is None or stored.get("token") != item["token"]:
                raise
        return item

    def close_run(self, run_id: str, status: str, *, also: list[dict[str, Any]] | None = None, **attrs: Any) -> bool:
        """Close a RUNNING run, together with ``also`` (e.g. its announcement) in one transaction.

        False when another Close got there first; True when this call closed it, including when an
        earlier attempt of this call did and its reply was lost."""
        token = new_token()
        names = {"#status": "status"}
        values: dict[str, Any] = {
            ":status": status,
            ":ended": iso(self.clock()),
            ":running": RUNNING,
            ":token": token,
        }
        sets = ["#status = :status", "ended_at = :ended", "closed_token = :token"]
        for i, (key, value) in enumerate((k, v) for k, v in attrs.items() if v is not None):
            names[f"#a{i}"] = key
            values[f":a{i}"] = value
            sets.append(f"#a{i} = :a{i}")
        update = {
            "Key": {"pk": f"RUN#{run_id}", "sk": "RUN"},
            "UpdateExpression": "SET " + ", ".join(sets) + " REMOVE pending_pk, pending_sk",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ConditionExpression": "attribute_exists(pk) AND #status = :running",
        }
        try:
            if also:
                self.transact({"Update": update}, *also)
            else:
                self.table.update_item(**{**update, "ExpressionAttributeValues": to_dynamo(values)})
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in CONDITION_FAILED:
                raise
            return (self.get_run(run_id) or {}).get("closed_token") == token
        return True

    def open_runs(self, due_before: datetime | None = None) -> list[dict[str, Any]]:
        """RUNNING runs (tasks and checks), by deadline; only those past ``due_before`` when given."""
        condition: Any = Key("pending_pk").eq(OPEN_RUNS)
        if due_before is not None:
            condition = condition & Key("pending_sk").lt(iso(due_before))
        return list(query_all(self.table, IndexName=PENDING_INDEX, KeyConditionExpression=condition))

    def record_event(self, run_id: str, attrs: dict[str, Any]) -> None:
        """An event-driven action as one item (one write): the run and its actions together.

        Listed with the scheduled runs; a redelivered event rewrites the same item."""
        self.table.put_item(Item=to_dynamo(self.event_item(run_id, attrs)))

    def event_item(self, run_id: str, attrs: dict[str, Any]) -> dict[str, Any]:
        now = iso(self.clock())
        item = {
            "pk": f"RUN#{run_id}",
            "sk": "RUN",
            "run_id": run_id,
            "started_at": now,
            "ended_at": now,
            "gsi1pk": RUN_LIST_KEY,
            "gsi1sk": f"{now}#{run_id}",
            "expires_at": self._expiry(),
            **attrs,
        }
        return item

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": f"RUN#{run_id}", "sk": "RUN"}).get("Item")
        return plain(item) if item else None

    def recent_runs(self, limit: int = 20, list_key: str = RUN_LIST_KEY) -> list[dict[str, Any]]:
        """The newest runs of one list (task runs by default; check runs are listed apart)."""
        resp = self.table.query(
            IndexName=RUNS_INDEX,
            KeyConditionExpression=Key("gsi1pk").eq(list_key),
            ScanIndexForward=False,
            Limit=limit,
        )
        return [plain(i) for i in resp["Items"]]

    def _query_prefix(self, run_id: str, prefix: str) -> Iterator[dict[str, Any]]:
        return query_all(
            self.table, KeyConditionExpression=Key("pk").eq(f"RUN#{run_id}") & Key("sk").begins_with(prefix)
        )

    # ---- small state values (e.g. the digest of the rules a sweep last ran with) ----------
    def swap_state(self, name: str, value: str) -> str | None:
        """Set ``name`` to ``value``; returns the previous value (None the first time)."""
        resp = self.table.put_item(
            Item={"pk": f"STATE#{name}", "sk": "STATE", "value": value, "updated_at": iso(self.clock())},
            ReturnValues="ALL_OLD",
        )
        old = resp.get("Attributes", {}).get("value")
        return str(old) if old is not None else None

    # ---- units ------------------------------------------------------------------------
    def record_unit(self, run_id: str, account: str, region: str, **attrs: Any) -> None:
        item = {
            "pk": f"RUN#{run_id}",
            "sk": f"UNIT#{account}#{region}",
            "run_id": run_id,
            "account": account,
            "region": region,
            "recorded_at": iso(self.clock()),
            "expires_at": self._expiry(),
            **attrs,
        }
        self.table.put_item(Item=to_dynamo(item))

    def units(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._query_prefix(run_id, "UNIT#"))

    # ---- actions ----------------------------------------------------------------------
    def _action_item(self, run_id: str, action: Action) -> dict[str, Any]:
        return to_dynamo(
            {
                "pk": f"RUN#{run_id}",
                "sk": f"ACTION#{action.account}#{action.region}#{action.resource}#{action.action}",
                "run_id": run_id,
                "account": action.account,
                "region": action.region,
                "resource": action.resource,
                "action": action.action,
                "outcome": action.outcome,
                "error": action.error,
                "created_ids": action.created_ids or None,
                "deleted_ids": action.deleted_ids or None,
                "detail": action.detail or None,
                "at": iso(self.clock()),
                "expires_at": self._expiry(),
            }
        )

    @contextmanager
    def action_recorder(self, run_id: str) -> Iterator[Callable[[Action], None]]:
        """Batch action writes (25 per BatchWriteItem) so a 10,000-volume unit is 400 calls, not 10,000."""
        with self.table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as batch:
            yield lambda action: batch.put_item(Item=self._action_item(run_id, action))

    def actions(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._query_prefix(run_id, "ACTION#"))
