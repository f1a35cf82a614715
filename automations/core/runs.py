"""A run as three steps: plan -> run each unit (job, account, region) -> close.

Scheduled tasks and breach checks both run this way. On AWS a Step Functions state machine calls the
three steps (a Map over the units); locally and in tests ``run_in_pool`` calls the same functions in a
thread pool. A failing unit is recorded with its error and the others go on; close turns the unit
records into SUCCEEDED, PARTIAL or FAILED. This module holds the machinery both share and the task
flavour of it, which knows task kinds only through ``TASK_KINDS``.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from automations.core import ledger as L
from automations.core.boundary import (
    ACCOUNT_ID,
    JOB_NAME,
    REGION,
    RUN_ID,
    InputError,
    mapping,
    source_id,
    text,
    timestamp,
)
from automations.core.caps import MemberBusy, MemberCaps
from automations.core.clock import iso, parse_time, utcnow
from automations.core.deadline import Deadline
from automations.core.errors import NotStarted, error_code, error_text
from automations.core.fleet import AccountAccessError, Fleet, SessionBroker
from automations.core.kinds import TASK_KINDS, KindEnv, TaskDefinition, UnitContext, UnitOutcome
from automations.core.ledger import Action, Ledger
from automations.core.manifest import ManifestRef, ManifestStore, interleave
from automations.core.notify import Alert, Notifier
from automations.core.outbox import Outbox
from automations.core.rulebook import DEFAULT_RULES_DIR, RuleSource
from automations.core.schedules import slot_for, slot_label

log = logging.getLogger(__name__)

MAX_LISTED = 100
# A unit RUNNING for longer than its Lambda can live has died without a record: count it failed.
UNIT_LIFETIME = timedelta(minutes=16)
# How long a run may stay RUNNING before the reaper closes it: the state machine's own timeout on AWS
# (statemachines/run.asl.yaml TimeoutSeconds), much less for a run the CLI executes in its own process.
RUN_DEADLINE = {"schedule": timedelta(hours=24), "cli": timedelta(hours=2)}
REAPED = "reaped: still RUNNING past its deadline (the process or execution that ran it died)"
# What a unit row holds (so a row closed on a dead unit's behalf keeps what the unit had written).
UNIT_FIELDS = ("job", "status", "error", "counts", "unknown_tasks", "started_at", "check", "metric_calls")


class RunError(ValueError):
    """A run that cannot be planned or closed (unknown task, no such run)."""


class UnitsStillRunning(Exception):
    """Close was called while a unit is still running (e.g. in a duplicate execution): retry later."""


@dataclass(frozen=True)
class Trigger:
    type: str  # schedule | cli | retry
    event_id: str | None = None
    event_time: str | None = None
    principal: str | None = None


@dataclass(frozen=True)
class Unit:
    """One (job, account, region) of a run: what the state machine's Map hands each unit invocation."""

    run_id: str
    job: str  # the task (or breach check) this run is of
    account: str
    region: str
    slot: str  # ISO 8601
    dry_run: bool = False
    primary: bool = False  # the account's first region: where account-wide (global) work is done once
    # The account's name, carried in the manifest so a unit never asks Organizations for it (alerts name it).
    account_name: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Unit:
        """A unit as the state machine's Map hands it over (what ``Plan.as_dict`` made); else InputError."""
        source = "unit"
        data = mapping(data, source, "unit")
        slot = text(data.get("slot"), source, "slot")
        timestamp(slot, source, "slot")
        return cls(
            run_id=text(data.get("run_id"), source, "run_id", pattern=RUN_ID),
            job=text(data.get("job"), source, "job", pattern=JOB_NAME),
            account=text(data.get("account"), source, "account", pattern=ACCOUNT_ID),
            region=text(data.get("region"), source, "region", pattern=REGION),
            slot=slot,
            dry_run=data.get("dry_run") is True,
            primary=data.get("primary") is True,
            account_name=name if isinstance(name := data.get("account_name"), str) and name.strip() else None,
        )


@dataclass(frozen=True)
class ScheduleEvent:
    """What a schedule starts a run with: ``{"task" | "check": NAME, "id": ..., "time": ...}``."""

    job: str
    event_id: str | None
    time: datetime

    @classmethod
    def parse(cls, event: Any, key: str) -> ScheduleEvent:
        source = source_id(event)
        event = mapping(event, source, "event")
        event_id = event.get("id")
        return cls(
            job=text(event.get(key), source, key),
            event_id=event_id if isinstance(event_id, str) else None,
            time=timestamp(event.get("time"), source, "time"),
        )

    def trigger(self) -> Trigger:
        return Trigger(type="schedule", event_id=self.event_id, event_time=iso(self.time))


