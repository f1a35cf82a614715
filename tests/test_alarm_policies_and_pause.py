"""Kill switches flipped by policy (CloudWatch alarm events, real recorded shapes) and opsbot pause/resume.

Alarm policies act only on "CloudWatch Alarm State Change" events from fleet accounts, not while the
alarm's actions are suppressed, never on a state older than the switch's last change, and refuse the
payload CloudWatch sends when a function is itself the alarm's action (a designed error, recorded)."""

from __future__ import annotations

import copy
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from automations.core.boundary import InputError
from automations.core.rulebook import RulebookError
from automations.kill_switches import pause as pausing
from automations.kill_switches.policies import load_policies, on_alarm_event
from automations.kill_switches.switchboard import Actor, Switchboard, Target
from tests.conftest import ACCOUNT_A, ACCOUNT_B, FIXTURES, FakeLambdaContext
from tests.test_kill_switches import _zip

REGION = "us-east-1"
POLICIES_TEXT = """
policies:
  - name: orders-dlq-flood
    alarm: orders-dlq-depth
    targets: [lambda:orders-consumer, rule:orders-replay]
    restore_on_ok: true
  - name: keep-off
    alarm: billing-anomaly
    targets: [lambda:orders-consumer]
"""
POLICIES = load_policies("rules/kill_switches.yaml", POLICIES_TEXT)
ALARM_AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def recorded(path: str) -> dict[str, Any]:
    payload: dict[str, Any] = copy.deepcopy(json.loads((FIXTURES / path).read_text())["payload"])
    return payload


def alarm_event(
    state: str, previous: str, alarm: str = "orders-dlq-depth", at: datetime = ALARM_AT, account: str = ACCOUNT_A
) -> dict[str, Any]:
    """The recorded CloudWatch Alarm State Change event, re-addressed to this alarm, account and time."""
    event = recorded("eventbridge/cloudwatch_alarm_state_change.json")
    event.update(account=account, region=REGION, id=f"evt-{alarm}-{state}-{at:%H%M%S%f}")
    event["detail"]["alarmName"] = alarm
    event["detail"]["state"]["value"] = state
    event["detail"]["state"]["timestamp"] = (
        at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"
    )  # as CloudWatch writes it
    event["detail"]["previousState"]["value"] = previous
    return event


@pytest.fixture
def lam(broker) -> Any:
    client = broker.client(ACCOUNT_A, REGION, "lambda")
    role = broker.client(ACCOUNT_A, REGION, "iam").create_role(RoleName="fn", AssumeRolePolicyDocument="{}")["Role"][
        "Arn"
    ]
    client.create_function(
        FunctionName="orders-consumer", Runtime="python3.11", Role=role, Handler="a.h", Code={"ZipFile": _zip()}
    )
    client.put_function_concurrency(FunctionName="orders-consumer", ReservedConcurrentExecutions=40)
    broker.client(ACCOUNT_A, REGION, "events").put_rule(Name="orders-replay", ScheduleExpression="rate(5 minutes)")
    return client


def test_alarm_flips_and_ok_restores(ledger, broker, lam):
    board = Switchboard(ledger.table, broker.client, broker.fleet)
    events = broker.client(ACCOUNT_A, REGION, "events")
    flipped = on_alarm_event(alarm_event("ALARM", "OK"), POLICIES, board)
    assert [r.outcome for r in flipped] == ["flipped", "flipped"]
    assert lam.get_function_concurrency(FunctionName="orders-consumer")["ReservedConcurrentExecutions"] == 0
    assert events.describe_rule(Name="orders-replay")["State"] == "DISABLED"
    assert board.flipped()[0]["flipped_by"]["type"] == "policy"
    restored = on_alarm_event(alarm_event("OK", "ALARM", at=ALARM_AT + timedelta(minutes=5)), POLICIES, board)
    assert [r.outcome for r in restored] == ["restored", "restored"]
    assert lam.get_function_concurrency(FunctionName="orders-consumer")["ReservedConcurrentExecutions"] == 40
    assert events.describe_rule(Name="orders-replay")["State"] == "ENABLED"


