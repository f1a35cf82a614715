"""The snapshot automation end to end through plan -> units -> close, on moto."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from freezegun import freeze_time

from automations.core.deadline import Deadline
from automations.core.runs import Trigger, plan_run, run_now
from automations.snapshots.common import ExistingSnapshot, expired
from tests.conftest import ACCOUNT_A, ACCOUNT_B, make_tasks

TASKS = make_tasks(
    """
tasks:
  - name: snapshot-daily
    kind: ebs-snapshot
    schedule: cron(0 3 * * ? *)
    retention: {keep_last: 3}
    copy_tags: [Name, CostCenter]
  - name: snapshot-weekly
    kind: ebs-snapshot
    schedule: cron(0 4 ? * SUN *)
    exclude_boot_volume: true
  - name: snapshot-aged
    kind: ebs-snapshot
    schedule: cron(0 5 * * ? *)
    retention: {max_age_days: 2}
  - name: snapshot-dry
    kind: ebs-snapshot
    schedule: cron(0 6 * * ? *)
    retention: {keep_last: 1}
    dry_run: true
"""
)
SLOT_TIME = datetime(2026, 11, 20, 3, 0, 20, tzinfo=UTC)


def run(ledger: Any, fleet: Any, broker: Any, task: str, when: datetime, **kw: Any) -> dict[str, Any]:
    deadline = kw.pop("deadline", None)
    plan = plan_run(ledger, fleet, TASKS, task, Trigger("schedule", event_id="e-1"), when, **kw)
    return run_now(plan, TASKS, broker, ledger, None, deadline=deadline, clock=lambda: datetime.now(UTC))


def test_snapshots_opted_in_instances_and_volumes_only(ledger, fleet, broker, member):
    m = member()
    inst, inst_vols = m.instance(
        {"OpsTaskList": "Snapshot-Daily", "Name": "web-1", "CostCenter": "cc-7"}, data_volumes=1
    )
    tagged_vol = m.volume({"OpsTaskList": "snapshot-weekly, snapshot-daily", "Name": "logs"})
    m.instance({"Name": "untagged"})
    untagged_vol = m.volume({"Name": "scratch"})

    result = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])

    assert result["status"] == "SUCCEEDED"
    snaps = m.snapshots("snapshot-daily")
    by_volume = {s["VolumeId"]: s for s in snaps}
    assert set(by_volume) == {*inst_vols, tagged_vol}
    assert untagged_vol not in by_volume
    tags = {t["Key"]: t["Value"] for t in by_volume[inst_vols[1]]["Tags"]}
    assert tags["opsbot:task"] == "snapshot-daily"
    assert tags["opsbot:run-id"] == result["run_id"]
    assert tags["opsbot:slot"] == "2026-11-20T03:00Z"
    assert tags["opsbot:volume-id"] == inst_vols[1]
    assert tags["opsbot:instance-id"] == inst
    assert tags["Name"] == "web-1" and tags["CostCenter"] == "cc-7"  # copied from the instance
    logs_tags = {t["Key"]: t["Value"] for t in by_volume[tagged_vol]["Tags"]}
    assert logs_tags["Name"] == "logs" and "opsbot:instance-id" not in logs_tags
    assert result["counts"]["created"] == 3
    actions = ledger.actions(result["run_id"])
    assert sorted(a["resource"] for a in actions) == sorted([*inst_vols, tagged_vol])
    assert all(a["outcome"] == "created" and a["created_ids"] for a in actions)


def test_exclude_boot_volume(ledger, fleet, broker, member):
    m = member()
    _, (_boot, data) = m.instance({"OpsTaskList": "snapshot-weekly"}, data_volumes=1)
    result = run(ledger, fleet, broker, "snapshot-weekly", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])
    assert [s["VolumeId"] for s in m.snapshots("snapshot-weekly")] == [data]
    assert result["counts"]["boot_volumes_excluded"] == 1


def test_same_slot_twice_never_duplicates(ledger, fleet, broker, member):
    m = member()
    m.instance({"OpsTaskList": "snapshot-daily"}, data_volumes=2)
    first = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])
    # A retried schedule event a few seconds later, and a manual re-run of the slot an hour later.
    second = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME + timedelta(seconds=40), accounts=[ACCOUNT_A])
    third = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME + timedelta(hours=1), accounts=[ACCOUNT_A])

    assert first["counts"]["created"] == 3
    assert second["counts"].get("created", 0) == 0 and second["counts"]["skipped_existing"] == 3
    assert third["counts"].get("created", 0) == 0 and third["counts"]["skipped_existing"] == 3
    assert len(m.snapshots("snapshot-daily")) == 3
    # The next day's slot is a new slot.
    nxt = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME + timedelta(days=1), accounts=[ACCOUNT_A])
    assert nxt["counts"]["created"] == 3


def test_retention_by_count_keeps_newest_and_spares_people_and_amis(ledger, fleet, broker, member):
    m = member()
    _, (vol,) = m.instance({"OpsTaskList": "snapshot-daily"})
    manual = m.ec2.create_snapshot(VolumeId=vol, Description="by hand")["SnapshotId"]
    with freeze_time(SLOT_TIME - timedelta(days=30)):
        # An old opsbot snapshot of this volume that someone registered as an AMI's root. (moto's
        # RegisterImage makes its own backing snapshot, so that snapshot is labelled as opsbot's.)
        image = m.ec2.register_image(
            Name="golden",
            RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {}}],
        )["ImageId"]
        backing = m.ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        m.ec2.create_tags(
            Resources=[backing],
            Tags=[
                {"Key": "opsbot:task", "Value": "snapshot-daily"},
                {"Key": "opsbot:volume-id", "Value": vol},
                {"Key": "opsbot:slot", "Value": "2026-10-21T03:00Z"},
            ],
        )
    made = []
    for day in range(6):
        with freeze_time(SLOT_TIME + timedelta(days=day)):
            run(
                ledger,
                fleet,
                broker,
                "snapshot-daily",
                SLOT_TIME + timedelta(days=day),
                accounts=[ACCOUNT_A],
                regions=["us-east-1"],
            )
            newest = max(m.snapshots("snapshot-daily"), key=lambda s: s["StartTime"])
            made.append(newest["SnapshotId"])

    remaining = {s["SnapshotId"] for s in m.snapshots("snapshot-daily")}
    assert remaining == {backing, made[3], made[4], made[5]}  # the newest 3, and the AMI's
    assert manual in {s["SnapshotId"] for s in m.snapshots()}  # a person's snapshot is never touched
    last = ledger.recent_runs(1)[0]
    actions = {a["resource"]: a for a in ledger.actions(last["run_id"])}
    assert actions[backing]["outcome"] == "kept-ami" and actions[backing]["detail"]["image_id"] == image
    assert actions[made[2]]["outcome"] == "deleted" and actions[made[2]]["deleted_ids"] == [made[2]]


def test_retention_by_age_at_frozen_times(ledger, fleet, broker, member):
    m = member()
    m.volume({"OpsTaskList": "snapshot-aged"})
    base = datetime(2026, 11, 20, 5, 0, tzinfo=UTC)
    starts = []
    for day in range(5):
        with freeze_time(base + timedelta(days=day)):
            run(
                ledger,
                fleet,
                broker,
                "snapshot-aged",
                base + timedelta(days=day),
                accounts=[ACCOUNT_A],
                regions=["us-east-1"],
            )
            starts.append(base + timedelta(days=day))
    with freeze_time(base + timedelta(days=4)):
        left = sorted(s["StartTime"] for s in m.snapshots("snapshot-aged"))
    # At day 4, max age 2 days: day 2 (exactly 2 days old), 3 and 4 stay; days 0 and 1 went.
    assert left == starts[2:]


def test_newest_is_kept_even_when_older_than_max_age():
    now = datetime(2026, 11, 30, tzinfo=UTC)
    old = [ExistingSnapshot(f"snap-{d}", now - timedelta(days=d), "completed", None) for d in (10, 20, 30)]
    gone = expired(old, keep_last=None, max_age_days=2, now=now)
    assert [s.snapshot_id for s in gone] == ["snap-20", "snap-30"]


def test_only_completed_snapshots_count_as_backups():
    now = datetime(2026, 11, 30, tzinfo=UTC)
    completed = ExistingSnapshot("snap-good", now - timedelta(days=1), "completed", None)
    pending = ExistingSnapshot("snap-new", now, "pending", None)
    failed = ExistingSnapshot("snap-err", now - timedelta(hours=1), "error", None)
    # keep_last 1 with a new snapshot still pending: the last completed one stays until the new one completes.
    assert expired([completed, pending, failed], keep_last=1, max_age_days=None, now=now) == []
    older = ExistingSnapshot("snap-old", now - timedelta(days=2), "completed", None)
    assert expired([completed, older, pending, failed], keep_last=1, max_age_days=None, now=now) == [older]


def test_dry_run_changes_nothing(ledger, fleet, broker, member):
    m = member()
    m.instance({"OpsTaskList": "snapshot-dry"}, data_volumes=1)
    before = m.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    result = run(ledger, fleet, broker, "snapshot-dry", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])
    assert m.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == before
    assert result["dry_run"] is True and result["counts"]["would_create"] == 2
    outcomes = {a["outcome"] for a in ledger.actions(result["run_id"])}
    assert outcomes == {"would-create"}


def test_dry_run_reports_would_delete(ledger, fleet, broker, member):
    m = member()
    _, (_vol,) = m.instance({"OpsTaskList": "snapshot-daily snapshot-dry"})
    run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])
    # Re-label the daily snapshot as the dry task's own: dry-run retention (keep 1) would delete it.
    snap = m.snapshots("snapshot-daily")[0]["SnapshotId"]
    m.ec2.create_tags(Resources=[snap], Tags=[{"Key": "opsbot:task", "Value": "snapshot-dry"}])
    result = run(
        ledger,
        fleet,
        broker,
        "snapshot-dry",
        SLOT_TIME + timedelta(days=1),
        accounts=[ACCOUNT_A],
        regions=["us-east-1"],
    )
    assert result["counts"]["would_delete"] == 1
    assert [s["SnapshotId"] for s in m.snapshots("snapshot-dry")] == [snap]


def test_unknown_task_name_in_tag_is_reported_not_fatal(ledger, fleet, broker, member):
    m = member()
    inst, _ = m.instance({"OpsTaskList": "snapshot-dialy"})
    m.instance({"OpsTaskList": "snapshot-daily"})
    result = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])
    assert result["status"] == "SUCCEEDED"
    assert result["unknown_tasks"] == {"snapshot-dialy": [inst]}
    assert result["counts"]["created"] == 1


def test_timeout_guard_closes_run_as_partial(ledger, fleet, broker, member):
    m = member()
    m.instance({"OpsTaskList": "snapshot-daily"}, data_volumes=4)
    checks = iter(range(100))
    # Plenty of time for the first two volumes, then the Lambda is near its end.
    deadline = Deadline(lambda: 60_000 if next(checks) < 2 else 10_000, margin_ms=30_000)
    result = run(
        ledger,
        fleet,
        broker,
        "snapshot-daily",
        SLOT_TIME,
        accounts=[ACCOUNT_A],
        regions=["us-east-1"],
        deadline=deadline,
    )
    assert result["status"] == "PARTIAL" and result["ended_at"]
    assert result["counts"]["created"] == 1  # the unit-level check took the first tick
    assert result["counts"]["not_started"] == 4
    (unit,) = ledger.units(result["run_id"])
    assert unit["status"] == "PARTIAL" and "time limit" in unit["error"]
    # Re-running the slot finishes the job without duplicating the one already made.
    again = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])
    assert again["counts"]["created"] == 4 and again["counts"]["skipped_existing"] == 1


def test_all_units_across_accounts_and_regions(ledger, fleet, broker, member):
    for account in (ACCOUNT_A, ACCOUNT_B):
        for region in ("us-east-1", "eu-west-1"):
            member(account, region).volume({"OpsTaskList": "snapshot-daily"})
    result = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME)
    assert result["status"] == "SUCCEEDED"
    assert result["units"] == {"total": 4, "succeeded": 4}
    assert result["counts"]["created"] == 4
    assert {(u["account"], u["region"]) for u in ledger.units(result["run_id"])} == {
        (a, r) for a in (ACCOUNT_A, ACCOUNT_B) for r in ("us-east-1", "eu-west-1")
    }


def test_a_snapshot_whose_reply_was_lost_is_found_by_its_tag_not_taken_twice(ledger, fleet, broker, member):
    """CreateSnapshot applied, then a 500 for the reply: the slot's tag lookup finds it; one snapshot."""
    from botocore.exceptions import ClientError

    m = member()
    volume = m.volume({"OpsTaskList": "snapshot-daily"})
    once = broker.client(ACCOUNT_A, "us-east-1", "ec2", retries=False)  # the no-retry client the kind uses
    lost: list[str] = []

    def answer_500_once(**kwargs: Any) -> None:
        if not lost:
            lost.append(kwargs["model"].name)
            raise ClientError(
                {
                    "Error": {"Code": "InternalError", "Message": "reply lost"},
                    "ResponseMetadata": {"HTTPStatusCode": 500},
                },
                "CreateSnapshot",
            )

    once.meta.events.register("after-call.ec2.CreateSnapshot", answer_500_once)
    try:
        result = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])
    finally:
        once.meta.events.unregister("after-call.ec2.CreateSnapshot", answer_500_once)
    assert lost == ["CreateSnapshot"]
    assert result["status"] == "SUCCEEDED"
    assert result["counts"]["created"] == 1 and result["counts"]["found_after_error"] == 1
    (snap,) = m.snapshots("snapshot-daily")
    assert snap["VolumeId"] == volume


