"""The Lambda handlers the state machine calls, with Powertools Idempotency on moto DynamoDB."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsbot.local.hub import create_manifest_bucket
from tests.conftest import ACCOUNT_A, ACCOUNT_B, FIXTURES, FakeLambdaContext
from tests.map_support import map_items

FLEET = f"""
role_prefix: opsbot
external_id: opsbot-test
default_regions: [us-east-1, eu-west-1]
accounts:
  - {{id: "{ACCOUNT_A}", name: a}}
  - {{id: "{ACCOUNT_B}", name: b}}
"""
TASKS = (
    "tasks:\n  - {name: snapshot-daily, kind: ebs-snapshot, schedule: 'cron(0 3 * * ? *)', retention: {keep_last: 2}}\n"
)


@pytest.fixture
def handler(hub_session, tmp_path, monkeypatch) -> Any:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(FLEET)
    (rules / "tasks.yaml").write_text(TASKS)
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    monkeypatch.setenv("OPSBOT_LEDGER_TABLE", "opsbot-ledger")
    monkeypatch.setenv("OPSBOT_IDEMPOTENCY_TABLE", "opsbot-idempotency")
    monkeypatch.setenv("OPSBOT_MANIFEST_BUCKET", create_manifest_bucket(hub_session))
    from handlers import _wiring, scheduled_task

    _wiring.reset()
    yield scheduled_task
    _wiring.reset()


def schedule_input() -> dict[str, Any]:
    """What the schedule rule's InputTransformer makes of a real Scheduled Event."""
    event = json.loads((FIXTURES / "eventbridge" / "scheduled_event.json").read_text())["payload"]
    return {"task": "snapshot-daily", "id": event["id"], "time": event["time"]}


def test_plan_units_close_with_duplicate_deliveries(handler, member):
    for account in (ACCOUNT_A, ACCOUNT_B):
        member(account, "us-east-1").volume({"OpsTaskList": "snapshot-daily"})
    event = schedule_input()
    plan = handler.plan(event, FakeLambdaContext())
    again = handler.plan(event, FakeLambdaContext())  # EventBridge delivered the same event twice
    assert again["run_id"] == plan["run_id"]
    assert len(map_items(plan)) == 4

    results = [handler.unit(u, FakeLambdaContext()) for u in map_items(plan)]
    repeat = [handler.unit(u, FakeLambdaContext()) for u in map_items(plan)]  # a retried Map branch
    assert repeat == results
    assert sum(r["counts"].get("created", 0) for r in results) == 2
    for account in (ACCOUNT_A, ACCOUNT_B):
        assert len(member(account, "us-east-1").snapshots("snapshot-daily")) == 1

    closed = handler.close({"run_id": plan["run_id"]}, FakeLambdaContext())
    assert closed["status"] == "SUCCEEDED" and closed["counts"]["created"] == 2


def test_close_after_a_lost_map_marks_missing_units(handler, member):
    plan = handler.plan(schedule_input(), FakeLambdaContext())
    handler.unit(map_items(plan)[0], FakeLambdaContext())
    closed = handler.close(
        {"run_id": plan["run_id"], "error": {"Error": "States.Timeout", "Cause": "Map timed out"}},
        FakeLambdaContext(),
    )
    assert closed["status"] == "PARTIAL"
    from handlers._wiring import runtime

    run = runtime().ledger.get_run(plan["run_id"])
    assert run["units"] == {"total": 4, "succeeded": 1, "failed": 3}
    assert any("no result recorded (States.Timeout)" in f for f in run["failures"])


def test_unit_near_timeout_closes_partial(handler, member):
    member(ACCOUNT_A, "us-east-1").volume({"OpsTaskList": "snapshot-daily"})
    plan = handler.plan(schedule_input(), FakeLambdaContext())
    for u in map_items(plan):
        handler.unit(u, FakeLambdaContext(remaining_ms=20_000))  # under the 30 s margin
    closed = handler.close({"run_id": plan["run_id"]}, FakeLambdaContext())
    assert closed["status"] == "PARTIAL"
    assert member(ACCOUNT_A, "us-east-1").snapshots("snapshot-daily") == []


