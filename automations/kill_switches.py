"""Kill switches: stop a Lambda function, an EventBridge rule or an event source mapping now, and put
it back later exactly as it was.

Flipping records the previous state first (reserved concurrency or "none", rule state, mapping state),
with a conditional write so a second flip can never overwrite the original with the flipped value.
Restore puts back exactly that (DeleteFunctionConcurrency where there was no reservation). Every flip,
restore and refusal is an audit record: actor, target, before/after, outcome, time.

Items (ledger table):
  pk = SWITCH#<kind>#<account>#<region>#<id>, sk = STATE       the switch: flipped?, previous state
  pk = SWITCH#<kind>#<account>#<region>#<id>, sk = AUDIT#<ts>#<n>  one per flip/restore attempt
  flipped switches carry gsi1pk = "SWITCH" (by-time index) so `status` is one Query.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from automations.ledger import RUNS_INDEX, iso, plain, query_all

# kind -> the AWS service it needs; "schedule" (EventBridge Scheduler, GROUP/NAME) is for pausing opsbot itself
KINDS = {"lambda": "lambda", "rule": "events", "esm": "lambda", "schedule": "scheduler"}
# What UpdateSchedule takes back from GetSchedule: it replaces the whole schedule, so send all of it.
_SCHEDULE_FIELDS = (
    "Name",
    "GroupName",
    "ScheduleExpression",
    "FlexibleTimeWindow",
    "Target",
    "Description",
    "StartDate",
    "EndDate",
    "ScheduleExpressionTimezone",
    "KmsKeyArn",
    "ActionAfterCompletion",
)
SWITCH_INDEX_KEY = "SWITCH"
_SEQUENCE = itertools.count()

Clients = Callable[[str, str, str], Any]  # (account, region, service) -> boto3 client


class SwitchError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    kind: str  # lambda | rule | esm
    id: str  # function name, rule name (bus/rule for a custom bus), mapping UUID
    account: str
    region: str

    @property
    def key(self) -> str:
        return f"SWITCH#{self.kind}#{self.account}#{self.region}#{self.id}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.id} in {self.account}/{self.region}"

    @classmethod
    def parse(cls, text: str, account: str | None, region: str | None) -> Target:
        """``lambda:NAME``, ``rule:NAME`` (or ``rule:BUS/NAME``), ``esm:UUID``, or a function/rule ARN."""
        if text.startswith("arn:"):
            parts = text.split(":", 6)
            service, arn_region, arn_account, resource = parts[2], parts[3], parts[4], parts[5:]
            if service == "lambda" and resource[0] == "function":
                return cls("lambda", resource[1].split(":")[0], arn_account, arn_region)
            if service == "events" and resource[0].startswith("rule/"):
                return cls("rule", resource[0].removeprefix("rule/"), arn_account, arn_region)
            if service == "lambda" and resource[0] == "event-source-mapping":
                return cls("esm", resource[1], arn_account, arn_region)
            raise SwitchError(f"{text!r}: not a Lambda function, EventBridge rule or event source mapping ARN")
        kind, _, ident = text.partition(":")
        if kind not in KINDS or not ident:
            raise SwitchError(f"{text!r}: expected lambda:NAME, rule:NAME, esm:UUID or an ARN")
        if not account or not region:
            raise SwitchError(f"{text!r}: give --account and --region (or use an ARN)")
        return cls(kind, ident, account, region)


@dataclass(frozen=True)
class Actor:
    type: str  # slack | policy | cli
    id: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.type}:{self.name or self.id}"


@dataclass
class Result:
    target: Target
    action: str  # flip | restore
    outcome: str  # flipped | already-flipped | restored | not-flipped | failed
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    error: str | None = None
    since: str | None = None

    @property
    def changed(self) -> bool:
        return self.outcome in ("flipped", "restored")

    def sentence(self) -> str:
        if self.outcome == "flipped":
            return f"{self.target}: stopped (was {describe(self.before)})"
        if self.outcome == "already-flipped":
            return f"{self.target}: already stopped since {self.since}; its original state stays recorded"
        if self.outcome == "restored":
            return f"{self.target}: restored to {describe(self.after)}"
        if self.outcome == "not-flipped":
            return f"{self.target}: nothing to restore (not flipped by opsbot)"
        return f"{self.target}: {self.action} FAILED: {self.error}"


def describe(state: Mapping[str, Any] | None) -> str:
    if not state:
        return "?"
    if "reserved_concurrency" in state:
        value = state["reserved_concurrency"]
        return "no reserved concurrency" if value is None else f"reserved concurrency {value}"
    return f"state {state.get('state')}"


# ---- reading and setting the live state --------------------------------------------------------
def _rule_args(target: Target) -> dict[str, str]:
    bus, _, name = target.id.rpartition("/")
    return {"Name": name, **({"EventBusName": bus} if bus else {})}


def _schedule_args(target: Target) -> dict[str, str]:
    group, _, name = target.id.rpartition("/")
    return {"Name": name, "GroupName": group or "default"}


def _set_schedule_state(client: Any, target: Target, state: str) -> None:
    current = client.get_schedule(**_schedule_args(target))
    client.update_schedule(**{k: current[k] for k in _SCHEDULE_FIELDS if current.get(k) is not None}, State=state)


def read_state(client: Any, target: Target) -> dict[str, Any]:
    if target.kind == "schedule":
        return {"state": client.get_schedule(**_schedule_args(target))["State"]}
    if target.kind == "lambda":
        value = client.get_function_concurrency(FunctionName=target.id).get("ReservedConcurrentExecutions")
        return {"reserved_concurrency": value}
    if target.kind == "rule":
        return {"state": client.describe_rule(**_rule_args(target))["State"]}
    return {"state": client.get_event_source_mapping(UUID=target.id)["State"]}


def stop(client: Any, target: Target) -> dict[str, Any]:
    if target.kind == "schedule":
        _set_schedule_state(client, target, "DISABLED")
        return {"state": "DISABLED"}
    if target.kind == "lambda":
        client.put_function_concurrency(FunctionName=target.id, ReservedConcurrentExecutions=0)
        return {"reserved_concurrency": 0}
    if target.kind == "rule":
        client.disable_rule(**_rule_args(target))
        return {"state": "DISABLED"}
    client.update_event_source_mapping(UUID=target.id, Enabled=False)
    return {"state": "Disabled"}


def put_back(client: Any, target: Target, previous: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the recorded state: a rule or mapping that was already off stays off."""
    if target.kind == "lambda":
        value = previous.get("reserved_concurrency")
        if value is None:
            client.delete_function_concurrency(FunctionName=target.id)
        else:
            client.put_function_concurrency(FunctionName=target.id, ReservedConcurrentExecutions=int(value))
        return {"reserved_concurrency": value}
    state = str(previous.get("state", ""))
    if target.kind == "schedule":
        if state == "ENABLED":
            _set_schedule_state(client, target, "ENABLED")
        return {"state": state}
    if target.kind == "rule":
        if state == "ENABLED":
            client.enable_rule(**_rule_args(target))
        return {"state": state}
    if state in ("Enabled", "Enabling", "Updating"):
        client.update_event_source_mapping(UUID=target.id, Enabled=True)
    return {"state": state}


