"""Pause opsbot itself: disable its own EventBridge rules (schedules, event routes) in the hub, with
their previous states recorded as kill switches, and resume exactly those states later."""

from __future__ import annotations

from typing import Any

from automations.kill_switches import Actor, Result, Switchboard, Target

RULE_PREFIX = "opsbot-"
GROUP = "opsbot-pause"


def own_rules(events: Any, prefix: str = RULE_PREFIX) -> list[str]:
    names: list[str] = []
    for page in events.get_paginator("list_rules").paginate(NamePrefix=prefix):
        names += [r["Name"] for r in page["Rules"]]
    return names


def pause(board: Switchboard, events: Any, account: str, region: str, actor: Actor) -> list[Result]:
    """Disable every opsbot rule; a rule already disabled is recorded as such and stays disabled on resume."""
    return [board.flip(Target("rule", name, account, region), actor, group=GROUP) for name in own_rules(events)]


def resume(board: Switchboard, actor: Actor) -> list[Result]:
    """Put back exactly what `pause` recorded."""
    return [
        board.restore(Target(**item["target"]), actor, group=GROUP)
        for item in board.flipped()
        if item.get("group") == GROUP
    ]
