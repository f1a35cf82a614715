"""Runs at organisation scale: units in an S3 manifest, results the way the Distributed Map writes them,
and caps on units at once per member account and account-region (issue 14)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from automations.core import ledger as L
from automations.core.boundary import InputError
from automations.core.caps import MemberBusy, MemberCaps
from automations.core.fleet import Fleet, MemberAccount
from automations.core.manifest import ManifestRef, ManifestStore, interleave
from automations.core.runs import (
    CloseRequest,
    RunError,
    Trigger,
    Unit,
    close_run,
    manifest_units,
    plan_run,
    run_locally,
    run_now,
)
from opsbot.local.hub import MANIFEST_BUCKET, create_manifest_bucket
from tests.conftest import ACCOUNT_A, ACCOUNT_B, make_tasks

TASKS = make_tasks(
    """
tasks:
  - name: snapshot-daily
    kind: ebs-snapshot
    schedule: cron(0 3 * * ? *)
    retention: {keep_last: 3}
"""
)
SLOT_TIME = datetime(2026, 11, 20, 3, 0, 20, tzinfo=UTC)


@pytest.fixture
def manifests(hub_session: Any) -> ManifestStore:
    create_manifest_bucket(hub_session)
    return ManifestStore(hub_session.client("s3"), MANIFEST_BUCKET)


# The 17 regions enabled by default in an AWS account.
DEFAULT_REGIONS = (
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "eu-west-1", "eu-west-2", "eu-west-3",
    "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
    "ap-southeast-1", "ap-southeast-2", "sa-east-1",
)  # fmt: skip


def big_fleet(accounts: int, regions: int) -> Fleet:
    """Planned only, never reached."""
    regions_of = DEFAULT_REGIONS[:regions]
    return Fleet(tuple(MemberAccount(f"{100000000000 + i}", f"a{i}", regions_of) for i in range(accounts)))


def test_units_are_interleaved_across_accounts() -> None:
    targets = [("A", "r1"), ("A", "r2"), ("A", "r3"), ("B", "r1"), ("C", "r1"), ("C", "r2")]
    assert interleave(targets) == [("A", "r1"), ("B", "r1"), ("C", "r1"), ("A", "r2"), ("C", "r2"), ("A", "r3")]
    assert sorted(interleave(targets)) == sorted(targets)  # the same units, reordered


def test_plan_writes_the_units_to_s3_and_the_state_never_grows_with_the_fleet(ledger, manifests) -> None:
    sizes = {}
    for accounts in (2, 400):
        fleet = big_fleet(accounts, 17)
        plan = plan_run(ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT_TIME, manifests=manifests)
        state = plan.as_dict()
        assert "units" not in state and state["manifest"]["units"] == accounts * 17
        # What the state machine carries is the same size (±digits of the count) whatever the fleet.
        sizes[accounts] = len(json.dumps(state))
        run = ledger.get_run(plan.run_id)
        assert run is not None and "planned_units" not in run and run["planned"] == accounts * 17
        assert len(json.dumps(run)) < 2_000  # nor does the run record (DynamoDB's 400 KB item limit)
        items = json.loads(manifests.s3.get_object(Bucket=MANIFEST_BUCKET, Key=state["manifest"]["key"])["Body"].read())
        assert len(items) == accounts * 17 and set(items[0]) == {"account", "region", "primary", "account_name"}
        assert items[0]["account"] != items[1]["account"]  # interleaved
        close_run(plan.run_id, ledger, None, reason="test", manifests=manifests)  # releases the slot
    assert abs(sizes[400] - sizes[2]) <= 4


def test_local_runner_reads_the_manifest_from_s3(ledger, fleet, broker, manifests, member) -> None:
    member().volume({"OpsTaskList": "snapshot-daily"})
    reads: list[str] = []
    manifests.s3.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: reads.append(params["Key"])
    )
    plan = plan_run(ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT_TIME, manifests=manifests)
    run = run_now(plan, TASKS, broker, ledger, None, manifests=manifests)
    assert run["status"] == L.SUCCEEDED and run["units"]["total"] == 4
    assert reads.count(manifests.key(plan.run_id)) == 2  # the runner's units, then Close's planned units
    assert run["counts"]["created"] == 1


def test_close_reads_why_a_unit_failed_from_the_results(ledger, fleet, manifests) -> None:
    plan = plan_run(ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT_TIME, manifests=manifests)

    def run_one(unit: Unit) -> None:
        if unit.account == ACCOUNT_B and unit.region == "eu-west-1":
            raise RuntimeError("the unit's last ledger write failed")
        ledger.record_unit(unit.run_id, unit.account, unit.region, job=unit.job, status=L.SUCCEEDED, counts={})

    reason, results = run_locally(plan, run_one, manifests)
    assert results is not None
    # The results are in the Distributed Map's ResultWriter layout.
    written = json.loads(manifests.s3.get_object(Bucket=results["Bucket"], Key=results["Key"])["Body"].read())
    assert set(written["ResultFiles"]) == {"FAILED", "PENDING", "SUCCEEDED"}
    request = CloseRequest.parse({"run_id": plan.run_id, "error": {}, "results": results})
    run = close_run(plan.run_id, ledger, None, reason=reason, manifests=manifests, results=request.results)
    assert run["status"] == L.PARTIAL and run["units"] == {"total": 4, "succeeded": 3, "failed": 1}
    (failure,) = run["failures"]
    assert failure.startswith(f"{ACCOUNT_B}/eu-west-1: no result recorded")
    assert "RuntimeError: the unit's last ledger write failed" in failure


def test_a_manifest_run_is_never_closed_without_its_manifest(ledger, fleet, manifests) -> None:
    plan = plan_run(ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT_TIME, manifests=manifests)
    with pytest.raises(RunError, match="S3 manifest"):
        close_run(plan.run_id, ledger, None)
    assert ledger.get_run(plan.run_id)["status"] == L.RUNNING  # fail closed: not counted complete
    # Nor with a manifest that is not the one the run planned (overwritten, truncated).
    manifests.s3.put_object(Bucket=MANIFEST_BUCKET, Key=manifests.key(plan.run_id), Body=b"[]")
    with pytest.raises(RunError, match="lists 0 units, the run planned 4"):
        close_run(plan.run_id, ledger, None, manifests=manifests)
    assert ledger.get_run(plan.run_id)["status"] == L.RUNNING


def test_results_and_manifests_outside_opsbots_bucket_are_refused(ledger, fleet, manifests) -> None:
    plan = plan_run(ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT_TIME, manifests=manifests)
    # The results only say why: ones that cannot be read are noted, and the ledger still closes the run.
    run = close_run(plan.run_id, ledger, None, manifests=manifests, results={"Bucket": "elsewhere", "Key": "k"})
    assert run["status"] == L.FAILED and "results could not be read" in run["failures"][0]
    assert "results.Bucket: 'elsewhere' is not opsbot's bucket" in run["failures"][0]
    with pytest.raises(InputError, match=r"manifest\.bucket"):
        manifests.read(ManifestRef("elsewhere", "k", 1, 1), "test")
    manifests.s3.put_object(Bucket=MANIFEST_BUCKET, Key="bad.json", Body=b'[{"account": "x"}]')
    with pytest.raises(InputError, match=r"manifest\[0\].account"):
        manifests.read(ManifestRef(MANIFEST_BUCKET, "bad.json", 1, 1), "test")
    assert CloseRequest.parse({"run_id": plan.run_id, "results": None}).results is None  # the Map failed


def test_the_map_items_are_the_manifest_items_with_what_units_share(ledger, fleet, manifests) -> None:
    plan = plan_run(ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT_TIME, manifests=manifests)
    units = manifest_units(plan, manifests)
    assert sorted(units, key=lambda u: (u.account, u.region)) == sorted(plan.units, key=lambda u: (u.account, u.region))
    state = plan.as_dict()
    # What the ItemSelector adds (statemachines/run.asl.yaml) rebuilds each unit exactly.
    item = {k: getattr(units[0], k) for k in ("account", "region", "primary", "account_name")}
    selected = {k: state[k] for k in ("run_id", "job", "slot", "dry_run")} | item
    assert Unit.from_dict(selected) == units[0]


# ---- caps on units at once per member -----------------------------------------------------------------
def test_one_unit_at_a_time_in_an_account_region_and_a_cap_per_account(ledger) -> None:
    caps = MemberCaps(ledger.table, per_account=2, per_region=1)
    with caps.hold("run-1", ACCOUNT_A, "us-east-1"):
        with pytest.raises(MemberBusy, match=f"CAP#{ACCOUNT_A}#us-east-1"), caps.hold("run-2", ACCOUNT_A, "us-east-1"):
            pass
        with caps.hold("run-1", ACCOUNT_A, "eu-west-1"):
            with pytest.raises(MemberBusy, match=f"CAP#{ACCOUNT_A}: 2"), caps.hold("run-1", ACCOUNT_A, "ap-south-1"):
                pass
            with caps.hold("run-1", ACCOUNT_B, "ap-south-1"):  # another account has its own cap
                pass
    with caps.hold("run-2", ACCOUNT_A, "us-east-1"):  # released on the way out
        pass
    held = ledger.table.get_item(Key={"pk": f"CAP#{ACCOUNT_A}", "sk": "CAP"})["Item"]
    assert not held.get("holders")  # a refused hold left nothing behind


def test_a_holder_that_died_is_dropped_once_its_lease_is_past(ledger) -> None:
    now = [datetime(2026, 11, 20, 3, 0, tzinfo=UTC)]
    caps = MemberCaps(ledger.table, per_account=1, per_region=1, clock=lambda: now[0])
    caps._take(f"CAP#{ACCOUNT_A}", 1, "dead-run|us-east-1")  # took its place, then its Lambda died
    with pytest.raises(MemberBusy), caps.hold("run-2", ACCOUNT_A, "eu-west-1"):
        pass
    now[0] += timedelta(minutes=17)
    with caps.hold("run-2", ACCOUNT_A, "eu-west-1"):
        pass
    item = ledger.table.get_item(Key={"pk": f"CAP#{ACCOUNT_A}", "sk": "CAP"})["Item"]
    assert not item.get("holders") and not [k for k in item if k.startswith("lease:")]


def test_a_retried_unit_holds_its_own_place_again_never_a_second_one(ledger) -> None:
    caps = MemberCaps(ledger.table, per_account=2, per_region=0)
    # The first attempt took its place and died (or its reply was lost); the retry takes the same one...
    caps._take(f"CAP#{ACCOUNT_A}", 2, "run-1|us-east-1")
    caps._take(f"CAP#{ACCOUNT_A}", 2, "run-1|eu-west-1")  # the cap is now full
    with caps.hold("run-1", ACCOUNT_A, "us-east-1"):
        held = ledger.table.get_item(Key={"pk": f"CAP#{ACCOUNT_A}", "sk": "CAP"})["Item"]["holders"]
        assert held == {"run-1|us-east-1", "run-1|eu-west-1"}
    # ...and its release leaves nothing of it behind.
    held = ledger.table.get_item(Key={"pk": f"CAP#{ACCOUNT_A}", "sk": "CAP"})["Item"]["holders"]
    assert held == {"run-1|eu-west-1"}


def test_a_busy_member_makes_the_local_runner_wait_not_fail(ledger, fleet, broker, manifests, member) -> None:
    caps = MemberCaps(ledger.table, per_account=1, per_region=1)
    plan = plan_run(ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT_TIME, manifests=manifests)
    run = run_now(plan, TASKS, broker, ledger, None, manifests=manifests, caps=caps, max_workers=4)
    assert run["status"] == L.SUCCEEDED and run["units"]["total"] == 4


def test_an_unreachable_ledger_is_not_taken_for_a_busy_member(ledger) -> None:
    caps = MemberCaps(ledger.table, per_account=1, per_region=1)
    ledger.table.meta.client.meta.events.register(
        "before-call.dynamodb.UpdateItem",
        lambda **_: (_ for _ in ()).throw(
            ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "UpdateItem")
        ),
    )
    with pytest.raises(ClientError), caps.hold("run-1", ACCOUNT_A, "us-east-1"):
        pass
