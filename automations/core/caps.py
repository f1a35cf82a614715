"""Caps on how many opsbot units run at once in one member account and in one account-region.

A member's API rate limits (EC2, CloudWatch) are per account and region, and they are shared with the
member's own workloads. The Distributed Map's MaxConcurrency caps a run as a whole; these caps make sure
that a run over 1,000 accounts, or two tasks due at the same hour, never put more than ``per_account``
units into one account, nor more than ``per_region`` into one of its regions, at once. (The manifest's
interleaved order already spreads a run's concurrent units over accounts; this makes it a guarantee.)

A unit takes a lease in two ledger items, ``CAP#<account>`` and ``CAP#<account>#<region>``: its holder id
``<run>|<region>`` joins a string set (``holders``) by a conditional ADD, only while the set is smaller than
the cap, and its lease's end is written beside it (attribute ``lease:<holder>``). The holder id is the
unit's own, so a retried unit (its first attempt died, or a reply was lost) holds the same place, never a
second one, and its release removes exactly it. A unit that finds a cap full raises ``MemberBusy`` before
it starts: the state machine retries it later (locally, the thread-pool runner waits). A holder whose lease
has ended (its unit died) is dropped by the next unit that finds the cap full.

Breach checks take no lease: a check unit is read-only and makes a handful of calls (GetMetricData,
ListServiceQuotas), batched and interleaved across accounts (manifest.py), against the hundreds to
thousands a task unit may make.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from automations.core import iam
from automations.core.clock import iso, parse_time, utcnow

# A unit's Lambda lives at most 15 minutes: a lease older than this belongs to a unit that died.
LEASE = timedelta(minutes=16)
CONDITION_FAILED = "ConditionalCheckFailedException"
GRANTS = iam.grants(iam.LEDGER, "dynamodb:UpdateItem", "dynamodb:GetItem")


class MemberBusy(Exception):
    """The member account (or account-region) already runs as many opsbot units as its cap allows."""

    def __init__(self, key: str, cap: int):
        self.key, self.cap = key, cap
        super().__init__(f"{key}: {cap} opsbot unit(s) already running there; try again later")


@dataclass(frozen=True)
class MemberCaps:
    table: Any  # the ledger table (boto3 Table resource)
    per_account: int = 4  # 0: no cap
    per_region: int = 1
    clock: Callable[[], datetime] = utcnow

    @contextmanager
    def hold(self, run_id: str, account: str, region: str) -> Iterator[None]:
        """Hold a place in the account's and the account-region's caps for the body; MemberBusy if full."""
        holder = f"{run_id}|{region}"
        keys = [
            (key, cap)
            for key, cap in ((f"CAP#{account}", self.per_account), (f"CAP#{account}#{region}", self.per_region))
            if cap > 0
        ]
        try:
            for key, cap in keys:
                self._take(key, cap, holder)
        except BaseException:
            # Also the key being taken: its ADD may have been applied though the reply was lost.
            self._release([key for key, _ in keys], holder)
            raise
        try:
            yield
        finally:
            self._release([key for key, _ in keys], holder)

    def _take(self, key: str, cap: int, holder: str) -> None:
        until = iso(self.clock() + LEASE)
        for attempt in range(2):
            try:
                self.table.update_item(
                    Key={"pk": key, "sk": "CAP"},
                    UpdateExpression="ADD holders :h SET #lease = :until",
                    # Already a holder (an earlier attempt of this unit): its place, renewed.
                    ConditionExpression=(
                        "attribute_not_exists(holders) OR size(holders) < :cap OR contains(holders, :me)"
                    ),
                    ExpressionAttributeNames={"#lease": f"lease:{holder}"},
                    ExpressionAttributeValues={":h": {holder}, ":me": holder, ":cap": cap, ":until": until},
                )
                return
            except ClientError as exc:
                if exc.response["Error"]["Code"] != CONDITION_FAILED:
                    raise
            item = self.table.get_item(Key={"pk": key, "sk": "CAP"}, ConsistentRead=True).get("Item", {})
            now = self.clock()
            stale = {str(h) for h in item.get("holders", set()) if _ended(item.get(f"lease:{h}"), now)}
            if not stale or attempt:
                break
            names = {f"#l{i}": f"lease:{h}" for i, h in enumerate(sorted(stale))}
            self.table.update_item(
                Key={"pk": key, "sk": "CAP"},
                UpdateExpression="DELETE holders :stale REMOVE " + ", ".join(names),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":stale": stale},
            )
        raise MemberBusy(key, cap)

    def _release(self, keys: list[str], holder: str) -> None:
        # Best effort: a release that fails leaves a holder that the next full cap drops once its lease ends.
        for key in reversed(keys):
            with suppress(ClientError, BotoCoreError):
                self.table.update_item(
                    Key={"pk": key, "sk": "CAP"},
                    UpdateExpression="DELETE holders :h REMOVE #lease",
                    ExpressionAttributeNames={"#lease": f"lease:{holder}"},
                    ExpressionAttributeValues={":h": {holder}},
                )


def _ended(lease: object, now: datetime) -> bool:
    """A lease that has ended, or that is not one this code wrote (it must never block a cap forever)."""
    try:
        return parse_time(str(lease)) < now
    except ValueError:
        return True
