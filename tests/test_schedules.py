from __future__ import annotations

from datetime import UTC, datetime

import pytest

from automations.core.schedules import ScheduleError, slot_for, slot_label, validate


@pytest.mark.parametrize(
    ("expression", "when", "slot"),
    [
        ("cron(0 3 * * ? *)", datetime(2026, 11, 25, 3, 0, 0, tzinfo=UTC), "2026-11-25T03:00Z"),
        ("cron(0 3 * * ? *)", datetime(2026, 11, 25, 3, 0, 59, tzinfo=UTC), "2026-11-25T03:00Z"),
        ("cron(0 3 * * ? *)", datetime(2026, 11, 25, 14, 10, tzinfo=UTC), "2026-11-25T03:00Z"),
        ("cron(0 3 * * ? *)", datetime(2026, 11, 25, 2, 59, 59, tzinfo=UTC), "2026-11-24T03:00Z"),
        ("cron(0 4 ? * SUN *)", datetime(2026, 11, 25, 12, 0, tzinfo=UTC), "2026-11-22T04:00Z"),
        ("cron(0/15 * * * ? *)", datetime(2026, 11, 25, 12, 44, 10, tzinfo=UTC), "2026-11-25T12:30Z"),
        ("rate(1 day)", datetime(2026, 11, 25, 12, 0, tzinfo=UTC), "2026-11-25T00:00Z"),
        ("rate(6 hours)", datetime(2026, 11, 25, 13, 0, tzinfo=UTC), "2026-11-25T12:00Z"),
    ],
)
def test_slot_for(expression, when, slot):
    assert slot_label(slot_for(expression, when)) == slot


@pytest.mark.parametrize(
    "bad",
    [
        "cron(0 3 * *)",
        "cron(0 3 * * * *)",
        "rate(1 days)",
        "rate(2 hour)",
        "rate(0 hours)",
        "daily",
        "cron(61 3 * * ? *)",
    ],
)
def test_invalid_expressions(bad):
    with pytest.raises(ScheduleError):
        validate(bad)
