"""ebs-snapshot-copy: DR copies of a snapshot task's snapshots, through plan -> units -> close, on moto."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError

from automations.core.rulebook import RulebookError
from automations.core.runs import Trigger, plan_run, run_now
from opsbot.local.aws_shims import shims
from tests.conftest import ACCOUNT_A, ACCOUNT_B, make_tasks

DR_REGION = "us-west-2"
KEY = "alias/opsbot-dr"
TASKS_TEXT = """
tasks:
  - name: snapshot-daily
    kind: ebs-snapshot
    schedule: cron(0 3 * * ? *)
    copy_tags: [Name, CostCenter]
  - name: dr-copy
    kind: ebs-snapshot-copy
    schedule: cron(30 5 * * ? *)
    source_task: snapshot-daily
    destination: {region: us-west-2, kms_key_id: alias/opsbot-dr}
    retention: {keep_last: 2}
  - name: dr-copy-vault
    kind: ebs-snapshot-copy
    schedule: cron(45 5 * * ? *)
    source_task: snapshot-daily
    destination: {region: us-west-2, account: "345678901234", kms_key_id: alias/opsbot-dr}
  - name: dr-copy-dry
    kind: ebs-snapshot-copy
    schedule: cron(50 5 * * ? *)
    source_task: snapshot-daily
    destination: {region: us-west-2, kms_key_id: alias/opsbot-dr}
    dry_run: true
"""
TASKS = make_tasks(TASKS_TEXT)
DAY = datetime.now(UTC).replace(hour=3, minute=0, second=20, microsecond=0) - timedelta(days=1)


def run(ledger: Any, fleet: Any, broker: Any, task: str, when: datetime) -> dict[str, Any]:
    plan = plan_run(ledger, fleet, TASKS, task, Trigger("schedule"), when, accounts=[ACCOUNT_A], regions=["us-east-1"])
    return run_now(plan, TASKS, broker, ledger, None)


def copies(broker: Any, account: str = ACCOUNT_A, task: str = "dr-copy") -> list[dict[str, Any]]:
    ec2 = broker.client(account, DR_REGION, "ec2")
    found = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag:opsbot:task", "Values": [task]}])
    return list(found["Snapshots"])


def tags(snapshot: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}


@pytest.fixture
def source(member: Any) -> dict[str, Any]:
    """An opted-in instance in ACCOUNT_A us-east-1 with yesterday's snapshot-daily snapshots."""
    m = member()
    instance, volumes = m.instance({"OpsTaskList": "snapshot-daily", "Name": "db-1", "CostCenter": "cc-9"}, 1)
    return {"member": m, "instance": instance, "volumes": volumes}


def test_copies_land_in_the_dr_region_encrypted_with_the_tasks_key_and_tagged(ledger, fleet, broker, source):
    daily = run(ledger, fleet, broker, "snapshot-daily", DAY)
    assert daily["counts"]["created"] == 2
    originals = {s["SnapshotId"]: s for s in source["member"].snapshots("snapshot-daily")}

    result = run(ledger, fleet, broker, "dr-copy", DAY + timedelta(hours=2, minutes=30))

    assert result["status"] == "SUCCEEDED" and result["counts"]["copied"] == 2
    made = copies(broker)
    assert sorted(tags(c)["opsbot:source-snapshot"] for c in made) == sorted(originals)
    for copy in made:
        t = tags(copy)
        original = originals[t["opsbot:source-snapshot"]]
        assert copy["Encrypted"] is True and copy["KmsKeyId"] == KEY
        assert t["Name"] == "db-1" and t["CostCenter"] == "cc-9"  # the source's tags, carried over
        assert t["opsbot:volume-id"] == original["VolumeId"]
        assert t["opsbot:instance-id"] == source["instance"]
        assert t["opsbot:task"] == "dr-copy" and t["opsbot:slot"] == f"{DAY:%Y-%m-%d}T05:30Z"
        assert (t["opsbot:source-region"], t["opsbot:source-account"]) == ("us-east-1", ACCOUNT_A)
        assert t["opsbot:run-id"] == result["run_id"]
    actions = ledger.actions(result["run_id"])
    assert sorted(a["outcome"] for a in actions) == ["copied", "copied"]
    assert all(a["detail"]["to"] == f"{ACCOUNT_A}/{DR_REGION}" and a["created_ids"] for a in actions)


def test_a_rerun_of_the_slot_makes_no_second_copy(ledger, fleet, broker, source):
    run(ledger, fleet, broker, "snapshot-daily", DAY)
    slot = DAY + timedelta(hours=2, minutes=30)
    first = run(ledger, fleet, broker, "dr-copy", slot)
    again = run(ledger, fleet, broker, "dr-copy", slot)
    assert first["counts"]["copied"] == 2
    assert again["counts"].get("copied", 0) == 0 and again["counts"]["skipped_existing"] == 2
    assert len(copies(broker)) == 2


