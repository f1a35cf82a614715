"""Service quotas across accounts: applied values with the AWS default as fallback, usage from each
quota's UsageMetric in one GetMetricData call per unit, unmonitored quotas counted, overrides per
account, throttling retried, and a denied member account alerting once instead of every run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.cloudwatch.exceptions import CloudWatchException
from moto.cloudwatch.models import CloudWatchBackend
from moto.core.authorization import enable_iam_authentication

from automations.breach_checks.alerts import OPEN, AlertBook
from automations.breach_checks.checks import CAPABILITY_NAME, access_key, plan_check, run_checks_now
from automations.breach_checks.service_quotas import _scale, quota_key
from automations.core.fleet import SessionBroker
from automations.core.ledger import Ledger
from automations.core.runs import Trigger
from opsbot.local.aws_shims import CATALOG_ENV
from opsbot.local.hub import LEDGER_TABLE
from opsbot.local.seed import _member_session, create_member_role, create_operator
from tests.breach_support import Inbox, minutes_ago, put_metric, rules
from tests.conftest import ACCOUNT_A, ACCOUNT_B, REGIONS

STANDARD = "L-1216C47A"  # Running On-Demand Standard instances (vCPUs): AWS default 5
X_FAMILY = "L-7295265B"  # Running On-Demand X instances: the local AWS lists no applied value for it


def vcpus(cloudwatch: Any, cls: str, value: float, at: datetime) -> None:
    dims = {"Class": cls, "Resource": "vCPU", "Service": "EC2", "Type": "Resource"}
    put_metric(cloudwatch, "AWS/Usage", "ResourceCount", value, at, dims)


def member(broker: Any, account: str, region: str, service: str) -> Any:
    return broker.client(account, region, service)


def check(fleet, broker, ledger, book, inbox, now, text=None, **scope) -> dict[str, Any]:
    r = rules(text) if text else rules()
    plan = plan_check(ledger, fleet, r, "service-quotas", Trigger("test"), now, **scope)
    return run_checks_now(
        plan, rules=r, fleet=fleet, broker=broker, ledger=ledger, book=book, notifier=inbox.notifier, clock=lambda: now
    )


def test_applied_values_defaults_usage_and_unmonitored(shimmed, fleet, broker, ledger, book, inbox):
    sq = member(broker, ACCOUNT_A, "us-east-1", "service-quotas")
    cw = member(broker, ACCOUNT_A, "us-east-1", "cloudwatch")
    sq.request_service_quota_increase(ServiceCode="ec2", QuotaCode=STANDARD, DesiredValue=500)
    now = datetime.now(UTC)
    vcpus(cw, "Standard/OnDemand", 300, minutes_ago(now, 50))
    vcpus(cw, "Standard/OnDemand", 480, minutes_ago(now, 20))  # the peak of the hour
    vcpus(cw, "Standard/OnDemand", 410, minutes_ago(now, 2))
    vcpus(cw, "X/OnDemand", 80, minutes_ago(now, 5))

    run = check(fleet, broker, ledger, book, inbox, now, accounts=[ACCOUNT_A], regions=["us-east-1"])

    assert run["status"] == "SUCCEEDED"
    alerts = {a["data"]["quota_code"]: a for a in inbox.alerts()}
    assert sorted(alerts) == [STANDARD, X_FAMILY]
    standard = alerts[STANDARD]
    assert standard["severity"] == "critical" and standard["kind"] == "service-quota"
    assert standard["title"] == (
        "Critical: Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances at 96.0% in payments-prod/us-east-1"
    )
    assert standard["fields"]["Usage / limit"] == "480 / 500"
    assert "Limit 500 (applied); adjustable: yes, request an increase" in standard["details"]
    # No applied value listed for the X family: the AWS default (96) is the limit.
    x = alerts[X_FAMILY]
    assert x["severity"] == "warning" and x["fields"]["Usage / limit"] == "80 / 96"
    assert "Limit 96 (AWS default, none applied); adjustable: yes, request an increase" in x["details"]

    (unit,) = ledger.units(run["run_id"])
    counts = unit["counts"]
    assert unit["metric_calls"] == 1  # every monitored quota of the unit in one GetMetricData call
    assert counts["monitored"] == 6 and counts["no_data"] == 4  # F, G, Inf, P: nothing running
    # Quotas without a usage metric are counted and named, not dropped: 4 of EC2's, all 25 of VPC's.
    assert counts["unmonitored"] == 29 and counts["quotas"] == 35
    assert "ec2/L-0263D0A3" in unit["unmonitored"] and "vpc/L-F678F1CE" in unit["unmonitored"]
    assert run["counts"]["unmonitored"] == 29


def test_no_metric_data_at_all(shimmed, fleet, broker, ledger, book, inbox):
    run = check(fleet, broker, ledger, book, inbox, datetime.now(UTC))
    assert run["status"] == "SUCCEEDED" and run["units"] == {"total": 4, "succeeded": 4}
    assert inbox.alerts() == []
    assert run["counts"]["no_data"] == run["counts"]["monitored"] == 4 * 6
    assert run["counts"]["metric_calls"] == 4  # one per unit
    for account in (ACCOUNT_A, ACCOUNT_B):
        for region in REGIONS:
            assert book.states(account, region) == {}


def test_per_account_override(shimmed, fleet, broker, ledger, book, inbox):
    now = datetime.now(UTC)
    for account in (ACCOUNT_A, ACCOUNT_B):
        member(broker, account, "eu-west-1", "service-quotas").request_service_quota_increase(
            ServiceCode="ec2", QuotaCode=STANDARD, DesiredValue=100
        )
        vcpus(member(broker, account, "eu-west-1", "cloudwatch"), "Standard/OnDemand", 90, minutes_ago(now, 3))
    text = (
        "thresholds: {warn_percent: 80, critical_percent: 95}\n"
        "service_quotas: {services: [ec2]}\n"
        "overrides:\n"
        f"  - {{account: '{ACCOUNT_B}', warn_percent: 92, critical_percent: 99}}\n"
        f"  - {{quota_code: {STANDARD}, warn_percent: 85}}\n"
    )
    check(fleet, broker, ledger, book, inbox, now, text, regions=["eu-west-1"])
    (alert,) = inbox.alerts()  # A: 90% >= 85 (quota override). B: 90% < 92 (its own, more specific)
    assert alert["data"]["account"] == ACCOUNT_A and alert["severity"] == "warning"
    assert "Warns at 85%, critical at 95%" in alert["summary"]
    assert book.states(ACCOUNT_B, "eu-west-1") == {}


def test_global_quotas_are_checked_once_per_account(shimmed, fleet, broker, ledger, book, inbox, tmp_path, monkeypatch):
    catalog = {
        "services": {
            "iam-like": {
                "ServiceName": "A global service",
                "Quotas": [
                    {
                        "QuotaCode": "L-0000GL0B",
                        "QuotaName": "Global things",
                        "Value": 10.0,
                        "Unit": "None",
                        "Adjustable": False,
                        "GlobalQuota": True,
                        "UsageMetric": {
                            "MetricNamespace": "AWS/Usage",
                            "MetricName": "ResourceCount",
                            "MetricDimensions": {
                                "Service": "Global",
                                "Type": "Resource",
                                "Resource": "Things",
                                "Class": "None",
                            },
                            "MetricStatisticRecommendation": "Maximum",
                        },
                    }
                ],
            }
        }
    }
    path = Path(tmp_path) / "catalog.json"
    path.write_text(json.dumps(catalog))
    monkeypatch.setenv(CATALOG_ENV, str(path))
    run = check(
        fleet,
        broker,
        ledger,
        book,
        inbox,
        datetime.now(UTC),
        "thresholds: {}\nservice_quotas: {services: [iam-like]}\n",
    )
    units = {(u["account"], u["region"]): u["counts"] for u in ledger.units(run["run_id"])}
    for account in (ACCOUNT_A, ACCOUNT_B):
        assert units[(account, "us-east-1")]["monitored"] == 1  # the account's first region
        assert units[(account, "eu-west-1")]["global_checked_elsewhere"] == 1


def test_rate_quotas_scale_a_per_minute_sum_to_their_period():
    assert _scale({"Period": {"PeriodValue": 1, "PeriodUnit": "SECOND"}}, "Sum") == pytest.approx(1 / 60)
    assert _scale({"Period": {"PeriodValue": 1, "PeriodUnit": "HOUR"}}, "Sum") == 60
    assert _scale({"Period": {"PeriodValue": 1, "PeriodUnit": "SECOND"}}, "Maximum") == 1
    assert _scale({}, "Sum") == 1


@pytest.mark.filterwarnings("ignore:Exception\\(CloudWatchException\\) with code Throttling:UserWarning")
def test_get_metric_data_throttled_then_retried(shimmed, fleet, broker, ledger, book, inbox, monkeypatch):
    """CloudWatch throttles the first GetMetricData: botocore's standard retry mode tries again."""
    original = CloudWatchBackend.get_metric_data
    calls = []

    def throttle_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            # moto serializes this as CloudWatch's own error response (Code "Throttling"), which
            # botocore's standard retry mode classifies as throttling and retries with backoff.
            raise CloudWatchException("Throttling", "Rate exceeded")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CloudWatchBackend, "get_metric_data", throttle_once)
    cw = member(broker, ACCOUNT_A, "us-east-1", "cloudwatch")
    sq = member(broker, ACCOUNT_A, "us-east-1", "service-quotas")
    sq.request_service_quota_increase(ServiceCode="ec2", QuotaCode=STANDARD, DesiredValue=100)
    now = datetime.now(UTC)
    vcpus(cw, "Standard/OnDemand", 97, minutes_ago(now, 1))
    run = check(fleet, broker, ledger, book, inbox, now, accounts=[ACCOUNT_A], regions=["us-east-1"])
    assert run["status"] == "SUCCEEDED"
    assert len(calls) == 2  # the throttled attempt, and the retry that answered
    (alert,) = inbox.alerts()
    assert alert["severity"] == "critical"


