"""Exactly once across lost replies, throttling and crashes (issue: faults injected into the process).

For each scenario (a snapshot run, a DR copy run, a breach check opening an alert, a security-group
event) a clean pass counts its mutating calls; then, one at a time, every one of them loses its reply
(``lost``), the process dies right after the N-th (``kill``), and 30 % of them are throttled
(``throttle``). After the fault the world recovers as it would on AWS: a step that raised is retried,
a process that died is reaped by the sweeper past its deadline and the slot re-run, and the sweeper
delivers what is pending. Then the invariants must hold:

  - each snapshot and each DR copy exists exactly once per slot (per source);
  - each announcement is made exactly once (one outbox entry, sent, one message per announcement id at
    the sink; a lost reply of the publish itself, or a death right after it, can only repeat the message
    with the same id, which subscribers can drop);
  - no run or unit is left RUNNING after close or reap;
  - no alert is resolved by an error (a metric CloudWatch could not read).

`make faults` runs the whole matrix; `make test` a subset that fits CI (``FAULTS=full`` for all).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from automations.breach_checks.alerts import OPEN, AlertBook
from automations.breach_checks.checks import plan_check, reap_check_runs, run_checks_now
from automations.breach_checks.lambda_concurrency import ACCOUNT_KEY
from automations.core.fleet import Fleet, MemberAccount, SessionBroker
from automations.core.ledger import RUNNING, Ledger
from automations.core.notify import Notifier
from automations.core.runs import REAPED, Trigger, plan_run, reap_task_runs, run_now
from automations.core.sweeper import flush_outbox
from automations.security_groups.remediation import Lookahead, handle_event
from opsbot.local.aws_shims import shims
from opsbot.local.hub import LEDGER_TABLE, create_tables
from tests.breach_support import create_function, lambda_usage, rules
from tests.conftest import ACCOUNT_A, EXTERNAL_ID, make_tasks
from tests.faults import Census, Injector, Killed
from tests.sg_events import POLICY, readdress, record

pytestmark = pytest.mark.faults
FULL = os.environ.get("FAULTS") == "full"
REGION = "us-east-1"
SLOT = datetime(2026, 11, 25, 3, 0, 20, tzinfo=UTC)
TASKS = make_tasks(
    """
tasks:
  - {name: snapshot-daily, kind: ebs-snapshot, schedule: 'cron(0 3 * * ? *)', retention: {keep_last: 1}}
  - name: dr-copy
    kind: ebs-snapshot-copy
    schedule: cron(30 5 * * ? *)
    source_task: snapshot-daily
    destination: {region: us-west-2, kms_key_id: alias/opsbot-dr}
"""
)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's and opsbot's backoffs sleep for real; a fault matrix cannot wait for them."""
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)