def test_policy_without_restore_on_ok_leaves_it_off_and_unrelated_alarms_do_nothing(ledger, broker, lam):
    board = Switchboard(ledger.table, broker.client, broker.fleet)
    on_alarm_event(alarm_event("ALARM", "OK", "billing-anomaly"), POLICIES, board)
    later = ALARM_AT + timedelta(minutes=5)
    assert on_alarm_event(alarm_event("OK", "ALARM", "billing-anomaly", at=later), POLICIES, board) == []
    assert lam.get_function_concurrency(FunctionName="orders-consumer")["ReservedConcurrentExecutions"] == 0
    assert on_alarm_event(alarm_event("ALARM", "OK", "some-other-alarm"), POLICIES, board) == []


def test_pinned_policy_ignores_same_named_alarms_elsewhere_and_ok_spares_a_human_flip(ledger, broker, lam):
    board = Switchboard(ledger.table, broker.client, broker.fleet)
    pinned = load_policies(
        "k.yaml",
        f"policies:\n  - {{name: p, alarm: orders-dlq-depth, account: '{ACCOUNT_A}', targets: [lambda:orders-consumer], restore_on_ok: true}}\n",
    )
    elsewhere = alarm_event("ALARM", "OK")
    elsewhere["account"] = "999999999999"  # a sandbox's alarm of the same name (StackSets)
    assert on_alarm_event(elsewhere, pinned, board) == []
    human = Actor("slack", "U0ONCALL", "dana")
    board.flip(Target("lambda", "orders-consumer", ACCOUNT_A, REGION), human)
    ok = alarm_event("OK", "ALARM", at=ALARM_AT + timedelta(minutes=5))
    assert on_alarm_event(ok, pinned, board) == []  # not the policy's flip
    assert lam.get_function_concurrency(FunctionName="orders-consumer")["ReservedConcurrentExecutions"] == 0


def test_bad_policy_file():
    with pytest.raises(RulebookError) as err:
        load_policies("rules/kill_switches.yaml", "policies:\n  - name: x\n    alarm: a\n    targets: [ec2:i-1]\n")
    assert str(err.value).startswith("rules/kill_switches.yaml:4: policies[0].targets[0]: 'ec2:i-1' does not match")


def test_pause_and_resume_restore_exactly_the_previous_rule_states(ledger, hub_session):
    events = hub_session.client("events")
    events.put_rule(Name="opsbot-task-snapshot-daily", ScheduleExpression="cron(0 3 * * ? *)", State="ENABLED")
    events.put_rule(Name="opsbot-task-sg-sweep", ScheduleExpression="rate(1 hour)", State="DISABLED")
    events.put_rule(Name="opsbot-sg-remediation", EventPattern=json.dumps({"source": ["aws.ec2"]}), State="ENABLED")
    events.put_rule(Name="someone-elses-rule", ScheduleExpression="rate(1 hour)", State="ENABLED")
    scheduler = hub_session.client("scheduler")
    scheduler.create_schedule_group(Name="opsbot-breach-checks")
    scheduler.create_schedule(
        Name="lambda-concurrency",
        GroupName="opsbot-breach-checks",
        ScheduleExpression="rate(5 minutes)",
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={
            "Arn": "arn:aws:states:us-east-1:123456789012:stateMachine:breach",
            "RoleArn": "arn:aws:iam::123456789012:role/s",
        },
        State="ENABLED",
    )
    board = Switchboard(
        ledger.table, lambda account, region, service: hub_session.client(service, region_name=region), None
    )
    ops = Actor("cli", "arn:aws:iam::123456789012:user/ops", "ops")
    paused = pausing.pause(board, events, "123456789012", REGION, ops, scheduler=scheduler)
    assert sorted(r.target.id for r in paused) == [
        "opsbot-breach-checks/lambda-concurrency",
        "opsbot-sg-remediation",
        "opsbot-task-sg-sweep",
        "opsbot-task-snapshot-daily",
    ]
    assert scheduler.get_schedule(Name="lambda-concurrency", GroupName="opsbot-breach-checks")["State"] == "DISABLED"
    states = {r["Name"]: r["State"] for r in events.list_rules()["Rules"]}
    assert states == {
        "opsbot-task-snapshot-daily": "DISABLED",
        "opsbot-task-sg-sweep": "DISABLED",
        "opsbot-sg-remediation": "DISABLED",
        "someone-elses-rule": "ENABLED",
    }
    assert [r.outcome for r in pausing.pause(board, events, "123456789012", REGION, ops)] == ["already-flipped"] * 3
    pausing.resume(board, ops)
    schedule = scheduler.get_schedule(Name="lambda-concurrency", GroupName="opsbot-breach-checks")
    assert schedule["State"] == "ENABLED" and schedule["ScheduleExpression"] == "rate(5 minutes)"
    states = {r["Name"]: r["State"] for r in events.list_rules()["Rules"]}
    assert states == {
        "opsbot-task-snapshot-daily": "ENABLED",
        "opsbot-task-sg-sweep": "DISABLED",  # it was off before the pause, so it stays off
        "opsbot-sg-remediation": "ENABLED",
        "someone-elses-rule": "ENABLED",
    }
    assert pausing.resume(board, ops) == []


