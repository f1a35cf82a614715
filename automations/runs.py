"""A scheduled task run as three steps: plan -> run each unit (task, account, region) -> close.

On AWS a Step Functions state machine calls the three steps (Map over units with MaxConcurrency);
locally and in tests ``run_now`` calls the same functions in a thread pool. A failing unit is recorded
with its error and the others go on; close turns the unit records into SUCCEEDED, PARTIAL or FAILED.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from automations import ledger as L
from automations.deadline import Deadline
from automations.fleet import AccountAccessError, Fleet, SessionBroker
from automations.ledger import Ledger
from automations.notify import Alert, Notifier
from automations.schedules import slot_for, slot_label
from automations.sg_policy import SgPolicy
from automations.sg_remediation import RUNBOOK as SG_RUNBOOK
from automations.sg_remediation import FindingBook, sweep_unit
from automations.snapshots import snapshot_unit
from automations.tasks import TaskDefinition
from automations.units import UnitContext, UnitOutcome

log = logging.getLogger(__name__)

KindRunner = Callable[[Any, UnitContext], UnitOutcome]
# Counts that make a run worth telling on-call about even when it SUCCEEDED.
NOTEWORTHY = ("revoked", "would_revoke", "alerted", "failed")


@dataclass(frozen=True)
class TaskKind:
    service: str  # the AWS service a unit needs a client for
    runner: KindRunner
    # For kinds whose first run after a rules change only reports: returns why, or None.
    report_only_reason: Callable[[Ledger], str | None] | None = None


def task_kinds(sg_policy: SgPolicy | None = None, ledger: Ledger | None = None) -> dict[str, TaskKind]:
    """Task kind -> how to run one unit of it. New kinds register here."""
    kinds = {"ebs-snapshot": TaskKind("ec2", snapshot_unit)}
    if sg_policy is not None:
        policy = sg_policy
        findings = FindingBook(ledger.table) if ledger is not None else None
        kinds["security-group-sweep"] = TaskKind(
            "ec2",
            lambda ec2, ctx: sweep_unit(ec2, ctx, policy, findings),
            lambda ledger: _sweep_report_only(ledger, policy),
        )
    return kinds


def _sweep_report_only(ledger: Ledger, policy: SgPolicy) -> str | None:
    if not policy.sweep_report_only_after_rules_change:
        return None
    if ledger.swap_state("sg-policy-digest", policy.digest) == policy.digest:
        return None
    return f"first sweep after a change to rules/security_groups.yaml (digest {policy.digest}): report only"


class TaskError(ValueError):
    pass


class _NotStarted(Exception):
    pass


class UnitsStillRunning(Exception):
    """Close was called while a unit is still running (e.g. in a duplicate execution): retry later."""


MAX_LISTED = 100
# A unit RUNNING for longer than its Lambda can live has died without a record: count it failed.
UNIT_LIFETIME = timedelta(minutes=16)


@dataclass(frozen=True)
class Trigger:
    type: str  # schedule | cli | retry
    event_id: str | None = None
    event_time: str | None = None
    principal: str | None = None


@dataclass(frozen=True)
class Unit:
    run_id: str
    task: str
    account: str
    region: str
    slot: str  # ISO 8601
    dry_run: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Unit:
        return cls(**{k: data[k] for k in ("run_id", "task", "account", "region", "slot", "dry_run")})


@dataclass(frozen=True)
class Plan:
    """A run and its units (any unit dataclass: scheduled tasks here, breach checks in breach_checks)."""

    run_id: str
    units: list[Any]

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "units": [asdict(u) for u in self.units]}


def new_run_id(task: str, slot: datetime) -> str:
    return f"{task}-{slot:%Y%m%dT%H%MZ}-{secrets.token_hex(3)}"


def plan_run(
    ledger: Ledger,
    fleet: Fleet,
    tasks: Mapping[str, TaskDefinition],
    task_name: str,
    trigger: Trigger,
    when: datetime,
    *,
    accounts: list[str] | None = None,
    regions: list[str] | None = None,
    dry_run: bool | None = None,
    kinds: Mapping[str, TaskKind] | None = None,
) -> Plan:
    """Work out the slot and the units, and open the run record. ``when`` is the event/slot time."""
    task = tasks.get(task_name.lower())
    if task is None:
        raise TaskError(f"unknown task {task_name!r}; defined: {sorted(tasks)}")
    kind = (kinds or task_kinds()).get(task.kind)
    if kind is None:
        raise TaskError(f"task {task.name!r}: kind {task.kind!r} is not available here")
    report_only = kind.report_only_reason(ledger) if kind.report_only_reason and dry_run is None else None
    slot = slot_for(task.schedule, when)
    scope_accounts = _narrow(task.scope_accounts, accounts)
    scope_regions = _narrow(task.scope_regions, regions)
    targets = fleet.targets(scope_accounts, scope_regions)
    effective_dry_run = (task.dry_run or report_only is not None) if dry_run is None else dry_run
    run_id = new_run_id(task.name, slot)
    ledger.open_run(
        run_id,
        task=task.name,
        kind=task.kind,
        trigger=asdict(trigger),
        slot=slot_label(slot),
        dry_run=effective_dry_run,
        scope={"accounts": scope_accounts, "regions": scope_regions},
        planned_units=[f"{a}/{r}" for a, r in targets],
        report_only_reason=report_only,
    )
    units = [Unit(run_id, task.name, a, r, slot.isoformat(), effective_dry_run) for a, r in targets]
    return Plan(run_id, units)


def _narrow(defined: tuple[str, ...] | None, requested: list[str] | None) -> list[str] | None:
    if requested is None:
        return list(defined) if defined is not None else None
    return [x for x in requested if defined is None or x in defined]


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'ClientError')}: {err.get('Message', '')}"
    return f"{type(exc).__name__}: {exc}"


def run_unit(
    unit: Unit,
    tasks: Mapping[str, TaskDefinition],
    broker: SessionBroker,
    ledger: Ledger,
    deadline: Deadline,
    clock: Callable[[], datetime] = L.utcnow,
    kinds: Mapping[str, TaskKind] | None = None,
) -> dict[str, Any]:
    """Run one (task, account, region); always records the unit, whatever happens."""
    task = tasks[unit.task]
    kind = (kinds or task_kinds())[task.kind]
    started = L.iso(clock())
    # Marked first, so a Close running meanwhile (a duplicate execution) waits instead of failing it.
    ledger.record_unit(unit.run_id, unit.account, unit.region, status=L.RUNNING, started_at=started)
    status, error = L.SUCCEEDED, None
    outcome = UnitOutcome()
    try:
        if deadline.near():  # too late to start: leave it for a re-run of the slot, but say so
            raise _NotStarted()
        client = broker.client(unit.account, unit.region, kind.service)
        with ledger.action_recorder(unit.run_id) as record:
            ctx = UnitContext(
                run_id=unit.run_id,
                task=task,
                account=unit.account,
                region=unit.region,
                slot=datetime.fromisoformat(unit.slot),
                dry_run=unit.dry_run,
                known_tasks=frozenset(tasks),
                record=record,
                deadline=deadline,
                now=clock,
            )
            outcome = kind.runner(client, ctx)
        if outcome.stopped_early:
            not_started = outcome.counts["not_started"]
            status, error = L.PARTIAL, f"stopped before the time limit; not started: {not_started}"
        elif outcome.counts["failed"]:
            status, error = L.PARTIAL, f"{outcome.counts['failed']} action(s) failed"
    except _NotStarted:
        status, error = L.PARTIAL, "not started: the time limit was near"
    except AccountAccessError as exc:
        status, error = L.FAILED, f"{exc.code}: {exc.detail}"
    except (ClientError, BotoCoreError) as exc:
        status, error = L.FAILED, _error_text(exc)
    except Exception as exc:  # a bug must still leave a record behind, and not sink the other units
        log.exception("unit %s/%s crashed", unit.account, unit.region)
        status, error = L.FAILED, _error_text(exc)
    summary = {
        "status": status,
        "error": error,
        "counts": dict(outcome.counts),
        "unknown_tasks": outcome.unknown_tasks,
        "started_at": started,
    }
    ledger.record_unit(unit.run_id, unit.account, unit.region, **summary)
    return {"account": unit.account, "region": unit.region, **summary}


def tally_units(units: list[dict[str, Any]], missing: list[str]) -> tuple[str, Counter[str], int]:
    """A run's status from its unit records; planned units with no record count as failed."""
    by_status = Counter(u["status"] for u in units)
    if missing:
        by_status[L.FAILED] += len(missing)
    total = len(units) + len(missing)
    if total == 0 or by_status[L.SUCCEEDED] == total:
        return L.SUCCEEDED, by_status, total
    if by_status[L.FAILED] == total:
        return L.FAILED, by_status, total
    return L.PARTIAL, by_status, total


