"""Heartbeats: is each member account/region's event forwarding to the hub still working?

Each member region (template-member.yaml) has an EventBridge Scheduler schedule that puts a canary event
(source ``opsbot.heartbeat``) on its own default bus every few minutes; the member's forwarding rule
sends it to the hub's bus, and the hub's rule hands it to ``handlers/heartbeat.py``, which records when
(account, region) was last heard from (``record``: one conditional update, so a redelivered or older
canary changes nothing). The sweeper's pass (``automations.catalog.housekeeping``) then compares every
fleet target with its record (``watch``): a target not heard from for more than ``MISSED_INTERVALS``
of its own interval opens one alert, and the first check that finds it heard from again announces its
recovery, once, both through the outbox. A target new to the fleet that has never been heard from gets
``FIRST_HEARTBEAT_GRACE`` (time to deploy its member stack) before it alerts.

Fail closed: the state only moves on what was read. A ledger read that fails raises (the sweeper's
Errors alarm), and nothing is resolved; a record whose last heartbeat cannot be read counts as silent.

Items (ledger table): pk = "HEARTBEAT", sk = "<account>#<region>" (one partition: the fleet is small,
and the whole fleet is one Query). Runbook: docs/runbooks/heartbeat.md
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from automations.core import boundary
from automations.core.clock import iso, parse_time, utcnow
from automations.core.errors import error_code
from automations.core.fleet import Fleet
from automations.core.iam import LEDGER, grants
from automations.core.ledger import CONDITION_FAILED, query_all, transact
from automations.core.notify import Alert, Notifier
from automations.core.outbox import Outbox

log = logging.getLogger(__name__)

# The canary, as template-member.yaml's schedule puts it (PutEvents refuses sources starting with "aws.").
SOURCE = "opsbot.heartbeat"
DETAIL_TYPE = "opsbot heartbeat"
RUNBOOK = "docs/runbooks/heartbeat.md"

PK = "HEARTBEAT"
HUB_SK = "HUB"  # the hub's own state: deaf (no member heard from) or not
HUB_KEY = {"pk": PK, "sk": HUB_SK}
OK, SILENT = "OK", "SILENT"
MISSED_INTERVALS = 3
DEFAULT_INTERVAL_MINUTES = 5  # template-member.yaml HeartbeatIntervalMinutes' default
MIN_INTERVAL_MINUTES, MAX_INTERVAL_MINUTES = 2, 60
FIRST_HEARTBEAT_GRACE = timedelta(hours=1)

# The heartbeat function: one conditional UpdateItem per canary.
RECORD_GRANTS = grants(LEDGER, "dynamodb:UpdateItem")
# The sweeper: the fleet's records (Query), a first sighting (conditional PutItem), a state change with its
# announcement (one transaction: UpdateItem + PutItem); the outbox delivers it.
WATCH_GRANTS = grants(LEDGER, "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem")


@dataclass(frozen=True)
class Heartbeat:
    account: str
    region: str
    at: datetime  # when the member put it (the envelope's time)
    interval_minutes: int
    event_id: str


def parse_heartbeat(event: Any) -> Heartbeat:
    """The forwarded canary. Account and region come from the envelope, which EventBridge sets (a sender
    cannot choose them); the detail's own account/region, when given, must agree."""
    source = boundary.source_id(event)
    envelope = boundary.mapping(event, source, "event")
    if envelope.get("source") != SOURCE or envelope.get("detail-type") != DETAIL_TYPE:
        raise boundary.InputError(source, "source", f"not an opsbot heartbeat ({envelope.get('source')!r})")
    account = boundary.text(envelope.get("account"), source, "account", pattern=boundary.ACCOUNT_ID)
    region = boundary.text(envelope.get("region"), source, "region", pattern=boundary.REGION)
    detail = boundary.optional_mapping(envelope.get("detail"), source, "detail")
    for name, expected in (("account", account), ("region", region)):
        claimed = detail.get(name)
        if claimed is not None and claimed != expected:
            raise boundary.InputError(source, f"detail.{name}", f"{claimed!r} is not the sender's {expected!r}")
    interval = boundary.optional_integer(detail.get("interval_minutes"), source, "detail.interval_minutes")
    if interval is None:
        interval = DEFAULT_INTERVAL_MINUTES
    if not MIN_INTERVAL_MINUTES <= interval <= MAX_INTERVAL_MINUTES:
        raise boundary.InputError(
            source,
            "detail.interval_minutes",
            f"{interval} is outside {MIN_INTERVAL_MINUTES}-{MAX_INTERVAL_MINUTES}",
        )
    at = boundary.timestamp(envelope.get("time"), source, "time")
    event_id = boundary.text(envelope.get("id"), source, "id")
    return Heartbeat(account, region, at, interval, event_id)


