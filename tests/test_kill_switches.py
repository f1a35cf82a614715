"""Kill switches on moto: flip, restore exactly, double flip, restore without flip, all three kinds."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest

from automations.kill_switches.switchboard import Actor, Switchboard, SwitchError, Target
from tests.conftest import ACCOUNT_A

REGION = "us-east-1"
ONCALL = Actor("slack", "U0ONCALL", "dana")
CLI = Actor("cli", "arn:aws:iam::123456789012:user/ops", "ops")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return event\n")
    return buf.getvalue()


@pytest.fixture
def world(ledger, broker) -> Any:
    iam = broker.client(ACCOUNT_A, REGION, "iam")
    role = iam.create_role(
        RoleName="fn",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
    )["Role"]["Arn"]
    lam = broker.client(ACCOUNT_A, REGION, "lambda")
    for name in ("orders-consumer", "reporting"):
        lam.create_function(
            FunctionName=name, Runtime="python3.11", Role=role, Handler="app.handler", Code={"ZipFile": _zip()}
        )
    lam.put_function_concurrency(FunctionName="reporting", ReservedConcurrentExecutions=25)
    events = broker.client(ACCOUNT_A, REGION, "events")
    events.put_rule(Name="nightly-export", ScheduleExpression="rate(1 day)", State="ENABLED")
    events.put_rule(Name="already-off", ScheduleExpression="rate(1 day)", State="DISABLED")
    sqs = broker.client(ACCOUNT_A, REGION, "sqs")
    queue = sqs.create_queue(QueueName="orders")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    esm = lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="orders-consumer", Enabled=True)["UUID"]
    board = Switchboard(ledger.table, broker.client)
    return {"lam": lam, "events": events, "esm": esm, "board": board}


def fn(name: str) -> Target:
    return Target("lambda", name, ACCOUNT_A, REGION)


def reserved(world: Any, name: str) -> int | None:
    return world["lam"].get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")


def test_function_without_reservation_flips_to_zero_and_restores_to_none(world):
    board = world["board"]
    result = board.flip(fn("orders-consumer"), ONCALL, alert_id="a-1")
    assert result.outcome == "flipped" and result.before == {"reserved_concurrency": None}
    assert reserved(world, "orders-consumer") == 0
    back = board.restore(fn("orders-consumer"), CLI)
    assert back.outcome == "restored"
    assert reserved(world, "orders-consumer") is None  # DeleteFunctionConcurrency, not "put back 0"


def test_function_with_25_restores_to_25(world):
    board = world["board"]
    board.flip(fn("reporting"), ONCALL)
    assert reserved(world, "reporting") == 0
    board.restore(fn("reporting"), ONCALL)
    assert reserved(world, "reporting") == 25


def test_double_flip_keeps_the_original_state(world):
    board = world["board"]
    board.flip(fn("reporting"), ONCALL)
    second = board.flip(fn("reporting"), CLI)
    assert second.outcome == "already-flipped" and second.since
    assert board.state(fn("reporting"))["previous"] == {"reserved_concurrency": 25}
    board.restore(fn("reporting"), CLI)
    assert reserved(world, "reporting") == 25


def test_restore_without_flip_is_a_clear_no_op(world):
    result = world["board"].restore(fn("reporting"), CLI)
    assert result.outcome == "not-flipped" and "nothing to restore" in result.sentence()
    assert reserved(world, "reporting") == 25


def test_eventbridge_rule_kind(world):
    board, events = world["board"], world["events"]
    rule = Target("rule", "nightly-export", ACCOUNT_A, REGION)
    board.flip(rule, ONCALL)
    assert events.describe_rule(Name="nightly-export")["State"] == "DISABLED"
    board.restore(rule, ONCALL)
    assert events.describe_rule(Name="nightly-export")["State"] == "ENABLED"
    off = Target("rule", "already-off", ACCOUNT_A, REGION)
    board.flip(off, ONCALL)
    board.restore(off, ONCALL)
    assert events.describe_rule(Name="already-off")["State"] == "DISABLED"  # exactly as it was


def test_event_source_mapping_kind(world):
    board, lam = world["board"], world["lam"]
    esm = Target("esm", world["esm"], ACCOUNT_A, REGION)
    result = board.flip(esm, ONCALL)
    assert result.before["state"] in ("Enabled", "Creating", "Enabling")
    assert lam.get_event_source_mapping(UUID=world["esm"])["State"] in ("Disabled", "Disabling")
    board.restore(esm, ONCALL)
    assert lam.get_event_source_mapping(UUID=world["esm"])["State"] in ("Enabled", "Enabling")


def test_status_and_audit_trail(world):
    board = world["board"]
    board.flip(fn("orders-consumer"), ONCALL, alert_id="a-7")
    board.flip(Target("rule", "nightly-export", ACCOUNT_A, REGION), CLI)
    assert {i["target"]["id"] for i in board.flipped()} == {"orders-consumer", "nightly-export"}
    assert board.target_for_alert("a-7") == fn("orders-consumer")
    board.restore(fn("orders-consumer"), CLI)
    assert {i["target"]["id"] for i in board.flipped()} == {"nightly-export"}
    trail = board.audit(fn("orders-consumer"))
    assert [(a["action"], a["outcome"], a["actor"]["type"]) for a in trail] == [
        ("flip", "flipped", "slack"),
        ("restore", "restored", "cli"),
    ]
    assert trail[0]["before"] == {"reserved_concurrency": None} and trail[0]["after"] == {"reserved_concurrency": 0}


def test_missing_function_fails_cleanly(world):
    result = world["board"].flip(fn("no-such-function"), CLI)
    assert result.outcome == "failed" and "ResourceNotFound" in result.error
    assert world["board"].state(fn("no-such-function")) is None


def test_target_parsing():
    assert Target.parse("arn:aws:lambda:eu-west-1:210987654321:function:orders", None, None) == Target(
        "lambda", "orders", "210987654321", "eu-west-1"
    )
    assert Target.parse("rule:nightly", "210987654321", "us-east-1").kind == "rule"
    esm = "arn:aws:lambda:us-east-1:210987654321:event-source-mapping:a1b2c3d4-5678-90ab-cdef-11111EXAMPLE"
    assert Target.parse(esm, None, None) == Target(
        "esm", "a1b2c3d4-5678-90ab-cdef-11111EXAMPLE", "210987654321", "us-east-1"
    )
    with pytest.raises(SwitchError, match="--account"):
        Target.parse("lambda:orders", None, None)
    with pytest.raises(SwitchError, match="expected lambda:NAME"):
        Target.parse("ec2:i-123", "210987654321", "us-east-1")