@dataclass(frozen=True)
class CloseRequest:
    """What the state machine's Close step is given: the run, the Map's error if the Map itself failed,
    and where the Distributed Map's ResultWriter put the children's results (``{"Bucket", "Key"}``)."""

    run_id: str
    reason: str | None
    results: dict[str, str] | None = None

    @classmethod
    def parse(cls, event: Any) -> CloseRequest:
        event = mapping(event, "close", "event")
        error = event.get("error")
        reason = error.get("Error") if isinstance(error, Mapping) else None
        results = event.get("results")
        details = None
        if isinstance(results, Mapping) and results.get("Key"):  # absent when the Map itself failed
            details = {
                "Bucket": text(results.get("Bucket"), "close", "results.Bucket"),
                "Key": text(results.get("Key"), "close", "results.Key"),
            }
        return cls(
            text(event.get("run_id"), "close", "run_id", pattern=RUN_ID),
            reason if isinstance(reason, str) else None,
            details,
        )


@dataclass(frozen=True)
class Plan:
    run_id: str
    units: list[Unit]
    # Where the units are in S3 (ManifestStore): the state machine gets this reference, not the units.
    manifest: ManifestRef | None = None

    def as_dict(self) -> dict[str, Any]:
        """What the state machine gets: with a manifest, the same few fields whatever the fleet's size
        (the Distributed Map's ItemSelector adds job, slot and dry_run to every manifest item)."""
        if self.manifest is None:
            return {"run_id": self.run_id, "units": [asdict(u) for u in self.units]}
        first = self.units[0] if self.units else None
        return {
            "run_id": self.run_id,
            "job": first.job if first else "",
            "slot": first.slot if first else "",
            "dry_run": first.dry_run if first else False,
            "manifest": self.manifest.as_dict(),
        }


def new_run_id(job: str, slot: datetime) -> str:
    return f"{job}-{slot:%Y%m%dT%H%MZ}-{secrets.token_hex(3)}"


def open_run(
    ledger: Ledger,
    fleet: Fleet,
    *,
    job: str,
    kind: str,
    trigger: Trigger,
    slot: datetime,
    targets: list[tuple[str, str]],
    dry_run: bool,
    list_key: str = L.RUN_LIST_KEY,
    run_id: str | None = None,
    lifetime: timedelta | None = None,
    manifests: ManifestStore | None = None,
    **attrs: Any,
) -> Plan:
    """Open the run record and list its units (shared by task runs and breach checks). ``lifetime``:
    how long it may stay RUNNING before the reaper closes it (default: by trigger, ``RUN_DEADLINE``).

    With ``manifests`` the units go to S3 first and the run record keeps their count and where they are;
    without (small local runs, tests) the record lists them. Units are interleaved across accounts."""
    run_id = run_id or new_run_id(job, slot)
    targets = interleave(targets)
    members = {a.id: a for a in fleet.accounts}
    units = [
        Unit(
            run_id,
            job,
            a,
            r,
            slot.isoformat(),
            dry_run,
            primary=bool(members[a].regions) and members[a].regions[0] == r if a in members else False,
            account_name=members[a].name if a in members else None,
        )
        for a, r in targets
    ]
    ref = None
    if manifests is not None:  # written before the run opens: an open run's manifest is always there
        items = [
            {
                "account": u.account,
                "region": u.region,
                "primary": u.primary,
                "account_name": u.account_name or u.account,
            }
            for u in units
        ]
        ref = manifests.write(run_id, items)
        attrs.update(manifest=ref.as_dict(), planned=len(units))
    else:
        attrs.update(planned_units=[f"{a}/{r}" for a, r in targets])
    ledger.open_run(
        run_id,
        ledger.clock() + (lifetime or RUN_DEADLINE.get(trigger.type, RUN_DEADLINE["schedule"])),
        task=job,
        kind=kind,
        trigger=asdict(trigger),
        slot=slot_label(slot),
        dry_run=dry_run,
        gsi1pk=list_key,
        **attrs,
    )
    return Plan(run_id, units, ref)