def key(account: str, region: str) -> dict[str, str]:
    return {"pk": PK, "sk": f"{account}#{region}"}


def record(table: Any, heartbeat: Heartbeat, now: datetime) -> bool:
    """Last heard from, moved forward only: False for a canary no newer than the one recorded (a
    redelivery, or one that arrived late). A time ahead of the hub's clock is recorded as now, so a
    skewed member clock cannot hold off the silence alert."""
    at = iso(min(heartbeat.at, now))
    try:
        table.update_item(
            Key=key(heartbeat.account, heartbeat.region),
            UpdateExpression=(
                "SET account = :account, #region = :region, last_seen = :at, interval_minutes = :interval, "
                "last_event_id = :id, received_at = :now, expected_since = if_not_exists(expected_since, :at)"
            ),
            ConditionExpression="attribute_not_exists(last_seen) OR last_seen < :at",
            ExpressionAttributeNames={"#region": "region"},
            ExpressionAttributeValues={
                ":account": heartbeat.account,
                ":region": heartbeat.region,
                ":at": at,
                ":interval": heartbeat.interval_minutes,
                ":id": heartbeat.event_id,
                ":now": iso(now),
            },
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        return False
    return True


def read(table: Any) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    """Every target's record and the hub's own (consistent: a heartbeat recorded a moment ago counts).
    Raises when the ledger cannot be read: a failed read is never taken for silence or for recovery."""
    targets: dict[tuple[str, str], dict[str, Any]] = {}
    hub: dict[str, Any] = {}
    for found in query_all(table, KeyConditionExpression=Key("pk").eq(PK), ConsistentRead=True):
        if found["sk"] == HUB_SK:
            hub = found
        else:
            targets[(str(found["account"]), str(found["region"]))] = found
    return targets, hub


@dataclass(frozen=True)
class Change:
    """One state change (a target's, or the hub's: account "hub", region "all"), and its announcement."""

    account: str
    region: str
    event: str  # silent | recovered
    announcement_id: str
    last_seen: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "region": self.region,
            "event": self.event,
            "announcement_id": self.announcement_id,
            "last_seen": self.last_seen,
        }


