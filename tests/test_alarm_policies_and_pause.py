"""Kill switches flipped by policy (CloudWatch alarm events) and opsbot pause/resume."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from automations.core.rulebook import RulebookError
from automations.kill_switches import pause as pausing
from automations.kill_switches.policies import load_policies, on_alarm_event
from automations.kill_switches.switchboard import Actor, Switchboard
from tests.conftest import ACCOUNT_A, FIXTURES
from tests.test_kill_switches import _zip

REGION = "us-east-1"
POLICIES = load_policies(
    "rules/kill_switches.yaml",
    """
policies:
  - name: orders-dlq-flood
    alarm: orders-dlq-depth
    targets: [lambda:orders-consumer, rule:orders-replay]
    restore_on_ok: true
  - name: keep-off
    alarm: billing-anomaly
    targets: [lambda:orders-consumer]
""",
)


def alarm_event(state: str, previous: str, alarm: str = "orders-dlq-depth") -> dict[str, Any]:
    """The recorded CloudWatch Alarm State Change event, re-addressed to this alarm and account."""
    event: dict[str, Any] = copy.deepcopy(
        json.loads((FIXTURES / "eventbridge" / "cloudwatch_alarm_state_change.json").read_text())["payload"]
    )
    event.update(account=ACCOUNT_A, region=REGION, id=f"evt-{alarm}-{state}")
    event["detail"]["alarmName"] = alarm
    event["detail"]["state"]["value"] = state
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
    board = Switchboard(ledger.table, broker.client)
    events = broker.client(ACCOUNT_A, REGION, "events")
    flipped = on_alarm_event(alarm_event("ALARM", "OK"), POLICIES, board)
    assert [r.outcome for r in flipped] == ["flipped", "flipped"]
    assert lam.get_function_concurrency(FunctionName="orders-consumer")["ReservedConcurrentExecutions"] == 0
    assert events.describe_rule(Name="orders-replay")["State"] == "DISABLED"
    assert board.flipped()[0]["flipped_by"]["type"] == "policy"
    restored = on_alarm_event(alarm_event("OK", "ALARM"), POLICIES, board)
    assert [r.outcome for r in restored] == ["restored", "restored"]
    assert lam.get_function_concurrency(FunctionName="orders-consumer")["ReservedConcurrentExecutions"] == 40
    assert events.describe_rule(Name="orders-replay")["State"] == "ENABLED"


def test_policy_without_restore_on_ok_leaves_it_off_and_unrelated_alarms_do_nothing(ledger, broker, lam):
    board = Switchboard(ledger.table, broker.client)
    on_alarm_event(alarm_event("ALARM", "OK", "billing-anomaly"), POLICIES, board)
    assert on_alarm_event(alarm_event("OK", "ALARM", "billing-anomaly"), POLICIES, board) == []
    assert lam.get_function_concurrency(FunctionName="orders-consumer")["ReservedConcurrentExecutions"] == 0
    assert on_alarm_event(alarm_event("ALARM", "OK", "some-other-alarm"), POLICIES, board) == []


def test_pinned_policy_ignores_same_named_alarms_elsewhere_and_ok_spares_a_human_flip(ledger, broker, lam):
    board = Switchboard(ledger.table, broker.client)
    pinned = load_policies(
        "k.yaml",
        f"policies:\n  - {{name: p, alarm: orders-dlq-depth, account: '{ACCOUNT_A}', targets: [lambda:orders-consumer], restore_on_ok: true}}\n",
    )
    elsewhere = alarm_event("ALARM", "OK")
    elsewhere["account"] = "999999999999"  # a sandbox's alarm of the same name (StackSets)
    assert on_alarm_event(elsewhere, pinned, board) == []
    human = Actor("slack", "U0ONCALL", "dana")
    from automations.kill_switches.switchboard import Target

    board.flip(Target("lambda", "orders-consumer", ACCOUNT_A, REGION), human)
    assert on_alarm_event(alarm_event("OK", "ALARM"), pinned, board) == []  # not the policy's flip
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
    board = Switchboard(ledger.table, lambda account, region, service: hub_session.client(service, region_name=region))
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
