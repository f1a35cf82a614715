"""Pause opsbot itself: disable its own EventBridge rules and Scheduler schedules in the hub, with their
previous states recorded as kill switches, and resume exactly those states later.

Pausing is the one exception to protected targets: opsbot's own rules and schedules are never flipped
by a button, a policy or `opsbot killswitch`, but `opsbot pause` stops exactly those, on purpose
(``pausing_opsbot=True``; the switchboard refuses it for anything that is not opsbot's own). Resume is
a restore like any other: exact (a rule that matched all CloudTrail management events does again), and
refused for a rule or schedule changed while paused (a redeploy re-enabled it) unless forced."""

from __future__ import annotations

from typing import Any

from automations.core.iam import grants
from automations.kill_switches.kinds import EventBridgeRule, Schedule
from automations.kill_switches.switchboard import Actor, Result, Switchboard, Target

RULE_PREFIX = "opsbot-"
GROUP = "opsbot-pause"
# What pause/resume need in the hub (the OperatorRole): list opsbot's rules and schedules, then flip them.
# ListRules, ListScheduleGroups and ListSchedules take no resource ARN.
PAUSE_GRANTS = (
    grants("*", "events:ListRules", "scheduler:ListScheduleGroups", "scheduler:ListSchedules")
    | EventBridgeRule.hub_grants
    | Schedule.hub_grants
)


def own_rules(events: Any, prefix: str = RULE_PREFIX) -> list[str]:
    names: list[str] = []
    for page in events.get_paginator("list_rules").paginate(NamePrefix=prefix):
        names += [r["Name"] for r in page["Rules"]]
    return names


def own_schedules(scheduler: Any, prefix: str = RULE_PREFIX) -> list[str]:
    """EventBridge Scheduler schedules in opsbot's schedule groups, as GROUP/NAME."""
    found: list[str] = []
    for page in scheduler.get_paginator("list_schedule_groups").paginate(NamePrefix=prefix):
        for group in (g for g in page["ScheduleGroups"] if g["Name"].startswith(prefix)):
            for listing in scheduler.get_paginator("list_schedules").paginate(GroupName=group["Name"]):
                found += [f"{group['Name']}/{s['Name']}" for s in listing["Schedules"]]
    return found


def pause(
    board: Switchboard, events: Any, account: str, region: str, actor: Actor, scheduler: Any | None = None
) -> list[Result]:
    """Disable every opsbot rule and schedule; one already disabled is recorded so and stays so on resume."""
    targets = [Target("rule", name, account, region) for name in own_rules(events)]
    if scheduler is not None:
        targets += [Target("schedule", name, account, region) for name in own_schedules(scheduler)]
    return [board.flip(target, actor, pausing_opsbot=True, group=GROUP) for target in targets]


def resume(board: Switchboard, actor: Actor, force: bool = False) -> list[Result]:
    """Put back exactly what `pause` recorded (``force``: also what was changed while paused)."""
    return [
        board.restore(Target(**item["target"]), actor, force=force, group=GROUP)
        for item in board.flipped()
        if item.get("group") == GROUP
    ]
