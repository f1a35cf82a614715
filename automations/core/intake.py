"""What happens to an input opsbot cannot read: it is kept in the ledger with its reason (the designed
error names the input and the field), on-call hears about it once an hour per kind of input rather than
once per record, and the caller re-raises so the input lands in its dead-letter destination."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from automations.core.boundary import InputError, dumps_for_log
from automations.core.ledger import Ledger
from automations.core.notify import Alert, Notifier
from automations.core.outbox import Outbox

log = logging.getLogger(__name__)


def report_unreadable(
    what: str, event: Any, exc: InputError, ledger: Ledger, notifier: Notifier | None, now: datetime, runbook: str
) -> None:
    """Record one unreadable input; alert on the first of each hour. Never raises (the caller does)."""
    slug = what.replace(" ", "-")
    event_id = exc.source.removeprefix("event ")
    try:
        ledger.record_event(
            f"unreadable-{slug}-{event_id}",
            {
                "task": f"{slug}-intake",
                "kind": "unreadable-input",
                "status": "FAILED",
                "error": str(exc),
                "field": exc.field,
                "trigger": {"type": "event", "event_id": event_id},
                "payload": dumps_for_log(event),
            },
        )
    except Exception:  # the ledger itself may be what is failing; the dead-letter queue still has the input
        log.exception("could not record the unreadable %s %s", what, exc.source)
    # One announcement an hour per kind of input: its id is the hour's, so the outbox keeps only the first.
    try:
        Outbox(ledger.table, notifier, ledger.clock).announce(
            f"unreadable#{slug}#{now:%Y-%m-%dT%H}",
            Alert(
                kind="unreadable-input",
                title=f"opsbot could not read a {what}",
                severity="warning",
                summary=(
                    f"{exc}. It is in the dead-letter queue. Further unreadable {what}s this hour are "
                    "recorded in the ledger, not announced."
                ),
                fields=[("Input", exc.source), ("Field", exc.field)],
                context=f"runbook: {runbook}",
            ),
        )
    except Exception:
        log.exception("could not announce the unreadable %s %s", what, exc.source)
