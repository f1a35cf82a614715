"""Breach checks run as plan -> unit (account, region) -> close, on the shared run machinery.

On AWS the BreachCheckStateMachine calls the three steps (Map over units); locally ``run_checks_now``
calls them in a thread pool (``automations.core.runs``). Runs, units and every alert event are
recorded in the ledger; check runs are listed apart from task runs (``gsi1pk`` "CHECK") because one
runs every few minutes.

A unit measures with its check's kind, then feeds every measurement through the alert lifecycle
(``alerts.py``) and notifies what the lifecycle says to. A unit that cannot run (role denied, throttled
past retries) is recorded FAILED and opens a "cannot check" alert for that account/region through the
same lifecycle: on-call hears once, a reminder every N hours while it lasts, and once when it recovers,
instead of a failed-run message every five minutes. Nothing here changes anything in a member account.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from automations.breach_checks.alerts import OPEN, AlertBook, Level, Transition, level_of
from automations.breach_checks.kinds import CHECK_KINDS, MeasureContext, Measurement
from automations.breach_checks.messages import alert_message
from automations.breach_checks.rules import BreachRules
from automations.core.boundary import InputError
from automations.core.clock import utcnow
from automations.core.deadline import Deadline
from automations.core.errors import error_text
from automations.core.fleet import Fleet, SessionBroker
from automations.core.kinds import UnitOutcome
from automations.core.ledger import Action, Ledger
from automations.core.manifest import ManifestStore
from automations.core.notify import Notifier
from automations.core.outbox import Outbox
from automations.core.runs import (
    REAPED,
    Plan,
    RunError,
    Trigger,
    Unit,
    close,
    execute_unit,
    open_run,
    overdue_runs,
    reap_each,
    run_locally,
)

log = logging.getLogger(__name__)

CHECK_RUNS_KEY = "CHECK"  # gsi1pk of check runs in the by-time index
# A scheduled check runs in an Express workflow (at most 5 minutes): one still RUNNING after this died,
# and the sweeper closes it (its units with no result open their "cannot check" alerts).
CHECK_RUN_LIFETIME = timedelta(minutes=15)
# Many units per unit invocation (one Map item): fewer invocations and state transitions. The units of
# a batch run on threads, since a unit mostly waits on AWS.
UNITS_PER_BATCH = 25
BATCH_THREADS = 8
# A check unit's record is kept a week (everything else: the ledger's 90 days): a check runs every few
# minutes in every account-region, and what on-call needs later (the run, each alert, and every event of
# it, recorded as an action of the run that moved it) keeps the ledger's own time. See docs/cost.md.
CHECK_RECORD_DAYS = 7
CAPABILITY_NAME = "breach-checks"  # the member role checks act as: read-only (template-member.yaml)
GONE_NOTE = (
    "No longer measured: removed from the rules, the quota or the reservation is gone, or the function "
    "is switched off (reserved concurrency 0)."
)


def access_key(check: str) -> str:
    return f"check/{check}"


def plan_check(
    ledger: Ledger,
    fleet: Fleet,
    rules: BreachRules,
    check: str,
    trigger: Trigger,
    when: datetime,
    *,
    accounts: list[str] | None = None,
    regions: list[str] | None = None,
    manifests: ManifestStore | None = None,
) -> Plan:
    """Open the run record and list its units (in S3 with ``manifests``). ``when``: the scheduled time."""
    if check not in CHECK_KINDS:
        raise RunError(f"unknown check {check!r}; defined: {CHECK_KINDS.names()}")
    slot = (when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)).replace(second=0, microsecond=0)
    enabled = rules.enabled(check)
    return open_run(
        ledger,
        fleet,
        job=check,
        kind="breach-check",
        trigger=trigger,
        slot=slot,
        targets=fleet.targets(accounts, regions) if enabled else [],
        dry_run=False,
        list_key=CHECK_RUNS_KEY,
        scope={"accounts": accounts, "regions": regions},
        note=None if enabled else f"{check} is disabled in rules/quotas.yaml",
        lifetime=CHECK_RUN_LIFETIME if trigger.type == "schedule" else None,
        manifests=manifests,
    )


def _record_expiry(now: datetime) -> int:
    return int((now + timedelta(days=CHECK_RECORD_DAYS)).timestamp())


@dataclass
class _Observer:
    """Feeds observations to the alert book, notifies, and records each alert event as an action."""

    book: AlertBook
    notifier: Notifier | None
    rules: BreachRules
    account: str
    region: str
    account_name: str
    counts: Counter[str]
    record: Callable[[Action], None] | None = None

    def __call__(self, m: Measurement, prev: Mapping[str, Any] | None, level: Level | None = None) -> Transition | None:
        thresholds = self.rules.thresholds(self.account, m.service, m.quota_code)
        # The announcement is written with the transition (outbox) and delivered here; what is not
        # delivered stays pending for the next invocation and the sweeper.
        outbox = Outbox(self.book.table, self.notifier, self.book.clock)
        transition = self.book.observe(
            self.account,
            self.region,
            m,
            thresholds,
            prev,
            level=level,
            account_name=self.account_name,
            outbox=outbox,
            render=alert_message,
        )
        if transition is None:
            return None
        self.counts[transition.event] += 1
        if not transition.notify:
            return transition
        errors = outbox.deliver(transition.announcement_id) if transition.announcement_id else []
        if errors:
            self.counts["notify_failed"] += 1
        if self.record is not None:
            s = transition.state
            self.record(
                Action(
                    self.account,
                    self.region,
                    s["key"],
                    f"alert-{transition.event}",
                    "notify-failed" if errors else "notified",
                    error="; ".join(errors) or None,
                    detail={k: s.get(k) for k in ("alert_id", "severity", "percent", "usage", "limit", "name")},
                )
            )
        return transition

    def report_failure(self, check: str, error: str, prev: Mapping[str, Any] | None) -> None:
        """Open (or keep open) the 'cannot check' alert; never raises (the unit record matters more)."""
        try:
            self(_failure_measurement(check, error), prev, Level.WARNING)
        except Exception:  # the ledger itself may be what failed
            log.exception("could not record the failure of %s in %s/%s", check, self.account, self.region)


def _observer(
    book: AlertBook,
    notifier: Notifier | None,
    rules: BreachRules,
    fleet: Fleet,
    account: str,
    region: str,
    name: str | None = None,
) -> _Observer:
    """``name``: the account's name as the manifest carries it; else the fleet is asked (Organizations)."""
    if name is None:
        member = fleet.account(account)
        name = member.name if member else account
    return _Observer(book, notifier, rules, account, region, name, Counter())