@dataclass
class World:
    """opsbot wired on a session whose every client carries the injector; a clock the test moves."""

    session: boto3.Session
    injector: Injector
    now: list[datetime] = field(default_factory=lambda: [SLOT])

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.session.resource("dynamodb").Table(LEDGER_TABLE), clock=self.clock)
        fleet = Fleet((MemberAccount(ACCOUNT_A, "a", (REGION,)),), external_id=EXTERNAL_ID)
        self.fleet, self.broker = fleet, SessionBroker(self.session, fleet, capability="snapshots")
        sns, sqs = self.session.client("sns"), self.session.client("sqs")
        topic = sns.create_topic(Name="opsbot-alerts")["TopicArn"]
        self.queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        self.sqs, self.notifier = sqs, Notifier(sns=sns, topic_arn=topic)

    def clock(self) -> datetime:
        return self.now[0]

    def ec2(self, region: str = REGION) -> Any:
        return self.broker.client(ACCOUNT_A, region, "ec2")

    def announcements(self) -> Counter[str]:
        """Messages at the SNS sink, by announcement id."""
        seen: Counter[str] = Counter()
        while messages := self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages"):
            for m in messages:
                body = json.loads(m["Body"])
                seen[body.get("MessageAttributes", {}).get("announcement_id", {}).get("Value", "?")] += 1
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=m["ReceiptHandle"])
        return seen

    def running_rows(self) -> list[str]:
        items = self.ledger.table.scan()["Items"]
        return [f"{i['pk']} {i['sk']}" for i in items if i.get("status") == RUNNING]

    def pending_announcements(self) -> list[str]:
        items = self.ledger.table.scan()["Items"]
        return [i["pk"] for i in items if str(i["pk"]).startswith("OUTBOX#") and i.get("status") != "SENT"]

    def recover(self, step: Callable[[], Any], *, reap: Callable[[], Any], wait: timedelta = timedelta(hours=3)) -> Any:
        """Run a step as the platform would: retried once if it raised; if the process died, reaped once
        past the run's deadline (3 h: a CLI run's is 2 h) and redone, or (an event) retried by Lambda."""
        try:
            return step()
        except Killed:
            self.injector.mode = "off"  # the process is gone; what follows is the world after it
            self.now[0] += wait
            reap()
            return step()
        except Exception:
            self.injector.mode = "off"
            return step()

    def settle(self) -> None:
        """The faults are over; the sweeper's next pass (every 5 minutes) finds what is still pending,
        including an announcement whose deliverer died while it held the claim."""
        self.injector.mode = "off"
        self.now[0] += timedelta(minutes=6)
        flush_outbox(self.ledger, self.notifier)


def world(injector: Injector) -> World:
    session = boto3.Session(region_name=REGION)
    injector.install(session)
    mode, injector.mode = injector.mode, "off"  # arranging is not under test
    create_tables(session)
    w = World(session, injector)
    injector.mode = mode
    return w


# ---- scenarios: arrange (faults off), act (faults on), settle, then the invariants ------------------------
def snapshots(w: World) -> dict[str, Any]:
    mode, w.injector.mode = w.injector.mode, "off"
    ec2 = w.ec2()
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    volumes = [
        ec2.create_volume(
            AvailabilityZone=zone,
            Size=8,
            TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "OpsTaskList", "Value": "snapshot-daily"}]}],
        )["VolumeId"]
        for _ in range(3)
    ]
    for old in ("2026-11-23T03:00Z", "2026-11-24T03:00Z"):  # earlier slots: retention deletes one of them
        tags = {"opsbot:task": "snapshot-daily", "opsbot:slot": old, "opsbot:volume-id": volumes[0]}
        ec2.create_snapshot(
            VolumeId=volumes[0],
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )
    w.injector.mode = mode

    def step() -> dict[str, Any]:  # the slot, re-run after a crash: opsbot run snapshot-daily --slot ...
        plan = plan_run(w.ledger, w.fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT)
        return run_now(plan, TASKS, w.broker, w.ledger, w.notifier, clock=w.clock)

    w.recover(step, reap=lambda: reap_task_runs(w.ledger, w.notifier))
    w.settle()
    taken = Counter()
    for snap in w.ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"]:
        tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
        if tags.get("opsbot:slot") == "2026-11-25T03:00Z":
            taken[snap["VolumeId"]] += 1
    assert taken == Counter({v: 1 for v in volumes}), "each volume's snapshot exactly once for the slot"
    return {}


def dr_copies(w: World) -> dict[str, Any]:
    mode, w.injector.mode = w.injector.mode, "off"
    ec2 = w.ec2()
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    for _ in range(2):
        ec2.create_volume(
            AvailabilityZone=zone,
            Size=8,
            TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "OpsTaskList", "Value": "snapshot-daily"}]}],
        )
    run_now(plan_run(w.ledger, w.fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT), TASKS, w.broker, w.ledger, None)
    mine = [{"Name": "tag:opsbot:task", "Values": ["snapshot-daily"]}]
    sources = [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=mine)["Snapshots"]]
    w.injector.mode = mode

    def step() -> dict[str, Any]:
        plan = plan_run(w.ledger, w.fleet, TASKS, "dr-copy", Trigger("cli"), SLOT + timedelta(hours=2, minutes=30))
        return run_now(plan, TASKS, w.broker, w.ledger, w.notifier, clock=w.clock)

    w.recover(step, reap=lambda: reap_task_runs(w.ledger, w.notifier))
    w.settle()
    copies: Counter[str | None] = Counter()
    ours = [{"Name": "tag:opsbot:task", "Values": ["dr-copy"]}]
    for snap in w.ec2("us-west-2").describe_snapshots(OwnerIds=["self"], Filters=ours)["Snapshots"]:
        tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
        copies[tags.get("opsbot:source-snapshot")] += 1
    assert copies == Counter({s: 1 for s in sources}), "each source copied exactly once"
    return {}


