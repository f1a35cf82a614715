"""The alert lifecycle in DynamoDB (moto), with the clock frozen: open -> reminder -> escalate -> resolve,
hysteresis, no repeats between reminders, and concurrent checks that cannot double-notify."""

from __future__ import annotations

from typing import Any

from freezegun import freeze_time

from automations.breach_checks.alerts import OPEN, RESOLVED, AlertBook, Level
from automations.breach_checks.kinds import Measurement
from automations.breach_checks.messages import alert_message
from automations.breach_checks.rules import Thresholds

ACCOUNT, REGION = "210987654321", "us-east-1"
KEY = "servicequotas/ec2/L-1216C47A"
T = Thresholds(warn_percent=80, critical_percent=95, hysteresis_percent=5, reminder_hours=6)


def reading(percent: float | None, limit: float = 500) -> Measurement:
    return Measurement(
        check="service-quotas",
        key=KEY,
        name="Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
        service="ec2",
        quota_code="L-1216C47A",
        usage=None if percent is None else limit * percent / 100,
        limit=limit,
        window="over the last 60 min",
    )


def observe(book: AlertBook, percent: float | None) -> str | None:
    """One check: read the state, observe, return the event (None: nothing stored)."""
    t = book.observe(
        ACCOUNT, REGION, reading(percent), T, book.state(ACCOUNT, REGION, KEY), account_name="payments-prod"
    )
    return t.event if t else None


def test_open_reminder_escalate_resolve(book: AlertBook) -> None:
    with freeze_time("2026-11-25 10:00:00") as clock:
        assert observe(book, 50) is None  # below warn: nothing stored at all
        assert book.state(ACCOUNT, REGION, KEY) is None

        assert observe(book, 85) == "opened"
        opened = book.state(ACCOUNT, REGION, KEY)
        assert opened["status"] == OPEN and opened["severity"] == "warning"
        alert_id = opened["alert_id"]

        events = []
        for _ in range(71):  # every 5 minutes for 5 h 55 min: a steady breach, nothing said
            clock.tick(300)
            events.append(observe(book, 86))
        assert set(events) == {"steady"}
        clock.tick(300)  # 6 h after the last notification
        assert observe(book, 87) == "reminder"
        clock.tick(300)
        assert observe(book, 87) == "steady"

        clock.tick(300)
        assert observe(book, 96) == "escalated"
        state = book.state(ACCOUNT, REGION, KEY)
        assert state["severity"] == "critical" and state["alert_id"] == alert_id
        clock.tick(300)
        assert observe(book, 97) == "steady"  # already critical
        clock.tick(300)
        assert observe(book, 90) == "steady"  # severity never drops within an episode: no second escalation
        clock.tick(300)
        assert observe(book, 96) == "steady"

        clock.tick(300)
        assert observe(book, 76) == "steady"  # between 75 and 80: still open
        clock.tick(300)
        assert observe(book, 74) == "resolved"
        resolved = book.state(ACCOUNT, REGION, KEY)
        assert resolved["status"] == RESOLVED and resolved["alert_id"] == alert_id
        assert resolved["peak_percent"] == 97.0 and resolved["notifications"] == 4  # open, remind, escalate, resolve

        clock.tick(300)
        assert observe(book, 74) is None
        assert observe(book, 79) is None  # closed, below warn: no new alert
        clock.tick(300)
        assert observe(book, 82) == "opened"
        assert book.state(ACCOUNT, REGION, KEY)["alert_id"] != alert_id  # a new episode, a new id


def test_hovering_around_the_threshold_does_not_flap(book: AlertBook) -> None:
    with freeze_time("2026-11-25 10:00:00") as clock:
        events = []
        for pct in [79, 79.9, 81, 79, 80.5, 79.2, 81, 78.5, 80, 79.9, 80.1, 79, 81, 79.5] * 4:
            events.append(observe(book, pct))
            clock.tick(300)  # 56 checks: 4 h 40 min, less than the 6 h reminder interval
        notified = [e for e in events if e in ("opened", "escalated", "reminder", "resolved")]
        assert notified == ["opened"]
        assert events[:2] == [None, None]  # 79 and 79.9 never open one
        assert book.state(ACCOUNT, REGION, KEY)["status"] == OPEN


def test_no_data_keeps_an_open_alert_open_and_never_opens_one(book: AlertBook) -> None:
    with freeze_time("2026-11-25 10:00:00") as clock:
        assert observe(book, None) is None
        assert observe(book, 90) == "opened"
        clock.tick(3600)
        assert observe(book, None) == "steady"
        state = book.state(ACCOUNT, REGION, KEY)
        assert state["status"] == OPEN and state["percent"] == 90.0
        assert state["no_data_since"] == "2026-11-25T11:00:00Z"
        clock.tick(6 * 3600)
        transition = book.observe(ACCOUNT, REGION, reading(None), T, book.state(ACCOUNT, REGION, KEY))
        assert transition is not None and transition.event == "reminder"
        assert "no usage data since 2026-11-25T11:00:00Z" in alert_message(transition).summary