@dataclass
class HeartbeatWatch:
    """The hub-side check, run by the sweeper every few minutes.

    When no target that has ever sent a heartbeat has been heard from in time, the hub is what is deaf
    (opsbot paused, the opsbot-heartbeats rule disabled, HeartbeatFunction failing, the bus policy): one
    alert says so instead of one per target, and targets are not judged until heartbeats arrive again.
    From then (``resumed_at``) each target gets its full allowance again before it can be called silent."""

    table: Any  # the ledger table
    fleet: Fleet
    notifier: Notifier | None
    clock: Callable[[], datetime] = utcnow
    grace: timedelta = FIRST_HEARTBEAT_GRACE

    def check(self) -> list[Change]:
        now = self.clock()
        known, hub = read(self.table)  # raises on a failed read: nothing below runs
        outbox = Outbox(self.table, self.notifier, self.clock)
        targets = self.fleet.targets()
        heard = [
            (seen, _interval(found.get("interval_minutes")))
            for found in (known.get(t) for t in targets)
            if found is not None and (seen := _time(found.get("last_seen"))) is not None
        ]
        made: list[Change] = []
        was_deaf = (hub.get("state") or OK) == SILENT
        within = [seen for seen, interval in heard if now - seen <= interval * MISSED_INTERVALS]
        # Deaf: every member heard from is overdue. Once deaf, only a heartbeat actually read within its
        # allowance brings the hub back (fail closed: nothing readable is not a recovery).
        deaf = (not within) if was_deaf else (bool(heard) and not within)
        if deaf != was_deaf:
            newest = max(seen for seen, _ in heard) if heard else None
            alert = hub_deaf_alert(len(heard), newest, now) if deaf else hub_back_alert(hub)
            change = self._move(HUB_KEY, "hub", "all", hub, deaf, alert, now, resumed=not deaf)
            made += [change] if change else []
        if not deaf:
            resumed_at = now if was_deaf else _time(hub.get("resumed_at"))
            names = {a.id: a.name for a in self.fleet.accounts}
            for account, region in targets:
                found = known.get((account, region))
                if found is None:
                    self._first_sighting(account, region, now)
                    continue
                change = self._judge(found, names.get(account, account), now, resumed_at)
                made += [change] if change else []
        for change in made:
            outbox.deliver(change.announcement_id)  # what fails stays pending; the sweeper flushes it
        return made

    def _first_sighting(self, account: str, region: str, now: datetime) -> None:
        """A target new to the fleet (or to this check): its grace starts now."""
        try:
            self.table.put_item(
                Item={
                    **key(account, region),
                    "account": account,
                    "region": region,
                    "expected_since": iso(now),
                    "state": OK,
                    "transitions": 0,
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:  # its first heartbeat was recorded in between
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def _judge(self, found: Mapping[str, Any], name: str, now: datetime, resumed_at: datetime | None) -> Change | None:
        account, region = str(found["account"]), str(found["region"])
        last_seen = _time(found.get("last_seen"))
        interval = _interval(found.get("interval_minutes"))
        if last_seen is not None:
            since, allowed = last_seen, interval * MISSED_INTERVALS
        elif found.get("last_seen") is not None:
            since, allowed = None, timedelta(0)  # a heartbeat that cannot be read is no heartbeat
        else:
            since, allowed = _time(found.get("expected_since")), self.grace
        if since is not None and resumed_at is not None:
            since = max(since, resumed_at)  # the hub was deaf until then: the target was not
        overdue = since is None or now - since > allowed
        fresh = last_seen is not None and now - last_seen <= interval * MISSED_INTERVALS
        silent_now = (found.get("state") or OK) == SILENT
        if not silent_now and overdue:
            alert = silence_alert(found, name, interval, now)
        elif silent_now and fresh:  # only a heartbeat read back recovers a target
            alert = recovery_alert(found, name)
        else:
            return None
        return self._move(key(account, region), account, region, found, not silent_now, alert, now)

    def _move(
        self,
        item_key: dict[str, str],
        account: str,
        region: str,
        found: Mapping[str, Any],
        silent: bool,
        alert: Alert,
        now: datetime,
        resumed: bool = False,
    ) -> Change | None:
        """The state change and its announcement, in one transaction, only if the record is as it was read
        (another sweeper, or a heartbeat recorded in between, leaves the decision to the next check)."""
        transitions = int(found.get("transitions") or 0)
        change = Change(
            account,
            region,
            "silent" if silent else "recovered",
            f"heartbeat#{account}#{region}#{transitions + 1}",
            found.get("last_seen"),
        )
        alert.data = change.as_dict()
        sets = "SET #state = :state, transitions = :next, changed_at = :now"
        sets += ", silent_since = :now" if silent else (", resumed_at = :now" if resumed else "")
        values: dict[str, Any] = {
            ":state": SILENT if silent else OK,
            ":next": transitions + 1,
            ":now": iso(now),
            ":transitions": transitions,
        }
        condition = "(attribute_not_exists(transitions) OR transitions = :transitions)"
        if found.get("last_seen") is None:
            condition += " AND attribute_not_exists(last_seen)"
        else:
            condition += " AND last_seen = :seen"
            values[":seen"] = found["last_seen"]
        update = {
            "Key": item_key,
            "UpdateExpression": sets,
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": values,
            "ConditionExpression": condition,
        }
        outbox = Outbox(self.table, self.notifier, self.clock)
        announcement = {
            "Put": {
                "Item": outbox.item(change.announcement_id, alert),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        try:
            transact(self.table, {"Update": update}, announcement)
        except ClientError as exc:
            if error_code(exc) not in CONDITION_FAILED:
                raise
            log.info("heartbeat %s/%s changed while judged; the next check decides", account, region)
            return None
        log.warning("heartbeat %s/%s: %s", account, region, change.event)
        return change


def _time(value: Any) -> datetime | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _interval(value: Any) -> timedelta:
    try:
        minutes = int(value)
    except (TypeError, ValueError):
        minutes = DEFAULT_INTERVAL_MINUTES
    return timedelta(minutes=min(max(minutes, MIN_INTERVAL_MINUTES), MAX_INTERVAL_MINUTES))


def _ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "never"
    minutes = int((now - then).total_seconds() // 60)
    return f"{minutes // 60}h {minutes % 60}m ago" if minutes >= 60 else f"{minutes}m ago"


def silence_alert(found: Mapping[str, Any], name: str, interval: timedelta, now: datetime) -> Alert:
    account, region, last = str(found["account"]), str(found["region"]), found.get("last_seen")
    seen = _time(last)
    heard = f"last heard from {_ago(seen, now)} ({last})" if seen else "never heard from since it joined the fleet"
    return Alert(
        title=f"Event forwarding silent: {name}/{region}",
        severity="critical",
        summary=(
            f"opsbot has had no heartbeat from {account}/{region}: {heard}. Security-group events from "
            "there may not reach the hub, so real-time remediation there is off until the hourly sweep."
        ),
        fields=[
            ("Account", f"{name} ({account})"),
            ("Region", region),
            ("Expected every", f"{int(interval.total_seconds() // 60)} minutes"),
            ("Last heartbeat", str(last or "never")),
        ],
        context=f"Runbook: {RUNBOOK}",
        kind="heartbeat",
    )


def recovery_alert(found: Mapping[str, Any], name: str) -> Alert:
    account, region, silent_since = str(found["account"]), str(found["region"]), found.get("silent_since")
    return Alert(
        title=f"Event forwarding back: {name}/{region}",
        severity="info",
        summary=(
            f"Heartbeats from {account}/{region} reach the hub again (last {found.get('last_seen')})"
            + (f"; silent since {silent_since}." if silent_since else ".")
        ),
        fields=[("Account", f"{name} ({account})"), ("Region", region)],
        context=f"Runbook: {RUNBOOK}",
        kind="heartbeat",
    )


def hub_deaf_alert(senders: int, newest: datetime | None, now: datetime) -> Alert:
    return Alert(
        title="opsbot hears no heartbeats from any member",
        severity="critical",
        summary=(
            f"None of the {senders} member account/regions that send heartbeats has been heard from in time "
            f"(the newest {_ago(newest, now)}): the hub is not receiving them. Is opsbot paused, the "
            "opsbot-heartbeats rule disabled, HeartbeatFunction failing or the hub bus policy changed? "
            "Members are not alerted one by one until heartbeats arrive again."
        ),
        fields=[("Member regions sending", str(senders)), ("Newest heartbeat", iso(newest) if newest else "none")],
        context=f"Runbook: {RUNBOOK}",
        kind="heartbeat",
    )


def hub_back_alert(hub: Mapping[str, Any]) -> Alert:
    since = hub.get("silent_since")
    return Alert(
        title="opsbot hears member heartbeats again",
        severity="info",
        summary=(
            "Heartbeats reach the hub again"
            + (f" (none since {since})" if since else "")
            + f". Each member now has {MISSED_INTERVALS} intervals to be heard from before it is alerted."
        ),
        context=f"Runbook: {RUNBOOK}",
        kind="heartbeat",
    )
