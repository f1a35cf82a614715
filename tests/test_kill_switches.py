"""Kill switches on moto: flip, restore exactly (every state, transitional ones and drift included), double
flip, restore without flip, lost replies, protected targets and the fleet, all kinds."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from automations.core.fleet import SessionBroker
from automations.kill_switches.kinds import EventSourceMapping
from automations.kill_switches.protection import Protection
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
    board = Switchboard(ledger.table, broker.client, broker.fleet)
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


# ---- exact restore for every state ------------------------------------------------------------------
def test_a_rule_matching_all_cloudtrail_management_events_comes_back_so(world):
    board, events = world["board"], world["events"]
    pattern = json.dumps({"source": ["aws.ec2"], "detail-type": ["AWS API Call via CloudTrail"]})
    events.put_rule(
        Name="ct-watch",
        EventPattern=pattern,
        Description="watches EC2",
        State="ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS",
    )
    events.put_targets(Rule="ct-watch", Targets=[{"Id": "t", "Arn": "arn:aws:sqs:us-east-1:210987654321:orders"}])
    rule = Target("rule", "ct-watch", ACCOUNT_A, REGION)
    assert board.flip(rule, ONCALL).before == {"state": "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"}
    assert events.describe_rule(Name="ct-watch")["State"] == "DISABLED"
    assert board.restore(rule, ONCALL).outcome == "restored"
    back = events.describe_rule(Name="ct-watch")
    assert back["State"] == "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"  # not merely ENABLED
    assert json.loads(back["EventPattern"]) == json.loads(pattern) and back["Description"] == "watches EC2"
    assert [t["Id"] for t in events.list_targets_by_rule(Rule="ct-watch")["Targets"]] == ["t"]


def test_drift_refuses_restore_naming_both_states_and_force_overrides(world):
    board = world["board"]
    board.flip(fn("reporting"), ONCALL)
    world["lam"].put_function_concurrency(FunctionName="reporting", ReservedConcurrentExecutions=40)  # a redeploy
    refused = board.restore(fn("reporting"), CLI)
    assert refused.outcome == "drifted"
    assert "now reserved concurrency 40; opsbot left reserved concurrency 0" in refused.sentence()
    assert "--force" in refused.sentence() and reserved(world, "reporting") == 40
    assert board.state(fn("reporting"))["flipped"] is True  # still recorded, still listed
    forced = board.restore(fn("reporting"), CLI, force=True)
    assert forced.outcome == "restored" and forced.forced and reserved(world, "reporting") == 25
    trail = board.audit(fn("reporting"))
    assert [(a["outcome"], a.get("forced")) for a in trail] == [
        ("flipped", None),
        ("drifted", None),
        ("restored", True),
    ]
    assert trail[1]["before"] == {"reserved_concurrency": 40}


# Event source mappings: moto settles every state at once, so AWS's transitional states are replayed on
# top of it through botocore's own hooks (as tests/faults.py does), for the first reads of the mapping.
@dataclass
class Transitional:
    states: list[str]  # what the next GetEventSourceMapping calls report, in order; then moto's own

    def install(self, session: boto3.Session) -> None:
        session.events.register("after-call.lambda.GetEventSourceMapping", self._after_call)

    def _after_call(self, parsed: Any = None, **kwargs: Any) -> None:
        if self.states and isinstance(parsed, dict):
            parsed["State"] = self.states.pop(0)


def hooked_board(ledger: Any, fleet: Any, *hooks: Any) -> Switchboard:
    session = boto3.Session(region_name=REGION)
    for hook in hooks:
        hook.install(session)  # before any client is made: every client carries it
    return Switchboard(ledger.table, SessionBroker(session, fleet, capability="kill-switches").client, fleet)


@pytest.fixture
def quick_settle(monkeypatch):
    monkeypatch.setattr(EventSourceMapping, "poll_seconds", 0.0)
    monkeypatch.setattr(EventSourceMapping, "settle_seconds", 0.05)


def test_a_mapping_caught_updating_is_read_until_it_settles(world, ledger, fleet, quick_settle, monkeypatch):
    monkeypatch.setattr(EventSourceMapping, "settle_seconds", 5.0)  # time for the three reads below
    lam = world["lam"]
    lam.update_event_source_mapping(UUID=world["esm"], Enabled=False)  # it was off: Updating -> Disabled
    board = hooked_board(ledger, fleet, Transitional(["Updating", "Updating", "Updating"]))
    esm = Target("esm", world["esm"], ACCOUNT_A, REGION)
    assert board.flip(esm, ONCALL).before == {"state": "Disabled"}  # settled, not blindly "Enabled"
    assert board.restore(esm, ONCALL).outcome == "restored"
    assert lam.get_event_source_mapping(UUID=world["esm"])["State"] == "Disabled"  # stays off


def test_a_mapping_still_enabling_is_recorded_as_what_it_was_going_to_be(world, ledger, fleet, quick_settle):
    board = hooked_board(ledger, fleet, Transitional(["Enabling"] * 50))
    esm = Target("esm", world["esm"], ACCOUNT_A, REGION)
    result = board.flip(esm, ONCALL)
    assert result.outcome == "flipped" and result.before == {"state": "Enabled", "observed": "Enabling"}
    assert "read while Enabling" in result.sentence()
    assert world["board"].restore(esm, ONCALL).outcome == "restored"  # AWS has settled by now
    assert world["lam"].get_event_source_mapping(UUID=world["esm"])["State"] == "Enabled"


def test_a_mapping_that_stays_updating_is_not_flipped(world, ledger, fleet, quick_settle):
    board = hooked_board(ledger, fleet, Transitional(["Updating"] * 50))
    esm = Target("esm", world["esm"], ACCOUNT_A, REGION)
    result = board.flip(esm, ONCALL)
    assert result.outcome == "failed" and "still Updating" in result.error
    assert board.state(esm) is None  # nothing recorded
    assert world["lam"].get_event_source_mapping(UUID=world["esm"])["State"] == "Enabled"  # nothing changed


# A call whose reply is lost after AWS applied it, or that AWS refuses before applying it.
@dataclass
class Fault:
    operation: str  # a Lambda operation, e.g. "PutFunctionConcurrency"
    applied: bool  # True: the call reaches AWS, then its reply is lost; False: refused before it is applied
    skip: int = 0  # calls let through first
    times: int = 1_000  # faults injected at most
    calls: int = 0
    fired: int = 0

    def install(self, session: boto3.Session) -> None:
        hook = self._lose_reply if self.applied else self._refuse
        session.events.register(f"{'after' if self.applied else 'before'}-call.lambda.{self.operation}", hook)

    def _due(self) -> bool:
        self.calls += 1
        due = self.calls > self.skip and self.fired < self.times
        self.fired += due
        return due

    def _lose_reply(self, **kwargs: Any) -> None:
        if self._due():
            raise ReadTimeoutError(endpoint_url="https://lambda.us-east-1.amazonaws.com")

    def _refuse(self, **kwargs: Any) -> Any:
        if not self._due():
            return None
        error = {
            "Error": {"Code": "ServiceException", "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        }
        return AWSResponse("https://lambda.us-east-1.amazonaws.com", 500, {}, None), error  # type: ignore[arg-type]


def test_a_lost_stop_reply_keeps_the_claim_that_holds_the_previous_state(world, ledger, fleet):
    fault = Fault("PutFunctionConcurrency", applied=True)
    board = hooked_board(ledger, fleet, fault)
    result = board.flip(fn("reporting"), ONCALL)
    assert fault.fired == 1 and reserved(world, "reporting") == 0
    assert result.outcome == "flipped" and "reads stopped" in result.note
    assert board.state(fn("reporting"))["previous"] == {"reserved_concurrency": 25}  # kept
    assert world["board"].restore(fn("reporting"), CLI).outcome == "restored"
    assert reserved(world, "reporting") == 25


def test_a_restore_whose_reply_was_lost_is_recognised_when_tried_again(world, ledger, fleet):
    world["board"].flip(fn("reporting"), ONCALL)
    lost = Fault("PutFunctionConcurrency", applied=True)
    unreadable = Fault("GetFunctionConcurrency", applied=False, skip=1)  # the re-read after the lost reply fails
    first = hooked_board(ledger, fleet, lost, unreadable).restore(fn("reporting"), CLI)
    assert first.outcome == "failed" and reserved(world, "reporting") == 25  # applied, but not confirmed
    again = world["board"].restore(fn("reporting"), CLI)  # not drift: its own earlier restore
    assert again.outcome == "restored" and "earlier restore" in (again.note or "")
    assert world["board"].state(fn("reporting"))["flipped"] is False


def test_a_refused_stop_puts_the_switch_back_as_it_was(world, ledger, fleet):
    first = world["board"]
    first.flip(fn("reporting"), ONCALL)
    first.restore(fn("reporting"), ONCALL)
    before = first.state(fn("reporting"))
    fault = Fault("PutFunctionConcurrency", applied=False)
    result = hooked_board(ledger, fleet, fault).flip(fn("reporting"), ONCALL)
    assert fault.fired >= 1 and result.outcome == "failed" and "ServiceException" in result.error
    assert reserved(world, "reporting") == 25
    assert first.state(fn("reporting")) == before  # its last transition kept, nothing claimed


# ---- protected targets and the fleet --------------------------------------------------------------------
def test_opsbot_own_rules_and_functions_are_never_flipped(world):
    board, events, lam = world["board"], world["events"], world["lam"]
    events.put_rule(Name="opsbot-forward-security-group-events", EventPattern='{"source": ["aws.ec2"]}')
    role = lam.get_function(FunctionName="reporting")["Configuration"]["Role"]
    own = "opsbot-hub-KillSwitchWorkerFunction-1A2B3C4D5E6F"  # what SAM names template.yaml's function
    lam.create_function(
        FunctionName=own, Runtime="python3.11", Role=role, Handler="app.handler", Code={"ZipFile": _zip()}
    )
    for target in (Target("rule", "opsbot-forward-security-group-events", ACCOUNT_A, REGION), fn(own)):
        result = board.flip(target, CLI)
        assert result.outcome == "refused" and "opsbot's own" in result.error, result
        assert board.state(target) is None
    assert events.describe_rule(Name="opsbot-forward-security-group-events")["State"] == "ENABLED"
    assert reserved(world, own) is None


def test_the_protection_tag_and_the_deny_list(world):
    lam = world["lam"]
    arn = lam.get_function(FunctionName="reporting")["Configuration"]["FunctionArn"]
    lam.tag_resource(Resource=arn, Tags={"opsbot:protected": "security tooling"})
    board = world["board"]
    refused = board.flip(fn("reporting"), CLI)
    assert refused.outcome == "refused" and "opsbot:protected" in refused.error and reserved(world, "reporting") == 25
    # A mapping that feeds a protected function is protected too.
    lam.tag_resource(
        Resource=lam.get_function(FunctionName="orders-consumer")["Configuration"]["FunctionArn"],
        Tags={"opsbot:protected": "yes"},
    )
    assert board.flip(Target("esm", world["esm"], ACCOUNT_A, REGION), CLI).outcome == "refused"
    lam.tag_resource(Resource=arn, Tags={"opsbot:protected": "false"})  # explicitly not protected
    assert board.flip(fn("reporting"), CLI).outcome == "flipped"
    denied = Switchboard(board.table, board.clients, board.fleet, Protection.of(["rule:nightly-*"]))
    result = denied.flip(Target("rule", "nightly-export", ACCOUNT_A, REGION), CLI)
    assert result.outcome == "refused" and "'rule:nightly-*'" in result.error
    assert world["events"].describe_rule(Name="nightly-export")["State"] == "ENABLED"


def test_a_target_whose_tags_cannot_be_read_is_not_flipped(world, ledger, fleet):
    fault = Fault("ListTags", applied=False)
    result = hooked_board(ledger, fleet, fault).flip(fn("reporting"), ONCALL)
    assert result.outcome == "failed" and "could not check whether it is protected" in result.error
    assert reserved(world, "reporting") == 25


def test_only_fleet_accounts_and_regions_and_pause_only_for_opsbot_own(world, hub_session):
    board = world["board"]
    outside = board.flip(Target("lambda", "reporting", "999999999999", REGION), CLI)
    assert outside.outcome == "refused" and "not in the fleet" in outside.error
    assert board.flip(Target("lambda", "reporting", ACCOUNT_A, "ap-south-1"), CLI).error.startswith("region ap-south-1")
    assert "opsbot pause only" in board.flip(Target("schedule", "opsbot-x/y", ACCOUNT_A, REGION), CLI).error
    hub = Switchboard(board.table, lambda a, r, service: hub_session.client(service, region_name=r), None)
    hub_session.client("events").put_rule(Name="someone-elses", ScheduleExpression="rate(1 day)")
    assert (
        "opsbot's own" in hub.flip(Target("rule", "someone-elses", ACCOUNT_A, REGION), CLI, pausing_opsbot=True).error
    )
    assert "opsbot pause" in hub.flip(Target("rule", "someone-elses", ACCOUNT_A, REGION), CLI).error