# ---- through the handler (handlers.alarm_policies), with the recorded event shapes ------------------
COMPOSITE = "ServiceAggregatedAlarm"  # the alarm of the recorded composite-alarm events


@pytest.fixture
def policy_handler(hub_session, tmp_path, monkeypatch, lam) -> Any:
    """handlers.alarm_policies.handler wired to moto and a rules directory: the fleet is account A in
    us-east-1 only (account B and eu-west-1 are not), the policies above plus one on the composite alarm."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(
        f'external_id: opsbot-test\naccounts:\n  - {{id: "{ACCOUNT_A}", regions: [{REGION}]}}\n'
    )
    (rules / "tasks.yaml").write_text("tasks: []\n")
    (rules / "kill_switches.yaml").write_text(
        POLICIES_TEXT + f"  - {{name: aggregated, alarm: {COMPOSITE}, targets: [lambda:orders-consumer]}}\n"
    )
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    from handlers import _wiring, alarm_policies

    _wiring.reset()
    yield lambda event: alarm_policies.handler(event, FakeLambdaContext())["results"]
    _wiring.reset()


def reserved(lam: Any) -> int | None:
    return lam.get_function_concurrency(FunctionName="orders-consumer").get("ReservedConcurrentExecutions")


def test_a_late_alarm_after_ok_does_not_flip_the_target_again(policy_handler, ledger, broker, lam):
    alarm = alarm_event("ALARM", "OK")
    ok = alarm_event("OK", "ALARM", at=ALARM_AT + timedelta(minutes=5))
    assert [r["outcome"] for r in policy_handler(alarm)] == ["flipped", "flipped"]
    assert [r["outcome"] for r in policy_handler(ok)] == ["restored", "restored"]
    # The same ALARM state arrives again after the OK (delivered late, or retried under another event id).
    late = {**copy.deepcopy(alarm), "id": "evt-late-redelivery"}
    assert [r["outcome"] for r in policy_handler(late)] == ["stale", "stale"]
    assert reserved(lam) == 40  # still restored
    trail = Switchboard(ledger.table, broker.client, broker.fleet).audit(
        Target("lambda", "orders-consumer", ACCOUNT_A, REGION)
    )
    assert [a["outcome"] for a in trail] == ["flipped", "restored", "stale"]
    assert "not newer than the switch's last change" in trail[-1]["error"]
    # A state newer than the last change still acts.
    again = alarm_event("ALARM", "OK", at=ALARM_AT + timedelta(minutes=9))
    assert [r["outcome"] for r in policy_handler(again)] == ["flipped", "flipped"]
    assert reserved(lam) == 0


def test_an_alarm_older_than_a_manual_restore_does_not_flip(policy_handler, ledger, broker, lam):
    board = Switchboard(ledger.table, broker.client, broker.fleet, clock=lambda: ALARM_AT + timedelta(minutes=2))
    target = Target("lambda", "orders-consumer", ACCOUNT_A, REGION)
    board.flip(target, Actor("cli", "ops"))
    board.restore(target, Actor("cli", "ops"))  # on-call restored it at 10:02
    outcomes = [r["outcome"] for r in policy_handler(alarm_event("ALARM", "OK", at=ALARM_AT + timedelta(minutes=1)))]
    assert outcomes[0] == "stale" and reserved(lam) == 40


def test_a_composite_alarm_with_suppressed_actions_flips_nothing(policy_handler, ledger, broker, lam):
    event = recorded("eventbridge/cloudwatch_composite_alarm_actions_suppressed.json")
    event["account"] = ACCOUNT_A  # re-addressed to the fleet's account; otherwise as recorded
    assert event["detail"]["state"]["actionsSuppressedBy"] == "WaitPeriod"
    (result,) = policy_handler(event)
    assert result["outcome"] == "suppressed"
    assert reserved(lam) == 40
    (audit,) = Switchboard(ledger.table, broker.client, broker.fleet).audit(
        Target("lambda", "orders-consumer", ACCOUNT_A, REGION)
    )
    assert audit["outcome"] == "suppressed" and "suppressed by WaitPeriod" in audit["error"]
    # The same change without suppression flips.
    del event["detail"]["state"]["actionsSuppressedBy"], event["detail"]["state"]["actionsSuppressedReason"]
    event["id"] = "evt-not-suppressed"
    assert [r["outcome"] for r in policy_handler(event)] == ["flipped"]


def test_a_configuration_change_carrying_state_alarm_flips_nothing(policy_handler, ledger, lam):
    event = recorded("eventbridge/cloudwatch_alarm_configuration_change.json")
    event["account"] = ACCOUNT_A
    assert (
        event["detail-type"] == "CloudWatch Alarm Configuration Change" and event["detail"]["state"]["value"] == "ALARM"
    )
    assert policy_handler(event) == []
    assert reserved(lam) == 40


@pytest.mark.filterwarnings("ignore:No idempotency key value found")  # the payload has no event id
def test_the_direct_alarm_action_payload_is_refused_with_a_recorded_reason(policy_handler, ledger, lam, caplog):
    payload = recorded("lambda/cloudwatch_alarm_action_payload.json")
    payload["alarmData"]["alarmName"] = "orders-dlq-depth"  # even an alarm a policy names
    with caplog.at_level(logging.WARNING), pytest.raises(InputError) as err:
        policy_handler(payload)
    assert err.value.field == "alarmData" and "direct alarm-action payload" in err.value.problem
    assert "lambda-demo-metric-alarm" in err.value.source  # named by its alarm, as it has no event id
    assert any("refused a direct alarm-action payload" in r.getMessage() for r in caplog.records)
    record = ledger.get_run(f"unreadable-alarm-event-{err.value.source}")
    assert record and record["kind"] == "unreadable-input" and record["field"] == "alarmData"
    assert reserved(lam) == 40


@pytest.mark.parametrize(("account", "region"), [(ACCOUNT_B, REGION), (ACCOUNT_A, "eu-west-1")])
def test_alarms_from_outside_the_fleet_are_not_acted_on(policy_handler, broker, account, region, caplog):
    lam_elsewhere = broker.client(account, region, "lambda")
    role = broker.client(account, region, "iam").create_role(RoleName="fn2", AssumeRolePolicyDocument="{}")["Role"]
    lam_elsewhere.create_function(
        FunctionName="orders-consumer", Runtime="python3.11", Role=role["Arn"], Handler="a.h", Code={"ZipFile": _zip()}
    )
    event = alarm_event("ALARM", "OK", account=account)
    event["region"] = region
    with caplog.at_level(logging.WARNING):
        assert policy_handler(event) == []
    assert "ReservedConcurrentExecutions" not in lam_elsewhere.get_function_concurrency(FunctionName="orders-consumer")
    assert any("not in the fleet" in r.getMessage() or "fleet regions" in r.getMessage() for r in caplog.records)


def test_an_alarm_state_without_its_time_is_a_designed_error(policy_handler, lam):
    event = alarm_event("ALARM", "OK")
    del event["detail"]["state"]["timestamp"]
    with pytest.raises(InputError) as err:
        policy_handler(event)
    assert err.value.field == "detail.state.timestamp" and err.value.source == f"event {event['id']}"
    assert reserved(lam) == 40


def test_a_policy_on_a_protected_target_is_refused_and_on_call_hears(policy_handler, ledger, broker, lam, tmp_path):
    events = broker.client(ACCOUNT_A, REGION, "events")
    events.put_rule(Name="opsbot-forward-alarm-state-changes", EventPattern='{"source": ["aws.cloudwatch"]}')
    rules = tmp_path / "rules" / "kill_switches.yaml"
    rules.write_text(
        "policies:\n  - {name: stop-forwarding, alarm: orders-dlq-depth, targets: [rule:opsbot-forward-alarm-state-changes]}\n"
    )
    from handlers import _wiring

    _wiring.reset()
    (result,) = policy_handler(alarm_event("ALARM", "OK"))
    assert result["outcome"] == "refused"
    assert events.describe_rule(Name="opsbot-forward-alarm-state-changes")["State"] == "ENABLED"
    (pending,) = [i for i in ledger.table.scan()["Items"] if str(i["pk"]).startswith("OUTBOX#")]
    assert "opsbot's own rules" in json.dumps(pending, default=str)
