"""EventBridge schedule expressions: validation and the schedule *slot* an event belongs to.

A slot is the scheduled fire time an event stands for. Retries and duplicate deliveries of the
same schedule event map to the same slot, which is what makes snapshots idempotent per slot.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from aws_cron_expression_validator.validator import AWSCronExpressionValidator
from pyawscron import AWSCron

_RATE = re.compile(r"^rate\((?P<n>[1-9]\d*) (?P<unit>minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((?P<body>.+)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


class ScheduleError(ValueError):
    pass


def validate(expression: str) -> None:
    """Raise ScheduleError with EventBridge's own rules (cron with 6 fields, '?' rule, rate units)."""
    if m := _RATE.match(expression):
        n, unit = int(m["n"]), m["unit"]
        if (n == 1) != (not unit.endswith("s")):
            raise ScheduleError(f"{expression!r}: use the singular unit for 1 and the plural otherwise")
        return
    if m := _CRON.match(expression):
        try:
            AWSCronExpressionValidator.validate(m["body"])
        except ValueError as exc:
            raise ScheduleError(f"{expression!r}: {exc}") from exc
        return
    raise ScheduleError(f"{expression!r}: expected 'cron(min hour dom month dow year)' or 'rate(N unit)'")


def slot_for(expression: str, when: datetime) -> datetime:
    """The latest fire time of ``expression`` at or before ``when`` (UTC, whole minutes)."""
    validate(expression)
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    if m := _RATE.match(expression):
        period = int(m["n"]) * _UNIT_SECONDS[m["unit"].rstrip("s")]
        epoch = int(when.timestamp())
        return datetime.fromtimestamp(epoch - epoch % period, tz=UTC)
    body = _CRON.match(expression)["body"]  # type: ignore[index]
    # pyawscron's prev() is strictly before its argument, at minute granularity: step one minute past.
    probe = when.replace(second=0, microsecond=0) + timedelta(minutes=1)
    prev = AWSCron(body).occurrence(probe).prev()
    if prev is None:
        raise ScheduleError(f"{expression!r} has no fire time before {when.isoformat()}")
    result: datetime = prev.astimezone(UTC)
    return result


def slot_label(slot: datetime) -> str:
    return slot.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
