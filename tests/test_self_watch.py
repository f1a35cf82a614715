"""Self-watch: member heartbeats (recorded at the hub, silence alerted once, recovery announced once, a new
account given a grace period, a failed read never taken for a recovery) and the NotificationFailures
metric. On moto, with freezegun for the clock; failures are injected through botocore's own event hooks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from freezegun import freeze_time

from automations.core import heartbeat
from automations.core.boundary import InputError
from automations.core.fleet import Fleet, MemberAccount
from automations.core.heartbeat import HeartbeatWatch, parse_heartbeat, record
from automations.core.notify import NOTIFICATION_FAILURES_METRIC, Alert
from opsbot.local.events import EventRouter
from tests.breach_support import Inbox
from tests.conftest import ACCOUNT_A, ACCOUNT_B, EXTERNAL_ID, REGIONS, FakeLambdaContext
from tests.test_sg_routing import HUB, member_session
from tests.test_templates import MEMBER, load_cfn

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
FLEET = f"""
role_prefix: opsbot
external_id: {EXTERNAL_ID}
default_regions: [{", ".join(REGIONS)}]
accounts:
  - {{id: "{ACCOUNT_A}", name: payments-prod}}
  - {{id: "{ACCOUNT_B}", name: analytics-prod}}
"""


def canary(account: str, region: str, at: datetime, interval: int = 5, event_id: str | None = None) -> dict[str, Any]:
    """A canary as it reaches the hub: the EventBridge envelope around the schedule's input."""
    return {
        "version": "0",
        "id": event_id or f"hb-{account}-{region}-{at:%H%M%S}",
        "detail-type": heartbeat.DETAIL_TYPE,
        "source": heartbeat.SOURCE,
        "account": account,
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [],
        "detail": {"account": account, "region": region, "interval_minutes": interval},
    }


def beat(ledger: Any, account: str, region: str, at: datetime) -> bool:
    return record(ledger.table, parse_heartbeat(canary(account, region, at)), at)


def item(ledger: Any, account: str, region: str) -> dict[str, Any]:
    found: dict[str, Any] = ledger.table.get_item(Key=heartbeat.key(account, region), ConsistentRead=True)["Item"]
    return found


def watch(ledger: Any, fleet: Fleet, inbox: Inbox) -> HeartbeatWatch:
    return HeartbeatWatch(ledger.table, fleet, inbox.notifier, ledger.clock)


def check_at(at: datetime, w: HeartbeatWatch) -> list[tuple[str, str, str]]:
    with freeze_time(at):
        return [(c.account, c.region, c.event) for c in w.check()]


