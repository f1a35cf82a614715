"""Kill switches: stop a Lambda function, an EventBridge rule or an event source mapping now, and put
it back later exactly as it was (the kinds are in ``kinds.py``).

Flipping records the previous state first (reserved concurrency or "none", rule state, mapping state),
with a conditional write so a second flip can never overwrite the original with the flipped value.
Restore puts back exactly that, and only while the target is still as opsbot left it: a target changed
meanwhile (a redeploy reset the reserved concurrency, someone re-enabled the rule) is *drift*, and
restore refuses, naming both states, unless forced. Every flip, restore and refusal is an audit record:
actor, target, before/after, outcome, time.

What may be flipped at all (asked before anything is recorded or changed):
  - only in the fleet (account and region), never in the hub except by ``opsbot pause``;
  - never a protected target (``protection.py``: opsbot's own, the deny-list, the protection tag);
  - for an alarm policy, only for a state newer than the switch's last change (``as_of``), so a late
    or retried ALARM that arrives after OK does not flip the target again.

Items (ledger table):
  pk = SWITCH#<kind>#<account>#<region>#<id>, sk = STATE       the switch: flipped?, previous state,
                                                               last_transition_at
  pk = SWITCH#<kind>#<account>#<region>#<id>, sk = AUDIT#<ts>#<n>  one per flip/restore attempt
  flipped switches carry gsi1pk = "SWITCH" (by-time index) so `status` is one Query.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import BotoCoreError, ClientError

from automations.core.clock import iso, utcnow
from automations.core.errors import error_text
from automations.core.fleet import AccountAccessError, Fleet
from automations.core.iam import LEDGER, LEDGER_LISTS, grants
from automations.core.ledger import CONDITION_FAILED, RUNS_INDEX, new_token, plain, query_all
from automations.kill_switches.kinds import SWITCH_KINDS, Identity, SwitchKind, SwitchStateError, describe
from automations.kill_switches.protection import Protection, opsbot_own

SWITCH_INDEX_KEY = "SWITCH"
CAPABILITY_NAME = "kill-switches"  # the member role switches act as (template-member.yaml)
# The switch item (read, claim, restore, release after a failed flip), its audit trail, the flipped list.
SWITCHBOARD_GRANTS = (
    grants(
        LEDGER, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"
    )
    | LEDGER_LISTS
)
_SEQUENCE = itertools.count()
# What an AWS call can end in when its effect is unknown or refused; each is caught where it is made.
AWS_ERRORS = (ClientError, BotoCoreError)

Clients = Callable[[str, str, str], Any]  # (account, region, service) -> boto3 client


class SwitchError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    kind: str  # lambda | rule | esm | schedule
    id: str  # function name, rule name (bus/rule for a custom bus), mapping UUID, GROUP/NAME
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
    # flipped | already-flipped | restored | not-flipped | failed | refused | stale | drifted | suppressed
    outcome: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    error: str | None = None
    since: str | None = None
    note: str | None = None  # e.g. a reply that was lost although the call was applied
    forced: bool = False

    @property
    def changed(self) -> bool:
        return self.outcome in ("flipped", "restored")

    def sentence(self) -> str:
        note = f" ({self.note})" if self.note else ""
        if self.outcome == "flipped":
            return f"{self.target}: stopped (was {describe(self.before)}){note}"
        if self.outcome == "already-flipped":
            return f"{self.target}: already stopped since {self.since}; its original state stays recorded"
        if self.outcome == "restored":
            forced = f", forced: it was {describe(self.before)}, not as opsbot left it" if self.forced else ""
            return f"{self.target}: restored to {describe(self.after)}{forced}{note}"
        if self.outcome == "not-flipped":
            return f"{self.target}: nothing to restore (not flipped by opsbot)"
        if self.outcome == "refused":
            return f"{self.target}: {self.action} refused: {self.error}"
        if self.outcome in ("stale", "suppressed"):
            return f"{self.target}: {self.action} ignored: {self.error}"
        if self.outcome == "drifted":
            return f"{self.target}: not restored: {self.error}"
        return f"{self.target}: {self.action} FAILED: {self.error}"


def stamp(ts: datetime) -> str:
    """Microseconds, UTC, one fixed width: last transitions compare as strings, in time order."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- the switchboard --------------------------------------------------------------------------