def test_two_snapshots_for_one_slot_the_newer_is_deleted(ledger, fleet, broker, member):
    """A create that slipped past every guard (two processes, both before the tag was visible): the next
    run of the slot keeps the older snapshot and deletes the newer, and records why."""
    from moto.ec2.models import ec2_backends

    m = member()
    volume = m.volume({"OpsTaskList": "snapshot-daily"})
    first = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])
    (kept,) = m.snapshots("snapshot-daily")
    twin = m.ec2.create_snapshot(
        VolumeId=volume,
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": kept["Tags"]}],
    )["SnapshotId"]
    snapshots = ec2_backends[ACCOUNT_A]["us-east-1"].snapshots
    snapshots[twin].start_time = snapshots[kept["SnapshotId"]].start_time + timedelta(seconds=5)

    again = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME, accounts=[ACCOUNT_A], regions=["us-east-1"])

    assert first["counts"]["created"] == 1
    assert again["counts"]["duplicates_deleted"] == 1 and again["counts"].get("created", 0) == 0
    assert [s["SnapshotId"] for s in m.snapshots("snapshot-daily")] == [kept["SnapshotId"]]
    (dropped,) = [a for a in ledger.actions(again["run_id"]) if a["action"] == "delete-duplicate"]
    assert dropped["deleted_ids"] == [twin] and dropped["detail"]["volume_id"] == volume


