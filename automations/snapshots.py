"""EBS snapshots of opted-in instances and volumes, with retention and no duplicates per slot.

One call runs one unit (task, account, region). Listing is amortised: tag-filtered, paginated
DescribeInstances / DescribeVolumes / DescribeSnapshots per unit, DescribeImages only if something
is due for deletion; then one CreateSnapshot per volume and one DeleteSnapshot per expired snapshot.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from automations.schedules import slot_label
from automations.tasks import parse_task_list
from automations.units import UnitContext, UnitOutcome

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
TAG_TASK, TAG_RUN, TAG_SLOT = "opsbot:task", "opsbot:run-id", "opsbot:slot"
TAG_VOLUME, TAG_INSTANCE = "opsbot:volume-id", "opsbot:instance-id"
MAX_UNKNOWN_SAMPLES = 5


@dataclass
class Target:
    volume_id: str
    instance_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ExistingSnapshot:
    snapshot_id: str
    start_time: datetime
    state: str
    slot: str | None


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def _pages(ec2: Any, operation: str, key: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    for page in ec2.get_paginator(operation).paginate(**kwargs):
        yield from page[key]


class _Selection:
    """Resolves which volumes a task applies to, noting tag values that name no known task."""

    def __init__(self, ctx: UnitContext, outcome: UnitOutcome):
        self.ctx, self.outcome = ctx, outcome

    def wants(self, resource_id: str, tags: dict[str, str]) -> bool:
        names = parse_task_list(tags.get(self.ctx.task.selection_tag, ""))
        for name in names:
            if name not in self.ctx.known_tasks:
                samples = self.outcome.unknown_tasks.setdefault(name, [])
                if len(samples) < MAX_UNKNOWN_SAMPLES:
                    samples.append(resource_id)
                self.outcome.counts["unknown_task_tags"] += 1
        return self.ctx.task.name in names

    def targets(self, ec2: Any) -> dict[str, Target]:
        tag = self.ctx.task.selection_tag
        tag_filter = {"Name": "tag-key", "Values": [tag]}
        targets: dict[str, Target] = {}
        for reservation in _pages(
            ec2,
            "describe_instances",
            "Reservations",
            Filters=[tag_filter, {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}],
            PaginationConfig={"PageSize": 1000},
        ):
            for instance in reservation["Instances"]:
                tags = _tags(instance)
                if not self.wants(instance["InstanceId"], tags):
                    continue
                self.outcome.counts["instances_selected"] += 1
                for mapping in instance.get("BlockDeviceMappings", []):
                    if "Ebs" not in mapping:
                        continue
                    if self.ctx.task.exclude_boot_volume and mapping["DeviceName"] == instance.get("RootDeviceName"):
                        self.outcome.counts["boot_volumes_excluded"] += 1
                        continue
                    vid = mapping["Ebs"]["VolumeId"]
                    targets[vid] = Target(vid, instance["InstanceId"], dict(tags))
        for volume in _pages(
            ec2, "describe_volumes", "Volumes", Filters=[tag_filter], PaginationConfig={"PageSize": 500}
        ):
            tags = _tags(volume)
            if not self.wants(volume["VolumeId"], tags):
                continue
            attached = next((a["InstanceId"] for a in volume.get("Attachments", [])), None)
            target = targets.setdefault(volume["VolumeId"], Target(volume["VolumeId"], attached))
            target.tags.update(tags)  # a volume's own tags win over its instance's
        return targets


def _existing_snapshots(ec2: Any, task: str) -> dict[str, list[ExistingSnapshot]]:
    by_volume: dict[str, list[ExistingSnapshot]] = {}
    for snap in _pages(
        ec2,
        "describe_snapshots",
        "Snapshots",
        OwnerIds=["self"],
        Filters=[{"Name": f"tag:{TAG_TASK}", "Values": [task]}],
        PaginationConfig={"PageSize": 1000},
    ):
        tags = _tags(snap)
        volume = tags.get(TAG_VOLUME, snap.get("VolumeId", ""))
        by_volume.setdefault(volume, []).append(
            ExistingSnapshot(snap["SnapshotId"], snap["StartTime"], snap["State"], tags.get(TAG_SLOT))
        )
    return by_volume


def _snapshot_tags(ctx: UnitContext, target: Target) -> list[dict[str, str]]:
    copied = {k: target.tags[k] for k in ctx.task.copy_tags if k in target.tags}
    ours = {
        TAG_TASK: ctx.task.name,
        TAG_RUN: ctx.run_id,
        TAG_SLOT: slot_label(ctx.slot),
        TAG_VOLUME: target.volume_id,
    }
    if target.instance_id:
        ours[TAG_INSTANCE] = target.instance_id
    return [{"Key": k, "Value": v} for k, v in {**copied, **ours}.items()]


def _description(ctx: UnitContext, target: Target) -> str:
    return ctx.task.snapshot_description.format(
        task=ctx.task.name,
        volume_id=target.volume_id,
        instance_id=target.instance_id or "-",
        slot=slot_label(ctx.slot),
        account=ctx.account,
        region=ctx.region,
        run_id=ctx.run_id,
    )[:255]


def _error(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return f"{err.get('Code', 'ClientError')}: {err.get('Message', '')}"


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


class _AmiSnapshots:
    """Snapshot ids backing this account's AMIs, fetched once per unit and only when needed."""

    def __init__(self, ec2: Any):
        self.ec2 = ec2
        self._by_snapshot: dict[str, str] | None = None

    def image_of(self, snapshot_id: str) -> str | None:
        if self._by_snapshot is None:
            self._by_snapshot = {}
            for image in _pages(self.ec2, "describe_images", "Images", Owners=["self"]):
                for mapping in image.get("BlockDeviceMappings", []):
                    if sid := mapping.get("Ebs", {}).get("SnapshotId"):
                        self._by_snapshot[sid] = image["ImageId"]
        return self._by_snapshot.get(snapshot_id)


