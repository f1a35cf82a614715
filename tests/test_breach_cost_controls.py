"""Reading less without missing a breach (docs/cost.md): the Lambda check reads the account-level
metrics first and functions only where they may matter, keeps which functions are reserved between
checks, and the quota check reads quotas far below their threshold every few hours over the whole gap.

The guarantee: whatever the staged read skips is provably below ``warn - hysteresis`` (a function never
runs more than its account; claimed concurrency bounds the account and unreserved pools), so every
alert decision is the one a full read would make. A breach caused by a function without a reservation
is caught, and a property test compares the staged read with the full one over random fleets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automations.breach_checks.alerts import OPEN, RESOLVED, AlertBook, level_of
from automations.breach_checks.checks import plan_check, run_checks_now
from automations.breach_checks.kinds import MeasureContext
from automations.breach_checks.lambda_concurrency import (
    ACCOUNT_KEY,
    LambdaConcurrencySettings,
    function_key,
    measure_lambda_concurrency,
)
from automations.breach_checks.service_quotas import quota_key
from automations.core.clock import iso
from automations.core.runs import Trigger
from tests.breach_support import Inbox, create_function, minutes_ago, put_metric, rules
from tests.conftest import ACCOUNT_A

REGION = "us-east-1"
STANDARD = "L-1216C47A"  # Running On-Demand Standard instances (vCPUs)


@pytest.fixture
def member_lambda(shimmed: None, broker: Any) -> dict[str, Any]:
    return {s: broker.client(ACCOUNT_A, REGION, s) for s in ("lambda", "iam", "cloudwatch", "service-quotas")}


def run_check(check: str, fleet, broker, ledger, book: AlertBook, inbox: Inbox, now: datetime) -> dict[str, Any]:
    plan = plan_check(ledger, fleet, rules(), check, Trigger("test"), now, accounts=[ACCOUNT_A], regions=[REGION])
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


def account_usage(cw: Any, at: datetime, *, total: float, unreserved: float, claimed: float | None) -> None:
    put_metric(cw, "AWS/Lambda", "ConcurrentExecutions", total, at)
    put_metric(cw, "AWS/Lambda", "UnreservedConcurrentExecutions", unreserved, at)
    if claimed is not None:
        put_metric(cw, "AWS/Lambda", "ClaimedAccountConcurrency", claimed, at)


def function_usage(cw: Any, at: datetime, **functions: float) -> None:
    for name, value in functions.items():
        put_metric(cw, "AWS/Lambda", "ConcurrentExecutions", value, at, {"FunctionName": name})


def unit_of(ledger: Any, run: dict[str, Any]) -> dict[str, Any]:
    (unit,) = ledger.units(run["run_id"])
    return unit


# ---- Lambda concurrency -------------------------------------------------------------------------------
@pytest.mark.parametrize("claimed_published", [True, False])
def test_a_function_without_a_reservation_breaches_the_account_and_is_caught(
    claimed_published, member_lambda, fleet, broker, ledger, book, inbox
):
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    for name in ("orders-api", "image-resize", "idle-fn"):
        create_function(lam, iam, name)  # no reservation
    create_function(lam, iam, "ledger-sync", reserved=100)
    now = datetime.now(UTC)
    # orders-api (unreserved) takes the unreserved pool to 780 of 900; ledger-sync runs 10 of its 100.
    at = minutes_ago(now, 3)
    account_usage(cw, at, total=800, unreserved=790, claimed=890 if claimed_published else None)
    function_usage(cw, at, **{"orders-api": 780, "image-resize": 10, "ledger-sync": 10})

    run = run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, now)

    (alert,) = inbox.alerts()
    if claimed_published:
        assert alert["title"] == "Warning: Lambda concurrency at 89.0% in payments-prod/us-east-1"
        assert "Claimed concurrency: 890 / 1,000 (89.0%) <- binding" in alert["details"]
    else:
        assert alert["title"] == "Warning: Lambda concurrency at 87.8% in payments-prod/us-east-1"
        assert "Unreserved pool: 790 / 900 (87.8%) <- binding" in alert["details"]
    top = alert["details"][alert["details"].index("Top functions by peak concurrency:") + 1 :]
    assert top[0] == "orders-api: 780"  # the function without a reservation is named
    assert book.state(ACCOUNT_A, REGION, ACCOUNT_KEY)["status"] == OPEN
    unit = unit_of(ledger, run)
    assert unit["counts"]["functions_read"] == 4  # near the threshold: every function, for the top list

    # It calms down: the open alert is read in full again, and resolves.
    later = now + timedelta(minutes=15)
    account_usage(cw, minutes_ago(later, 2), total=60, unreserved=50, claimed=150 if claimed_published else None)
    function_usage(cw, minutes_ago(later, 2), **{"orders-api": 40, "ledger-sync": 10})
    run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, later)
    (resolved,) = inbox.alerts()
    assert resolved["title"].startswith("Resolved: Lambda concurrency back to")
    assert book.state(ACCOUNT_A, REGION, ACCOUNT_KEY)["status"] == RESOLVED


def test_a_quiet_account_costs_one_metric_and_reservations_are_kept_between_checks(
    member_lambda, fleet, broker, ledger, book, inbox
):
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    for i in range(6):
        create_function(lam, iam, f"svc-{i}")
    create_function(lam, iam, "ledger-sync", reserved=100)
    now = datetime.now(UTC)
    account_usage(cw, minutes_ago(now, 2), total=30, unreserved=25, claimed=125)
    function_usage(cw, minutes_ago(now, 2), **{"svc-0": 20, "svc-1": 5, "ledger-sync": 5})

    first = unit_of(ledger, run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, now))
    # Claimed concurrency (12.5%) clears the account; the reserved function is read (5 of 100).
    assert first["metrics"] == 2 and first["counts"]["functions_read"] == 1
    assert first["counts"]["reservations_read"] == 7 and first["counts"]["reserved_functions"] == 1
    assert first["counts"]["clear"] == 2

    later = now + timedelta(minutes=5)
    second = unit_of(ledger, run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, later))
    # One metric: ledger-sync was far below its reservation, so it waits (15 minutes); which functions
    # are reserved is kept from the first check (only ledger-sync's reservation is read again, and it
    # still makes up the account's reserved total).
    assert second["metrics"] == 1 and second["counts"]["relaxed"] == 1
    assert second["counts"]["reservations_read"] == 1 and second["counts"]["reserved_functions"] == 1
    assert inbox.alerts() == []

    # A new reservation changes the account's reserved total: read again at once, and watched.
    lam.put_function_concurrency(FunctionName="svc-0", ReservedConcurrentExecutions=20)
    third = unit_of(ledger, run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, later))
    assert third["counts"]["reservations_read"] == 7 and third["counts"]["reserved_functions"] == 2
    assert third["counts"]["functions_read"] == 1  # svc-0 (its peak: 20 of 20); ledger-sync still waits
    (alert,) = inbox.alerts()
    assert alert["title"] == "Critical: Lambda function svc-0 concurrency at 100.0% in payments-prod/us-east-1"
    assert book.state(ACCOUNT_A, REGION, function_key("svc-0"))["status"] == OPEN


def test_a_reserved_function_near_its_reservation_is_read_while_the_account_is_quiet(
    member_lambda, fleet, broker, ledger, book, inbox
):
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    arn = create_function(lam, iam, "orders-ingest", reserved=40)
    create_function(lam, iam, "big-reservation", reserved=500)
    now = datetime.now(UTC)
    account_usage(cw, minutes_ago(now, 2), total=45, unreserved=5, claimed=545)
    function_usage(cw, minutes_ago(now, 2), **{"orders-ingest": 36, "big-reservation": 4})

    unit = unit_of(ledger, run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, now))

    (alert,) = inbox.alerts()
    assert alert["title"] == "Warning: Lambda function orders-ingest concurrency at 90.0% in payments-prod/us-east-1"
    assert alert["data"]["target"]["function_arn"] == arn
    # Claimed concurrency clears the account pools, not a reservation: both reserved functions are read.
    assert unit["counts"]["functions_read"] == 2 and unit["metrics"] == 3


def test_a_reserved_function_far_below_is_read_every_fifteen_minutes_over_the_whole_gap(
    member_lambda, fleet, broker, ledger, book, inbox
):
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    create_function(lam, iam, "busy-unreserved")
    create_function(lam, iam, "orders-ingest", reserved=50)
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    reads = []
    for i in range(4):  # every 5 minutes; the account runs at 60, which cannot clear a reservation of 50
        now = start + timedelta(minutes=5 * i)
        account_usage(cw, minutes_ago(now, 1), total=60, unreserved=50, claimed=110)
        function_usage(cw, minutes_ago(now, 1), **{"busy-unreserved": 50, "orders-ingest": 5 if i != 1 else 45})
        unit = unit_of(ledger, run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, now))
        reads.append((unit["counts"]["functions_read"], unit["counts"].get("relaxed", 0)))
        if i == 0:
            assert inbox.alerts() == []  # 5 of 50: far below; from now on read every 15 minutes
    # Read at 0, waits at 5 and 10 (the burst at 5 is not seen yet), read at 15 over the 15 minutes since.
    assert reads == [(1, 0), (0, 1), (0, 1), (1, 0)]
    (alert,) = inbox.alerts()
    assert alert["title"] == "Warning: Lambda function orders-ingest concurrency at 90.0% in payments-prod/us-east-1"
    assert "over the last 15 min" in " ".join(alert["details"]) or alert["fields"]
    assert book.state(ACCOUNT_A, REGION, function_key("orders-ingest"))["window"].startswith("over the last 15 min")


_FLEET = {"hot-a": None, "hot-b": None, "cold": None, "res-big": 300, "res-small": 40}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    unreserved=st.lists(st.integers(0, 220), min_size=3, max_size=3),
    big=st.integers(0, 300),
    small=st.integers(0, 40),
    provisioned=st.integers(0, 200),
    claimed_published=st.booleans(),
    open_account=st.booleans(),
)
def test_the_staged_read_decides_every_alert_as_a_full_read_would(
    member_lambda, unreserved, big, small, provisioned, claimed_published, open_account
):
    """Random fleets that obey Lambda's own arithmetic (claimed = unreserved usage + reservations +
    provisioned; account = unreserved + reserved usage): the same level for every key."""
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    if not lam.list_functions()["Functions"]:
        for name, reserved in _FLEET.items():
            create_function(lam, iam, name, reserved=reserved)
    # Each example reads its own hour, far from the others' datapoints.
    now = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=len(_EXAMPLE_HOURS))
    _EXAMPLE_HOURS.append(now)
    at = minutes_ago(now, 2)
    u = sum(unreserved)
    account_usage(
        cw, at, total=u + big + small, unreserved=u, claimed=(u + 340 + provisioned) if claimed_published else None
    )
    function_usage(
        cw, at, **dict(zip(("hot-a", "hot-b", "cold"), unreserved, strict=True)), **{"res-big": big, "res-small": small}
    )
    r = rules()
    context = MeasureContext(near=lambda service, code: r.thresholds(ACCOUNT_A, service, code).resolve_below)
    open_keys = frozenset({ACCOUNT_KEY}) if open_account else frozenset()
    staged = measure_lambda_concurrency(lam, cw, LambdaConcurrencySettings(), now, open_keys, context)
    full = measure_lambda_concurrency(lam, cw, LambdaConcurrencySettings(staged=False), now, open_keys, context)

    def levels(result: Any) -> dict[str, str]:
        return {m.key: level_of(m, r.thresholds(ACCOUNT_A, m.service, m.quota_code)).value for m in result.measurements}

    assert levels(staged) == levels(full)
    assert staged.metrics <= full.metrics


_EXAMPLE_HOURS: list[datetime] = []  # one hour of datapoints per example


# ---- service quotas: adaptive cadence ----------------------------------------------------------------
def vcpus(cw: Any, cls: str, value: float, at: datetime) -> None:
    put_metric(
        cw,
        "AWS/Usage",
        "ResourceCount",
        value,
        at,
        {"Class": cls, "Resource": "vCPU", "Service": "EC2", "Type": "Resource"},
    )


def test_quotas_far_below_are_read_every_six_hours_over_the_whole_gap(
    member_lambda, fleet, broker, ledger, book, inbox
):
    sq, cw = member_lambda["service-quotas"], member_lambda["cloudwatch"]
    sq.request_service_quota_increase(ServiceCode="ec2", QuotaCode=STANDARD, DesiredValue=500)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    vcpus(cw, "Standard/OnDemand", 100, minutes_ago(start, 10))  # 20%: far below
    vcpus(cw, "G/OnDemand", 500, minutes_ago(start, 10))  # G: 500 of 768 (65%): not far below

    first = unit_of(ledger, run_check("service-quotas", fleet, broker, ledger, book, inbox, start))
    monitored = first["counts"]["monitored"]
    assert first["counts"]["read"] == monitored and first["metrics"] == monitored

    reads = []
    for hour in range(1, 7):
        now = start + timedelta(hours=hour)
        vcpus(cw, "G/OnDemand", 500, minutes_ago(now, 10))
        if hour == 3:  # a burst between two readings of the relaxed quota: 480 of 500
            vcpus(cw, "Standard/OnDemand", 480, minutes_ago(now, 30))
        unit = unit_of(ledger, run_check("service-quotas", fleet, broker, ledger, book, inbox, now))
        reads.append((unit["counts"]["read"], unit["counts"].get("relaxed", 0)))
        if hour < 6:
            assert inbox.alerts() == []  # the relaxed quota is not read yet
    # Hours 1-5: only G (near) and the quotas with no reading yet are read; hour 6 reads them all.
    assert all(read == 1 and relaxed == monitored - 1 for read, relaxed in reads[:5])  # G alone
    assert reads[5] == (monitored, 0)
    (alert,) = inbox.alerts()  # the burst three hours ago is in the six-hour window
    assert alert["data"]["quota_code"] == STANDARD and alert["severity"] == "critical"
    state = book.state(ACCOUNT_A, REGION, quota_key("ec2", STANDARD))
    assert state["status"] == OPEN and state["window"] == "over the last 360 min"

    # Open: read every hour from now on.
    later = start + timedelta(hours=7)
    unit = unit_of(ledger, run_check("service-quotas", fleet, broker, ledger, book, inbox, later))
    _, memos = book.read(ACCOUNT_A, REGION)
    # With an open alert it is read every check (no datapoint in its hour now: no data, it stays open).
    assert quota_key("ec2", STANDARD) not in memos["service-quotas"]["relaxed"]
    assert book.state(ACCOUNT_A, REGION, quota_key("ec2", STANDARD))["status"] == OPEN
    assert unit["counts"]["no_data"] >= 1
    # The quotas with nothing in use wait from hour 6; G, read every hour while at 65%, has had no
    # datapoint since hour 6 either: far below from now (hour 7).
    relaxed = memos["service-quotas"]["relaxed"]
    assert relaxed.pop(quota_key("ec2", "L-DB2E81BA")) == iso(later)  # G instances
    assert relaxed and all(since == iso(start + timedelta(hours=6)) for since in relaxed.values())


def test_a_reservation_moved_to_another_function_is_watched_at_once(member_lambda, fleet, broker, ledger, book, inbox):
    """The account's reserved total stays the same when a reservation moves between functions: the kept
    list is checked against it (re-read), so the function that now holds it is measured, against its own."""
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    create_function(lam, iam, "ledger-sync", reserved=100)
    create_function(lam, iam, "payments-batch")
    now = datetime.now(UTC)
    account_usage(cw, minutes_ago(now, 2), total=20, unreserved=15, claimed=115)
    function_usage(cw, minutes_ago(now, 2), **{"ledger-sync": 5, "payments-batch": 15})
    run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, now)
    assert inbox.alerts() == []

    lam.put_function_concurrency(FunctionName="ledger-sync", ReservedConcurrentExecutions=50)
    lam.put_function_concurrency(FunctionName="payments-batch", ReservedConcurrentExecutions=50)  # total: 100
    later = now + timedelta(minutes=5)
    account_usage(cw, minutes_ago(later, 2), total=50, unreserved=0, claimed=100)
    function_usage(cw, minutes_ago(later, 2), **{"ledger-sync": 5, "payments-batch": 45})
    unit = unit_of(ledger, run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, later))
    assert unit["counts"]["reserved_functions"] == 2
    (alert,) = inbox.alerts()
    assert alert["title"] == "Warning: Lambda function payments-batch concurrency at 90.0% in payments-prod/us-east-1"


def test_a_relaxed_function_is_read_at_once_when_the_accounts_peak_could_be_its_breach(
    member_lambda, fleet, broker, ledger, book, inbox
):
    """The cadence waits only while the account's own peak clears the function: once the account runs as
    many as the function's near threshold, the function is read now, not after its 15 minutes."""
    lam, iam, cw = member_lambda["lambda"], member_lambda["iam"], member_lambda["cloudwatch"]
    create_function(lam, iam, "ledger-sync", reserved=100)
    now = datetime.now(UTC)
    # Without ClaimedAccountConcurrency the account's total is read first, and bounds every function.
    account_usage(cw, minutes_ago(now, 2), total=30, unreserved=25, claimed=None)
    function_usage(cw, minutes_ago(now, 2), **{"ledger-sync": 5})
    run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, now)  # 5 of 100: relaxed

    later = now + timedelta(minutes=5)
    account_usage(cw, minutes_ago(later, 2), total=95, unreserved=5, claimed=None)
    function_usage(cw, minutes_ago(later, 2), **{"ledger-sync": 90})
    unit = unit_of(ledger, run_check("lambda-concurrency", fleet, broker, ledger, book, inbox, later))
    assert unit["counts"]["functions_read"] == 1 and "relaxed" not in unit["counts"]
    (alert,) = inbox.alerts()
    assert alert["title"] == "Warning: Lambda function ledger-sync concurrency at 90.0% in payments-prod/us-east-1"