def check_concurrency(w: World, book: AlertBook, clock: Callable[[], datetime]) -> dict[str, Any]:
    plan = plan_check(w.ledger, w.fleet, rules(), "lambda-concurrency", Trigger("cli"), w.now[0])
    return run_checks_now(
        plan,
        rules=rules(),
        fleet=w.fleet,
        broker=w.broker,
        ledger=w.ledger,
        book=book,
        notifier=w.notifier,
        clock=clock,
    )


def breach(w: World) -> dict[str, Any]:
    mode, w.injector.mode = w.injector.mode, "off"
    lam, iam, cw = (w.broker.client(ACCOUNT_A, REGION, s) for s in ("lambda", "iam", "cloudwatch"))
    create_function(lam, iam, "hot")
    lambda_usage(cw, w.now[0] - timedelta(minutes=2), total=900, unreserved=900, hot=900)
    w.injector.mode = mode
    book = AlertBook(w.ledger.table, clock=w.clock)

    def step() -> dict[str, Any]:  # measured over the same window: the usage did not change meanwhile
        return check_concurrency(w, book, clock=lambda: SLOT)

    def reap() -> None:
        reap_check_runs(w.ledger, rules=rules(), fleet=w.fleet, book=book, notifier=w.notifier)

    w.recover(step, reap=reap)
    w.settle()
    state = book.state(ACCOUNT_A, REGION, ACCOUNT_KEY)
    assert state is not None and state["status"] == OPEN and state["last_event"] == "opened"
    return {"expected": {f"alert#{state['alert_id']}#1"}}


def sg_event(w: World) -> dict[str, Any]:
    mode, w.injector.mode = w.injector.mode, "off"
    ec2 = w.ec2()
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName="app", Description="t", VpcId=vpc)["GroupId"]
    rules_made = ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )["SecurityGroupRules"]
    event = readdress(record("authorize_sg_ingress_modern"), ACCOUNT_A, REGION, group, rules_made)
    w.injector.mode = mode

    def step() -> dict[str, Any]:
        # As the handler does it: the tags and the rule's claim started ahead, on their own threads.
        ahead = Lookahead(event, w.broker, POLICY, w.ledger.table, w.clock())
        return handle_event(event, w.broker, POLICY, w.ledger, w.notifier, clock=w.clock, ahead=ahead)

    w.recover(step, reap=lambda: None, wait=timedelta(minutes=1))  # Lambda retries an event within minutes
    w.settle()
    left = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])["SecurityGroupRules"]
    assert not [r for r in left if r.get("CidrIpv4") == "0.0.0.0/0" and not r["IsEgress"]], "the open rule is revoked"
    record_ = w.ledger.get_run(f"sg-{event['id']}")
    assert record_ is not None and record_["counts"].get("revoked") == 1, "recorded as revoked"
    return {"expected": {f"sg#{event['id']}"}}


SCENARIOS: dict[str, Callable[[World], dict[str, Any]]] = {
    "snapshots": snapshots,
    "dr-copies": dr_copies,
    "breach": breach,
    "sg-event": sg_event,
}


def census(name: str) -> Counter[tuple[str, str]]:
    from moto import mock_aws

    with mock_aws(), shims():
        injector = Injector()
        session = boto3.Session(region_name=REGION)
        counter = Census()
        counter.install(session)
        injector.install(session)
        create_tables(session)
        w = World(session, injector)
        counter.calls.clear()
        SCENARIOS[name](w)
        return counter.calls


