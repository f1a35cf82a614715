"""The breach-check Lambda steps the state machine calls: duplicate schedule invocations plan once,
a retried unit says nothing twice, and a unit lost by the Map opens its 'cannot check' alert."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from opsbot.local.hub import create_manifest_bucket
from tests.breach_support import lambda_usage, minutes_ago
from tests.conftest import ACCOUNT_A, ACCOUNT_B, FakeLambdaContext
from tests.map_support import map_batches, map_items

FLEET = f"""
role_prefix: opsbot
external_id: opsbot-test
default_regions: [us-east-1, eu-west-1]
accounts:
  - {{id: "{ACCOUNT_A}", name: payments-prod}}
  - {{id: "{ACCOUNT_B}", name: analytics-prod}}
"""
TASKS = "tasks:\n  - {name: snapshot-daily, kind: ebs-snapshot, schedule: 'cron(0 3 * * ? *)'}\n"
QUOTAS = "thresholds: {}\nlambda_concurrency: {lookback_minutes: 10}\nservice_quotas: {services: [ec2]}\n"


@pytest.fixture
def handler(shimmed, hub_session, inbox, tmp_path, monkeypatch) -> Any:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(FLEET)
    (rules / "tasks.yaml").write_text(TASKS)
    (rules / "quotas.yaml").write_text(QUOTAS)
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    monkeypatch.setenv("OPSBOT_LEDGER_TABLE", "opsbot-ledger")
    monkeypatch.setenv("OPSBOT_IDEMPOTENCY_TABLE", "opsbot-idempotency")
    monkeypatch.setenv("OPSBOT_MANIFEST_BUCKET", create_manifest_bucket(hub_session))
    monkeypatch.setenv("OPSBOT_ALERT_TOPIC_ARN", inbox.notifier.topic_arn)
    monkeypatch.delenv("OPSBOT_SLACK_SECRET_NAME", raising=False)
    from handlers import _wiring, check_quotas

    def clear() -> None:
        _wiring.reset()  # the runtime, and with it the rules it loaded
        if hasattr(_wiring, "_notifier_for"):
            _wiring._notifier_for.cache_clear()

    clear()
    yield check_quotas
    clear()


def units_of(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's units, as the Distributed Map hands them out (before batching)."""
    return map_items(plan, "check.asl.yaml")


def scheduler_input(check: str, when: datetime, execution_id: str) -> dict[str, Any]:
    """What EventBridge Scheduler sends (template.yaml Target.Input, context attributes filled in)."""
    return {"check": check, "id": execution_id, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_plan_units_close_with_retries_and_duplicates(handler, broker, inbox):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    lambda_usage(broker.client(ACCOUNT_A, "us-east-1", "cloudwatch"), minutes_ago(now, 1), total=870, unreserved=870)
    plan = handler.plan(scheduler_input("lambda-concurrency", now, "d32c5kddcf5bb8c3"), FakeLambdaContext())
    # Scheduler retries the same scheduled time with another execution id: the same plan comes back.
    again = handler.plan(scheduler_input("lambda-concurrency", now, "e41d6leedg6cc9d4"), FakeLambdaContext())
    assert again["run_id"] == plan["run_id"] and len(units_of(plan)) == 4
    # Interleaved across accounts: every account's first region, then every account's second.
    assert [(u["account"], u["primary"]) for u in units_of(plan)] == [
        (ACCOUNT_A, True),
        (ACCOUNT_B, True),
        (ACCOUNT_A, False),
        (ACCOUNT_B, False),
    ]

    # The Map's items: batches of units, one invocation each (here all four in one batch).
    assert [len(b["Items"]) for b in map_batches(plan)] == [4] and "units" not in plan  # in S3, not the state
    first = handler.unit(map_batches(plan)[0], FakeLambdaContext())["units"]
    retried = [handler.unit(u, FakeLambdaContext()) for u in units_of(plan)]  # one unit alone is still accepted
    assert [r["status"] for r in first + retried] == ["SUCCEEDED"] * 8
    assert sum(r["counts"].get("opened", 0) for r in first) == 1
    assert sum(r["counts"].get("opened", 0) for r in retried) == 0
    (alert,) = inbox.alerts()
    assert alert["title"] == "Warning: Lambda concurrency at 87.0% in payments-prod/us-east-1"

    closed = handler.close({"run_id": plan["run_id"], "error": {}}, FakeLambdaContext())
    assert closed["status"] == "SUCCEEDED"
    assert handler.close({"run_id": plan["run_id"]}, FakeLambdaContext()) == closed
    from handlers._wiring import runtime

    events = [(a["account"], a["resource"], a["action"]) for a in runtime().ledger.actions(plan["run_id"])]
    assert events == [(ACCOUNT_A, "lambda/concurrency", "alert-opened")]  # recorded once, with the run


def test_close_after_a_lost_unit_opens_its_cannot_check_alert(handler, inbox):
    now = datetime.now(UTC)
    plan = handler.plan(scheduler_input("service-quotas", now, "a1"), FakeLambdaContext())
    for unit in units_of(plan)[1:]:
        handler.unit(unit, FakeLambdaContext())
    error = {"Error": "States.Timeout", "Cause": "Map timed out"}
    closed = handler.close({"run_id": plan["run_id"], "error": error}, FakeLambdaContext())
    assert closed["status"] == "PARTIAL"
    (alert,) = inbox.alerts()
    lost = units_of(plan)[0]
    assert alert["kind"] == "breach-check-failed"
    assert alert["data"]["account"] == lost["account"] and alert["data"]["region"] == lost["region"]
    assert "no result recorded (States.Timeout)" in alert["summary"]
    from handlers._wiring import runtime

    run = runtime().ledger.get_run(plan["run_id"])
    assert run["units"] == {"total": 4, "succeeded": 3, "failed": 1}
    assert json.dumps(run["failures"]).count("no result recorded") == 1


def test_unit_near_its_time_limit_does_not_start(handler):
    plan = handler.plan(scheduler_input("service-quotas", datetime.now(UTC), "b2"), FakeLambdaContext())
    summary = handler.unit(units_of(plan)[0], FakeLambdaContext(remaining_ms=10_000))
    assert summary["status"] == "PARTIAL" and summary["error"] == "not started: the time limit was near"