def test_a_copy_whose_reply_was_lost_is_found_by_its_tag_not_made_twice(ledger, fleet, broker, source):
    """CopySnapshot applied, then the reply lost (read timeout): the lookup finds it; no second copy."""
    run(ledger, fleet, broker, "snapshot-daily", DAY)
    once = broker.client(ACCOUNT_A, DR_REGION, "ec2", retries=False)  # the no-retry client the kind uses
    lost = []

    def lose_the_first_reply(**kwargs: Any) -> None:
        if not lost:
            lost.append(kwargs["model"].name)
            raise ReadTimeoutError(endpoint_url="https://ec2.us-west-2.amazonaws.com")

    once.meta.events.register("after-call.ec2.CopySnapshot", lose_the_first_reply)
    try:
        result = run(ledger, fleet, broker, "dr-copy", DAY + timedelta(hours=2, minutes=30))
    finally:
        once.meta.events.unregister("after-call.ec2.CopySnapshot", lose_the_first_reply)
    assert lost == ["CopySnapshot"]
    assert result["status"] == "SUCCEEDED"
    assert result["counts"]["copied"] == 2 and result["counts"]["found_after_error"] == 1
    made = copies(broker)
    assert len(made) == 2 and len({tags(c)["opsbot:source-snapshot"] for c in made}) == 2


def test_a_pending_source_waits_for_the_next_slot(ledger, fleet, broker, source):
    from moto.ec2.models import ec2_backends

    run(ledger, fleet, broker, "snapshot-daily", DAY)
    (first, second) = source["member"].snapshots("snapshot-daily")
    # moto completes snapshots at once: arrange one still being taken, as EC2 reports a fresh one.
    ec2_backends[ACCOUNT_A]["us-east-1"].snapshots[second["SnapshotId"]].status = "pending"
    slot = DAY + timedelta(hours=2, minutes=30)
    today = run(ledger, fleet, broker, "dr-copy", slot)
    assert today["counts"]["copied"] == 1 and today["counts"]["deferred_pending"] == 1
    assert today["status"] == "SUCCEEDED"  # waiting is not a failure
    assert [tags(c)["opsbot:source-snapshot"] for c in copies(broker)] == [first["SnapshotId"]]

    ec2_backends[ACCOUNT_A]["us-east-1"].snapshots[second["SnapshotId"]].status = "completed"
    tomorrow = run(ledger, fleet, broker, "dr-copy", slot + timedelta(days=1))
    assert tomorrow["counts"]["copied"] == 1 and tomorrow["counts"]["skipped_existing"] == 1
    assert len(copies(broker)) == 2


def test_dr_retention_keeps_the_newest_copies_of_each_volume(ledger, fleet, broker, source):
    for day in range(3):
        run(ledger, fleet, broker, "snapshot-daily", DAY - timedelta(days=2 - day))
    assert len(source["member"].snapshots("snapshot-daily")) == 6
    slot = DAY + timedelta(hours=2, minutes=30)
    first = run(ledger, fleet, broker, "dr-copy", slot)
    assert first["counts"]["copied"] == 6
    again = run(ledger, fleet, broker, "dr-copy", slot)  # copies now completed: retention applies
    assert again["counts"]["deleted"] == 2
    pruned = [a for a in ledger.actions(again["run_id"]) if a["action"] == "delete-snapshot"]
    assert {(a["account"], a["region"]) for a in pruned} == {(ACCOUNT_A, DR_REGION)}  # where they were deleted
    made = copies(broker)
    assert len(made) == 4
    per_volume: dict[str, int] = {}
    for c in made:
        per_volume[tags(c)["opsbot:volume-id"]] = per_volume.get(tags(c)["opsbot:volume-id"], 0) + 1
    assert sorted(per_volume.values()) == [2, 2]
    # The sources themselves are the snapshot task's, untouched by the copy task's retention.
    assert len(source["member"].snapshots("snapshot-daily")) == 6


def test_into_a_dr_account_the_source_is_shared_then_copied_there(ledger, fleet, broker, source):
    run(ledger, fleet, broker, "snapshot-daily", DAY)
    with shims():  # moto copies only its own account's snapshots; the shim copies shared ones, as EC2 does
        result = run(ledger, fleet, broker, "dr-copy-vault", DAY + timedelta(hours=2, minutes=45))
    assert result["status"] == "SUCCEEDED" and result["counts"]["copied"] == 2
    made = copies(broker, ACCOUNT_B, "dr-copy-vault")
    assert len(made) == 2
    assert {tags(c)["opsbot:source-account"] for c in made} == {ACCOUNT_A}
    ec2 = source["member"].ec2
    for original in source["member"].snapshots("snapshot-daily"):
        shared = ec2.describe_snapshot_attribute(SnapshotId=original["SnapshotId"], Attribute="createVolumePermission")
        assert shared["CreateVolumePermissions"] == [{"UserId": ACCOUNT_B}]
    assert copies(broker, ACCOUNT_A, "dr-copy-vault") == []