@pytest.mark.filterwarnings("ignore:Exception\\(CloudWatchException\\) with code Throttling:UserWarning")
def test_get_metric_data_throttled_past_retries_alerts_once(
    shimmed, fleet, hub_session, ledger, book, inbox, monkeypatch
):
    def always(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise CloudWatchException("Throttling", "Rate exceeded")

    monkeypatch.setattr(CloudWatchBackend, "get_metric_data", always)
    impatient = SessionBroker(hub_session, fleet, client_config=Config(retries={"mode": "standard", "max_attempts": 2}))
    now = datetime.now(UTC)
    for minutes in (0, 5):
        run = check(
            fleet,
            impatient,
            ledger,
            book,
            inbox,
            now + timedelta(minutes=minutes),
            accounts=[ACCOUNT_A],
            regions=["us-east-1"],
        )
        assert run["status"] == "FAILED"
        assert run["failures"] == [f"{ACCOUNT_A}/us-east-1: Throttling: Rate exceeded"]
    (alert,) = inbox.alerts()  # the second failing run says nothing new
    assert alert["kind"] == "breach-check-failed"
    assert alert["title"] == "Warning: opsbot cannot run service-quotas in payments-prod/us-east-1"
    assert "Throttling: Rate exceeded" in alert["summary"]


def test_a_member_account_denied(shimmed, hub_session, fleet, broker, inbox):
    """moto enforces IAM: the hub operator may assume the role in account A only. A's checks pass
    with exactly the member role template-member.yaml grants; B's fail, alert once, and recover."""
    hub_account = hub_session.client("sts").get_caller_identity()["Account"]
    for account in (ACCOUNT_A, ACCOUNT_B):
        create_member_role(_member_session(hub_session, fleet, account), fleet, hub_account)
    keys = create_operator(hub_session, fleet, allowed_accounts=[ACCOUNT_A])
    sq = member(broker, ACCOUNT_A, "us-east-1", "service-quotas")
    sq.request_service_quota_increase(ServiceCode="ec2", QuotaCode=STANDARD, DesiredValue=100)
    now = datetime.now(UTC)
    vcpus(member(broker, ACCOUNT_A, "us-east-1", "cloudwatch"), "Standard/OnDemand", 85, minutes_ago(now, 1))
    operator = boto3.Session(
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    op_ledger = Ledger(operator.resource("dynamodb").Table(LEDGER_TABLE))
    op_book = AlertBook(op_ledger.table)
    op_inbox = Inbox(
        type(inbox.notifier)(sns=operator.client("sns"), topic_arn=inbox.notifier.topic_arn), inbox.sqs, inbox.queue_url
    )
    op_broker = SessionBroker(operator, fleet)
    runs = []
    with enable_iam_authentication():
        for check_name in ("service-quotas", "lambda-concurrency"):
            for minutes in (0, 5):
                plan = plan_check(
                    op_ledger, fleet, rules(), check_name, Trigger("test"), now + timedelta(minutes=minutes)
                )
                runs.append(
                    run_checks_now(
                        plan,
                        rules=rules(),
                        fleet=fleet,
                        broker=op_broker,
                        ledger=op_ledger,
                        book=op_book,
                        notifier=op_inbox.notifier,
                        clock=lambda m=minutes: now + timedelta(minutes=m),
                    )
                )
    for run in runs:
        assert run["status"] == "PARTIAL", run["failures"]
        assert run["units"] == {"total": 4, "succeeded": 2, "failed": 2}, run["failures"]
        assert all(ACCOUNT_B in f and "AccessDenied" in f for f in run["failures"])
    alerts = inbox.alerts()
    failed = sorted((a["data"]["check"], a["data"]["region"]) for a in alerts if a["kind"] == "breach-check-failed")
    # Once per check and region in the denied account, not once per run.
    assert failed == [
        ("lambda-concurrency-access", "eu-west-1"),
        ("lambda-concurrency-access", "us-east-1"),
        ("service-quotas-access", "eu-west-1"),
        ("service-quotas-access", "us-east-1"),
    ]
    (quota,) = [a for a in alerts if a["kind"] == "service-quota"]
    assert quota["data"]["account"] == ACCOUNT_A and quota["severity"] == "warning"  # 85% of 100

    # The role is fixed: the next run resolves the 'cannot check' alerts, once.
    allowed = create_operator(hub_session, fleet, allowed_accounts=[ACCOUNT_A, ACCOUNT_B])
    fixed = boto3.Session(
        aws_access_key_id=allowed["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=allowed["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    later = now + timedelta(minutes=10)
    with enable_iam_authentication():
        f_ledger = Ledger(fixed.resource("dynamodb").Table(LEDGER_TABLE))
        plan = plan_check(f_ledger, fleet, rules(), "service-quotas", Trigger("test"), later)
        run = run_checks_now(
            plan,
            rules=rules(),
            fleet=fleet,
            broker=SessionBroker(fixed, fleet),
            ledger=f_ledger,
            book=AlertBook(f_ledger.table),
            notifier=type(inbox.notifier)(sns=fixed.client("sns"), topic_arn=inbox.notifier.topic_arn),
            clock=lambda: later,
        )
    assert run["status"] == "SUCCEEDED"
    resolved = [a for a in inbox.alerts() if a["kind"] == "breach-check-failed"]
    assert sorted(a["data"]["region"] for a in resolved) == ["eu-west-1", "us-east-1"]
    assert all(a["data"]["event"] == "resolved" for a in resolved)
    states = AlertBook(ledger_table(hub_session)).states(ACCOUNT_B, "us-east-1")
    assert states[access_key("service-quotas")]["status"] == "RESOLVED"
    assert states[access_key("lambda-concurrency")]["status"] == OPEN  # that check has not run again yet
    assert quota_key("ec2", STANDARD) not in states


def ledger_table(session: boto3.Session) -> Any:
    return session.resource("dynamodb").Table(LEDGER_TABLE)


def test_a_transient_service_quotas_error_leaves_that_services_alerts_open(
    shimmed, fleet, broker, ledger, book, inbox, monkeypatch
):
    """ListServiceQuotas throttled past retries for one check: its service's alerts are unknown, not gone."""
    sq = member(broker, ACCOUNT_A, "us-east-1", "service-quotas")
    sq.request_service_quota_increase(ServiceCode="ec2", QuotaCode=STANDARD, DesiredValue=100)
    now = datetime.now(UTC)
    vcpus(member(broker, ACCOUNT_A, "us-east-1", "cloudwatch"), "Standard/OnDemand", 90, minutes_ago(now, 1))
    scope = {"accounts": [ACCOUNT_A], "regions": ["us-east-1"]}
    check(fleet, broker, ledger, book, inbox, now, **scope)
    (opened,) = [a for a in inbox.alerts() if a["kind"] == "service-quota"]

    def throttled(**kwargs: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError(
            {"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}, "ListServiceQuotas"
        )

    client = broker.for_capability(CAPABILITY_NAME).client(ACCOUNT_A, "us-east-1", "service-quotas")
    client.meta.events.register("before-call.service-quotas.ListServiceQuotas", throttled)
    try:
        run = check(fleet, broker, ledger, book, inbox, now + timedelta(minutes=5), **scope)
    finally:
        client.meta.events.unregister("before-call.service-quotas.ListServiceQuotas", throttled)

    assert run["status"] == "PARTIAL" and "TooManyRequestsException" in run["failures"][0]
    state = book.state(ACCOUNT_A, "us-east-1", quota_key("ec2", STANDARD))
    assert state is not None and state["status"] == OPEN and state["alert_id"] == opened["data"]["alert_id"]
    assert [a for a in inbox.alerts() if a["kind"] == "service-quota"] == []  # no "resolved", no re-open