def manifest_units(plan: Plan, manifests: ManifestStore | None) -> list[Unit]:
    """The units as the state machine's Distributed Map hands them out: the manifest's items (from S3)
    with what they share added (its ItemSelector). A plan without a manifest lists its units itself."""
    if plan.manifest is None or manifests is None or not plan.units:
        return list(plan.units)
    shared = plan.units[0]
    return [
        Unit.from_dict(
            {**item, "run_id": plan.run_id, "job": shared.job, "slot": shared.slot, "dry_run": shared.dry_run}
        )
        for item in manifests.read(plan.manifest, f"run {plan.run_id}")
    ]


def narrow(defined: tuple[str, ...] | None, requested: list[str] | None) -> list[str] | None:
    """What the operator asked for, within what the task allows (None: no restriction)."""
    if requested is None:
        return list(defined) if defined is not None else None
    return [x for x in requested if defined is None or x in defined]


# ---- one unit ---------------------------------------------------------------------------------------
UnitWork = Callable[[Callable[[Action], None]], UnitOutcome]


def execute_unit(
    unit: Unit,
    ledger: Ledger,
    deadline: Deadline,
    work: UnitWork,
    *,
    clock: Callable[[], datetime] = utcnow,
    on_failure: Callable[[str], None] | None = None,
    mark_running: bool = True,
    write_unit: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Run one unit's work and always record the unit, whatever happens; returns its summary.

    ``work`` gets the action recorder (batched ledger writes). A unit is FAILED when it could not run
    (role denied, throttled past retries, a bug), PARTIAL when its outcome names problems.
    ``mark_running=False`` writes the unit once, when it ends (a unit that changes nothing in the
    member account and whose Close runs only after its own units: one write instead of two)."""
    started = iso(clock())
    # Marked first, so a Close running meanwhile (a duplicate execution) waits instead of failing it.
    if mark_running:
        ledger.record_unit(unit.run_id, unit.account, unit.region, status=L.RUNNING, started_at=started)
    status, error = L.SUCCEEDED, None
    outcome = UnitOutcome()
    try:
        if deadline.near():  # too late to start: leave it for a re-run of the slot, but say so
            raise NotStarted()
        with ledger.action_recorder(unit.run_id) as record:
            outcome = work(record)
        if outcome.problems:
            status, error = L.PARTIAL, "; ".join(outcome.problems)
    except NotStarted:
        status, error = L.PARTIAL, "not started: the time limit was near"
    except AccountAccessError as exc:
        status, error = L.FAILED, f"{exc.code}: {exc.detail}"
    except (ClientError, BotoCoreError) as exc:
        status, error = L.FAILED, error_text(exc)
    except Exception as exc:  # a bug must still leave a record behind, and not sink the other units
        log.exception("unit %s %s/%s crashed", unit.job, unit.account, unit.region)
        status, error = L.FAILED, error_text(exc)
    if status == L.FAILED and error and on_failure is not None:
        on_failure(error)
    summary = {
        "job": unit.job,
        "status": status,
        "error": error,
        "counts": dict(outcome.counts),
        "unknown_tasks": outcome.unknown_tasks,
        "started_at": started,
        **outcome.extra,
    }
    # ``write_unit``: a batch's shared writer (Ledger.unit_writer: 25 unit records a BatchWriteItem).
    (write_unit or partial(ledger.record_unit, unit.run_id))(unit.account, unit.region, **summary)
    return {"account": unit.account, "region": unit.region, **summary}


# ---- close ------------------------------------------------------------------------------------------
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


def close(
    run_id: str,
    ledger: Ledger,
    *,
    reason: str | None = None,
    on_missing: Callable[[dict[str, Any], str, str, str | None], None] | None = None,
    announce: Callable[[dict[str, Any]], Alert | None] | None = None,
    outbox: Outbox | None = None,
    manifests: ManifestStore | None = None,
    results: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Derive the run's status from its unit records and close it. Returns (the run, whether this call
    closed it): a duplicate Close neither rewrites the record nor announces again.

    Planned units with no result (no record: a Map branch lost; or still RUNNING: its Lambda killed)
    count as failed; ``on_missing`` hears of each (run, planned "account/region", error, the account's
    name if the manifest has it), on threads: a fleet-wide failure is thousands of them. The planned
    units are in the run's manifest (S3), checked against the count the run recorded, or, for a run opened
    without one, in its record. ``results`` (the Distributed Map's ResultWriterDetails) only say why a child
    failed: read when units have no record, and a results file that cannot be read is noted, not fatal."""
    run = ledger.get_run(run_id)
    if run is None:
        raise RunError(f"no run {run_id!r} in the ledger")
    if run["status"] != L.RUNNING:
        return run, False
    planned, names = _planned_units(run, manifests)
    units = ledger.units(run_id)
    now = ledger.clock()
    running = [u for u in units if u["status"] == L.RUNNING]
    if reason is None and any(now - parse_time(u["started_at"]) < UNIT_LIFETIME for u in running):
        raise UnitsStillRunning(f"run {run_id}: {len(running)} unit(s) still running")
    died = "started but never finished (the function died or timed out)" + (f" ({reason})" if reason else "")
    for u in running:  # the rows too, not only this tally: nothing is left RUNNING under a closed run
        u["status"], u["error"] = L.FAILED, died
        ledger.record_unit(run_id, u["account"], u["region"], **{k: v for k, v in u.items() if k in UNIT_FIELDS})
    reported = {f"{u['account']}/{u['region']}" for u in units}
    missing = [p for p in planned if p not in reported]
    failed_children: dict[str, str] = {}
    if missing and results and manifests is not None:
        try:
            failed_children = manifests.failed_units(results, f"run {run_id}")
        except Exception as exc:  # why, not whether: the ledger decides; say the results were not read
            log.warning("run %s: the Map's results could not be read: %s", run_id, error_text(exc))
            failed_children = {}
            reason = f"{reason + '; ' if reason else ''}the Map's results could not be read: {error_text(exc)}"[:500]
    counts: Counter[str] = Counter()
    unknown: dict[str, list[str]] = {}
    for u in units:
        counts.update(u.get("counts", {}))
        for name, samples in u.get("unknown_tasks", {}).items():
            unknown.setdefault(name, []).extend(samples)
    status, by_status, total = tally_units(units, missing)
    failures = [f"{u['account']}/{u['region']}: {u.get('error')}" for u in units if u["status"] != L.SUCCEEDED]
    error = "no result recorded" + (f" ({reason})" if reason else "")

    def why(unit: str) -> str:
        return f"{error}: {failed_children[unit]}" if unit in failed_children else error

    failures += [f"{unit}: {why(unit)}" for unit in missing]
    if on_missing is not None:
        gone = [(f"{u['account']}/{u['region']}", died) for u in running] + [(unit, why(unit)) for unit in missing]
        _report_missing(run, gone, names, on_missing)
    # The run is one DynamoDB item (400 KB) and one SNS message (256 KB): keep counts whole, lists short.
    if len(failures) > MAX_LISTED:
        failures = [*failures[:MAX_LISTED], f"...and {len(failures) - MAX_LISTED} more (opsbot runs show {run_id})"]
    fields = {
        "counts": dict(counts),
        "units": {"total": total, **{k.lower(): v for k, v in by_status.items()}},
        "unknown_tasks": dict(list(unknown.items())[:MAX_LISTED]),
        "failures": failures,
        "close_reason": reason,
    }
    closed = {**run, **fields, "status": status, "ended_at": iso(now)}
    # The announcement is written with the close (one transaction), then delivered: never lost, never twice.
    message = announce(closed) if announce is not None and outbox is not None else None
    also = [{"Put": {"Item": outbox.item(f"run#{run_id}", message)}}] if outbox and message else []
    won = ledger.close_run(run_id, status, also=also, **fields)
    release_slot(ledger, run)
    if won and outbox is not None and message is not None:
        outbox.deliver(f"run#{run_id}")
    return ledger.get_run(run_id) or closed, won


def _planned_units(run: Mapping[str, Any], manifests: ManifestStore | None) -> tuple[list[str], dict[str, str | None]]:
    """The run's planned "account/region" units, and the account names its manifest carries."""
    run_id = str(run["run_id"])
    if "manifest" not in run:
        return list(run.get("planned_units", [])), {}
    if manifests is None:  # fail closed: never count a run of unknown units as complete
        raise RunError(f"run {run_id}: its units are in an S3 manifest and no manifest store was given")
    source = f"run {run_id}"
    items = manifests.read(ManifestRef.from_dict(run["manifest"], source), source)
    if isinstance(run.get("planned"), int) and len(items) != run["planned"]:
        raise RunError(f"run {run_id}: its manifest lists {len(items)} units, the run planned {run['planned']}")
    names = {str(i["account"]): n if isinstance(n := i.get("account_name"), str) else None for i in items}
    return [f"{i['account']}/{i['region']}" for i in items], names


MISSING_THREADS = 16
# How often the local runner retries a unit a member's cap refused (about 3 minutes of waits, the state
# machine's MemberBusy Retry gives up after about 2 hours): then the unit fails, as a FAILED child would.
LOCAL_BUSY_ATTEMPTS = 100


def _report_missing(
    run: dict[str, Any],
    gone: list[tuple[str, str]],
    names: Mapping[str, str | None],
    on_missing: Callable[[dict[str, Any], str, str, str | None], None],
) -> None:
    """Each unit with no result to ``on_missing``, on threads; the first failure is raised after all ran."""

    def one(item: tuple[str, str]) -> Exception | None:
        unit, error = item
        try:
            on_missing(run, unit, error, names.get(unit.split("/")[0]))
            return None
        except Exception as exc:
            return exc

    if not gone:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(MISSING_THREADS, len(gone)))) as pool:
        failed = [e for e in pool.map(one, gone) if e is not None]
    if failed:
        raise failed[0]


