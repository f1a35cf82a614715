"""The ledger: every run, unit of work and action opsbot takes, recorded in one DynamoDB table.

Single-table layout (pk / sk):
  RUN#<run_id> / RUN                               the run: task, trigger, slot, scope, status, counts
  RUN#<run_id> / UNIT#<account>#<region>           one unit of work (task, account, region)
  RUN#<run_id> / ACTION#<account>#<region>#<res>#<action>   one action on one resource
An event-driven remediation is one item (RUN#sg-<event id> / RUN) with its actions inside.
GSI ``by-time`` (gsi1pk = "RUN", gsi1sk = started_at#run_id) lists recent runs newest first.
Sparse GSI ``pending`` (pending_pk / pending_sk) lists what is unfinished: RUNNING runs, undelivered
announcements (automations.core.outbox), open breach alerts (automations.breach_checks.alerts).
Every item carries ``expires_at`` (epoch seconds) for DynamoDB TTL.

At 1,000 accounts x 17 regions a run has 17,000 units, so: every read is a keyed Query (never a Scan,
never a FilterExpression over a partition); lists are read page by page (``recent_runs`` pages until it
has ``limit`` runs, ``unit_page``/``action_page`` hand out one page and an opaque continuation token);
units and actions are written in batches (``unit_writer``, ``action_recorder``: 25 a BatchWriteItem).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

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
MAX_RUNS_LIMIT = 1000  # recent_runs(limit): 1..MAX_RUNS_LIMIT
MAX_PAGE_SIZE = 1000  # unit_page / action_page: 1..MAX_PAGE_SIZE items a page
UNIT_PREFIX, ACTION_PREFIX = "UNIT#", "ACTION#"


class LimitError(ValueError):
    """A list size (limit, page size) outside what the ledger serves."""


class TokenError(ValueError):
    """A continuation token that is not one of ours, or not for this run and list."""


def check_limit(value: int, maximum: int, what: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise LimitError(f"{what} must be between 1 and {maximum}, not {value!r}")
    return value


def encode_token(key: Mapping[str, Any]) -> str:
    """An opaque continuation token: a page's LastEvaluatedKey as URL-safe base64 of compact JSON."""
    raw = json.dumps(plain(dict(key)), separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    """The LastEvaluatedKey a token stands for (TokenError if it is not a token of ours)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise TokenError(f"not a continuation token: {token[:40]!r}") from exc
    if not isinstance(key, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in key.items()):
        raise TokenError(f"not a continuation token: {token[:40]!r}")
    return key


@dataclass(frozen=True)
class Page:
    """One page of a list: its items, and the token that continues it (None: this was the last page)."""

    items: list[dict[str, Any]]
    next_token: str | None


class UnitWrite(Protocol):
    def __call__(self, account: str, region: str, **attrs: Any) -> None: ...


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
        """The newest ``limit`` runs of one list (task runs by default; check runs are listed apart), newest
        first: exactly ``limit`` when the list has that many, paging past DynamoDB's 1 MB a Query.

        ``limit`` is 1..MAX_RUNS_LIMIT (LimitError otherwise)."""
        check_limit(limit, MAX_RUNS_LIMIT)
        runs: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "IndexName": RUNS_INDEX,
            "KeyConditionExpression": Key("gsi1pk").eq(list_key),
            "ScanIndexForward": False,
        }
        while len(runs) < limit:
            resp = self.table.query(**kwargs, Limit=limit - len(runs))
            runs.extend(plain(i) for i in resp["Items"])
            if "LastEvaluatedKey" not in resp:
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return runs[:limit]

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

    def _page(self, run_id: str, prefix: str, what: str, page_size: int, token: str | None) -> Page:
        """One page of the run's items under ``prefix`` (sk order): a Query with Limit and
        ExclusiveStartKey. One item more than the page is read, so the last page carries no token."""
        check_limit(page_size, MAX_PAGE_SIZE, "page size")
        pk = f"RUN#{run_id}"
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key("pk").eq(pk) & Key("sk").begins_with(prefix),
            "Limit": page_size + 1,
        }
        if token is not None:
            start = decode_token(token)
            if set(start) != {"pk", "sk"} or start["pk"] != pk or not start["sk"].startswith(prefix):
                raise TokenError(f"this token does not continue the {what} of run {run_id}")
            kwargs["ExclusiveStartKey"] = start
        resp = self.table.query(**kwargs)
        items = [plain(i) for i in resp["Items"]]
        if len(items) > page_size:  # more after this page: continue after its last item
            items = items[:page_size]
            return Page(items, encode_token({"pk": pk, "sk": items[-1]["sk"]}))
        last = resp.get("LastEvaluatedKey")  # a short page (1 MB reached): more may follow
        return Page(items, encode_token(last) if last else None)

    def _pages(self, run_id: str, prefix: str, what: str, page_size: int, token: str | None) -> Iterator[Page]:
        while True:
            page = self._page(run_id, prefix, what, page_size, token)
            yield page
            if page.next_token is None:
                return
            token = page.next_token

    # ---- units ------------------------------------------------------------------------
    def _unit_item(self, run_id: str, account: str, region: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
        return to_dynamo(
            {
                "pk": f"RUN#{run_id}",
                "sk": f"{UNIT_PREFIX}{account}#{region}",
                "run_id": run_id,
                "account": account,
                "region": region,
                "recorded_at": iso(self.clock()),
                "expires_at": self._expiry(),
                **attrs,
            }
        )

    def record_unit(self, run_id: str, account: str, region: str, **attrs: Any) -> None:
        self.table.put_item(Item=self._unit_item(run_id, account, region, attrs))

    @contextmanager
    def unit_writer(self, run_id: str) -> Iterator[UnitWrite]:
        """Batch unit writes: ``write(account, region, **attrs)`` records a unit as ``record_unit`` does,
        25 units a BatchWriteItem (sent as batches fill and when the block ends; unprocessed items are
        retried). A unit written twice in the block is stored once, as last written. Not conditional."""
        with self.table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as batch:

            def write(account: str, region: str, **attrs: Any) -> None:
                batch.put_item(Item=self._unit_item(run_id, account, region, attrs))

            yield write

    def units(self, run_id: str) -> list[dict[str, Any]]:
        """Every unit of the run (all pages, in memory: for a bounded run; ``unit_pages`` otherwise)."""
        return list(self._query_prefix(run_id, UNIT_PREFIX))

    def unit_counts(self, run_id: str) -> dict[str, int]:
        """The run's units by status, lower case ({"succeeded": 16990, "failed": 10}): read page by page,
        statuses only, nothing kept but the counts (for a run still running, whose record has none)."""
        counts: Counter[str] = Counter()
        for item in query_all(
            self.table,
            KeyConditionExpression=Key("pk").eq(f"RUN#{run_id}") & Key("sk").begins_with(UNIT_PREFIX),
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "status"},
        ):
            counts[str(item.get("status") or "unknown").lower()] += 1
        return dict(counts)

    def unit_page(self, run_id: str, page_size: int = 100, token: str | None = None) -> Page:
        """One page of the run's units (by account, region) and the token of the next (TokenError for a
        token that is not this run's units'; LimitError for a page size outside 1..MAX_PAGE_SIZE)."""
        return self._page(run_id, UNIT_PREFIX, "units", page_size, token)

    def unit_pages(self, run_id: str, page_size: int = 100, token: str | None = None) -> Iterator[Page]:
        """The run's units page by page (from ``token``, else the first), one Query a page."""
        return self._pages(run_id, UNIT_PREFIX, "units", page_size, token)

    # ---- actions ----------------------------------------------------------------------
    def _action_item(self, run_id: str, action: Action) -> dict[str, Any]:
        return to_dynamo(
            {
                "pk": f"RUN#{run_id}",
                "sk": f"{ACTION_PREFIX}{action.account}#{action.region}#{action.resource}#{action.action}",
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
        """Every action of the run (all pages, in memory: for a bounded run; ``action_pages`` otherwise)."""
        return list(self._query_prefix(run_id, ACTION_PREFIX))

    def action_page(self, run_id: str, page_size: int = 100, token: str | None = None) -> Page:
        """One page of the run's actions and the token of the next (as ``unit_page``)."""
        return self._page(run_id, ACTION_PREFIX, "actions", page_size, token)

    def action_pages(self, run_id: str, page_size: int = 100, token: str | None = None) -> Iterator[Page]:
        return self._pages(run_id, ACTION_PREFIX, "actions", page_size, token)