def test_concurrent_checks_cannot_both_notify(ledger: Any) -> None:
    """Two checks read the same state, then both write: the conditional write lets one through."""
    first, second = AlertBook(ledger.table), AlertBook(ledger.table)
    with freeze_time("2026-11-25 10:00:00") as clock:
        stale = first.state(ACCOUNT, REGION, KEY)  # None: both see no alert
        a = first.observe(ACCOUNT, REGION, reading(90), T, stale)
        b = second.observe(ACCOUNT, REGION, reading(90), T, stale)
        assert (a.event, b.event) == ("opened", "steady")
        assert b.state["alert_id"] == a.state["alert_id"]

        clock.tick(6 * 3600)
        stale = first.state(ACCOUNT, REGION, KEY)
        a = first.observe(ACCOUNT, REGION, reading(91), T, stale)
        b = second.observe(ACCOUNT, REGION, reading(91), T, stale)
        assert (a.event, b.event) == ("reminder", "steady")
        assert first.state(ACCOUNT, REGION, KEY)["notifications"] == 2


def test_alert_id_lookup_and_open_alerts(book: AlertBook) -> None:
    with freeze_time("2026-11-25 10:00:00") as clock:
        observe(book, 85)
        alert_id = book.state(ACCOUNT, REGION, KEY)["alert_id"]
        assert book.get(alert_id)["key"] == KEY
        assert [a["alert_id"] for a in book.open_alerts()] == [alert_id]
        clock.tick(300)
        observe(book, 10)
        assert book.get(alert_id)["status"] == RESOLVED  # still this key's latest episode
        assert book.open_alerts() == []
        clock.tick(300)
        observe(book, 99)
        assert book.get(alert_id) is None  # superseded: a kill switch must not act on it
        assert book.get("brk-20000101000000-000000") is None


def test_forced_levels_for_a_check_that_cannot_run(book: AlertBook) -> None:
    failing = Measurement(
        check="service-quotas-access",
        key="check/service-quotas",
        name="service-quotas",
        service="opsbot",
        note="AccessDenied: nope",
    )
    with freeze_time("2026-11-25 10:00:00") as clock:
        opened = book.observe(ACCOUNT, REGION, failing, T, None, level=Level.WARNING)
        assert opened.event == "opened"
        message = alert_message(opened)
        assert message.kind == "breach-check-failed" and "AccessDenied: nope" in message.summary
        clock.tick(300)
        again = book.observe(ACCOUNT, REGION, failing, T, opened.state, level=Level.WARNING)
        assert again.event == "steady"
        clock.tick(300)
        cleared = book.observe(ACCOUNT, REGION, failing, T, again.state, level=Level.CLEAR)
        assert cleared.event == "resolved" and alert_message(cleared).severity == "info"


def test_messages_carry_quota_account_region_usage_percent_and_direction(book: AlertBook) -> None:
    with freeze_time("2026-11-25 10:00:00") as clock:
        opened = book.observe(ACCOUNT, REGION, reading(85), T, None, account_name="payments-prod")
        message = alert_message(opened)
        fields = dict(message.fields)
        assert message.severity == "warning" and message.kind == "service-quota"
        assert fields["Quota"] == "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances (L-1216C47A)"
        assert fields["Account"] == "payments-prod (210987654321)" and fields["Region"] == REGION
        assert fields["Usage / limit"] == "425 / 500" and fields["Percent"] == "85.0%"
        assert fields["Since last check"].startswith("↑ new")
        assert message.data["alert_id"] == opened.state["alert_id"] and message.data["event"] == "opened"
        clock.tick(3600)
        escalated = book.observe(ACCOUNT, REGION, reading(96), T, opened.state, account_name="payments-prod")
        fields = dict(alert_message(escalated).fields)
        assert fields["Since last check"] == "↑ 85.0% → 96.0% (+11.0 pts)"
        assert alert_message(escalated).title.startswith("Critical (escalated): ")
        clock.tick(3600)
        resolved = book.observe(ACCOUNT, REGION, reading(40), T, escalated.state, account_name="payments-prod")
        message = alert_message(resolved)
        assert (
            message.title
            == "Resolved: Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances back to 40.0% in payments-prod/us-east-1"
        )
        assert dict(message.fields)["Since last check"] == "↓ 96.0% → 40.0% (-56.0 pts)"
        assert "Open 2h 0m since 2026-11-25T10:00:00Z, peak 96.0%" in message.summary
        # Slack Block Kit renders and stays within Slack's limits.
        blocks = [b.to_dict() for b in message.as_blocks()]
        assert blocks[0]["type"] == "header" and len(blocks[0]["text"]["text"]) <= 150