def run_in_pool(
    units: list[Unit],
    run_one: Callable[[Unit], Any],
    max_workers: int = 8,
    failed: list[dict[str, Any]] | None = None,
) -> str | None:
    """Local/test stand-in for the state machine's Map: the units in a thread pool. As the Map does, a
    unit that raised (its last ledger write failed) never stops the others; the returned reason (None
    if none raised) is what Close is given, so it closes that unit's row too. ``failed`` collects a
    child result per unit that raised, in the shape the Map's ResultWriter writes (``write_results``).

    A unit refused for a member's concurrency cap (``MemberBusy``) waits and tries again, as the state
    machine's Retry does."""
    if not units:
        return None

    def guarded(unit: Unit) -> str | None:
        for attempt in itertools.count():
            try:
                run_one(unit)
                return None
            except MemberBusy as busy:
                if attempt < LOCAL_BUSY_ATTEMPTS:
                    time.sleep(min(2.0, 0.05 * 2**attempt) * random.random())
                    continue
                error: Exception = busy  # as the state machine's Retry gives up: a FAILED child
            except Exception as exc:
                log.exception("unit %s %s/%s raised", unit.job, unit.account, unit.region)
                error = exc
            if failed is not None:
                failed.append(
                    {
                        "Input": json.dumps(asdict(unit)),
                        "Status": "FAILED",
                        "Error": type(error).__name__,
                        "Cause": error_text(error),
                    }
                )
            return f"{unit.account}/{unit.region}: {error_text(error)}"
        return None  # unreachable: the loop returns

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(units)))) as pool:
        raised = [r for r in pool.map(guarded, units) if r]
    return f"unit raised: {'; '.join(raised[:5])}" if raised else None


