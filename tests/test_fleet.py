"""Cross-account access: cached sessions, and one denied member account never stops the others."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest
from freezegun import freeze_time
from moto.core.authorization import enable_iam_authentication

from automations.core.fleet import SessionBroker, load_fleet
from automations.core.ledger import Ledger
from automations.core.notify import Notifier
from automations.core.rulebook import RulebookError
from automations.core.runs import Trigger, plan_run, run_now
from opsbot.local.hub import LEDGER_TABLE
from opsbot.local.seed import _member_session, create_member_role, create_operator
from opsbot.local.slack_standin import SlackStandIn
from tests.conftest import ACCOUNT_A, ACCOUNT_B, make_tasks

TASKS = make_tasks("tasks:\n  - {name: snapshot-daily, kind: ebs-snapshot, schedule: 'cron(0 3 * * ? *)'}\n")


def test_credentials_cached_per_account_until_near_expiry(hub_session, fleet):
    calls = []
    hub_session.events.register("provide-client-params.sts.AssumeRole", lambda params, **kw: calls.append(dict(params)))
    with freeze_time("2026-11-25 10:00:00") as clock:
        base = SessionBroker(hub_session, fleet, clock=lambda: datetime.now(UTC).timestamp())
        broker = base.for_capability("snapshots")
        broker.client(ACCOUNT_A, "us-east-1", "ec2")
        broker.client(ACCOUNT_A, "eu-west-1", "ec2")  # another region: same credentials
        base.for_capability("snapshots").client(ACCOUNT_A, "us-east-1", "ec2")  # another view: same cache
        assert len(calls) == 1
        assert calls[0]["ExternalId"] == "opsbot-test"
        assert calls[0]["RoleArn"] == f"arn:aws:iam::{ACCOUNT_A}:role/opsbot-snapshots"
        broker.client(ACCOUNT_B, "us-east-1", "ec2")
        assert len(calls) == 2
        base.for_capability("breach-checks").client(ACCOUNT_A, "us-east-1", "ec2")  # another role: its own
        assert calls[-1]["RoleArn"] == f"arn:aws:iam::{ACCOUNT_A}:role/opsbot-breach-checks"
        assert len(calls) == 3
        clock.tick(3600 - 299)  # within the refresh margin of the one-hour credentials
        broker.client(ACCOUNT_A, "us-east-1", "ec2")
        assert len(calls) == 4


def test_a_lazy_client_assumes_the_role_only_when_first_used(hub_session, fleet):
    """What a cold path may never call costs it nothing: no AssumeRole and no client until first use."""
    calls = []
    hub_session.events.register("provide-client-params.sts.AssumeRole", lambda params, **kw: calls.append(params))
    broker = SessionBroker(hub_session, fleet).for_capability("security-groups")
    lazy = broker.lazy_client(ACCOUNT_B, "eu-west-1", "sts")
    assert calls == [] and broker.cache.clients == {}
    assert lazy.get_caller_identity()["Account"] == ACCOUNT_B
    assert len(calls) == 1 and lazy.get_caller_identity()["Account"] == ACCOUNT_B and len(calls) == 1
    assert broker.sts("eu-west-1") is broker.sts("eu-west-1"), "one STS client per region, not one per assume"


def test_a_broker_without_a_capability_hands_out_nothing(hub_session, fleet):
    with pytest.raises(RuntimeError, match="for_capability"):
        SessionBroker(hub_session, fleet).client(ACCOUNT_A, "us-east-1", "ec2")


def test_assumed_sessions_land_in_the_member_account(broker):
    ec2 = broker.client(ACCOUNT_B, "eu-west-1", "sts")
    assert ec2.get_caller_identity()["Account"] == ACCOUNT_B


def test_fleet_file_validation():
    text = 'default_regions: [us-east-1]\naccounts:\n  - id: "210987654321"\n  - id: "210987654321"\n'
    with pytest.raises(RulebookError) as err:
        load_fleet("fleet.yaml", text)
    assert str(err.value) == "fleet.yaml:4: accounts[1].id: duplicate account id '210987654321'"
    with pytest.raises(RulebookError) as err:
        load_fleet("fleet.yaml", 'accounts:\n  - id: "210987654321"\n')
    assert str(err.value) == "fleet.yaml:2: accounts[0]: no regions: set 'regions' or 'default_regions'"


def test_one_member_denied_while_the_other_succeeds(hub_session, fleet, member):
    """moto enforces IAM here: the hub operator may assume the role in account A only."""
    hub_account = hub_session.client("sts").get_caller_identity()["Account"]
    for account in (ACCOUNT_A, ACCOUNT_B):
        create_member_role(_member_session(hub_session, fleet, account), fleet, hub_account)
        for region in ("us-east-1", "eu-west-1"):
            member(account, region).volume({"OpsTaskList": "snapshot-daily"})
    keys = create_operator(hub_session, fleet, allowed_accounts=[ACCOUNT_A])
    sns = hub_session.client("sns")
    topic = sns.create_topic(Name="opsbot-alerts")["TopicArn"]
    sqs = hub_session.client("sqs")
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    operator = boto3.Session(
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    with SlackStandIn("xoxb-test") as slack, enable_iam_authentication():
        from slack_sdk import WebClient

        ledger = Ledger(operator.resource("dynamodb").Table(LEDGER_TABLE))
        notifier = Notifier(operator.client("sns"), topic, WebClient("xoxb-test", base_url=slack.base_url), "#ops")
        broker = SessionBroker(operator, fleet)
        plan = plan_run(
            ledger, fleet, TASKS, "snapshot-daily", Trigger("cli"), datetime(2026, 11, 25, 3, 5, tzinfo=UTC)
        )
        result = run_now(plan, TASKS, broker, ledger, notifier)
        units = {(u["account"], u["region"]): u for u in ledger.units(result["run_id"])}
        posted = slack.messages()

    assert result["status"] == "PARTIAL"
    assert result["units"] == {"total": 4, "succeeded": 2, "failed": 2}
    assert result["counts"]["created"] == 2
    for region in ("us-east-1", "eu-west-1"):
        assert units[(ACCOUNT_A, region)]["status"] == "SUCCEEDED"
        denied = units[(ACCOUNT_B, region)]
        assert denied["status"] == "FAILED" and "AccessDenied" in denied["error"]
    # On-call hears about it on Slack (Block Kit) and SNS, naming the account that failed.
    (message,) = posted
    assert message["channel"] == "#ops"
    assert message["blocks"][0]["type"] == "header" and "PARTIAL" in message["blocks"][0]["text"]["text"]
    assert any(ACCOUNT_B in json.dumps(b) and "AccessDenied" in json.dumps(b) for b in message["blocks"])
    body = json.loads(sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"])
    alert = json.loads(body["Message"])
    assert alert["kind"] == "task-run" and any(ACCOUNT_B in d for d in alert["details"])
