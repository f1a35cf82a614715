"""The scheduled sweeper's plumbing: run every run kind's reaper, each on its own, then deliver what the
outbox still holds. (The reapers are the run kinds': ``runs.reap_task_runs``,
``breach_checks.checks.reap_check_runs``; ``automations.catalog.housekeeping`` puts them together.)"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from automations.core.errors import error_text
from automations.core.ledger import Ledger
from automations.core.notify import Notifier
from automations.core.outbox import Outbox
from automations.core.runs import ReapIncomplete

log = logging.getLogger(__name__)

Reaper = Callable[[], list[dict[str, Any]]]


@dataclass
class SweepResult:
    reaped: list[dict[str, Any]] = field(default_factory=list)
    announcements: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # what could not be done; the next sweep tries again


def flush_outbox(ledger: Ledger, notifier: Notifier | None, limit: int = 200) -> Counter[str]:
    outbox = Outbox(ledger.table, notifier, ledger.clock)
    counts = outbox.flush(limit)
    counts["still_pending"] = len(outbox.pending(limit))
    return counts


def sweep(ledger: Ledger, notifier: Notifier | None, reapers: Mapping[str, Reaper]) -> SweepResult:
    """Each reaper, then the outbox. One that fails (a rules file unreadable, a throttled table) never
    keeps the others, or the delivery of what is pending, from running."""
    result = SweepResult()
    for name, reap in reapers.items():
        try:
            result.reaped += reap()
        except ReapIncomplete as exc:
            result.reaped += exc.closed
            result.errors += [f"{name}: {e}" for e in exc.errors]
        except Exception as exc:
            log.exception("reaper %s failed", name)
            result.errors.append(f"{name}: {error_text(exc)}")
    try:
        result.announcements = flush_outbox(ledger, notifier)
    except Exception as exc:
        log.exception("outbox flush failed")
        result.errors.append(f"outbox: {error_text(exc)}")
    return result
