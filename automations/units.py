"""What every scheduled-task kind's unit runner receives and returns (one task, account, region)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from automations.deadline import Deadline
from automations.ledger import Action
from automations.tasks import TaskDefinition


@dataclass
class UnitContext:
    run_id: str
    task: TaskDefinition
    account: str
    region: str
    slot: datetime
    dry_run: bool
    known_tasks: frozenset[str]
    record: Callable[[Action], None]
    deadline: Deadline
    now: Callable[[], datetime]

    def about(self, resource: str, action: str) -> Callable[..., Action]:
        """An Action constructor with this unit's account/region and the resource/action filled in."""
        return partial(Action, self.account, self.region, resource, action)


@dataclass
class UnitOutcome:
    counts: Counter[str] = field(default_factory=Counter)
    unknown_tasks: dict[str, list[str]] = field(default_factory=dict)
    stopped_early: bool = False
