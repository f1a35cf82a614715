"""Announcements (SNS, Slack) through an outbox, so each is made once even when replies are lost.

A state change that calls for an announcement (a run closed, an alert opened, a rule revoked) writes the
announcement as "pending" in the same DynamoDB write as the change itself (a transaction). Delivery then
claims it (conditional: one deliverer at a time), sends it to the channels it has not reached yet, and
marks it sent. What was not delivered stays pending: the next invocation that touches it, and the
scheduled sweeper (``handlers/sweeper.py``), deliver it again. The announcement id is deterministic
(``run#<run id>``, ``alert#<alert id>#<version>``...), so a retried transition cannot add a second one,
and it travels with the message (SNS attribute, Slack metadata) for subscribers to drop a duplicate that
a crash between "sent" and "marked sent" may cause.

Items (ledger table): pk = OUTBOX#<id>, sk = OUTBOX; pending ones carry pending_pk = "OUTBOX" (the
sparse "pending" index), removed once every channel has it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from automations.core.clock import iso, utcnow
from automations.core.errors import error_code
from automations.core.ledger import PENDING_INDEX, new_token, plain, query_all, to_dynamo
from automations.core.notify import Alert, Notifier

log = logging.getLogger(__name__)

OUTBOX_LIST = "OUTBOX"
PENDING, SENDING, SENT = "PENDING", "SENDING", "SENT"
CLAIM_STALE = timedelta(minutes=5)  # a deliverer that has not finished in 5 minutes has died
KEEP_DAYS = 30


@dataclass
class Outbox:
    table: Any  # the ledger table
    notifier: Notifier | None
    clock: Callable[[], datetime] = utcnow

    @staticmethod
    def key(announcement_id: str) -> dict[str, str]:
        return {"pk": f"OUTBOX#{announcement_id}", "sk": "OUTBOX"}

    def item(self, announcement_id: str, alert: Alert) -> dict[str, Any]:
        """The pending entry, for a transaction with the change that calls for it."""
        now = self.clock()
        return to_dynamo(
            {
                **self.key(announcement_id),
                "announcement_id": announcement_id,
                "status": PENDING,
                "alert": alert.to_dict(),
                "created_at": iso(now),
                "attempts": 0,
                "delivered": [],
                "pending_pk": OUTBOX_LIST,
                "pending_sk": f"{iso(now)}#{announcement_id}",
                "expires_at": int((now + timedelta(days=KEEP_DAYS)).timestamp()),
            }
        )

    def add(self, announcement_id: str, alert: Alert) -> bool:
        """Pending, unless an announcement with this id exists (then False: it is a duplicate)."""
        try:
            self.table.put_item(Item=self.item(announcement_id, alert), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def announce(self, announcement_id: str, alert: Alert) -> list[str]:
        """Add and deliver at once; returns the channels' errors (the entry stays pending for a retry)."""
        self.add(announcement_id, alert)
        return self.deliver(announcement_id)

    def get(self, announcement_id: str) -> dict[str, Any] | None:
        found = self.table.get_item(Key=self.key(announcement_id), ConsistentRead=True).get("Item")
        return plain(found) if found else None

    def deliver(self, announcement_id: str) -> list[str]:
        """Deliver what this entry has not delivered yet; returns the errors ([] when all went out)."""
        if self.notifier is None:
            return []
        entry = self._claim(announcement_id)
        if entry is None:
            return []  # sent already, or another deliverer holds it
        done = frozenset(entry.get("delivered") or ())
        errors = self.notifier.send(Alert.from_dict(entry["alert"]), announcement_id, skip=done)
        failed = {e.split(":", 1)[0] for e in errors}
        delivered = sorted(done | (self.notifier.channels() - failed))
        self._finish(announcement_id, entry["claim"], delivered, errors)
        return errors

    def _claim(self, announcement_id: str) -> dict[str, Any] | None:
        now, claim = self.clock(), new_token()
        try:
            reply = self.table.update_item(
                Key=self.key(announcement_id),
                UpdateExpression="SET #s = :sending, claim = :claim, claimed_at = :now ADD attempts :one",
                ConditionExpression="#s = :pending OR (#s = :sending AND claimed_at < :stale)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":sending": SENDING,
                    ":pending": PENDING,
                    ":claim": claim,
                    ":now": iso(now),
                    ":stale": iso(now - CLAIM_STALE),
                    ":one": 1,
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            stored = self.get(announcement_id)  # our own claim, applied though its reply was lost?
            return stored if stored and stored.get("claim") == claim else None
        return plain(reply["Attributes"])

    def _finish(self, announcement_id: str, claim: str, delivered: list[str], errors: list[str]) -> None:
        complete = not errors
        update = "SET #s = :status, delivered = :delivered, last_error = :error" + (
            ", sent_at = :now REMOVE pending_pk, pending_sk" if complete else ""
        )
        values: dict[str, Any] = {
            ":status": SENT if complete else PENDING,
            ":delivered": delivered,
            ":error": "; ".join(errors)[:1000] or None,
            ":claim": claim,
        }
        if complete:
            values[":now"] = iso(self.clock())
        try:
            self.table.update_item(
                Key=self.key(announcement_id),
                UpdateExpression=update,
                ConditionExpression="claim = :claim",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:  # our claim went stale and another deliverer took over: it finishes
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            log.warning("announcement %s: claim lost before it was marked", announcement_id)

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """Undelivered announcements, oldest first (the sparse pending index)."""
        found = query_all(self.table, IndexName=PENDING_INDEX, KeyConditionExpression=Key("pending_pk").eq(OUTBOX_LIST))
        out = []
        for entry in found:
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def flush(self, limit: int = 100) -> Counter[str]:
        """The sweeper's job: deliver what is still pending (or stuck with a dead deliverer)."""
        counts: Counter[str] = Counter()
        for entry in self.pending(limit):
            errors = self.deliver(entry["announcement_id"])
            counts["undelivered" if errors else "delivered"] += 1
        return counts
