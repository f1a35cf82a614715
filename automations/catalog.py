"""Every capability, imported once so each registers its kinds: what handlers that run any kind, the CLI,
``opsbot validate`` and the permission tests read. The plumbing never imports this module."""

from __future__ import annotations

from typing import Any

from automations import breach_checks, kill_switches, security_groups, snapshots
from automations.breach_checks.alerts import AlertBook
from automations.breach_checks.checks import reap_check_runs
from automations.breach_checks.kinds import CHECK_KINDS
from automations.breach_checks.rules import QUOTAS_FILE
from automations.core.fleet import FLEET_FILE
from automations.core.heartbeat import HeartbeatWatch
from automations.core.iam import Capability
from automations.core.kinds import TASK_KINDS
from automations.core.notify import Notifier
from automations.core.rulebook import RuleFile
from automations.core.runs import reap_task_runs
from automations.core.runtime import Runtime
from automations.core.sweeper import SweepResult, sweep
from automations.core.tasks import TASKS_FILE
from automations.kill_switches.kinds import SWITCH_KINDS
from automations.kill_switches.policies import POLICIES_FILE
from automations.kill_switches.slack_buttons import ONCALL_FILE
from automations.security_groups.policy import POLICY_FILE

CAPABILITIES: tuple[Capability, ...] = (
    snapshots.CAPABILITY,
    security_groups.CAPABILITY,
    breach_checks.CAPABILITY,
    kill_switches.CAPABILITY,
)

# Every rules file, and whether a deployment must have it (`opsbot validate` checks them all).
RULE_FILES: tuple[tuple[RuleFile[Any], bool], ...] = (
    (FLEET_FILE, True),
    (TASKS_FILE, True),
    (POLICY_FILE, False),
    (QUOTAS_FILE, False),
    (POLICIES_FILE, False),
    (ONCALL_FILE, False),
)


def housekeeping(rt: Runtime, notifier: Notifier | None) -> SweepResult:
    """The sweeper's pass (``handlers/sweeper.py``, ``opsbot sweep``): every run kind's reaper, the member
    heartbeats (silence and recovery announced through the outbox), then the outbox."""

    def watch_heartbeats() -> list[dict[str, Any]]:
        HeartbeatWatch(rt.ledger.table, rt.fleet, notifier, rt.ledger.clock).check()
        return []  # it closes no run

    return sweep(
        rt.ledger,
        notifier,
        {
            "task runs": lambda: reap_task_runs(rt.ledger, notifier, rules=rt.rules, manifests=rt.manifests),
            "check runs": lambda: reap_check_runs(
                rt.ledger,
                rules=lambda: rt.rules.get(QUOTAS_FILE),
                fleet=rt.fleet,
                book=AlertBook(rt.ledger.table),
                notifier=notifier,
                manifests=rt.manifests,
            ),
            "heartbeats": watch_heartbeats,
        },
    )


__all__ = ["CAPABILITIES", "CHECK_KINDS", "RULE_FILES", "SWITCH_KINDS", "TASK_KINDS", "housekeeping"]
