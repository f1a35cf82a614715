"""Protected targets: what no kill switch flips, whether pressed in Slack, driven by an alarm policy or
run from the CLI (the switchboard asks before it records or changes anything).

- **opsbot's own** (built in, not configurable): every EventBridge rule, Scheduler schedule and
  schedule group named ``opsbot-*`` (the hub's task schedules, remediation, alarm-policy and sweeper rules, the member
  accounts' forwarding rules), the hub's functions (SAM names them ``<stack>-<LogicalId>-<suffix>`` and
  CloudFormation tags them ``aws:cloudformation:logical-id``; ``HUB_FUNCTIONS`` is held to template.yaml
  by the tests), and a mapping that feeds one of them.
- **the deployment's own** (``protected`` in ``rules/kill_switches.yaml``): ``kind:id`` patterns
  (``fnmatch``, case-sensitive) and a tag key (default ``opsbot:protected``; any value but "false").

The one exception is ``opsbot pause``, which stops opsbot's own rules and schedules on purpose and
nothing else (``Switchboard.flip(..., pausing_opsbot=True)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from automations.kill_switches.kinds import Identity

OPSBOT_PREFIX = "opsbot-"
DEFAULT_TAG = "opsbot:protected"
CFN_LOGICAL_ID_TAG = "aws:cloudformation:logical-id"
# template.yaml's AWS::Serverless::Function resources (tests/test_kill_switch_guards.py keeps them equal).
HUB_FUNCTIONS = (
    "AlarmPolicyFunction",
    "CheckCloseFunction",
    "CheckPlanFunction",
    "CheckUnitFunction",
    "CloseFunction",
    "HeartbeatFunction",
    "KillSwitchWorkerFunction",
    "PlanFunction",
    "SgEventFunction",
    "SlackActionsFunction",
    "SweeperFunction",
    "UnitFunction",
)


def opsbot_own(identity: Identity) -> str | None:
    """Why the target is one of opsbot's own, or None."""
    for name in identity.names:
        kind, _, ident = name.partition(":")
        if kind == "rule" and ident.rpartition("/")[2].startswith(OPSBOT_PREFIX):
            return f"{name} is one of opsbot's own rules"
        group, _, schedule = ident.rpartition("/")
        if kind == "schedule" and (group.startswith(OPSBOT_PREFIX) or schedule.startswith(OPSBOT_PREFIX)):
            return f"{name} is one of opsbot's own schedules"
        if kind == "lambda" and any(f"-{lid}-" in ident for lid in HUB_FUNCTIONS):
            return f"{name} is one of opsbot's own functions (template.yaml)"
    if identity.tags.get(CFN_LOGICAL_ID_TAG) in HUB_FUNCTIONS:
        return f"{identity.names[0]} is one of opsbot's own functions ({CFN_LOGICAL_ID_TAG})"
    return None


@dataclass(frozen=True)
class Protection:
    """The deployment's deny-list, on top of opsbot's own (which is always protected)."""

    patterns: tuple[str, ...] = ()
    tag: str | None = DEFAULT_TAG

    def refusal(self, identity: Identity) -> str | None:
        """Why the target must not be flipped, or None."""
        if reason := opsbot_own(identity):
            return reason
        for name in identity.names:
            if pattern := next((p for p in self.patterns if fnmatchcase(name, p)), None):
                return f"{name} matches the protected pattern {pattern!r} (rules/kill_switches.yaml)"
        if self.tag and self.tag in identity.tags and identity.tags[self.tag].strip().lower() != "false":
            return f"{identity.names[0]} carries the tag {self.tag}={identity.tags[self.tag]!r}"
        return None

    @classmethod
    def of(cls, patterns: Iterable[str] = (), tag: str | None = DEFAULT_TAG) -> Protection:
        return cls(tuple(patterns), tag)