def cases() -> list[Any]:
    out = []
    for name in SCENARIOS:
        calls = census(name)
        total = sum(calls.values())
        for (service, op), count in sorted(calls.items()):
            for nth in range(1, count + 1) if FULL else sorted({1, count}):
                out.append(pytest.param(name, Injector("lost", (service, op), nth), id=f"{name}-lost-{op}#{nth}"))
        kills = range(1, total + 1) if FULL else sorted({1, total // 2 or 1, total})
        out += [pytest.param(name, Injector("kill", nth=n), id=f"{name}-kill-after-{n}") for n in kills]
        for seed in range(1, 6) if FULL else [1]:
            out.append(pytest.param(name, Injector("throttle", seed=seed), id=f"{name}-throttle30-seed{seed}"))
    return out


@pytest.mark.parametrize("scenario, injector", cases())
def test_exactly_once_whatever_fails(aws: None, scenario: str, injector: Injector) -> None:
    with shims():
        w = world(injector)
        outcome = SCENARIOS[scenario](w)
    assert w.running_rows() == [], "nothing left RUNNING"
    assert w.pending_announcements() == [], "every announcement delivered"
    sent = w.announcements()
    # Only a publish whose reply was lost, or a death right after a publish, can send a message twice:
    # nothing can tell it was sent. It is then the same message with the same announcement id.
    may_repeat = injector.target == ("sns", "Publish") or any("after sns.Publish" in i for i in injector.injected)
    for announcement, times in sent.items():
        assert announcement != "?", "every message carries its announcement id"
        assert times == 1 or may_repeat, f"{announcement} sent {times} times ({injector.injected})"
    for expected in outcome.get("expected", ()):
        assert expected in sent, f"{expected} was never announced ({injector.injected})"


def test_an_error_from_cloudwatch_never_resolves_an_alert(aws: None) -> None:
    """A metric CloudWatch answers with an error status is unknown: the open alert stays open, and after
    three such checks on-call hears that it cannot be watched."""
    injector = Injector()
    with shims():
        w = world(injector)
        breach(w)  # opens the account alert at 90%
        book = AlertBook(w.ledger.table, clock=w.clock)
        injector.unreadable_metrics = True
        events = []
        for minutes in (5, 10, 15):
            w.now[0] += timedelta(minutes=minutes)
            events.append(check_concurrency(w, book, clock=w.clock)["counts"])
    state = book.state(ACCOUNT_A, REGION, ACCOUNT_KEY)
    assert state["status"] == OPEN and state["percent"] == pytest.approx(90.0)  # unchanged, not 0
    assert all(not c.get("resolved") for c in events)
    blind = book.state(ACCOUNT_A, REGION, f"check/lambda-concurrency/metric/{ACCOUNT_KEY}")
    assert blind is not None and blind["status"] == OPEN and "no usable reading" in blind["note"]


def test_a_killed_cli_run_is_reaped_with_its_reason_and_its_units(aws: None) -> None:
    injector = Injector("kill", nth=3)  # the slot lock, the run, the unit's RUNNING row: then the process dies
    with shims():
        w = world(injector)
        with pytest.raises(Killed):
            plan = plan_run(w.ledger, w.fleet, TASKS, "snapshot-daily", Trigger("cli"), SLOT)
            run_now(plan, TASKS, w.broker, w.ledger, w.notifier, clock=w.clock)
        injector.mode = "off"
        assert w.running_rows()  # the process died: its run (and unit) say RUNNING
        w.now[0] += timedelta(hours=3)  # past the 2 h deadline of a CLI run
        (reaped,) = reap_task_runs(w.ledger, w.notifier)
    assert reaped["close_reason"] == REAPED and reaped["status"] in ("FAILED", "PARTIAL")
    assert w.running_rows() == []
    assert f"run#{reaped['run_id']}" in w.announcements()