def _error(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return f"{err.get('Code', 'ClientError')}: {err.get('Message', '')}"


# ---- the switchboard --------------------------------------------------------------------------
@dataclass
class Switchboard:
    table: Any  # the ledger table
    clients: Clients
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def state(self, target: Target) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": target.key, "sk": "STATE"}, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def _audit(self, result: Result, actor: Actor, context: Mapping[str, Any]) -> None:
        now = iso(self.clock())
        self.table.put_item(
            Item={
                "pk": result.target.key,
                # Microseconds, then a per-process sequence: the trail sorts in the order it happened.
                "sk": f"AUDIT#{self.clock().isoformat(timespec='microseconds')}#{next(_SEQUENCE):08d}"
                f"#{secrets.token_hex(2)}",
                "target": asdict(result.target),
                "action": result.action,
                "outcome": result.outcome,
                "actor": asdict(actor),
                "before": result.before,
                "after": result.after,
                "error": result.error,
                "at": now,
                **{k: v for k, v in context.items() if v is not None},
            }
        )

    def flip(self, target: Target, actor: Actor, **context: Any) -> Result:
        client = self.clients(target.account, target.region, KINDS[target.kind])
        current = self.state(target)
        if current and current.get("flipped"):
            result = Result(target, "flip", "already-flipped", since=current.get("flipped_at"))
            self._audit(result, actor, context)
            return result
        try:
            before = read_state(client, target)
        except ClientError as exc:
            result = Result(target, "flip", "failed", error=_error(exc))
            self._audit(result, actor, context)
            return result
        now = iso(self.clock())
        try:  # claim first: whoever wins records the original state; a racing flip becomes a no-op
            self.table.put_item(
                Item={
                    "pk": target.key,
                    "sk": "STATE",
                    "flipped": True,
                    "previous": before,
                    "flipped_at": now,
                    "flipped_by": asdict(actor),
                    "target": asdict(target),
                    "gsi1pk": SWITCH_INDEX_KEY,
                    "gsi1sk": f"{now}#{target.key}",
                    **{k: v for k, v in context.items() if v is not None},
                },
                ConditionExpression=Attr("pk").not_exists() | Attr("flipped").eq(False),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            current = self.state(target) or {}
            result = Result(target, "flip", "already-flipped", since=current.get("flipped_at"))
            self._audit(result, actor, context)
            return result
        try:
            after = stop(client, target)
        except ClientError as exc:
            self.table.delete_item(Key={"pk": target.key, "sk": "STATE"})  # nothing was changed
            result = Result(target, "flip", "failed", before=before, error=_error(exc))
            self._audit(result, actor, context)
            return result
        result = Result(target, "flip", "flipped", before=before, after=after)
        self._audit(result, actor, context)
        return result

    def restore(self, target: Target, actor: Actor, **context: Any) -> Result:
        current = self.state(target)
        if not current or not current.get("flipped"):
            result = Result(target, "restore", "not-flipped")
            self._audit(result, actor, context)
            return result
        client = self.clients(target.account, target.region, KINDS[target.kind])
        previous = current["previous"]
        try:
            after = put_back(client, target, previous)
        except ClientError as exc:
            result = Result(target, "restore", "failed", before={"flipped": True}, error=_error(exc))
            self._audit(result, actor, context)
            return result
        self.table.update_item(
            Key={"pk": target.key, "sk": "STATE"},
            UpdateExpression="SET flipped = :f, restored_at = :t, restored_by = :a REMOVE gsi1pk, gsi1sk",
            ExpressionAttributeValues={":f": False, ":t": iso(self.clock()), ":a": asdict(actor)},
        )
        result = Result(target, "restore", "restored", before=stop_state(target), after=after)
        self._audit(result, actor, context)
        return result

    def flipped(self) -> list[dict[str, Any]]:
        """What is flipped now, newest first, with since when and by whom."""
        return list(
            query_all(
                self.table,
                IndexName=RUNS_INDEX,
                KeyConditionExpression=Key("gsi1pk").eq(SWITCH_INDEX_KEY),
                ScanIndexForward=False,
            )
        )

    def audit(self, target: Target) -> list[dict[str, Any]]:
        return list(
            query_all(self.table, KeyConditionExpression=Key("pk").eq(target.key) & Key("sk").begins_with("AUDIT#"))
        )

    def target_for_alert(self, alert_id: str) -> Target | None:
        """The switch flipped for this alert (for Restore after the alert itself has resolved)."""
        for item in self.flipped():
            if item.get("alert_id") == alert_id:
                return Target(**item["target"])
        return None


def stop_state(target: Target) -> dict[str, Any]:
    return {"reserved_concurrency": 0} if target.kind == "lambda" else {"state": "DISABLED"}