def test_dry_run_records_what_it_would_copy_and_copies_nothing(ledger, fleet, broker, source):
    run(ledger, fleet, broker, "snapshot-daily", DAY)
    result = run(ledger, fleet, broker, "dr-copy-dry", DAY + timedelta(hours=2, minutes=50))
    assert result["dry_run"] is True and result["counts"]["would_copy"] == 2
    assert copies(broker, task="dr-copy-dry") == []


def test_a_unit_whose_region_is_the_destination_is_not_planned(ledger, fleet):
    plan = plan_run(ledger, fleet, TASKS, "dr-copy", Trigger("schedule"), DAY, regions=["us-east-1", "us-west-2"])
    assert {(u.account, u.region) for u in plan.units} == {(ACCOUNT_A, "us-east-1"), (ACCOUNT_B, "us-east-1")}


def test_rules_name_the_source_task_and_the_destination():
    bad = TASKS_TEXT.replace(
        "source_task: snapshot-daily\n    destination: {region: us-west-2, kms_key_id",
        "source_task: dr-copy-vault\n    destination: {region: us-west-2, kms_key_id",
        1,
    )
    with pytest.raises(RulebookError) as err:
        make_tasks(bad)
    assert [str(p) for p in err.value.problems] == [
        "tasks.yaml:10: tasks[1].source_task: 'dr-copy-vault' must be an ebs-snapshot task; found a task of "
        "kind ebs-snapshot-copy"
    ]
    with pytest.raises(RulebookError) as err:
        make_tasks("tasks:\n  - {name: c, kind: ebs-snapshot-copy, schedule: 'rate(1 day)', source_task: x}\n")
    assert [str(p) for p in err.value.problems] == ["tasks.yaml:2: tasks[0]: 'destination' is a required property"]
    with pytest.raises(RulebookError) as err:
        make_tasks(TASKS_TEXT.replace("    copy_tags: [Name, CostCenter]\n", "    lookback_days: 3\n"))
    assert [str(p) for p in err.value.problems] == [
        "tasks.yaml:6: tasks[0].lookback_days: 'lookback_days' applies to ebs-snapshot-copy tasks only"
    ]


def test_a_copy_that_failed_after_the_call_is_deleted_and_made_again(ledger, fleet, broker, source):
    from moto.ec2.models import ec2_backends

    run(ledger, fleet, broker, "snapshot-daily", DAY)
    slot = DAY + timedelta(hours=2, minutes=30)
    run(ledger, fleet, broker, "dr-copy", slot)
    broken = copies(broker)[0]
    # EC2 copies asynchronously: a key the copy cannot use shows as state "error" later. Arrange that.
    ec2_backends[ACCOUNT_A][DR_REGION].snapshots[broken["SnapshotId"]].status = "error"

    again = run(ledger, fleet, broker, "dr-copy", slot)

    assert again["counts"]["failed_copies_deleted"] == 1 and again["counts"]["copied"] == 1
    made = copies(broker)
    assert broken["SnapshotId"] not in {c["SnapshotId"] for c in made}
    assert sorted(tags(c)["opsbot:source-snapshot"] for c in made) == sorted(
        s["SnapshotId"] for s in source["member"].snapshots("snapshot-daily")
    )
    (dropped,) = [a for a in ledger.actions(again["run_id"]) if a["action"] == "delete-failed-copy"]
    # Recorded where it happened: the DR account/region, not the source unit's.
    assert (dropped["account"], dropped["region"], dropped["outcome"]) == (ACCOUNT_A, DR_REGION, "deleted")


def test_two_copies_of_one_source_the_newer_is_deleted(ledger, fleet, broker, source):
    from moto.ec2.models import ec2_backends

    run(ledger, fleet, broker, "snapshot-daily", DAY)
    slot = DAY + timedelta(hours=2, minutes=30)
    run(ledger, fleet, broker, "dr-copy", slot)
    first = copies(broker)[0]
    dr = broker.client(ACCOUNT_A, DR_REGION, "ec2")
    twin = dr.copy_snapshot(
        SourceSnapshotId=tags(first)["opsbot:source-snapshot"],
        SourceRegion="us-east-1",
        Encrypted=True,
        KmsKeyId=KEY,
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": first["Tags"]}],
    )["SnapshotId"]
    snapshots = ec2_backends[ACCOUNT_A][DR_REGION].snapshots
    snapshots[twin].start_time = snapshots[first["SnapshotId"]].start_time + timedelta(seconds=5)

    again = run(ledger, fleet, broker, "dr-copy", slot)

    assert again["counts"]["duplicates_deleted"] == 1 and again["counts"].get("copied", 0) == 0
    made = {c["SnapshotId"] for c in copies(broker)}
    assert first["SnapshotId"] in made and twin not in made and len(made) == 2
    (dropped,) = [a for a in ledger.actions(again["run_id"]) if a["action"] == "delete-duplicate"]
    assert (dropped["account"], dropped["region"], dropped["deleted_ids"]) == (ACCOUNT_A, DR_REGION, [twin])