def run_locally(
    plan: Plan,
    run_one: Callable[[Unit], Any],
    manifests: ManifestStore | None,
    max_workers: int = 8,
) -> tuple[str | None, dict[str, str] | None]:
    """What the Distributed Map does, in a thread pool: the units read back from the plan's manifest,
    and the children that failed written where its ResultWriter would. Returns (reason, results)."""
    failed: list[dict[str, Any]] = []
    reason = run_in_pool(manifest_units(plan, manifests), run_one, max_workers, failed)
    results = manifests.write_results(plan.run_id, failed) if manifests is not None and plan.manifest else None
    return reason, results


# ---- scheduled tasks -------------------------------------------------------------------------------
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
    rules: RuleSource | None = None,
    manifests: ManifestStore | None = None,
) -> Plan:
    """Work out the slot and the units, and open the run record. ``when`` is the event/slot time.
    ``manifests``: where the units go (S3) for the Distributed Map; None lists them in the run record."""
    task = tasks.get(task_name.lower())
    if task is None:
        raise RunError(f"unknown task {task_name!r}; defined: {sorted(tasks)}")
    reap_task_runs(ledger, None, task.name, rules, manifests)  # a run of this task that died is closed first
    if task.kind not in TASK_KINDS:
        raise RunError(f"task {task.name!r}: kind {task.kind!r} is not available here")
    kind = TASK_KINDS.get(task.kind)
    slot = slot_for(task.schedule, when)
    scope_accounts = narrow(task.scope_accounts, accounts)
    scope_regions = narrow(task.scope_regions, regions)
    env = _env(ledger, rules)
    targets = kind.plan(task, fleet.targets(scope_accounts, scope_regions), env)
    # An operator's explicit --dry-run (or not) wins over the kind's report-only first run.
    report_only = kind.report_only_reason(task, env) if dry_run is None else None
    effective_dry_run = (task.dry_run or report_only is not None) if dry_run is None else dry_run
    run_id = new_run_id(task.name, slot)
    if not effective_dry_run:  # a dry run changes nothing, so it may overlap anything
        take_slot(ledger, task.name, slot, run_id, RUN_DEADLINE.get(trigger.type, RUN_DEADLINE["schedule"]))
    return open_run(
        ledger,
        fleet,
        job=task.name,
        kind=task.kind,
        trigger=trigger,
        slot=slot,
        targets=targets,
        dry_run=effective_dry_run,
        run_id=run_id,
        scope={"accounts": scope_accounts, "regions": scope_regions},
        report_only_reason=report_only,
        manifests=manifests,
    )


