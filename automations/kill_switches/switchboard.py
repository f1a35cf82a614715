"""Kill switches: stop a Lambda function, an EventBridge rule or an event source mapping now, and put
it back later exactly as it was (the kinds are in ``kinds.py``).

Flipping records the previous state first (reserved concurrency or "none", rule state, mapping state),
with a conditional write so a second flip can never overwrite the original with the flipped value.
Restore puts back exactly that. Every flip, restore and refusal is an audit record: actor, target,
before/after, outcome, time.

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
from datetime import datetime
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from automations.core.clock import iso, utcnow
from automations.core.errors import error_text
from automations.core.iam import LEDGER, LEDGER_LISTS, grants
from automations.core.ledger import RUNS_INDEX, new_token, plain, query_all
from automations.kill_switches.kinds import SWITCH_KINDS, SwitchKind, describe

SWITCH_INDEX_KEY = "SWITCH"
# The switch item (read, claim, restore, release after a failed flip), its audit trail, the flipped list.
SWITCHBOARD_GRANTS = (
    grants(
        LEDGER, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"
    )
    | LEDGER_LISTS
)
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
    def switch(self) -> SwitchKind:
        return SWITCH_KINDS.get(self.kind)

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
            if len(parts) >= 6:
                service, arn_region, arn_account, resource = parts[2], parts[3], parts[4], parts[5:]
                for switch in SWITCH_KINDS:
                    if (found := switch.from_arn(service, resource)) is not None:
                        return cls(switch.name, found, arn_account, arn_region)
            raise SwitchError(f"{text!r}: not a Lambda function, EventBridge rule or event source mapping ARN")
        kind, _, ident = text.partition(":")
        if kind not in SWITCH_KINDS or not ident:
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


# ---- the switchboard --------------------------------------------------------------------------
@dataclass
class Switchboard:
    table: Any  # the ledger table
    clients: Clients
    clock: Callable[[], datetime] = utcnow

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
        client = self.clients(target.account, target.region, target.switch.service)
        current = self.state(target)
        if current and current.get("flipped"):
            result = Result(target, "flip", "already-flipped", since=current.get("flipped_at"))
            self._audit(result, actor, context)
            return result
        try:
            before = target.switch.read(client, target.id)
        except ClientError as exc:
            result = Result(target, "flip", "failed", error=error_text(exc))
            self._audit(result, actor, context)
            return result
        now, token = iso(self.clock()), new_token()
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
                    "token": token,
                    **{k: v for k, v in context.items() if v is not None},
                },
                ConditionExpression=Attr("pk").not_exists() | Attr("flipped").eq(False),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            current = self.state(target) or {}
            if current.get("token") != token:  # not our own claim (applied though its reply was lost)
                result = Result(target, "flip", "already-flipped", since=current.get("flipped_at"))
                self._audit(result, actor, context)
                return result
        try:
            after = target.switch.stop(client, target.id)
        except ClientError as exc:
            self.table.delete_item(Key={"pk": target.key, "sk": "STATE"})  # nothing was changed
            result = Result(target, "flip", "failed", before=before, error=error_text(exc))
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
        client = self.clients(target.account, target.region, target.switch.service)
        previous = current["previous"]
        try:
            after = target.switch.restore(client, target.id, previous)
        except ClientError as exc:
            result = Result(target, "restore", "failed", before={"flipped": True}, error=error_text(exc))
            self._audit(result, actor, context)
            return result
        self.table.update_item(
            Key={"pk": target.key, "sk": "STATE"},
            UpdateExpression="SET flipped = :f, restored_at = :t, restored_by = :a REMOVE gsi1pk, gsi1sk",
            ExpressionAttributeValues={":f": False, ":t": iso(self.clock()), ":a": asdict(actor)},
        )
        result = Result(target, "restore", "restored", before=target.switch.stopped_state(), after=after)
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
