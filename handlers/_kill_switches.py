"""What the kill-switch entry points share: their switchboard (the fleet it may act in and the targets
it must not flip) and the breach alerts a Slack button is pressed on, adapted for the kill switches
(the two capabilities meet only here, in the entry points)."""

from __future__ import annotations

from typing import Any

from automations.breach_checks.alerts import OPEN, AlertBook
from automations.core.runtime import Runtime
from automations.kill_switches.policies import protection_of
from automations.kill_switches.slack_buttons import AlertFacts, AlertLookup
from automations.kill_switches.switchboard import CAPABILITY_NAME, Switchboard


def switchboard(rt: Runtime) -> Switchboard:
    """Acts in the fleet only, never on a protected target (rules/kill_switches.yaml ``protected``)."""
    clients = rt.broker.for_capability(CAPABILITY_NAME).client
    return Switchboard(rt.ledger.table, clients, rt.fleet, protection_of(rt.rules))


def breach_alerts(table: Any) -> AlertLookup:
    """Look a button's alert up in the breach checks' alert book: OPEN or not, and the function it names."""
    book = AlertBook(table)

    def lookup(alert_id: str) -> AlertFacts | None:
        alert = book.get(alert_id)
        if alert is None:
            return None
        status = str(alert.get("status") or "?")
        return AlertFacts(alert_id, status == OPEN, status, alert.get("target"), alert.get("resolved_at"))

    return lookup