def test_close_waits_for_a_unit_still_running_and_fails_one_that_died(handler, member):
    from freezegun import freeze_time

    from automations.core.runs import UnitsStillRunning
    from handlers._wiring import runtime

    with freeze_time("2026-11-25 03:01:00"):
        plan = handler.plan(schedule_input(), FakeLambdaContext())
        for u in map_items(plan)[1:]:
            handler.unit(u, FakeLambdaContext())
        first = map_items(plan)[0]
        # A duplicate execution is still working on this unit: its record says RUNNING.
        runtime().ledger.record_unit(
            first["run_id"], first["account"], first["region"], status="RUNNING", started_at="2026-11-25T03:00:30Z"
        )
        with pytest.raises(UnitsStillRunning):
            handler.close({"run_id": plan["run_id"]}, FakeLambdaContext())
        assert runtime().ledger.get_run(plan["run_id"])["status"] == "RUNNING"
    with freeze_time("2026-11-25 03:30:00"):  # longer than any unit can live: it died without a record
        closed = handler.close({"run_id": plan["run_id"]}, FakeLambdaContext())
        assert closed["status"] == "PARTIAL"
        again = handler.close({"run_id": plan["run_id"]}, FakeLambdaContext())  # a racing/duplicate Close
        assert again["status"] == "PARTIAL"
    run = runtime().ledger.get_run(plan["run_id"])
    assert any("never finished" in f for f in run["failures"])


def test_the_sweeper_reaps_an_execution_that_died_and_delivers_its_announcement(
    handler, member, hub_session, monkeypatch
):
    """A state machine execution that died after one unit (its Close never ran): a day later the sweeper
    closes the run with the reason, fails the unit rows, and the run's announcement reaches SNS once."""
    from freezegun import freeze_time

    from handlers import _wiring, sweeper

    sns, sqs = hub_session.client("sns"), hub_session.client("sqs")
    topic = sns.create_topic(Name="opsbot-alerts")["TopicArn"]
    monkeypatch.setenv("OPSBOT_ALERT_TOPIC_ARN", topic)
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    plan = handler.plan(schedule_input(), FakeLambdaContext())
    handler.unit(map_items(plan)[0], FakeLambdaContext())
    ledger = _wiring.runtime().ledger
    ledger.record_unit(plan["run_id"], ACCOUNT_B, "us-east-1", status="RUNNING", started_at=map_items(plan)[0]["slot"])

    with freeze_time(datetime.now(UTC) + timedelta(hours=25)):
        first = sweeper.handler({}, FakeLambdaContext())
        again = sweeper.handler({}, FakeLambdaContext())
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])

    assert first["reaped"] == [plan["run_id"]] and again["reaped"] == []
    run = ledger.get_run(plan["run_id"])
    assert run["status"] == "PARTIAL" and run["close_reason"].startswith("reaped:")
    assert all(u["status"] != "RUNNING" for u in ledger.units(plan["run_id"]))

    ids = [json.loads(m["Body"])["MessageAttributes"]["announcement_id"]["Value"] for m in messages]
    assert ids == [f"run#{plan['run_id']}"]


def test_a_reaper_that_fails_never_keeps_the_others_or_the_outbox_from_running(handler, member):
    """An overdue check run with quotas.yaml missing (the check reaper cannot load its rules): the task
    run is still reaped and announced, and the sweeper then fails loudly, naming what it could not do."""
    from freezegun import freeze_time

    from handlers import _wiring, sweeper

    plan = handler.plan(schedule_input(), FakeLambdaContext())
    ledger = _wiring.runtime().ledger
    ledger.open_run(
        "lambda-concurrency-20151008T0300Z-aaaaaa",
        datetime.now(UTC) + timedelta(minutes=30),
        kind="breach-check",
        task="lambda-concurrency",
        planned_units=[],
    )
    with freeze_time(datetime.now(UTC) + timedelta(hours=25)), pytest.raises(sweeper.SweepIncomplete) as failed:
        sweeper.handler({}, FakeLambdaContext())
    assert "check runs" in str(failed.value) and "quotas.yaml" in str(failed.value)
    assert ledger.get_run(plan["run_id"])["status"] == "FAILED"
    assert ledger.get_run("lambda-concurrency-20151008T0300Z-aaaaaa")["status"] == "RUNNING"


def test_a_unit_a_busy_member_refused_runs_when_the_state_machine_retries_it(handler, member):
    """MemberBusy leaves no unit record and no idempotency record behind: the Map's Retry runs it later."""
    from automations.core.caps import MemberBusy
    from handlers._wiring import runtime

    member(ACCOUNT_A, "us-east-1").volume({"OpsTaskList": "snapshot-daily"})
    plan = handler.plan(schedule_input(), FakeLambdaContext())
    unit = next(u for u in map_items(plan) if (u["account"], u["region"]) == (ACCOUNT_A, "us-east-1"))
    rt = runtime()
    with rt.caps.hold("snapshot-weekly-20261125T0400Z-abcdef", ACCOUNT_A, "us-east-1"):  # another task's unit
        with pytest.raises(MemberBusy):
            handler.unit(unit, FakeLambdaContext())
        assert rt.ledger.units(plan["run_id"]) == []
    result = handler.unit(unit, FakeLambdaContext())
    assert result["status"] == "SUCCEEDED" and result["counts"]["created"] == 1