def _apply_retention(
    ec2: Any,
    ctx: UnitContext,
    target: Target,
    snapshots: list[ExistingSnapshot],
    amis: _AmiSnapshots,
    counts: Counter[str],
) -> None:
    retention = ctx.task.retention
    if retention is None:
        return
    for snap in expired(snapshots, retention.keep_last, retention.max_age_days, ctx.now()):
        base = ctx.about(snap.snapshot_id, "delete-snapshot")
        detail = {"volume_id": target.volume_id, "started": snap.start_time.isoformat()}
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
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "InvalidSnapshot.NotFound":
                counts["already_deleted"] += 1
                ctx.record(base(outcome="already-deleted", detail=detail))
            elif code == "InvalidSnapshot.InUse":  # registered to an AMI made after our listing
                counts["kept_in_use"] += 1
                ctx.record(base(outcome="kept-in-use", error=_error(exc), detail=detail))
            else:
                counts["failed"] += 1
                ctx.record(base(outcome="failed", error=_error(exc), detail=detail))
            continue
        counts["deleted"] += 1
        ctx.record(base(outcome="deleted", deleted_ids=[snap.snapshot_id], detail=detail))


def snapshot_unit(ec2: Any, ctx: UnitContext) -> UnitOutcome:
    """Snapshot every opted-in volume in one account/region once per slot, then apply retention."""
    outcome = UnitOutcome()
    counts = outcome.counts
    targets = _Selection(ctx, outcome).targets(ec2)
    counts["volumes_selected"] = len(targets)
    existing = _existing_snapshots(ec2, ctx.task.name)
    amis = _AmiSnapshots(ec2)
    label = slot_label(ctx.slot)
    # Start each slot at a different place: a unit that runs out of time does not skip the same tail of
    # volumes every day (the same slot always starts at the same place, so a re-run finishes it).
    ordered = sorted(targets.values(), key=lambda t: t.volume_id)
    offset = zlib.crc32(label.encode()) % len(ordered) if ordered else 0
    pending = ordered[offset:] + ordered[:offset]
    for index, target in enumerate(pending):
        if ctx.deadline.near():
            outcome.stopped_early = True
            counts["not_started"] += len(pending) - index
            break
        snaps = existing.get(target.volume_id, [])
        base = ctx.about(target.volume_id, "create-snapshot")
        detail = {"instance_id": target.instance_id} if target.instance_id else {}
        done = next((s for s in snaps if s.slot == label and s.state != "error"), None)
        if done is not None:
            counts["skipped_existing"] += 1
            ctx.record(base(outcome="skipped-existing", created_ids=[done.snapshot_id], detail=detail))
        elif ctx.dry_run:
            counts["would_create"] += 1
            ctx.record(base(outcome="would-create", detail=detail))
            # As if it were taken and completed: what retention would then delete.
            snaps = [*snaps, ExistingSnapshot("(new)", ctx.now(), "completed", label)]
        else:
            try:
                snap = ec2.create_snapshot(
                    VolumeId=target.volume_id,
                    Description=_description(ctx, target),
                    TagSpecifications=[{"ResourceType": "snapshot", "Tags": _snapshot_tags(ctx, target)}],
                )
            except ClientError as exc:
                # No new snapshot, so no retention either: never thin a volume's backups after a failure.
                counts["failed"] += 1
                ctx.record(base(outcome="failed", error=_error(exc), detail=detail))
                continue
            counts["created"] += 1
            ctx.record(base(outcome="created", created_ids=[snap["SnapshotId"]], detail=detail))
            snaps = [*snaps, ExistingSnapshot(snap["SnapshotId"], snap["StartTime"], snap["State"], label)]
        _apply_retention(ec2, ctx, target, snaps, amis, counts)
    return outcome
