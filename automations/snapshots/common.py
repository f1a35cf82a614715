"""What the two snapshot kinds share: opsbot's tags, listing, retention, and creates made idempotent.

CreateSnapshot and CopySnapshot take no client token, so a create whose reply was lost and then
retried would make a second snapshot. ``create_once`` makes them idempotent instead: the snapshot is
tagged with its slot and source at creation (TagSpecifications, atomic with the create), the call is
made with botocore's automatic retries off, and after any error or timeout the tag is looked up before
trying again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from automations.core.errors import error_code, error_text, retryable
from automations.core.kinds import UnitContext
from automations.core.ledger import Action

TAG_TASK, TAG_RUN, TAG_SLOT = "opsbot:task", "opsbot:run-id", "opsbot:slot"
TAG_VOLUME, TAG_INSTANCE = "opsbot:volume-id", "opsbot:instance-id"
TAG_SOURCE, TAG_SOURCE_REGION, TAG_SOURCE_ACCOUNT = (
    "opsbot:source-snapshot",
    "opsbot:source-region",
    "opsbot:source-account",
)
RETENTION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "keep_last": {"type": "integer", "minimum": 1, "maximum": 1000},
        "max_age_days": {"type": "integer", "minimum": 1, "maximum": 36500},
    },
}
CREATE_ATTEMPTS = 8  # as many as botocore's own retries get elsewhere (automations.core.fleet.CLIENT_CONFIG)


@dataclass(frozen=True)
class Retention:
    keep_last: int | None = None
    max_age_days: int | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Retention | None:
        return cls(raw.get("keep_last"), raw.get("max_age_days")) if raw else None


@dataclass
class ExistingSnapshot:
    snapshot_id: str
    start_time: datetime
    state: str
    slot: str | None
    tags: dict[str, str] = field(default_factory=dict)


def tags_of(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def pages(client: Any, operation: str, key: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page[key]


def snapshots_by(ec2: Any, task: str, key_tag: str) -> dict[str, list[ExistingSnapshot]]:
    """This account's snapshots that ``task`` made, grouped by the value of ``key_tag``."""
    grouped: dict[str, list[ExistingSnapshot]] = {}
    for snap in pages(
        ec2,
        "describe_snapshots",
        "Snapshots",
        OwnerIds=["self"],
        Filters=[{"Name": f"tag:{TAG_TASK}", "Values": [task]}],
        PaginationConfig={"PageSize": 1000},
    ):
        tags = tags_of(snap)
        key = tags.get(key_tag, snap.get("VolumeId", ""))
        grouped.setdefault(key, []).append(
            ExistingSnapshot(snap["SnapshotId"], snap["StartTime"], snap["State"], tags.get(TAG_SLOT), tags)
        )
    return grouped


