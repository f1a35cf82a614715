"""``ebs-snapshot-copy``: disaster-recovery copies of another task's snapshots in a DR region (and account).

One unit is one source (account, region). Each run copies the source task's completed opsbot snapshots
of the last ``lookback_days`` that have no copy yet; a source still pending is left for the next slot.
Copies are encrypted with the task's KMS key, carry the source's tags plus their own (source snapshot,
region, account, slot), and the copy task keeps its own retention in the DR region.

CopySnapshot takes no client token. A copy is found by its ``opsbot:source-snapshot`` tag, written with
the copy itself (TagSpecifications), so a retried slot or a lost reply never makes a second copy of one
source (``automations.snapshots.common.create_once``). A copy that ended in state ``error`` (a KMS key
the copy could not use, found only after the call returned) counts as no copy: it is deleted and the
source copied again.

Into another account, the source is first shared with it (ModifySnapshotAttribute createVolumePermission)
and the copy is made there with the member role of that account. An encrypted source must then use a
customer managed key that the DR account may use (see docs/runbooks/ebs-snapshots.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, ClassVar

from botocore.exceptions import BotoCoreError, ClientError

from automations.core.errors import error_code, error_text
from automations.core.kinds import TASK_KINDS, KindEnv, TaskDefinition, TaskKind, UnitContext, UnitOutcome
from automations.core.ledger import Action
from automations.core.notify import Alert
from automations.core.rulebook import LoadedDocument, Problem
from automations.core.schedules import slot_label
from automations.core.tasks import ACCOUNT_ID, REGION
from automations.snapshots.common import (
    RETENTION_SCHEMA,
    TAG_RUN,
    TAG_SLOT,
    TAG_SOURCE,
    TAG_SOURCE_ACCOUNT,
    TAG_SOURCE_REGION,
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
    snapshots_by,
    tag_list,
)

DEFAULT_LOOKBACK_DAYS = 3


@dataclass(frozen=True)
class CopyOptions:
    source_task: str
    region: str  # the DR region
    kms_key_id: str
    account: str | None = None  # the DR account; None: the source's own
    retention: Retention | None = None
    lookback_days: int = DEFAULT_LOOKBACK_DAYS

    def destination(self, source_account: str) -> tuple[str, str]:
        return (self.account or source_account, self.region)


def _copy_tags(source: ExistingSnapshot, ctx: UnitContext[CopyOptions]) -> dict[str, str]:
    """The source's own tags (a person's and opsbot's volume/instance ones), then the copy's identity."""
    carried = {k: v for k, v in source.tags.items() if not k.startswith("aws:")}
    return {
        **carried,
        TAG_TASK: ctx.task.name,
        TAG_SLOT: slot_label(ctx.slot),
        TAG_RUN: ctx.run_id,
        TAG_SOURCE: source.snapshot_id,
        TAG_SOURCE_REGION: ctx.region,
        TAG_SOURCE_ACCOUNT: ctx.account,
    }


@TASK_KINDS.register
class EbsSnapshotCopy(TaskKind[CopyOptions]):
    name = "ebs-snapshot-copy"
    capability = "snapshots"
    summary = "Copies of another task's EBS snapshots to a DR region (and account), encrypted, with retention."
    runbook = "docs/runbooks/ebs-snapshots.md"
    schema: ClassVar[dict[str, Any]] = {
        "source_task": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
        "destination": {
            "type": "object",
            "additionalProperties": False,
            "required": ["region", "kms_key_id"],
            "properties": {
                "region": REGION,
                "account": ACCOUNT_ID,
                "kms_key_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 2048,
                    "description": "Key id, ARN, alias/NAME or alias ARN of a KMS key in the DR region.",
                },
            },
        },
        "retention": RETENTION_SCHEMA,
        "lookback_days": {"type": "integer", "minimum": 1, "maximum": 365},
    }
    required = ("source_task", "destination")
    # Source side: list, share with a DR account. DR side: list, copy (tagged on create), prune. KMS: what
    # EBS encryption needs from the caller (Amazon EBS User Guide, "Requirements for Amazon EBS encryption").
    member_actions = frozenset(
        {
            "ec2:DescribeSnapshots",
            "ec2:ModifySnapshotAttribute",
            "ec2:CopySnapshot",
            "ec2:CreateTags",
            "ec2:DeleteSnapshot",
            "ec2:DescribeImages",
            "kms:DescribeKey",
            "kms:CreateGrant",
            "kms:Decrypt",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo",
        }
    )

    def options(self, raw: Mapping[str, Any]) -> CopyOptions:
        destination = raw["destination"]
        return CopyOptions(
            source_task=raw["source_task"],
            region=destination["region"],
            kms_key_id=destination["kms_key_id"],
            account=destination.get("account"),
            retention=Retention.parse(raw.get("retention")),
            lookback_days=raw.get("lookback_days", DEFAULT_LOOKBACK_DAYS),
        )

    def check(self, doc: LoadedDocument, index: int) -> list[Problem]:
        task = doc.data["tasks"][index]
        kinds = {t["name"]: t["kind"] for t in doc.data["tasks"]}
        source = task["source_task"]
        if kinds.get(source) != "ebs-snapshot":
            found = f"a task of kind {kinds[source]}" if source in kinds else "no task of that name"
            return [
                doc.problem(("tasks", index, "source_task"), f"{source!r} must be an ebs-snapshot task; found {found}")
            ]
        return []

    def plan(self, task: TaskDefinition, targets: list[tuple[str, str]], env: KindEnv) -> list[tuple[str, str]]:
        opts: CopyOptions = task.options
        # A source that is its own destination has nothing to copy to.
        return [(a, r) for a, r in targets if opts.destination(a) != (a, r)]

    def run_unit(self, ctx: UnitContext[CopyOptions]) -> UnitOutcome:
        opts = ctx.options
        dest_account, dest_region = opts.destination(ctx.account)
        here = (ctx.account, ctx.region)
        source_ec2 = ctx.client("ec2")
        dest_ec2 = ctx.client("ec2", dest_account, dest_region)
        outcome = UnitOutcome()
        counts = outcome.counts
        # From the slot, so a re-run of an older slot (opsbot run --slot) reaches that slot's snapshots.
        since = ctx.slot - timedelta(days=opts.lookback_days)
        sources = sorted(
            (s for group in snapshots_by(source_ec2, opts.source_task, TAG_VOLUME).values() for s in group),
            key=lambda s: s.start_time,
        )
        copies: dict[str, ExistingSnapshot] = {}
        for key, group in snapshots_by(dest_ec2, ctx.task.name, TAG_SOURCE).items():
            mine = [c for c in group if (c.tags.get(TAG_SOURCE_ACCOUNT), c.tags.get(TAG_SOURCE_REGION)) == here]
            for broken in (c for c in mine if c.state == "error"):
                self._drop_failed_copy(ctx, dest_ec2, broken, (dest_account, dest_region), counts)
            usable = sorted((c for c in mine if c.state != "error"), key=lambda c: (c.start_time, c.snapshot_id))
            if usable:
                copies[key] = usable[0]
            if len(usable) > 1 and not ctx.dry_run:  # two copies of one source: the newer goes
                drop_duplicates(dest_ec2, ctx, key, usable[1:], counts, (dest_account, dest_region))
        failed_volumes: set[str] = set()
        for index, source in enumerate(sources):
            if ctx.deadline.near():
                counts["not_started"] += len(sources) - index
                outcome.problems.append(f"stopped before the time limit; not started: {counts['not_started']}")
                break
            volume = source.tags.get(TAG_VOLUME, "")
            if source.snapshot_id in copies or source.start_time < since:
                counts["skipped_existing" if source.snapshot_id in copies else "older_than_lookback"] += 1
                continue
            copy = self._copy(ctx, source, dest_account, dest_region, counts)
            if copy is not None:
                copies[source.snapshot_id] = copy
            elif source.state == "completed":  # a completed source with no copy: the copy failed
                failed_volumes.add(volume)
        by_volume: dict[str, list[ExistingSnapshot]] = {}
        for copy in copies.values():
            by_volume.setdefault(copy.tags.get(TAG_VOLUME, ""), []).append(copy)
        amis = AmiSnapshots(dest_ec2)
        for volume, group in sorted(by_volume.items()):
            if volume not in failed_volumes:  # never thin a volume's DR copies after a failed copy
                apply_retention(dest_ec2, ctx, opts.retention, volume, group, amis, counts, (dest_account, dest_region))
        outcome.problems += failed_problems(counts)
        return outcome

    def _drop_failed_copy(
        self,
        ctx: UnitContext[CopyOptions],
        dest_ec2: Any,
        broken: ExistingSnapshot,
        where: tuple[str, str],
        counts: Counter[str],
    ) -> None:
        """A copy in state error restores nothing: delete it (the source is copied again this run)."""
        base = partial(Action, *where, broken.snapshot_id, "delete-failed-copy")
        detail = {"source": broken.tags.get(TAG_SOURCE), "volume_id": broken.tags.get(TAG_VOLUME)}
        if ctx.dry_run:
            ctx.record(base(outcome="would-delete", detail=detail))
            return
        try:
            dest_ec2.delete_snapshot(SnapshotId=broken.snapshot_id)
        except ClientError as exc:
            if error_code(exc) != "InvalidSnapshot.NotFound":
                counts["failed"] += 1
                ctx.record(base(outcome="failed", error=error_text(exc), detail=detail))
                return
        counts["failed_copies_deleted"] += 1
        ctx.record(base(outcome="deleted", deleted_ids=[broken.snapshot_id], detail=detail))

    def _copy(
        self,
        ctx: UnitContext[CopyOptions],
        source: ExistingSnapshot,
        dest_account: str,
        dest_region: str,
        counts: Counter[str],
    ) -> ExistingSnapshot | None:
        """One source's copy, made (once) or imagined in a dry run; None while the source is pending or
        when the copy failed."""
        opts = ctx.options
        base = ctx.about(source.snapshot_id, "copy-snapshot")
        detail = {"volume_id": source.tags.get(TAG_VOLUME), "to": f"{dest_account}/{dest_region}"}
        if source.state != "completed":
            counts["deferred_pending"] += 1  # copied by the next slot, once it has completed
            ctx.record(base(outcome="deferred-pending", detail={**detail, "state": source.state}))
            return None
        tags = _copy_tags(source, ctx)
        if ctx.dry_run:
            counts["would_copy"] += 1
            ctx.record(base(outcome="would-copy", detail=detail))
            return ExistingSnapshot("(new)", ctx.now(), "completed", tags[TAG_SLOT], tags)
        dest_ec2 = ctx.client("ec2", dest_account, dest_region)
        once = ctx.client("ec2", dest_account, dest_region, retries=False)
        try:
            if dest_account != ctx.account:  # the DR account may read it: idempotent, so no lookup needed
                ctx.client("ec2").modify_snapshot_attribute(
                    SnapshotId=source.snapshot_id,
                    Attribute="createVolumePermission",
                    OperationType="add",
                    UserIds=[dest_account],
                )
            made, recovered = create_once(
                lambda: once.copy_snapshot(
                    SourceSnapshotId=source.snapshot_id,
                    SourceRegion=ctx.region,
                    Description=f"opsbot {ctx.task.name}: copy of {source.snapshot_id} from {ctx.account}/{ctx.region}",
                    Encrypted=True,
                    KmsKeyId=opts.kms_key_id,
                    TagSpecifications=[{"ResourceType": "snapshot", "Tags": tag_list(tags)}],
                ),
                lambda: find_tagged(dest_ec2, {TAG_TASK: ctx.task.name, TAG_SOURCE: source.snapshot_id}),
            )
        except (ClientError, BotoCoreError) as exc:
            counts["failed"] += 1
            ctx.record(base(outcome="failed", error=error_text(exc), detail=detail))
            return None
        counts["copied"] += 1
        if recovered:
            counts["found_after_error"] += 1
        ctx.record(
            base(outcome="copied", created_ids=[made["SnapshotId"]], detail={**detail, "kms_key_id": opts.kms_key_id})
        )
        return ExistingSnapshot(
            made["SnapshotId"], ctx.now(), str(made.get("State") or "pending"), tags[TAG_SLOT], tags
        )

    def render(self, run: Mapping[str, Any], env: KindEnv) -> Alert:
        alert = super().render(run, env)
        counts = run.get("counts", {})
        alert.fields += [
            ("Copied", str(counts.get("copied", 0))),
            ("Waiting for a pending source", str(counts.get("deferred_pending", 0))),
            ("Failed actions", str(counts.get("failed", 0))),
            ("Deleted in DR", str(counts.get("deleted", 0))),
        ]
        return alert