NO_DATA_LIMIT = 3  # consecutive checks without a usable reading before on-call hears it cannot be watched


def _watch_no_data(
    observe: _Observer, check: str, m: Measurement, state: Mapping[str, Any] | None, states: Mapping[str, Any]
) -> None:
    """An open alert whose metric keeps coming back unknown opens its own "cannot check" alert (same
    lifecycle: once, reminders, one recovery); it resolves when a reading comes back."""
    if state is None or state.get("status") != OPEN:
        return
    key = f"check/{check}/metric/{m.key}"
    if m.percent is None and int(state.get("no_data_checks") or 0) >= NO_DATA_LIMIT:
        note = f"{state.get('name')}: no usable reading in {state.get('no_data_checks')} checks ({m.note or 'no data'})"
        blind = Measurement(check=f"{check}-access", key=key, name=check, service="opsbot", note=note)
        observe(blind, states.get(key), Level.WARNING)
    elif m.percent is not None and (states.get(key) or {}).get("status") == OPEN:
        recovered = Measurement(check=f"{check}-access", key=key, name=check, service="opsbot", note="recovered")
        observe(recovered, states.get(key), Level.CLEAR)


def _failure_measurement(check: str, error: str) -> Measurement:
    return Measurement(check=f"{check}-access", key=access_key(check), name=check, service="opsbot", note=error)


