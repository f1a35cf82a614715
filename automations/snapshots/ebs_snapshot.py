"""``ebs-snapshot``: EBS snapshots of opted-in instances and volumes, with retention, once per slot.

One unit is one (task, account, region). Listing is amortised: tag-filtered, paginated
DescribeInstances / DescribeVolumes / DescribeSnapshots per unit, DescribeImages only if something
is due for deletion; then one CreateSnapshot per volume and one DeleteSnapshot per expired snapshot.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from botocore.exceptions import BotoCoreError, ClientError

from automations.core.errors import error_text
from automations.core.kinds import TASK_KINDS, TaskKind, UnitContext, UnitOutcome
from automations.core.notify import Alert
from automations.core.rulebook import LoadedDocument, Problem
from automations.core.schedules import slot_label
from automations.core.tasks import parse_task_list
from automations.snapshots.common import (
    RETENTION_SCHEMA,
    TAG_INSTANCE,
    TAG_RUN,
    TAG_SLOT,
    TAG_TASK,
    TAG_VOLUME,
    AmiSnapshots,
    ExistingSnapshot,
    Retention,
    apply_retention,
    create_once,
    drop_duplicates,
    failed_problems,
    find_tagged,
    pages,
    snapshots_by,
    tag_list,
    tags_of,
)

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
MAX_UNKNOWN_SAMPLES = 5
DEFAULT_SELECTION_TAG = "OpsTaskList"
DEFAULT_SNAPSHOT_DESCRIPTION = "opsbot {task} {volume_id} slot {slot}"
# Placeholders a snapshot description may use; anything else is a typo caught by `opsbot validate`.
DESCRIPTION_FIELDS = frozenset({"task", "volume_id", "instance_id", "slot", "account", "region", "run_id"})


@dataclass(frozen=True)
class SnapshotOptions:
    selection_tag: str = DEFAULT_SELECTION_TAG
    retention: Retention | None = None
    copy_tags: tuple[str, ...] = ()
    exclude_boot_volume: bool = False
    snapshot_description: str = DEFAULT_SNAPSHOT_DESCRIPTION


@dataclass
class Target:
    volume_id: str
    instance_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class _Selection:
    """Resolves which volumes a task applies to, noting tag values that name no known task."""

    def __init__(self, ctx: UnitContext[SnapshotOptions], outcome: UnitOutcome):
        self.ctx, self.outcome = ctx, outcome

    def wants(self, resource_id: str, tags: dict[str, str]) -> bool:
        names = parse_task_list(tags.get(self.ctx.options.selection_tag, ""))
        for name in names:
            if name not in self.ctx.known_tasks:
                samples = self.outcome.unknown_tasks.setdefault(name, [])
                if len(samples) < MAX_UNKNOWN_SAMPLES:
                    samples.append(resource_id)
                self.outcome.counts["unknown_task_tags"] += 1
        return self.ctx.task.name in names

    def targets(self, ec2: Any) -> dict[str, Target]:
        tag_filter = {"Name": "tag-key", "Values": [self.ctx.options.selection_tag]}
        targets: dict[str, Target] = {}
        for reservation in pages(
            ec2,
            "describe_instances",
            "Reservations",
            Filters=[tag_filter, {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}],
            PaginationConfig={"PageSize": 1000},
        ):
            for instance in reservation["Instances"]:
                tags = tags_of(instance)
                if not self.wants(instance["InstanceId"], tags):
                    continue
                self.outcome.counts["instances_selected"] += 1
                for mapping in instance.get("BlockDeviceMappings", []):
                    if "Ebs" not in mapping:
                        continue
                    if self.ctx.options.exclude_boot_volume and mapping["DeviceName"] == instance.get("RootDeviceName"):
                        self.outcome.counts["boot_volumes_excluded"] += 1
                        continue
                    vid = mapping["Ebs"]["VolumeId"]
                    targets[vid] = Target(vid, instance["InstanceId"], dict(tags))
        for volume in pages(
            ec2, "describe_volumes", "Volumes", Filters=[tag_filter], PaginationConfig={"PageSize": 500}
        ):
            tags = tags_of(volume)
            if not self.wants(volume["VolumeId"], tags):
                continue
            attached = next((a["InstanceId"] for a in volume.get("Attachments", [])), None)
            target = targets.setdefault(volume["VolumeId"], Target(volume["VolumeId"], attached))
            target.tags.update(tags)  # a volume's own tags win over its instance's
        return targets


def _identity_tags(ctx: UnitContext[SnapshotOptions], target: Target) -> dict[str, str]:
    """The tags that say which slot and volume a snapshot is for: written with the create, looked up on retry."""
    return {TAG_TASK: ctx.task.name, TAG_SLOT: slot_label(ctx.slot), TAG_VOLUME: target.volume_id}


def _snapshot_tags(ctx: UnitContext[SnapshotOptions], target: Target) -> list[dict[str, str]]:
    copied = {k: target.tags[k] for k in ctx.options.copy_tags if k in target.tags}
    ours = {**_identity_tags(ctx, target), TAG_RUN: ctx.run_id}
    if target.instance_id:
        ours[TAG_INSTANCE] = target.instance_id
    return tag_list({**copied, **ours})


def _description(ctx: UnitContext[SnapshotOptions], target: Target) -> str:
    return ctx.options.snapshot_description.format(
        task=ctx.task.name,
        volume_id=target.volume_id,
        instance_id=target.instance_id or "-",
        slot=slot_label(ctx.slot),
        account=ctx.account,
        region=ctx.region,
        run_id=ctx.run_id,
    )[:255]


def _age(snap: ExistingSnapshot) -> tuple[Any, str]:
    return (snap.start_time, snap.snapshot_id)


@TASK_KINDS.register
class EbsSnapshot(TaskKind[SnapshotOptions]):
    name = "ebs-snapshot"
    capability = "snapshots"
    summary = "EBS snapshots of tagged instances and volumes, once per schedule slot, with retention."
    runbook = "docs/runbooks/ebs-snapshots.md"
    schema: ClassVar[dict[str, Any]] = {
        "selection_tag": {"type": "string", "minLength": 1, "maxLength": 128},
        "retention": RETENTION_SCHEMA,
        "copy_tags": {
            "type": "array",
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1, "maxLength": 128, "not": {"pattern": "^(aws:|opsbot:)"}},
        },
        "exclude_boot_volume": {"type": "boolean"},
        "snapshot_description": {"type": "string", "maxLength": 255},
    }
    member_actions = frozenset(
        {
            "ec2:DescribeInstances",
            "ec2:DescribeVolumes",
            "ec2:DescribeSnapshots",
            "ec2:DescribeImages",
            "ec2:CreateSnapshot",
            "ec2:CreateTags",  # tagging on create is authorised as CreateTags (ec2:CreateAction)
            "ec2:DeleteSnapshot",
        }
    )

    def options(self, raw: Mapping[str, Any]) -> SnapshotOptions:
        return SnapshotOptions(
            selection_tag=raw.get("selection_tag", DEFAULT_SELECTION_TAG),
            retention=Retention.parse(raw.get("retention")),
            copy_tags=tuple(raw.get("copy_tags", ())),
            exclude_boot_volume=raw.get("exclude_boot_volume", False),
            snapshot_description=raw.get("snapshot_description", DEFAULT_SNAPSHOT_DESCRIPTION),
        )

    def check(self, doc: LoadedDocument, index: int) -> list[Problem]:
        template = doc.data["tasks"][index].get("snapshot_description")
        if template is None:
            return []
        where = ("tasks", index, "snapshot_description")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            return [doc.problem(where, f"bad template: {exc}")]
        unknown = sorted(fields - DESCRIPTION_FIELDS)
        if unknown:
            return [doc.problem(where, f"unknown placeholder(s) {unknown}; allowed: {sorted(DESCRIPTION_FIELDS)}")]
        return []

    def run_unit(self, ctx: UnitContext[SnapshotOptions]) -> UnitOutcome:
        """Snapshot every opted-in volume in one account/region once per slot, then apply retention."""
        ec2 = ctx.client("ec2")
        outcome = UnitOutcome()
        counts = outcome.counts
        targets = _Selection(ctx, outcome).targets(ec2)
        counts["volumes_selected"] = len(targets)
        existing = snapshots_by(ec2, ctx.task.name, TAG_VOLUME)
        amis = AmiSnapshots(ec2)
        label = slot_label(ctx.slot)
        # Start each slot at a different place: a unit that runs out of time does not skip the same tail
        # of volumes every day (the same slot always starts at the same place, so a re-run finishes it).
        ordered = sorted(targets.values(), key=lambda t: t.volume_id)
        offset = zlib.crc32(label.encode()) % len(ordered) if ordered else 0
        pending = ordered[offset:] + ordered[:offset]
        for index, target in enumerate(pending):
            if ctx.deadline.near():
                counts["not_started"] += len(pending) - index
                outcome.problems.append(f"stopped before the time limit; not started: {counts['not_started']}")
                break
            snaps = existing.get(target.volume_id, [])
            created = self._snapshot(ec2, ctx, target, snaps, label, counts)
            if created is None:
                continue  # no new snapshot, so no retention either: never thin backups after a failure
            apply_retention(ec2, ctx, ctx.options.retention, target.volume_id, [*snaps, *created], amis, counts)
        outcome.problems += failed_problems(counts)
        return outcome

    def _snapshot(
        self,
        ec2: Any,
        ctx: UnitContext[SnapshotOptions],
        target: Target,
        snaps: list[ExistingSnapshot],
        label: str,
        counts: Any,
    ) -> list[ExistingSnapshot] | None:
        """This slot's snapshot of one volume: found, taken, or (dry run) imagined. None when it failed."""
        base = ctx.about(target.volume_id, "create-snapshot")
        detail = {"instance_id": target.instance_id} if target.instance_id else {}
        same_slot = sorted((s for s in snaps if s.slot == label and s.state != "error"), key=_age)
        if same_slot:
            done, extra = same_slot[0], same_slot[1:]
            counts["skipped_existing"] += 1
            ctx.record(base(outcome="skipped-existing", created_ids=[done.snapshot_id], detail=detail))
            if extra and not ctx.dry_run:  # two for one slot (a create that slipped past every guard)
                drop_duplicates(ec2, ctx, target.volume_id, extra, counts)
            return []
        if ctx.dry_run:
            counts["would_create"] += 1
            ctx.record(base(outcome="would-create", detail=detail))
            # As if it were taken and completed: what retention would then delete.
            return [ExistingSnapshot("(new)", ctx.now(), "completed", label, {})]
        once = ctx.client("ec2", retries=False)
        try:
            snap, recovered = create_once(
                lambda: once.create_snapshot(
                    VolumeId=target.volume_id,
                    Description=_description(ctx, target),
                    TagSpecifications=[{"ResourceType": "snapshot", "Tags": _snapshot_tags(ctx, target)}],
                ),
                lambda: find_tagged(ec2, _identity_tags(ctx, target)),
            )
        except (ClientError, BotoCoreError) as exc:
            counts["failed"] += 1
            ctx.record(base(outcome="failed", error=error_text(exc), detail=detail))
            return None
        counts["created"] += 1
        if recovered:
            counts["found_after_error"] += 1
        ctx.record(base(outcome="created", created_ids=[snap["SnapshotId"]], detail=detail))
        return [ExistingSnapshot(snap["SnapshotId"], snap["StartTime"], snap["State"], label, {})]

    def render(self, run: Mapping[str, Any], env: Any) -> Alert:
        alert = super().render(run, env)
        counts = run.get("counts", {})
        alert.fields += [
            ("Created", str(counts.get("created", 0))),
            ("Failed actions", str(counts.get("failed", 0))),
            ("Deleted", str(counts.get("deleted", 0))),
            ("Dry run", "yes" if run.get("dry_run") else "no"),
        ]
        return alert