# ---- the slot lock: two runs of one slot never both create ------------------------------------------
def _slot_key(task: str, slot: str) -> dict[str, str]:
    return {"pk": f"SLOT#{task}#{slot}", "sk": "LOCK"}


def take_slot(ledger: Ledger, task: str, slot: datetime, run_id: str, hold: timedelta) -> None:
    """Hold the slot for this run, or raise RunError naming the live run that holds it. A holder that has
    closed (or is past its deadline) without releasing it does not block; the lock expires with it."""
    label, now = slot_label(slot), ledger.clock()
    key = _slot_key(task, label)
    for _ in range(3):
        held = ledger.table.get_item(Key=key, ConsistentRead=True).get("Item") or {}
        holder = held.get("run_id")
        holder_run = ledger.get_run(str(holder)) if holder else None
        if holder_run and holder_run.get("status") == L.RUNNING and str(held.get("until", "")) > iso(now):
            raise RunError(
                f"slot {label} of {task} is being run by {holder} (since {holder_run.get('started_at')}); "
                "re-run the slot once it has closed"
            )
        condition = "attribute_not_exists(pk) OR run_id = :holder" if holder else "attribute_not_exists(pk)"
        values = {":holder": holder} if holder else None
        try:
            ledger.table.put_item(
                Item={**key, "run_id": run_id, "until": iso(now + hold), "expires_at": int((now + hold).timestamp())},
                ConditionExpression=condition,
                **({"ExpressionAttributeValues": values} if values else {}),
            )
            return
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            stored = ledger.table.get_item(Key=key, ConsistentRead=True).get("Item") or {}
            if stored.get("run_id") == run_id:  # our own put, applied though its reply was lost
                return
    raise RunError(f"slot {label} of {task}: another run took it while this one tried")


