"""The breach-alert lifecycle: one open alert per (account, region, quota), kept in the ledger table.

An observation (usage against a limit, or "this check cannot run here") moves an alert through:

    (none / RESOLVED) --usage >= warn--> OPEN warning --usage >= critical--> OPEN critical
    OPEN --usage < warn - hysteresis--> RESOLVED

and on-call hears about it exactly when it opens, escalates, resolves, and as a reminder at most every
``reminder_hours`` while it stays open. A steady breach between reminders writes the latest reading
but sends nothing; usage hovering between ``warn - hysteresis`` and ``warn`` changes nothing, so a
quota at 79-81% does not flap. Severity only rises within one episode: a critical alert that eases
back to 85% stays critical until it resolves, so it cannot escalate twice.

Every write is conditional on the version read (or on the item not existing yet), so two checks of
the same account/region racing each other cannot both open, escalate or remind: the loser re-reads,
finds the winner's state, and sends nothing.

Items (single-table, next to the runs; see automations/ledger.py):
  pk = ALERT#<account>#<region>, sk = KEY#<check key>   one Query per unit reads them all
  pk = ALERT#<account>#<region>, sk = MEMO#<check>      what a check keeps between runs (same Query)
  gsi1pk = "ALERT", gsi1sk = <alert id>                 look an alert up by its id (by-time index)
  pending_pk = "ALERT", pending_sk = <alert id>         only while OPEN: the open alerts (sparse pending index)
``open_alerts()`` is one keyed Query of the sparse pending index, which holds open alerts only: every write
of an alert is a whole-item put that carries pending_pk/pending_sk while the alert is open and leaves them
out once it resolves, so resolved alerts drop out of the index (as finished runs and delivered
announcements do). Alerts written before the index held them (no pending_pk) are re-keyed by their next
write: every check of an account/region rewrites each of its open alerts (a steady one too), so they are
back in the list after the next check that measures them; ``rekey_open_alerts()`` re-keys them all at
once (one pass over the by-time "ALERT" list), e.g. for alerts whose account/region is no longer checked.
The alert id is stable for one episode (opened -> resolved) and new for the next. Alerts about a
Lambda function store the function (name, ARN, account, region, reservation) under ``target``: a
kill switch acts only on the target named by the stored, still-open alert it was given the id of.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from automations.breach_checks.kinds import Measurement
from automations.breach_checks.rules import Thresholds
from automations.core.clock import iso, parse_time, utcnow
from automations.core.iam import LEDGER, grants
from automations.core.ledger import (
    CONDITION_FAILED,
    PENDING_INDEX,
    RUNS_INDEX,
    new_token,
    plain,
    query_all,
    to_dynamo,
    transact,
)
from automations.core.notify import Alert
from automations.core.outbox import Outbox

# Alert items: one Query per unit, conditional puts, a read-back after a lost race.
ALERT_STATE_GRANTS = grants(LEDGER, "dynamodb:Query", "dynamodb:GetItem", "dynamodb:PutItem")
OPEN = "OPEN"
RESOLVED = "RESOLVED"
ALERTS_INDEX_KEY = "ALERT"  # gsi1pk of alert items in the by-time index
OPEN_ALERTS_KEY = "ALERT"  # pending_pk of open alerts (only) in the sparse pending index
NOTIFY_EVENTS = ("opened", "escalated", "reminder", "resolved")


class Level(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    HOLD = "hold"  # between warn - hysteresis and warn: an open alert stays open, none opens
    CLEAR = "clear"
    NO_DATA = "no_data"


def level_of(m: Measurement, t: Thresholds) -> Level:
    pct = m.percent
    if pct is None:
        return Level.NO_DATA
    if pct >= t.critical_percent:
        return Level.CRITICAL
    if pct >= t.warn_percent:
        return Level.WARNING
    if pct < t.resolve_below:
        return Level.CLEAR
    return Level.HOLD


@dataclass(frozen=True)
class Transition:
    event: str  # opened | escalated | reminder | resolved | steady
    state: dict[str, Any]
    previous_percent: float | None
    measurement: Measurement
    announcement_id: str | None = None  # its announcement in the outbox, written with the transition

    @property
    def notify(self) -> bool:
        return self.event in NOTIFY_EVENTS


class AlertConflict(Exception):
    """The alert kept changing under us (more concurrent writers than attempts)."""


def new_alert_id(now: datetime) -> str:
    return f"brk-{now.astimezone(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def decide(
    prev: Mapping[str, Any] | None,
    m: Measurement,
    t: Thresholds,
    level: Level,
    now: datetime,
    ids: Callable[[datetime], str] = new_alert_id,
) -> tuple[str, dict[str, Any]] | None:
    """What this observation does to the alert: (event, new item fields), or None (nothing to store)."""
    is_open = prev is not None and prev.get("status") == OPEN
    stamp = iso(now)
    pct = m.percent
    reading: dict[str, Any] = {
        "name": m.name,
        "check": m.check,
        "service": m.service,
        "quota_code": m.quota_code,
        "limit": m.limit,
        "unit": m.unit,
        "window": m.window,
        "breakdown": list(m.breakdown),
        "top": list(m.top),
        "target": dict(m.target) if m.target else None,
        "link": m.link,
        "note": m.note,
        "last_checked_at": stamp,
        "last_level": level.value,
        "thresholds": {
            "warn_percent": t.warn_percent,
            "critical_percent": t.critical_percent,
            "resolve_below": t.resolve_below,
            "reminder_hours": t.reminder_hours,
        },
    }
    if level is Level.NO_DATA:  # unknown: keeps the last reading, never lowers or resolves anything
        reading["no_data_since"] = (prev or {}).get("no_data_since") or stamp
        reading["no_data_checks"] = int((prev or {}).get("no_data_checks") or 0) + 1
    else:
        reading.update(usage=m.usage, percent=pct, no_data_since=None, no_data_checks=0)

    if not is_open:
        if level not in (Level.WARNING, Level.CRITICAL):
            return None
        item = {
            **reading,
            "alert_id": ids(now),
            "status": OPEN,
            "severity": level.value,
            "opened_at": stamp,
            "escalated_at": stamp if level is Level.CRITICAL else None,
            "resolved_at": None,
            "peak_percent": pct,
            "last_notified_at": stamp,
            "notifications": 1,
            "last_event": "opened",
        }
        return "opened", item

    assert prev is not None
    item = {**prev, **reading}
    if pct is not None:
        item["peak_percent"] = max(float(prev.get("peak_percent") or 0.0), pct)
    if level is Level.CLEAR:
        event = "resolved"
        item.update(status=RESOLVED, resolved_at=stamp)
    elif level is Level.CRITICAL and prev.get("severity") != Level.CRITICAL.value:
        event = "escalated"
        item.update(severity=Level.CRITICAL.value, escalated_at=stamp)
    else:
        last = parse_time(prev["last_notified_at"]) if prev.get("last_notified_at") else now
        due = now - last >= timedelta(hours=t.reminder_hours)
        event = "reminder" if due else "steady"
    if event != "steady":
        item.update(last_notified_at=stamp, notifications=int(prev.get("notifications") or 0) + 1, last_event=event)
    return event, item


@dataclass
class AlertBook:
    """Alert state in the ledger table (``Ledger.table``)."""

    table: Any
    ttl_days: int = 90
    clock: Callable[[], datetime] = utcnow
    max_attempts: int = 4
    ids: Callable[[datetime], str] = new_alert_id

    @staticmethod
    def pk(account: str, region: str) -> str:
        return f"ALERT#{account}#{region}"

    def states(self, account: str, region: str) -> dict[str, dict[str, Any]]:
        """Every alert item of one account/region (open or resolved), by key: one Query."""
        items = query_all(
            self.table,
            KeyConditionExpression=Key("pk").eq(self.pk(account, region)) & Key("sk").begins_with("KEY#"),
            ConsistentRead=True,
        )
        return {str(item["key"]): item for item in items}

    def read(self, account: str, region: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """The alert items (by key) and the checks' memos (by check) of one account/region: one Query."""
        states: dict[str, dict[str, Any]] = {}
        memos: dict[str, dict[str, Any]] = {}
        for item in query_all(
            self.table, KeyConditionExpression=Key("pk").eq(self.pk(account, region)), ConsistentRead=True
        ):
            sk = str(item["sk"])
            if sk.startswith("KEY#"):
                states[str(item["key"])] = item
            elif sk.startswith("MEMO#"):
                with contextlib.suppress(ValueError, TypeError):
                    memos[sk.removeprefix("MEMO#")] = json.loads(str(item.get("memo") or "{}"))
        return states, memos

    def keep_memo(self, account: str, region: str, check: str, memo: Mapping[str, Any]) -> None:
        """What a check keeps for its next run here: one small item, one write, only when it changed."""
        now = self.clock()
        self.table.put_item(
            Item={
                "pk": self.pk(account, region),
                "sk": f"MEMO#{check}",
                "memo": json.dumps(memo, separators=(",", ":"), sort_keys=True),
                "expires_at": int((now + timedelta(days=self.ttl_days)).timestamp()),
            }
        )

    def state(self, account: str, region: str, key: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": self.pk(account, region), "sk": f"KEY#{key}"}, ConsistentRead=True).get(
            "Item"
        )
        return plain(item) if item else None

    def observe(
        self,
        account: str,
        region: str,
        m: Measurement,
        t: Thresholds,
        prev: Mapping[str, Any] | None,
        *,
        level: Level | None = None,
        account_name: str | None = None,
        outbox: Outbox | None = None,
        render: Callable[[Transition], Alert] | None = None,
    ) -> Transition | None:
        """Apply one observation; returns what happened (None: nothing stored, nothing to say).

        With an ``outbox`` (and how to ``render`` it), a transition that calls for an announcement writes
        it in the same transaction as the new state. A write whose condition failed because it had been
        applied already (its reply lost) is recognised by its token and returned as this call's."""
        now = self.clock()
        current = dict(prev) if prev is not None else None
        token = new_token()
        for _ in range(self.max_attempts):
            decided = decide(current, m, t, level or level_of(m, t), now, self.ids)
            if decided is None:
                return None
            event, fields = decided
            item = {
                **fields,
                "pk": self.pk(account, region),
                "sk": f"KEY#{m.key}",
                "kind": "breach-alert",
                "key": m.key,
                "account": account,
                "account_name": account_name or (current or {}).get("account_name") or account,
                "region": region,
                "version": int((current or {}).get("version") or 0) + 1,
                "gsi1pk": ALERTS_INDEX_KEY,
                "gsi1sk": fields["alert_id"],
                "expires_at": int((now + timedelta(days=self.ttl_days)).timestamp()),
                "token": token,
            }
            item.update(self.open_keys(item))
            if item["status"] != OPEN:  # resolved: out of the open list (the put replaces the whole item)
                item.pop("pending_pk", None)
                item.pop("pending_sk", None)
            previous = (current or {}).get("percent") if current and current.get("status") == OPEN else None
            transition = Transition(event, plain(to_dynamo(item)), previous, m)
            if transition.notify and outbox is not None and render is not None:
                announcement = f"alert#{item['alert_id']}#{item['version']}"
                transition = replace(transition, announcement_id=announcement)
            condition: dict[str, Any] = (
                {"ConditionExpression": "attribute_not_exists(pk)"}
                if current is None
                else {
                    "ConditionExpression": "#v = :v",
                    "ExpressionAttributeNames": {"#v": "version"},
                    "ExpressionAttributeValues": {":v": int(current.get("version") or 0)},
                }
            )
            try:
                if transition.announcement_id and outbox is not None and render is not None:
                    entry = outbox.item(transition.announcement_id, render(transition))
                    transact(self.table, {"Put": {"Item": item, **condition}}, {"Put": {"Item": entry}})
                else:
                    self.table.put_item(Item=to_dynamo(item), **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in CONDITION_FAILED:
                    raise
                current = self.state(account, region, m.key)
                if current is not None and current.get("token") == token:
                    return transition  # our own write, applied although its reply was lost
                continue  # someone else got there: decide again
            return transition
        raise AlertConflict(f"{account}/{region} {m.key}: still changing after {self.max_attempts} attempts")

    # ---- lookups ---------------------------------------------------------------------------
    def _index(self, **extra: Any) -> Iterator[dict[str, Any]]:
        return query_all(self.table, IndexName=RUNS_INDEX, ScanIndexForward=False, **extra)

    def get(self, alert_id: str) -> dict[str, Any] | None:
        """The alert with this id, if it is still the current episode of its key (else None)."""
        found = next(
            self._index(KeyConditionExpression=Key("gsi1pk").eq(ALERTS_INDEX_KEY) & Key("gsi1sk").eq(alert_id)),
            None,
        )
        if found is None:
            return None
        current = self.state(found["account"], found["region"], found["key"])  # the index lags a little
        return current if current and current.get("alert_id") == alert_id else None

    @staticmethod
    def open_keys(item: Mapping[str, Any]) -> dict[str, str]:
        """The sparse-index keys an open alert carries (none for a resolved one)."""
        if item.get("status") != OPEN:
            return {}
        return {"pending_pk": OPEN_ALERTS_KEY, "pending_sk": str(item["alert_id"])}

    def open_alerts(self) -> list[dict[str, Any]]:
        """Every open alert, newest first: one keyed Query (paged) of the sparse pending index, which holds
        open alerts only; resolved alerts are never read."""
        return list(
            query_all(
                self.table,
                IndexName=PENDING_INDEX,
                KeyConditionExpression=Key("pending_pk").eq(OPEN_ALERTS_KEY),
                ScanIndexForward=False,
            )
        )

    def rekey_open_alerts(self) -> int:
        """One-off migration: give every open alert written before the open list existed its sparse-index
        keys (one pass over the by-time "ALERT" list, open and resolved, a conditional update for each open
        one without them). Safe to run again, and concurrently with checks (an alert changed meanwhile is
        left to its own write, which carries the keys). Returns how many alerts it re-keyed."""
        done = 0
        for item in self._index(KeyConditionExpression=Key("gsi1pk").eq(ALERTS_INDEX_KEY)):
            if item.get("status") != OPEN or "pending_pk" in item:
                continue
            keys = self.open_keys(item)
            try:
                self.table.update_item(
                    Key={"pk": item["pk"], "sk": item["sk"]},
                    UpdateExpression="SET pending_pk = :ppk, pending_sk = :psk",
                    ConditionExpression="#s = :open AND #v = :v AND attribute_not_exists(pending_pk)",
                    ExpressionAttributeNames={"#s": "status", "#v": "version"},
                    ExpressionAttributeValues={
                        ":ppk": keys["pending_pk"],
                        ":psk": keys["pending_sk"],
                        ":open": OPEN,
                        ":v": int(item.get("version") or 0),
                    },
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in CONDITION_FAILED:
                    raise
                continue  # changed since the index was read: its own write keyed it (or resolved it)
            done += 1
        return done
