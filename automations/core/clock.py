"""One time helper: UTC now, the ledger's ISO form, and reading the timestamps real producers send."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """Seconds, UTC, with a "Z": how every timestamp is stored in the ledger."""
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """ISO 8601 with "Z", an offset, a space for "T", or no zone at all (read as UTC); always aware.

    Python 3.11's ``fromisoformat`` reads all of these forms; only the zone-less one needs a zone.
    Raises ValueError for anything else.
    """
    parsed = datetime.fromisoformat(text.strip())
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one stored timestamp to another, or None when either is missing."""
    if not start or not end:
        return None
    return (parse_time(end) - parse_time(start)).total_seconds()