def close_run(run_id: str, ledger: Ledger, notifier: Notifier | None, reason: str | None = None) -> dict[str, Any]:
    """Derive the run's status from its unit records, close it, and notify when it did not succeed.

    Planned units with no record (a Lambda killed, a Map branch lost) count as failed.
    """
    run = ledger.get_run(run_id)
    if run is None:
        raise TaskError(f"no run {run_id!r} in the ledger")
    if run["status"] != L.RUNNING:
        return run  # already closed: a duplicate close neither rewrites nor re-notifies
    units = ledger.units(run_id)
    now = ledger.clock()
    running = [u for u in units if u["status"] == L.RUNNING]
    if reason is None and any(
        now - datetime.fromisoformat(u["started_at"].replace("Z", "+00:00")) < UNIT_LIFETIME for u in running
    ):
        raise UnitsStillRunning(f"run {run_id}: {len(running)} unit(s) still running")
    for u in running:
        u["status"], u["error"] = L.FAILED, "started but never finished (the function died or timed out)"
    reported = {f"{u['account']}/{u['region']}" for u in units}
    missing = [u for u in run.get("planned_units", []) if u not in reported]
    counts: Counter[str] = Counter()
    unknown: dict[str, list[str]] = {}
    for u in units:
        counts.update(u.get("counts", {}))
        for name, samples in u.get("unknown_tasks", {}).items():
            unknown.setdefault(name, []).extend(samples)
    status, by_status, total = tally_units(units, missing)
    failures = [f"{u['account']}/{u['region']}: {u.get('error')}" for u in units if u["status"] != L.SUCCEEDED]
    failures += [f"{m}: no result recorded{f' ({reason})' if reason else ''}" for m in missing]
    # The run is one DynamoDB item (400 KB) and one SNS message (256 KB): keep counts whole, lists short.
    if len(failures) > MAX_LISTED:
        failures = [*failures[:MAX_LISTED], f"...and {len(failures) - MAX_LISTED} more (opsbot runs show {run_id})"]
    unknown = dict(list(unknown.items())[:MAX_LISTED])
    if not ledger.close_run(
        run_id,
        status,
        counts=dict(counts),
        units={"total": total, **{k.lower(): v for k, v in by_status.items()}},
        unknown_tasks=unknown,
        failures=failures,
    ):
        return ledger.get_run(run_id) or run  # another Close won the race: it notifies, not this one
    closed = ledger.get_run(run_id) or run
    if notifier is not None and (status != L.SUCCEEDED or any(counts[k] for k in NOTEWORTHY)):
        findings = []
        if closed.get("kind") == "security-group-sweep":
            findings = [
                f"{a['outcome']}: {a['account']}/{a['region']} {a['detail']['group_id']} {a['resource']} "
                f"{a['detail']['rule']} (rule {a['detail']['policy_rule']})"
                for a in ledger.actions(run_id)
                if a["outcome"] in ("revoked", "would-revoke", "alerted", "failed")
            ][:MAX_LISTED]
        notifier.send(run_alert(closed, findings))
    return closed