@dataclass
class Switchboard:
    table: Any  # the ledger table
    clients: Clients
    # The accounts and regions it may flip in. None: the hub's own board, which only `opsbot pause` uses.
    fleet: Fleet | None
    protection: Protection = field(default_factory=Protection)
    clock: Callable[[], datetime] = utcnow

    def state(self, target: Target) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": target.key, "sk": "STATE"}, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def in_fleet(self, account: str, region: str) -> str | None:
        """Why (account, region) is outside the fleet, or None when opsbot may act there."""
        member = self.fleet.account(account) if self.fleet is not None else None
        if member is None:
            return f"account {account} is not in the fleet (rules/fleet.yaml)"
        if region not in member.regions:
            return f"region {region} is not one of account {account}'s fleet regions ({', '.join(member.regions)})"
        return None

    def _audit(self, result: Result, actor: Actor, context: Mapping[str, Any]) -> Result:
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
                **({"note": result.note} if result.note else {}),
                **({"forced": True} if result.forced else {}),
                "at": now,
                **{k: v for k, v in context.items() if v is not None},
            }
        )
        return result

    def _scope_refusal(self, target: Target, pausing_opsbot: bool) -> str | None:
        """What rules the target out before any AWS call: outside the fleet, or hub-only."""
        if pausing_opsbot:  # the one exception to protection: opsbot pause, on opsbot's own only
            if opsbot_own(Identity((f"{target.kind}:{target.id}",))) is None:
                return "opsbot pause stops only opsbot's own rules and schedules"
            return None
        if not target.switch.in_members:
            return f"{target.kind} switches are opsbot's own (opsbot pause only)"
        if self.fleet is None:
            return "this switchboard acts only for opsbot pause"
        return self.in_fleet(target.account, target.region)

    def _stale(self, current: Mapping[str, Any] | None, as_of: datetime | None) -> str | None:
        last = (current or {}).get("last_transition_at")
        if as_of is None or not last or stamp(as_of) > str(last):
            return None
        return f"the alarm state of {stamp(as_of)} is not newer than the switch's last change ({last})"

    def _client(self, target: Target) -> Any:
        return self.clients(target.account, target.region, target.switch.service)

    def flip(
        self,
        target: Target,
        actor: Actor,
        *,
        as_of: datetime | None = None,
        pausing_opsbot: bool = False,
        **context: Any,
    ) -> Result:
        """Stop the target, recording its previous state first. ``as_of``: the time of the alarm state
        that asks for it (policies). ``pausing_opsbot``: `opsbot pause` stopping opsbot's own."""
        context = {**context, "as_of": stamp(as_of) if as_of else None}
        if refusal := self._scope_refusal(target, pausing_opsbot):
            return self._audit(Result(target, "flip", "refused", error=refusal), actor, context)
        current = self.state(target)
        if current and current.get("flipped"):
            result = Result(target, "flip", "already-flipped", since=current.get("flipped_at"))
            return self._audit(result, actor, context)
        if stale := self._stale(current, as_of):
            return self._audit(Result(target, "flip", "stale", error=stale), actor, context)
        try:
            client = self._client(target)
            if not pausing_opsbot:
                try:
                    identity = target.switch.identity(client, target.id, target.account, target.region)
                except AWS_ERRORS as exc:  # fail closed: what cannot be checked is not flipped
                    error = f"could not check whether it is protected: {error_text(exc)}"
                    return self._audit(Result(target, "flip", "failed", error=error), actor, context)
                if reason := self.protection.refusal(identity):
                    return self._audit(Result(target, "flip", "refused", error=f"protected: {reason}"), actor, context)
            before = target.switch.read(client, target.id)
        except AccountAccessError as exc:
            return self._audit(Result(target, "flip", "failed", error=f"the hub cannot reach {exc}"), actor, context)
        except (*AWS_ERRORS, SwitchStateError) as exc:  # nothing recorded, nothing changed
            return self._audit(Result(target, "flip", "failed", error=error_text(exc)), actor, context)
        now, token = self.clock(), new_token()
        moment = stamp(as_of or now)
        condition: Any = Attr("pk").not_exists() | Attr("flipped").eq(False)
        if as_of is not None:  # a newer change that won a race makes this event stale
            condition = condition & (Attr("last_transition_at").not_exists() | Attr("last_transition_at").lt(moment))
        try:  # claim first: whoever wins records the original state; a racing flip becomes a no-op
            self.table.put_item(
                Item={
                    "pk": target.key,
                    "sk": "STATE",
                    "flipped": True,
                    "previous": before,
                    "flipped_at": iso(now),
                    "flipped_by": asdict(actor),
                    "target": asdict(target),
                    "gsi1pk": SWITCH_INDEX_KEY,
                    "gsi1sk": f"{iso(now)}#{target.key}",
                    "token": token,
                    "last_transition_at": moment,
                    **{k: v for k, v in context.items() if v is not None},
                },
                ConditionExpression=condition,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in CONDITION_FAILED:
                raise
            latest = self.state(target) or {}
            if latest.get("token") != token:  # not our own claim (applied though its reply was lost)
                if latest.get("flipped"):
                    result = Result(target, "flip", "already-flipped", since=latest.get("flipped_at"))
                    return self._audit(result, actor, context)
                stale = self._stale(latest, as_of) or "a newer change to the switch came first"
                return self._audit(Result(target, "flip", "stale", error=stale), actor, context)
        try:
            after = target.switch.stop(client, target.id)
        except AWS_ERRORS as exc:
            return self._audit(self._after_failed_stop(target, client, before, current, token, exc), actor, context)
        return self._audit(Result(target, "flip", "flipped", before=before, after=after), actor, context)

    def _after_failed_stop(
        self,
        target: Target,
        client: Any,
        before: dict[str, Any],
        prior: Mapping[str, Any] | None,
        token: str,
        exc: BaseException,
    ) -> Result:
        """The stop call failed, or its reply was lost after AWS applied it. Read the target again: stopped
        means it was applied (keep the claim: it holds the previous state); not stopped means nothing
        changed (put the switch back as it was); unreadable means unknown (keep the claim, and say so)."""
        kind = target.switch
        try:
            found = kind.settled(kind.read(client, target.id))
        except (*AWS_ERRORS, SwitchStateError) as again:
            return Result(
                target,
                "flip",
                "failed",
                before=before,
                error=f"{error_text(exc)}; and it could not be read again ({error_text(again)}), so the switch "
                f"stays recorded as flipped: restore puts back {describe(before)}",
            )
        if found == kind.settled(kind.stopped_state()):
            note = f"the stop call answered {error_text(exc)}, but the target reads stopped"
            return Result(target, "flip", "flipped", before=before, after=kind.stopped_state(), note=note)
        ours = Attr("token").eq(token)
        try:  # only our own claim: put back what was there (its last transition included), or nothing
            if prior:
                self.table.put_item(Item=dict(prior), ConditionExpression=ours)
            else:
                self.table.delete_item(Key={"pk": target.key, "sk": "STATE"}, ConditionExpression=ours)
        except ClientError as release:
            if release.response["Error"]["Code"] not in CONDITION_FAILED:
                raise
        return Result(target, "flip", "failed", before=before, error=error_text(exc))

    def restore(
        self,
        target: Target,
        actor: Actor,
        *,
        as_of: datetime | None = None,
        force: bool = False,
        **context: Any,
    ) -> Result:
        """Put back the recorded previous state, if the target is still as opsbot left it (``force``:
        even if it is not; the audit records it)."""
        context = {**context, "as_of": stamp(as_of) if as_of else None}
        current = self.state(target)
        if not current or not current.get("flipped"):
            return self._audit(Result(target, "restore", "not-flipped"), actor, context)
        if stale := self._stale(current, as_of):
            return self._audit(Result(target, "restore", "stale", error=stale), actor, context)
        kind, previous = target.switch, current["previous"]
        try:
            client = self._client(target)
            found = kind.read(client, target.id)
        except AccountAccessError as exc:
            return self._audit(Result(target, "restore", "failed", error=f"the hub cannot reach {exc}"), actor, context)
        except (*AWS_ERRORS, SwitchStateError) as exc:
            result = Result(target, "restore", "failed", before={"flipped": True}, error=error_text(exc))
            return self._audit(result, actor, context)
        left, expected = kind.settled(kind.stopped_state()), kind.expected(previous)
        drifted = kind.settled(found) != left
        if drifted and current.get("restoring") and kind.settled(found) == expected:
            # An earlier restore was applied although its reply was lost: finish recording it.
            return self._restored(target, actor, context, found, expected, note="an earlier restore had applied it")
        if drifted and not force:
            error = (
                f"it is no longer as opsbot left it (now {describe(found)}; opsbot left {describe(left)}); "
                f"restore with --force to put back {describe(previous)} anyway"
            )
            return self._audit(Result(target, "restore", "drifted", before=found, error=error), actor, context)
        try:  # mark the attempt, so a retry after a lost reply recognises its own restore
            self.table.update_item(
                Key={"pk": target.key, "sk": "STATE"},
                UpdateExpression="SET restoring = :t",
                ConditionExpression=Attr("flipped").eq(True),
                ExpressionAttributeValues={":t": new_token()},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in CONDITION_FAILED:
                raise
            return self._audit(Result(target, "restore", "not-flipped"), actor, context)
        try:
            after = kind.restore(client, target.id, previous)
        except (*AWS_ERRORS, SwitchStateError) as exc:
            try:
                applied = kind.settled(kind.read(client, target.id)) == expected
            except (*AWS_ERRORS, SwitchStateError):
                applied = False
            if not applied:
                result = Result(target, "restore", "failed", before=found, error=error_text(exc))
                return self._audit(result, actor, context)
            after = expected
            context = {**context, "lost_reply": error_text(exc)}
        return self._restored(target, actor, context, found, after, forced=drifted)

    def _restored(
        self,
        target: Target,
        actor: Actor,
        context: Mapping[str, Any],
        found: dict[str, Any],
        after: dict[str, Any],
        *,
        forced: bool = False,
        note: str | None = None,
    ) -> Result:
        now = self.clock()
        moment = context.get("as_of") or stamp(now)
        self.table.update_item(
            Key={"pk": target.key, "sk": "STATE"},
            UpdateExpression="SET flipped = :f, restored_at = :t, restored_by = :a, last_transition_at = :l"
            + (", forced_restore = :y" if forced else "")
            + " REMOVE gsi1pk, gsi1sk, restoring",
            ExpressionAttributeValues={
                ":f": False,
                ":t": iso(now),
                ":a": asdict(actor),
                ":l": moment,
                **({":y": True} if forced else {}),
            },
        )
        result = Result(target, "restore", "restored", before=found, after=after, forced=forced, note=note)
        return self._audit(result, actor, context)

    def decline(self, target: Target, actor: Actor, action: str, outcome: str, reason: str, **context: Any) -> Result:
        """Record, on the target's trail, an action declined before it reached the switchboard: a stale
        Slack button ("refused"), an alarm whose actions are suppressed ("suppressed")."""
        return self._audit(Result(target, action, outcome, error=reason), actor, context)

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