def release_slot(ledger: Ledger, run: Mapping[str, Any]) -> None:
    """Let the slot go (only this run's hold); a run that never held it changes nothing."""
    if not run.get("slot") or run.get("dry_run") or run.get("kind") == "breach-check":
        return
    try:
        ledger.table.delete_item(
            Key=_slot_key(str(run["task"]), str(run["slot"])),
            ConditionExpression="run_id = :me",
            ExpressionAttributeValues={":me": run["run_id"]},
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise


# ---- the reaper: nothing stays RUNNING ---------------------------------------------------------------
def overdue_runs(ledger: Ledger, job: str | None = None) -> list[dict[str, Any]]:
    """RUNNING runs past their deadline (of one task or check, or all)."""
    return [r for r in ledger.open_runs(due_before=ledger.clock()) if job is None or r.get("task") == job]


def reap_task_runs(
    ledger: Ledger,
    notifier: Notifier | None,
    job: str | None = None,
    rules: RuleSource | None = None,
    manifests: ManifestStore | None = None,
) -> list[dict[str, Any]]:
    """Close overdue task runs with the reason; their announcement says so. Check runs are the breach
    checks' to close (``automations.breach_checks.checks.reap_check_runs``)."""
    overdue = [run for run in overdue_runs(ledger, job) if run.get("kind") in TASK_KINDS]
    return reap_each(
        overdue,
        lambda run: close_run(run["run_id"], ledger, notifier, reason=REAPED, rules=rules, manifests=manifests),
    )


class ReapIncomplete(Exception):
    """Some overdue runs could not be closed (the others were): what was closed, and why the rest not."""

    def __init__(self, closed: list[dict[str, Any]], errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.closed, self.errors = closed, errors


def reap_each(
    runs: list[dict[str, Any]], close_one: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Close each overdue run on its own: one that cannot be closed never keeps the others RUNNING."""
    closed, errors = [], []
    for run in runs:
        try:
            closed.append(close_one(run))
        except Exception as exc:
            log.exception("could not reap run %s", run.get("run_id"))
            errors.append(f"{run.get('run_id')}: {error_text(exc)}")
    if errors:
        raise ReapIncomplete(closed, errors)
    return closed


def _env(ledger: Ledger, rules: RuleSource | None) -> KindEnv:
    return KindEnv(ledger, rules or RuleSource(DEFAULT_RULES_DIR))


def run_unit(
    unit: Unit,
    tasks: Mapping[str, TaskDefinition],
    broker: SessionBroker,
    ledger: Ledger,
    deadline: Deadline,
    clock: Callable[[], datetime] = utcnow,
    rules: RuleSource | None = None,
    caps: MemberCaps | None = None,
) -> dict[str, Any]:
    """Run one (task, account, region) with its kind's runner; always records the unit. With ``caps``,
    only while the member's caps have room (else MemberBusy, before anything is recorded or done)."""
    if unit.job not in tasks:
        raise InputError(f"unit of {unit.run_id}", "job", f"no task {unit.job!r} in rules/tasks.yaml")
    task = tasks[unit.job]
    kind = TASK_KINDS.get(task.kind)
    env = _env(ledger, rules)

    def work(record: Callable[[Action], None]) -> UnitOutcome:
        ctx = UnitContext(
            run_id=unit.run_id,
            task=task,
            options=task.options,
            account=unit.account,
            region=unit.region,
            slot=parse_time(unit.slot).astimezone(UTC),
            dry_run=unit.dry_run,
            known_tasks=frozenset(tasks),
            record=record,
            deadline=deadline,
            now=clock,
            clients=broker.for_capability(kind.capability).client,
            env=env,
        )
        return kind.run_unit(ctx)

    if caps is None:
        return execute_unit(unit, ledger, deadline, work, clock=clock)
    with caps.hold(unit.run_id, unit.account, unit.region):
        return execute_unit(unit, ledger, deadline, work, clock=clock)


def close_run(
    run_id: str,
    ledger: Ledger,
    notifier: Notifier | None,
    reason: str | None = None,
    rules: RuleSource | None = None,
    manifests: ManifestStore | None = None,
    results: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Close a task run and announce it the way its kind says (a failed run always), through the outbox."""
    env = _env(ledger, rules)

    def announce(closed: dict[str, Any]) -> Alert | None:
        return TASK_KINDS.get(closed["kind"]).announce(closed, env) if closed.get("kind") in TASK_KINDS else None

    # Without a notifier (the plan step reaping) the announcement is still written: the sweeper delivers it.
    outbox = Outbox(ledger.table, notifier, ledger.clock)
    closed, _ = close(
        run_id, ledger, reason=reason, announce=announce, outbox=outbox, manifests=manifests, results=results
    )
    return closed


def run_now(
    plan: Plan,
    tasks: Mapping[str, TaskDefinition],
    broker: SessionBroker,
    ledger: Ledger,
    notifier: Notifier | None,
    *,
    deadline: Deadline | None = None,
    max_workers: int = 8,
    clock: Callable[[], datetime] = utcnow,
    rules: RuleSource | None = None,
    manifests: ManifestStore | None = None,
    caps: MemberCaps | None = None,
) -> dict[str, Any]:
    """Local/test runner: the same plan/unit/close steps as the state machine, the units (read back from
    the plan's manifest) in a thread pool."""
    limit = deadline or Deadline.never()
    raised, results = run_locally(
        plan, lambda u: run_unit(u, tasks, broker, ledger, limit, clock, rules, caps), manifests, max_workers
    )
    return close_run(plan.run_id, ledger, notifier, reason=raised, rules=rules, manifests=manifests, results=results)
