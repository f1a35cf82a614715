"""Lambda concurrency: account and unreserved pools, claimed concurrency, per-function reservations,
the alert naming the busiest functions, and the function alert a kill switch may act on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from automations.breach_checks.alerts import OPEN, RESOLVED, AlertBook
from automations.breach_checks.checks import plan_check, run_checks_now
from automations.breach_checks.lambda_concurrency import ACCOUNT_KEY, function_key
from automations.core.runs import Trigger
from tests.breach_support import (
    Inbox,
    create_function,
    lambda_usage,
    minutes_ago,
    put_metric,
    rules,
)
from tests.conftest import ACCOUNT_A

REGION = "us-east-1"


@pytest.fixture
def member_lambda(shimmed: None, broker: Any) -> dict[str, Any]:
    return {s: broker.client(ACCOUNT_A, REGION, s) for s in ("lambda", "iam", "cloudwatch")}


def check(fleet: Any, broker: Any, ledger: Any, book: AlertBook, inbox: Inbox, now: datetime) -> dict[str, Any]:
    plan = plan_check(
        ledger, fleet, rules(), "lambda-concurrency", Trigger("test"), now, accounts=[ACCOUNT_A], regions=[REGION]
    )
    return run_checks_now(
        plan,
        rules=rules(),
        fleet=fleet,
        broker=broker,
        ledger=ledger,
        book=book,
        notifier=inbox.notifier,
        clock=lambda: now,
    )


def test_account_alert_names_the_binding_pool_and_the_busiest_functions(
    member_lambda, fleet, broker, ledger, book, inbox
):
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    for name in ("checkout-api", "image-resize", "nightly-report", "idle-fn"):
        create_function(lam, iam, name)
    create_function(lam, iam, "orders-ingest", reserved=100)
    now = datetime.now(UTC)
    # Half an hour ago it was worse, but that is outside the 10-minute window.
    lambda_usage(cw, minutes_ago(now, 30), total=990, unreserved=990)
    lambda_usage(
        cw,
        minutes_ago(now, 3),
        total=850,
        unreserved=780,
        **{"checkout-api": 520, "image-resize": 180, "orders-ingest": 70, "nightly-report": 10},
    )

    run = check(fleet, broker, ledger, book, inbox, now)

    assert run["status"] == "SUCCEEDED"
    assert lam.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == 900
    (alert,) = inbox.alerts()
    # 850 of 1,000 is 85.0%, but the unreserved pool binds first: 780 of 900.
    assert alert["kind"] == "lambda-concurrency" and alert["severity"] == "warning"
    assert alert["title"] == "Warning: Lambda concurrency at 86.7% in payments-prod/us-east-1"
    assert alert["fields"]["Usage / limit"] == "780 / 900"
    assert "Account pool: 850 / 1,000 (85.0%)" in alert["details"]
    assert "Unreserved pool: 780 / 900 (86.7%) <- binding" in alert["details"]
    top = alert["details"][alert["details"].index("Top functions by peak concurrency:") + 1 :]
    assert top == ["checkout-api: 520", "image-resize: 180", "orders-ingest: 70 (reserved 100)"]  # top 3
    state = book.state(ACCOUNT_A, REGION, ACCOUNT_KEY)
    assert state["status"] == OPEN and state["quota_code"] == "L-B99A9384"
    (unit,) = ledger.units(run["run_id"])
    # Claimed concurrency (not published here), then the account's usage, then (near the threshold) the
    # unreserved pool and every function: 8 metrics in 3 calls.
    assert unit["metric_calls"] == 3 and unit["metrics"] == 1 + 1 + 1 + 5
    assert unit["counts"]["functions"] == 5 and unit["counts"]["warning"] == 1
    assert unit["counts"]["reservations_read"] == 5  # which are reserved: read once, then kept for an hour
    assert unit["counts"]["reserved_functions"] == 1


def test_claimed_concurrency_where_published(member_lambda, fleet, broker, ledger, book, inbox):
    cw = member_lambda["cloudwatch"]
    now = datetime.now(UTC)
    lambda_usage(cw, minutes_ago(now, 2), total=500, unreserved=500)
    put_metric(cw, "AWS/Lambda", "ClaimedAccountConcurrency", 960, minutes_ago(now, 2))
    check(fleet, broker, ledger, book, inbox, now)
    (alert,) = inbox.alerts()
    assert alert["severity"] == "critical"
    assert alert["title"] == "Critical: Lambda concurrency at 96.0% in payments-prod/us-east-1"
    assert "Claimed concurrency: 960 / 1,000 (96.0%) <- binding" in alert["details"]


def test_function_alert_stores_its_target_and_resolves_when_the_function_goes_quiet(
    member_lambda, fleet, broker, ledger, book, inbox
):
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    arn = create_function(lam, iam, "orders-ingest", reserved=100)
    create_function(lam, iam, "idle")
    now = datetime.now(UTC)
    lambda_usage(cw, minutes_ago(now, 2), total=120, unreserved=28, **{"orders-ingest": 92})

    check(fleet, broker, ledger, book, inbox, now)

    (alert,) = inbox.alerts()
    assert alert["title"] == "Warning: Lambda function orders-ingest concurrency at 92.0% in payments-prod/us-east-1"
    assert f"Function: {arn} (reserved 100)" in alert["details"]
    assert alert["data"]["target"] == {
        "function_name": "orders-ingest",
        "function_arn": arn,
        "account": ACCOUNT_A,
        "region": REGION,
        "reserved_concurrency": 100,
    }
    # What a kill switch gets from Slack is the alert id; the stored alert names the only target.
    stored = book.get(alert["data"]["alert_id"])
    assert stored["status"] == OPEN and stored["target"]["function_arn"] == arn
    assert book.state(ACCOUNT_A, REGION, ACCOUNT_KEY) is None  # the account is at 12%: no alert

    later = now + timedelta(minutes=15)  # no invocations since: Lambda publishes nothing, i.e. 0
    check(fleet, broker, ledger, book, inbox, later)
    (resolved,) = inbox.alerts()
    assert (
        resolved["title"]
        == "Resolved: Lambda function orders-ingest concurrency back to 0.0% in payments-prod/us-east-1"
    )
    assert book.state(ACCOUNT_A, REGION, function_key("orders-ingest"))["status"] == RESOLVED


def test_function_alert_resolves_when_its_reservation_is_removed(member_lambda, fleet, broker, ledger, book, inbox):
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    create_function(lam, iam, "orders-ingest", reserved=50)
    now = datetime.now(UTC)
    lambda_usage(cw, minutes_ago(now, 2), total=48, unreserved=0, **{"orders-ingest": 48})
    check(fleet, broker, ledger, book, inbox, now)
    assert inbox.alerts()[0]["severity"] == "critical"  # 96%

    lam.delete_function_concurrency(FunctionName="orders-ingest")
    later = now + timedelta(minutes=5)
    lambda_usage(cw, minutes_ago(later, 1), total=60, unreserved=60, **{"orders-ingest": 60})
    check(fleet, broker, ledger, book, inbox, later)
    (resolved,) = inbox.alerts()
    assert resolved["title"] == "Resolved: Lambda function orders-ingest concurrency in payments-prod/us-east-1"
    assert resolved["summary"].startswith("No longer measured")


def test_no_metric_data_at_all_means_no_concurrency(member_lambda, fleet, broker, ledger, book, inbox):
    create_function(member_lambda["lambda"], member_lambda["iam"], "quiet", reserved=10)
    run = check(fleet, broker, ledger, book, inbox, datetime.now(UTC))
    assert run["status"] == "SUCCEEDED" and inbox.alerts() == []
    (unit,) = ledger.units(run["run_id"])
    # The account pool at 0%, and the reserved function cleared by it (it cannot run more than the
    # account): two account-level metrics read, the function's own metric not even asked for.
    assert unit["counts"]["clear"] == 2 and unit["metrics"] == 2
    assert unit["counts"]["functions_read"] == 0
    assert book.states(ACCOUNT_A, REGION) == {}