def test_a_second_run_of_a_slot_that_is_being_run_is_refused_then_allowed_once_it_closed(ledger, fleet, broker, member):
    """`opsbot run --slot` while the scheduled run of that slot is still going: refused, naming the run
    that holds the slot, so both cannot list the volumes before either creates (two snapshots each)."""
    import pytest

    from automations.core.runs import RunError

    m = member()
    m.volume({"OpsTaskList": "snapshot-daily"})
    scope = {"accounts": [ACCOUNT_A], "regions": ["us-east-1"]}
    scheduled = plan_run(
        ledger, fleet, TASKS, "snapshot-daily", Trigger("schedule", event_id="e-1"), SLOT_TIME, **scope
    )
    with pytest.raises(RunError) as refused:
        plan_run(ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT_TIME + timedelta(minutes=3), **scope)
    assert scheduled.run_id in str(refused.value) and "2026-11-20T03:00Z" in str(refused.value)
    run_now(scheduled, TASKS, broker, ledger, None)  # closes and releases the slot
    again = run(ledger, fleet, broker, "snapshot-daily", SLOT_TIME + timedelta(minutes=5), **scope)
    assert again["status"] == "SUCCEEDED" and again["counts"]["skipped_existing"] == 1
    assert len(m.snapshots("snapshot-daily")) == 1