def run_alert(run: Mapping[str, Any], findings: list[str] | None = None) -> Alert:
    counts = run.get("counts", {})
    units = run.get("units", {})
    failures = list(run.get("failures", []))
    if run.get("kind") == "security-group-sweep":
        return Alert(
            kind="sg-sweep",
            title=f"opsbot security-group sweep {run['status']}: {counts.get('revoked', 0)} revoked, "
            f"{counts.get('would_revoke', 0)} to revoke, {counts.get('alerted', 0)} alert-only",
            severity="critical" if counts.get("failed") or run["status"] != L.SUCCEEDED else "warning",
            summary=(
                f"Sweep `{run['run_id']}` checked {counts.get('rules_checked', 0)} rules in "
                f"{units.get('total', 0)} account/regions. "
                + (run.get("report_only_reason") or ("Report only (dry run)." if run.get("dry_run") else ""))
            ),
            fields=[
                ("Revoked", str(counts.get("revoked", 0))),
                ("Would revoke", str(counts.get("would_revoke", 0))),
                ("Alert-only findings", str(counts.get("alerted", 0))),
                ("Exempt", str(counts.get("exempt", 0))),
                ("Failed", str(counts.get("failed", 0))),
            ],
            details=failures + (findings or []),
            context=f"`opsbot runs show {run['run_id']}` · runbook: {SG_RUNBOOK}",
        )
    return Alert(
        kind="task-run",
        title=f"opsbot task {run['task']} {run['status']}",
        severity="critical" if run["status"] == L.FAILED else "warning",
        summary=(
            f"Run `{run['run_id']}` for slot {run.get('slot')} finished {run['status']}: "
            f"{units.get('failed', 0)} of {units.get('total', 0)} account/region units failed, "
            f"{units.get('partial', 0)} partial."
        ),
        fields=[
            ("Task", run["task"]),
            ("Slot", str(run.get("slot"))),
            ("Created", str(counts.get("created", 0))),
            ("Failed actions", str(counts.get("failed", 0))),
            ("Deleted", str(counts.get("deleted", 0))),
            ("Dry run", "yes" if run.get("dry_run") else "no"),
        ],
        details=failures,
        context=f"`opsbot runs show {run['run_id']}` · runbook: docs/runbooks/ebs-snapshots.md",
    )


def run_now(
    plan: Plan,
    tasks: Mapping[str, TaskDefinition],
    broker: SessionBroker,
    ledger: Ledger,
    notifier: Notifier | None,
    *,
    deadline: Deadline | None = None,
    max_workers: int = 8,
    clock: Callable[[], datetime] = L.utcnow,
    kinds: Mapping[str, TaskKind] | None = None,
) -> dict[str, Any]:
    """Local/test runner: the same plan/unit/close steps as the state machine, in a thread pool."""
    deadline = deadline or Deadline.never()
    if plan.units:
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(plan.units)))) as pool:
            list(pool.map(lambda u: run_unit(u, tasks, broker, ledger, deadline, clock, kinds), plan.units))
    return close_run(plan.run_id, ledger, notifier)