def find_tagged(ec2: Any, tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The snapshot carrying all these tags (the one a lost-reply create made), if there is one."""
    found = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    )["Snapshots"]
    usable = [s for s in found if s.get("State") != "error"]
    return min(usable, key=lambda s: s["StartTime"]) if usable else None


R = TypeVar("R")


def create_once(
    create: Callable[[], R],
    find: Callable[[], R | None],
    *,
    attempts: int = CREATE_ATTEMPTS,
    sleep: Callable[[float], None] | None = None,
) -> tuple[R, bool]:
    """Call a create that takes no client token until it is known to have happened, exactly once.

    ``create`` must be made with automatic retries off and must tag what it creates; ``find`` looks
    that tag up. Returns (the resource, True if it was found after an error rather than returned)."""
    for attempt in range(attempts):
        try:
            return create(), False
        except (ClientError, BotoCoreError) as exc:
            again = retryable(exc) and attempt < attempts - 1
            if again:  # back off first: a snapshot just made may take a moment to show in a listing
                (sleep or time.sleep)(min(8.0, 0.5 * 2**attempt))
            found = find()  # applied although the reply was lost, throttled or answered 500?
            if found is not None:
                return found, True
            if not again:
                raise
    raise AssertionError("unreachable")


def expired(
    snapshots: list[ExistingSnapshot], keep_last: int | None, max_age_days: int | None, now: datetime
) -> list[ExistingSnapshot]:
    """Completed snapshots past retention: beyond the newest ``keep_last`` or older than ``max_age_days``.

    Only completed snapshots count as backups: a pending one may still fail and an errored one restores
    nothing, so neither is ranked (nor deleted). The newest completed snapshot is always kept, whatever
    its age: retention never leaves a volume without a usable backup.
    """
    # StartTime has one-second resolution: the slot label breaks ties between snapshots of one second.
    completed = sorted(
        (s for s in snapshots if s.state == "completed"), key=lambda s: (s.start_time, s.slot or ""), reverse=True
    )
    cutoff = now - timedelta(days=max_age_days) if max_age_days else None
    return [
        snap
        for rank, snap in enumerate(completed)
        if rank > 0
        and ((keep_last is not None and rank >= keep_last) or (cutoff is not None and snap.start_time < cutoff))
    ]


class AmiSnapshots:
    """Snapshot ids backing this account's AMIs, fetched once per unit and only when needed."""

    def __init__(self, ec2: Any):
        self.ec2 = ec2
        self._by_snapshot: dict[str, str] | None = None

    def image_of(self, snapshot_id: str) -> str | None:
        if self._by_snapshot is None:
            self._by_snapshot = {}
            for image in pages(self.ec2, "describe_images", "Images", Owners=["self"]):
                for mapping in image.get("BlockDeviceMappings", []):
                    if sid := mapping.get("Ebs", {}).get("SnapshotId"):
                        self._by_snapshot[sid] = image["ImageId"]
        return self._by_snapshot.get(snapshot_id)


def apply_retention(
    ec2: Any,
    ctx: UnitContext[Any],
    retention: Retention | None,
    volume_id: str,
    snapshots: list[ExistingSnapshot],
    amis: AmiSnapshots,
    counts: Counter[str],
    where: tuple[str, str] | None = None,
) -> None:
    """Delete this task's snapshots of one volume that are past retention (never one backing an AMI).

    ``where`` is the (account, region) they are in when it is not the unit's own (DR copies): the
    ledger records each deletion where it happened."""
    if retention is None:
        return
    for snap in expired(snapshots, retention.keep_last, retention.max_age_days, ctx.now()):
        account, region = where or (ctx.account, ctx.region)
        base = partial(Action, account, region, snap.snapshot_id, "delete-snapshot")
        detail = {"volume_id": volume_id, "started": snap.start_time.isoformat()}
        if image := amis.image_of(snap.snapshot_id):
            counts["kept_ami"] += 1
            ctx.record(base(outcome="kept-ami", detail={**detail, "image_id": image}))
            continue
        if ctx.dry_run:
            counts["would_delete"] += 1
            ctx.record(base(outcome="would-delete", detail=detail))
            continue
        try:
            ec2.delete_snapshot(SnapshotId=snap.snapshot_id)
        except ClientError as exc:
            code = error_code(exc)
            if code == "InvalidSnapshot.NotFound":
                counts["already_deleted"] += 1
                ctx.record(base(outcome="already-deleted", detail=detail))
            elif code == "InvalidSnapshot.InUse":  # registered to an AMI made after our listing
                counts["kept_in_use"] += 1
                ctx.record(base(outcome="kept-in-use", error=error_text(exc), detail=detail))
            else:
                counts["failed"] += 1
                ctx.record(base(outcome="failed", error=error_text(exc), detail=detail))
            continue
        counts["deleted"] += 1
        ctx.record(base(outcome="deleted", deleted_ids=[snap.snapshot_id], detail=detail))


def drop_duplicates(
    ec2: Any,
    ctx: UnitContext[Any],
    volume_id: str,
    extra: list[ExistingSnapshot],
    counts: Counter[str],
    where: tuple[str, str] | None = None,
) -> None:
    """Delete the newer of two snapshots made for one slot (or copies of one source): the oldest stays."""
    account, region = where or (ctx.account, ctx.region)
    for snap in extra:
        base = partial(Action, account, region, snap.snapshot_id, "delete-duplicate")
        try:
            ec2.delete_snapshot(SnapshotId=snap.snapshot_id)
        except ClientError as exc:
            if error_code(exc) != "InvalidSnapshot.NotFound":
                counts["failed"] += 1
                ctx.record(base(outcome="failed", error=error_text(exc), detail={"volume_id": volume_id}))
                continue
        counts["duplicates_deleted"] += 1
        ctx.record(base(outcome="deleted", deleted_ids=[snap.snapshot_id], detail={"volume_id": volume_id}))


def failed_problems(counts: Counter[str]) -> list[str]:
    return [f"{counts['failed']} action(s) failed"] if counts["failed"] else []