# ---- the canary and its record ----------------------------------------------------------------------------
@pytest.fixture
def handlers_env(hub_session: boto3.Session, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(FLEET)
    (rules / "tasks.yaml").write_text("tasks: []\n")
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    monkeypatch.setenv("OPSBOT_LEDGER_TABLE", "opsbot-ledger")
    monkeypatch.setenv("OPSBOT_IDEMPOTENCY_TABLE", "opsbot-idempotency")
    from handlers import _wiring

    _wiring.reset()
    yield _wiring
    _wiring.reset()


def scheduled_canary(member: boto3.Session, at: datetime) -> None:
    """What template-member.yaml's HeartbeatSchedule puts on the member's default bus."""
    template = load_cfn(MEMBER)
    target = template["Resources"]["HeartbeatSchedule"]["Properties"]["Target"]
    account = member.client("sts").get_caller_identity()["Account"]
    detail = (
        target["Input"]["Fn::Sub"]
        .replace("${AWS::AccountId}", account)
        .replace("${AWS::Region}", member.region_name)
        .replace("${HeartbeatIntervalMinutes}", str(template["Parameters"]["HeartbeatIntervalMinutes"]["Default"]))
        .replace("<aws.scheduler.scheduled-time>", at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    )
    member.client("events").put_events(
        Entries=[
            {
                "Source": target["EventBridgeParameters"]["Source"],
                "DetailType": target["EventBridgeParameters"]["DetailType"],
                "Detail": detail,
                "Time": at,
            }
        ]
    )


def test_a_scheduled_canary_is_forwarded_routed_and_recorded_once(hub_session, handlers_env, ledger):
    """The member's schedule input and forwarding rule (template-member.yaml) and the hub's rule
    (template.yaml) on moto's EventBridge: the canary reaches handlers.heartbeat and is recorded; the same
    canary delivered again changes nothing."""
    router = EventRouter(hub_session)
    router.install()
    member = member_session(hub_session, ACCOUNT_A)
    forward = load_cfn(MEMBER)["Resources"]["ForwardHeartbeats"]["Properties"]
    events = member.client("events")
    events.put_rule(Name=forward["Name"], EventPattern=json.dumps(forward["EventPattern"]))
    events.put_targets(
        Rule=forward["Name"],
        Targets=[{"Id": "opsbot-hub-bus", "Arn": f"arn:aws:events:{member.region_name}:{HUB}:event-bus/default"}],
    )
    from handlers import heartbeat as module  # before freeze_time: a module first imported inside keeps its fakes

    with freeze_time(T0):
        scheduled_canary(member, T0)
        seen: list[tuple[str, dict[str, Any]]] = []

        def invoke(handler: str, event: dict[str, Any]) -> Any:
            # moto's SQS target leaves the envelope's account out; EventBridge always sets it (the sender's).
            event.setdefault("account", ACCOUNT_A)
            seen.append((handler, event))
            return module.handler(event, FakeLambdaContext())

        delivered = router.deliver(invoke)
        (only,) = seen
        again = invoke(*only)

    assert [h for h, _ in seen] == ["handlers.heartbeat.handler", "handlers.heartbeat.handler"]
    ((_route, first),) = delivered
    assert first == {"account": ACCOUNT_A, "region": "us-east-1", "recorded": True, "at": T0.isoformat()}
    assert again["recorded"] is False
    stored = item(ledger, ACCOUNT_A, "us-east-1")
    assert stored["last_seen"] == "2026-11-30T12:00:00Z" and stored["interval_minutes"] == 5


def test_a_canary_from_outside_the_fleet_is_ignored_and_a_forged_one_refused(handlers_env, ledger):
    from handlers import heartbeat as module

    stranger = module.handler(canary("999999999999", "us-east-1", T0), FakeLambdaContext())
    assert stranger["recorded"] is False and stranger["reason"] == "not in the fleet"
    assert "Item" not in ledger.table.get_item(Key=heartbeat.key("999999999999", "us-east-1"))
    forged = canary(ACCOUNT_B, "us-east-1", T0)
    forged["detail"]["account"] = ACCOUNT_A  # the detail claims another account than the sender's
    with pytest.raises(InputError, match=r"detail\.account"):
        module.handler(forged, FakeLambdaContext())
    with pytest.raises(InputError, match="interval_minutes"):
        parse_heartbeat({**canary(ACCOUNT_A, "us-east-1", T0), "detail": {"interval_minutes": 600}})


def test_only_a_newer_canary_moves_the_record_and_a_future_one_counts_as_now(ledger):
    assert beat(ledger, ACCOUNT_A, "us-east-1", T0) is True
    assert beat(ledger, ACCOUNT_A, "us-east-1", T0) is False  # redelivered
    assert beat(ledger, ACCOUNT_A, "us-east-1", T0 - timedelta(minutes=5)) is False  # arrived late
    ahead = parse_heartbeat(canary(ACCOUNT_A, "us-east-1", T0 + timedelta(hours=2)))
    assert record(ledger.table, ahead, T0 + timedelta(minutes=5)) is True
    assert item(ledger, ACCOUNT_A, "us-east-1")["last_seen"] == "2026-11-30T12:05:00Z"


# ---- silence and recovery ---------------------------------------------------------------------------------
def test_silence_opens_one_alert_and_recovery_is_announced_once(ledger, fleet, inbox):
    w = watch(ledger, fleet, inbox)
    for account, region in fleet.targets():
        beat(ledger, account, region, T0)
    assert check_at(T0 + timedelta(minutes=1), w) == []
    for account, region in fleet.targets():
        if (account, region) != (ACCOUNT_A, "eu-west-1"):
            beat(ledger, account, region, T0 + timedelta(minutes=10))
    assert check_at(T0 + timedelta(minutes=15), w) == []  # three intervals, not more
    assert inbox.alerts() == []

    assert check_at(T0 + timedelta(minutes=16), w) == [(ACCOUNT_A, "eu-west-1", "silent")]
    (alert,) = inbox.alerts()
    assert alert["kind"] == "heartbeat" and alert["severity"] == "critical"
    assert alert["title"] == "Event forwarding silent: payments-prod/eu-west-1"
    assert alert["data"]["last_seen"] == "2026-11-30T12:00:00Z"
    assert "docs/runbooks/heartbeat.md" in alert["context"]
    assert check_at(T0 + timedelta(minutes=21), w) == []  # still silent: no second alert
    assert inbox.alerts() == []

    beat(ledger, ACCOUNT_A, "eu-west-1", T0 + timedelta(minutes=22))
    assert check_at(T0 + timedelta(minutes=23), w) == [(ACCOUNT_A, "eu-west-1", "recovered")]
    (back,) = inbox.alerts()
    assert back["severity"] == "info" and back["title"] == "Event forwarding back: payments-prod/eu-west-1"
    assert check_at(T0 + timedelta(minutes=24), w) == []
    assert inbox.alerts() == []
    stored = item(ledger, ACCOUNT_A, "eu-west-1")
    assert stored["state"] == heartbeat.OK and stored["transitions"] == 2
    outbox = {e["announcement_id"] for e in ledger.table.scan()["Items"] if e["pk"].startswith("OUTBOX#")}
    assert outbox == {f"heartbeat#{ACCOUNT_A}#eu-west-1#1", f"heartbeat#{ACCOUNT_A}#eu-west-1#2"}


def test_a_new_account_is_not_alerted_before_its_grace_period(ledger, inbox):
    before = Fleet(accounts=(MemberAccount(ACCOUNT_A, "payments-prod", REGIONS),), external_id=EXTERNAL_ID)
    after = Fleet(
        accounts=(*before.accounts, MemberAccount(ACCOUNT_B, "analytics-prod", REGIONS)), external_id=EXTERNAL_ID
    )

    def keep_a_alive(at: datetime) -> None:
        for region in REGIONS:
            beat(ledger, ACCOUNT_A, region, at)

    keep_a_alive(T0)
    assert check_at(T0 + timedelta(minutes=1), watch(ledger, before, inbox)) == []
    w = watch(ledger, after, inbox)  # analytics-prod joins the fleet; its member stack is not deployed yet
    assert check_at(T0 + timedelta(minutes=2), w) == []
    for minutes in range(10, 60, 10):
        keep_a_alive(T0 + timedelta(minutes=minutes))
        assert check_at(T0 + timedelta(minutes=minutes + 1), w) == []
    keep_a_alive(T0 + timedelta(minutes=60))
    assert check_at(T0 + timedelta(minutes=62), w) == []  # an hour after it was first expected: not yet over
    assert inbox.alerts() == []

    assert sorted(check_at(T0 + timedelta(minutes=63), w)) == [
        (ACCOUNT_B, "eu-west-1", "silent"),
        (ACCOUNT_B, "us-east-1", "silent"),
    ]
    alerts = inbox.alerts()
    assert len(alerts) == 2 and all("never heard from" in a["summary"] for a in alerts)


def silence_all_but(ledger: Any, fleet: Fleet, w: HeartbeatWatch, alive: tuple[str, str]) -> list[tuple[str, str]]:
    """Every target heard from at T0, only ``alive`` after that: at T0+20 the others are silent."""
    for account, region in fleet.targets():
        beat(ledger, account, region, T0)
    beat(ledger, *alive, T0 + timedelta(minutes=10))
    beat(ledger, *alive, T0 + timedelta(minutes=18))
    silent = [(a, r) for a, r, event in check_at(T0 + timedelta(minutes=20), w) if event == "silent"]
    assert sorted(silent) == sorted(t for t in fleet.targets() if t != alive)
    return silent


def test_a_failing_ledger_read_never_resolves(ledger, fleet, inbox):
    w = watch(ledger, fleet, inbox)
    silent = silence_all_but(ledger, fleet, w, (ACCOUNT_B, "us-east-1"))
    assert len(inbox.alerts()) == 3
    for account, region in silent:
        beat(ledger, account, region, T0 + timedelta(minutes=21))  # forwarding works again

    def throttled(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"}}, "Query")

    events = ledger.table.meta.client.meta.events
    events.register("before-call.dynamodb.Query", throttled)
    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        check_at(T0 + timedelta(minutes=22), w)
    assert inbox.alerts() == []
    assert {item(ledger, a, r)["state"] for a, r in silent} == {heartbeat.SILENT}

    events.unregister("before-call.dynamodb.Query", throttled)
    assert sorted(check_at(T0 + timedelta(minutes=23), w)) == sorted((a, r, "recovered") for a, r in silent)
    assert len(inbox.alerts()) == 3


def test_an_unreadable_last_heartbeat_counts_as_silence_not_recovery(ledger, fleet, inbox):
    w = watch(ledger, fleet, inbox)
    silence_all_but(ledger, fleet, w, (ACCOUNT_B, "us-east-1"))
    inbox.alerts()
    beat(ledger, ACCOUNT_A, "us-east-1", T0 + timedelta(minutes=21))
    ledger.table.update_item(
        Key=heartbeat.key(ACCOUNT_A, "us-east-1"),
        UpdateExpression="SET last_seen = :garbled",
        ExpressionAttributeValues={":garbled": "yesterday-ish"},
    )
    assert check_at(T0 + timedelta(minutes=21), w) == []
    assert item(ledger, ACCOUNT_A, "us-east-1")["state"] == heartbeat.SILENT
    assert inbox.alerts() == []


def test_when_no_member_is_heard_the_hub_alerts_once_instead_of_per_member(ledger, fleet, inbox):
    """`opsbot pause` (or a disabled opsbot-heartbeats rule): nothing reaches the hub. One alert says the hub
    is deaf; when heartbeats arrive again, each member gets its full allowance before it can be silent."""
    w = watch(ledger, fleet, inbox)
    for account, region in fleet.targets():
        beat(ledger, account, region, T0)
    assert check_at(T0 + timedelta(minutes=20), w) == [("hub", "all", "silent")]
    (deaf,) = inbox.alerts()
    assert deaf["title"] == "opsbot hears no heartbeats from any member" and deaf["severity"] == "critical"
    assert check_at(T0 + timedelta(minutes=40), w) == []  # still deaf: no second alert, no member alerts
    assert inbox.alerts() == []

    beat(ledger, ACCOUNT_A, "us-east-1", T0 + timedelta(minutes=50))  # resumed: the first canary arrives
    assert check_at(T0 + timedelta(minutes=51), w) == [("hub", "all", "recovered")]
    (back,) = inbox.alerts()
    assert back["title"] == "opsbot hears member heartbeats again" and back["severity"] == "info"
    for account, region in fleet.targets():
        if (account, region) not in ((ACCOUNT_A, "us-east-1"), (ACCOUNT_B, "eu-west-1")):
            beat(ledger, account, region, T0 + timedelta(minutes=53))
    beat(ledger, ACCOUNT_A, "us-east-1", T0 + timedelta(minutes=60))
    assert check_at(T0 + timedelta(minutes=65), w) == []  # B/eu-west-1: 14 minutes since the hub resumed
    assert check_at(T0 + timedelta(minutes=67), w) == [(ACCOUNT_B, "eu-west-1", "silent")]
    (member_alert,) = inbox.alerts()
    assert member_alert["title"] == "Event forwarding silent: analytics-prod/eu-west-1"
    assert {i["state"] for i in ledger.table.scan()["Items"] if i["pk"] == "HEARTBEAT" and i["sk"] == "HUB"} == {"OK"}


def test_the_sweeper_watches_heartbeats_and_announces_through_the_outbox(hub_session, handlers_env, monkeypatch):
    """handlers.sweeper -> catalog.housekeeping -> HeartbeatWatch, announced to SNS through the outbox."""
    sns, sqs = hub_session.client("sns"), hub_session.client("sqs")
    topic = sns.create_topic(Name="opsbot-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    monkeypatch.setenv("OPSBOT_ALERT_TOPIC_ARN", topic)
    from handlers import heartbeat as module
    from handlers import sweeper

    handlers_env.reset()
    with freeze_time(T0):
        for account in (ACCOUNT_A, ACCOUNT_B):
            for region in REGIONS:
                module.handler(canary(account, region, T0), FakeLambdaContext())
        sweeper.handler({}, FakeLambdaContext())
    with freeze_time(T0 + timedelta(minutes=10)):
        for account, region in ((ACCOUNT_A, "us-east-1"), (ACCOUNT_B, "us-east-1"), (ACCOUNT_B, "eu-west-1")):
            module.handler(canary(account, region, T0 + timedelta(minutes=10)), FakeLambdaContext())
    with freeze_time(T0 + timedelta(minutes=20)):
        sweeper.handler({}, FakeLambdaContext())
        sweeper.handler({}, FakeLambdaContext())
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    ids = [json.loads(m["Body"])["MessageAttributes"]["announcement_id"]["Value"] for m in messages]
    assert ids == [f"heartbeat#{ACCOUNT_A}#eu-west-1#1"]


# ---- notification failures --------------------------------------------------------------------------------
def emf_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def test_a_failed_notification_is_counted_as_a_metric(hub_session, handlers_env, monkeypatch, capsys):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("OPSBOT_ALERT_TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:opsbot-deleted")
    handlers_env.reset()
    alert = Alert(title="t", severity="warning", summary="s")
    capsys.readouterr()

    errors = handlers_env.notifier().send(alert)

    assert errors and errors[0].startswith("sns:")
    (emf,) = [e for e in emf_lines(capsys.readouterr().out) if NOTIFICATION_FAILURES_METRIC in e]
    (directive,) = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "OpsbotTest"  # POWERTOOLS_METRICS_NAMESPACE (template: Opsbot)
    assert directive["Metrics"] == [{"Name": NOTIFICATION_FAILURES_METRIC, "Unit": "Count"}]
    assert directive["Dimensions"] == [["service"]] and emf["service"] == "opsbot"
    assert emf[NOTIFICATION_FAILURES_METRIC] == [1.0] and emf["channel"] == "sns"

    topic = hub_session.client("sns").create_topic(Name="opsbot-alerts")["TopicArn"]
    monkeypatch.setenv("OPSBOT_ALERT_TOPIC_ARN", topic)
    handlers_env.reset()
    assert handlers_env.notifier().send(alert) == []
    assert [e for e in emf_lines(capsys.readouterr().out) if NOTIFICATION_FAILURES_METRIC in e] == []


def test_a_deaf_hub_is_not_declared_recovered_by_a_fleet_it_has_not_heard(ledger, fleet, inbox):
    """Fail closed: while deaf, only a heartbeat read within its allowance is a recovery; a fleet replaced
    by accounts never heard from (nothing to read) keeps the hub deaf, with no new grace for anyone."""
    w = watch(ledger, fleet, inbox)
    for account, region in fleet.targets():
        beat(ledger, account, region, T0)
    assert check_at(T0 + timedelta(minutes=20), w) == [("hub", "all", "silent")]
    inbox.alerts()
    w.fleet = Fleet((MemberAccount("999999999999", "new", ("us-east-1",)),), external_id=EXTERNAL_ID)
    assert check_at(T0 + timedelta(minutes=40), w) == []
    assert inbox.alerts() == []
