"""Scheduled-task kinds: the contract every kind implements, and the registry they join.

A task kind (``ebs-snapshot``, ``ebs-snapshot-copy``, ``security-group-sweep``) is one class in its
capability's package, registered with ``@TASK_KINDS.register``. It declares, next to its code:
  - ``name`` and ``schema``: the JSON-schema properties of its own keys in ``rules/tasks.yaml``
    (``automations.core.tasks`` assembles the whole file's schema from every kind's fragment);
  - ``member_actions`` / ``hub_grants``: the IAM it needs in member accounts and in the hub;
  - its runner: ``plan`` and ``report_only_reason`` (which account/regions; only report?), ``run_unit``
    (one account/region) and ``announce``/``render`` (what on-call hears when the run closes).
The run machinery (``automations.core.runs``) calls these hooks and knows nothing else of a kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

from automations.core.deadline import Deadline
from automations.core.iam import Grant
from automations.core.ledger import Action, Ledger
from automations.core.notify import Alert
from automations.core.registry import Registry
from automations.core.rulebook import LoadedDocument, Problem, RuleSource

Opts = TypeVar("Opts")
Clients = Callable[..., Any]  # (account, region, service, *, retries=True) -> boto3 client in that account


@dataclass(frozen=True)
class TaskDefinition:
    """One entry of rules/tasks.yaml: the keys every task has, plus its kind's own typed options."""

    name: str
    kind: str
    schedule: str
    options: Any = None
    scope_accounts: tuple[str, ...] | None = None
    scope_regions: tuple[str, ...] | None = None
    dry_run: bool = False
    description: str = ""


@dataclass(frozen=True)
class KindEnv:
    """What a kind may use besides its member clients: the ledger and the rules directory."""

    ledger: Ledger
    rules: RuleSource


@dataclass
class UnitContext(Generic[Opts]):
    """Everything one unit (task, account, region) of a kind's run gets."""

    run_id: str
    task: TaskDefinition
    options: Opts
    account: str
    region: str
    slot: datetime
    dry_run: bool
    known_tasks: frozenset[str]
    record: Callable[[Action], None]
    deadline: Deadline
    now: Callable[[], datetime]
    clients: Clients
    env: KindEnv

    def client(
        self, service: str, account: str | None = None, region: str | None = None, *, retries: bool = True
    ) -> Any:
        """A client in this unit's account/region, or in another one (a DR region or account);
        ``retries=False`` for creates that opsbot retries itself (see snapshots.common.create_once)."""
        return self.clients(account or self.account, region or self.region, service, retries=retries)

    def about(self, resource: str, action: str) -> Callable[..., Action]:
        """An Action constructor with this unit's account/region and the resource/action filled in."""
        return partial(Action, self.account, self.region, resource, action)


@dataclass
class UnitOutcome:
    counts: Counter[str] = field(default_factory=Counter)
    unknown_tasks: dict[str, list[str]] = field(default_factory=dict)
    # Why the unit is only PARTIAL (actions failed, stopped before the time limit); empty: SUCCEEDED.
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # more facts for the unit record (e.g. API calls made)


class TaskKind(Generic[Opts]):
    """Base of every task kind. Subclasses set the class attributes and implement ``options``/``run_unit``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    runbook: ClassVar[str]
    schema: ClassVar[dict[str, Any]] = {}
    required: ClassVar[tuple[str, ...]] = ()  # of the kind's own keys, those every task of it must set
    member_actions: ClassVar[frozenset[str]] = frozenset()
    # The member role its units act as (its package's ``CAPABILITY.name``; template-member.yaml).
    capability: ClassVar[str]
    hub_grants: ClassVar[frozenset[Grant]] = frozenset()
    # Counts that make a run worth telling on-call about even when it SUCCEEDED.
    noteworthy: ClassVar[tuple[str, ...]] = ("failed",)

    def options(self, raw: Mapping[str, Any]) -> Opts:
        """Typed options from a schema-valid task entry."""
        raise NotImplementedError

    def check(self, doc: LoadedDocument, index: int) -> list[Problem]:
        """Problems the schema cannot see, in task ``index`` of the document."""
        return []

    def plan(self, task: TaskDefinition, targets: list[tuple[str, str]], env: KindEnv) -> list[tuple[str, str]]:
        """The (account, region) units of a run, from the fleet's in scope."""
        return targets

    def report_only_reason(self, task: TaskDefinition, env: KindEnv) -> str | None:
        """Why this run may only report (e.g. the first after a rules change); asked only when the
        operator did not choose --dry-run or not."""
        return None

    def run_unit(self, ctx: UnitContext[Opts]) -> UnitOutcome:
        raise NotImplementedError

    def announce(self, run: Mapping[str, Any], env: KindEnv) -> Alert | None:
        """What on-call hears when a run closes: by default only when it did not succeed or did something
        noteworthy."""
        counts = run.get("counts", {})
        if run["status"] == "SUCCEEDED" and not any(counts.get(k) for k in self.noteworthy):
            return None
        return self.render(run, env)

    def render(self, run: Mapping[str, Any], env: KindEnv) -> Alert:
        units = run.get("units", {})
        return Alert(
            kind="task-run",
            title=f"opsbot task {run['task']} {run['status']}",
            severity="critical" if run["status"] == "FAILED" else "warning",
            summary=(
                f"Run `{run['run_id']}` for slot {run.get('slot')} finished {run['status']}: "
                f"{units.get('failed', 0)} of {units.get('total', 0)} account/region units failed, "
                f"{units.get('partial', 0)} partial."
            ),
            fields=[("Task", run["task"]), ("Slot", str(run.get("slot")))],
            details=list(run.get("failures", [])),
            context=f"`opsbot runs show {run['run_id']}` · runbook: {self.runbook}",
        )


TASK_KINDS: Registry[TaskKind[Any]] = Registry("task kind")
