"""The scheduled sweeper's plumbing part: deliver what the outbox still holds. (Reaping runs past their
deadline is each run kind's: ``runs.reap_task_runs``, ``breach_checks.checks.reap_check_runs``.)"""

from __future__ import annotations

from collections import Counter

from automations.core.ledger import Ledger
from automations.core.notify import Notifier
from automations.core.outbox import Outbox


def flush_outbox(ledger: Ledger, notifier: Notifier | None, limit: int = 200) -> Counter[str]:
    outbox = Outbox(ledger.table, notifier, ledger.clock)
    counts = outbox.flush(limit)
    counts["still_pending"] = len(outbox.pending(limit))
    return counts