def run_check_unit(
    unit: Unit,
    *,
    rules: BreachRules,
    fleet: Fleet,
    broker: SessionBroker,
    ledger: Ledger,
    book: AlertBook,
    notifier: Notifier | None,
    deadline: Deadline | None = None,
    clock: Callable[[], datetime] = utcnow,
    write_unit: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Measure one account/region and move its alerts; always records the unit, whatever happens
    (through ``write_unit`` when its batch shares one writer)."""
    kind = CHECK_KINDS.get(unit.job)
    observe = _observer(book, notifier, rules, fleet, unit.account, unit.region, unit.account_name)
    states: dict[str, dict[str, Any]] = {}

    def work(record: Callable[[Action], None]) -> UnitOutcome:
        member = broker.for_capability(CAPABILITY_NAME)  # the read-only member role
        clients = {s: member.client(unit.account, unit.region, s) for s in kind.services}
        found, memos = book.read(unit.account, unit.region)
        states.update(found)
        open_keys = frozenset(k for k, s in states.items() if s.get("status") == OPEN)
        memo = memos.get(unit.job, {})
        context = MeasureContext(
            memo=memo,
            near=lambda service, code: rules.thresholds(unit.account, service, code).resolve_below,
        )
        result = kind.measure(clients, rules.settings_of(unit.job), clock(), unit, open_keys, context)
        if result.memo is not None and result.memo != memo:
            book.keep_memo(unit.account, unit.region, unit.job, result.memo)
        observe.counts.update(result.counts)
        observe.counts["metric_calls"] += result.metric_calls
        observe.counts["metrics"] += result.metrics
        observe.record = record
        measured = set()
        for m in result.measurements:
            measured.add(m.key)
            observe.counts[level_of(m, rules.thresholds(unit.account, m.service, m.quota_code)).value] += 1
            after = observe(m, states.get(m.key))
            _watch_no_data(observe, unit.job, m, after.state if after else states.get(m.key), states)
        for key, state in states.items():
            if state.get("status") != OPEN or key.startswith(result.skipped):
                continue  # a part of the check that errored: unknown, so its alerts stand
            if state.get("check") == unit.job and key not in measured:
                gone = Measurement(
                    check=unit.job,
                    key=key,
                    name=state["name"],
                    service=state["service"],
                    quota_code=state.get("quota_code"),
                    limit=state.get("limit"),
                    unit=state.get("unit", "None"),
                    note=GONE_NOTE,
                )
                observe(gone, state, Level.CLEAR)
            elif key == access_key(unit.job):
                observe(_failure_measurement(unit.job, "recovered"), state, Level.CLEAR)
        extra = {
            "check": unit.job,
            "expires_at": _record_expiry(clock()),
            "metric_calls": result.metric_calls,
            "metrics": result.metrics,
            "unmonitored": (result.unmonitored or [])[:200],
        }
        return UnitOutcome(counts=observe.counts, problems=list(result.errors or []), extra=extra)

    def failed(error: str) -> None:
        observe.record = None
        observe.report_failure(unit.job, error, states.get(access_key(unit.job)))

    # One write per unit: a check changes nothing in the member account and its Close runs after its
    # own units, so the RUNNING marker (for a Close racing a duplicate execution) is not needed.
    summary = execute_unit(
        unit,
        ledger,
        deadline or Deadline.never(),
        work,
        clock=clock,
        on_failure=failed,
        mark_running=False,
        write_unit=write_unit,
    )
    summary.setdefault("check", unit.job)
    summary.setdefault("metric_calls", 0)
    return summary


def run_check_batch(
    units: list[Unit],
    *,
    rules: BreachRules,
    fleet: Fleet,
    broker: SessionBroker,
    ledger: Ledger,
    book: AlertBook,
    notifier: Notifier | None,
    deadline: Deadline | None = None,
    clock: Callable[[], datetime] = utcnow,
    threads: int = BATCH_THREADS,
) -> list[dict[str, Any]]:
    """Many units of one run in one invocation, on threads. Their records go through one batch writer
    (25 a BatchWriteItem, the rest when the batch ends); a unit that raised is returned FAILED and, having
    no record, counts as failed at Close - as does every unit of a batch whose last write failed (the
    invocation raises, and the Map's results say why)."""
    if len({u.run_id for u in units}) > 1:
        raise InputError("unit batch", "Items", "units of more than one run in one batch")
    lock = threading.Lock()  # boto3's batch writer is not thread-safe

    def one(unit: Unit, write: Callable[..., None]) -> dict[str, Any]:
        def locked(account: str, region: str, **attrs: Any) -> None:
            with lock:
                write(account, region, **attrs)

        try:
            return run_check_unit(
                unit,
                rules=rules,
                fleet=fleet,
                broker=broker,
                ledger=ledger,
                book=book,
                notifier=notifier,
                deadline=deadline,
                clock=clock,
                write_unit=locked,
            )
        except Exception as exc:
            log.exception("unit %s %s/%s raised", unit.job, unit.account, unit.region)
            return {
                "account": unit.account,
                "region": unit.region,
                "job": unit.job,
                "check": unit.job,
                "status": "FAILED",
                "error": error_text(exc),
                "counts": {},
                "metric_calls": 0,
            }

    if not units:
        return []
    with (
        ledger.unit_writer(units[0].run_id) as write,
        ThreadPoolExecutor(max_workers=max(1, min(threads, len(units)))) as pool,
    ):
        return list(pool.map(lambda u: one(u, write), units))


def close_check(
    run_id: str,
    ledger: Ledger,
    *,
    rules: BreachRules,
    fleet: Fleet,
    book: AlertBook,
    notifier: Notifier | None,
    reason: str | None = None,
    manifests: ManifestStore | None = None,
    results: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Close the run from its unit records. A planned unit with no record opens its 'cannot check' alert."""

    def missing(run: dict[str, Any], planned: str, error: str, name: str | None) -> None:
        account, region = planned.split("/")
        observe = _observer(book, notifier, rules, fleet, account, region, name)
        observe.report_failure(run["task"], error, book.state(account, region, access_key(run["task"])))

    closed, _ = close(run_id, ledger, reason=reason, on_missing=missing, manifests=manifests, results=results)
    return closed


def run_checks_now(
    plan: Plan,
    *,
    rules: BreachRules,
    fleet: Fleet,
    broker: SessionBroker,
    ledger: Ledger,
    book: AlertBook,
    notifier: Notifier | None,
    max_workers: int = 8,
    clock: Callable[[], datetime] = utcnow,
    manifests: ManifestStore | None = None,
) -> dict[str, Any]:
    """Local/test runner: the state machine's plan/unit/close steps, with the units (read back from the
    plan's manifest) in a thread pool."""
    raised, results = run_locally(
        plan,
        lambda u: run_check_unit(
            u, rules=rules, fleet=fleet, broker=broker, ledger=ledger, book=book, notifier=notifier, clock=clock
        ),
        manifests,
        max_workers,
    )
    return close_check(
        plan.run_id,
        ledger,
        rules=rules,
        fleet=fleet,
        book=book,
        notifier=notifier,
        reason=raised,
        manifests=manifests,
        results=results,
    )


def reap_check_runs(
    ledger: Ledger,
    *,
    rules: BreachRules | Callable[[], BreachRules],
    fleet: Fleet,
    book: AlertBook,
    notifier: Notifier | None,
    manifests: ManifestStore | None = None,
) -> list[dict[str, Any]]:
    """Close check runs still RUNNING past their deadline; their missing units open 'cannot check' alerts.
    ``rules`` may be a loader: read only when there is a run to close (quotas.yaml is optional)."""
    overdue = [run for run in overdue_runs(ledger) if run.get("kind") == "breach-check"]
    if not overdue:
        return []
    loaded = rules() if callable(rules) else rules
    return reap_each(
        overdue,
        lambda run: close_check(
            run["run_id"],
            ledger,
            rules=loaded,
            fleet=fleet,
            book=book,
            notifier=notifier,
            reason=REAPED,
            manifests=manifests,
        ),
    )


def recent_check_runs(ledger: Ledger, limit: int = 20) -> list[dict[str, Any]]:
    return ledger.recent_runs(limit, list_key=CHECK_RUNS_KEY)
