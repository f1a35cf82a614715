"""Breach checks (Lambda concurrency, service quotas) run as plan -> unit (account, region) -> close.

The same shape as scheduled tasks (automations/runs.py): on AWS the BreachCheckStateMachine calls the
three steps (Map over units); locally ``run_checks_now`` calls them in a thread pool. Runs, units and
every alert event are recorded in the ledger; check runs are listed apart from task runs (``gsi1pk``
"CHECK") because one runs every few minutes.

A unit measures, then feeds every measurement through the alert lifecycle (automations/breach_alerts)
and notifies what the lifecycle says to. A unit that cannot run (role denied, throttled past retries)
is recorded FAILED and opens a "cannot check" alert for that account/region through the same
lifecycle: on-call hears once, a reminder every N hours while it lasts, and once when it recovers,
instead of a failed-run message every five minutes. Nothing here changes anything in a member account.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.conditions import Key
from botocore.exceptions import BotoCoreError, ClientError

from automations import ledger as L
from automations.breach_alerts import (
    OPEN,
    AlertBook,
    Level,
    Measurement,
    MeasureResult,
    Transition,
    alert_message,
    level_of,
)
from automations.breach_rules import BreachRules
from automations.deadline import Deadline
from automations.fleet import AccountAccessError, Fleet, SessionBroker
from automations.lambda_concurrency import measure_lambda_concurrency
from automations.ledger import Action, Ledger
from automations.notify import Notifier
from automations.quotas import measure_service_quotas
from automations.runs import Plan, Trigger, tally_units
from automations.schedules import slot_label

log = logging.getLogger(__name__)

CHECK_RUNS_KEY = "CHECK"  # gsi1pk of check runs in the by-time index


class CheckError(ValueError):
    pass


class _NotStarted(Exception):
    pass


@dataclass(frozen=True)
class CheckUnit:
    run_id: str
    check: str
    account: str
    region: str
    slot: str  # ISO 8601
    include_global: bool  # global quotas are checked in one region per account

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckUnit:
        return cls(**{k: data[k] for k in ("run_id", "check", "account", "region", "slot", "include_global")})


Measure = Callable[[Mapping[str, Any], BreachRules, datetime, CheckUnit, frozenset[str]], MeasureResult]


@dataclass(frozen=True)
class CheckKind:
    services: tuple[str, ...]  # clients a unit needs in the member account
    measure: Measure
    enabled: Callable[[BreachRules], bool]


CHECKS: dict[str, CheckKind] = {
    "lambda-concurrency": CheckKind(
        ("lambda", "cloudwatch"),
        lambda c, rules, now, unit, open_keys: measure_lambda_concurrency(
            c["lambda"], c["cloudwatch"], rules.lambda_concurrency, now, open_keys
        ),
        lambda rules: rules.lambda_concurrency.enabled,
    ),
    "service-quotas": CheckKind(
        ("service-quotas", "cloudwatch"),
        lambda c, rules, now, unit, open_keys: measure_service_quotas(
            c["service-quotas"], c["cloudwatch"], rules.service_quotas, now, unit.include_global
        ),
        lambda rules: rules.service_quotas.enabled,
    ),
}


def access_key(check: str) -> str:
    return f"check/{check}"


def new_run_id(check: str, slot: datetime) -> str:
    return f"{check}-{slot:%Y%m%dT%H%MZ}-{secrets.token_hex(3)}"


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
) -> Plan:
    """Open the run record and list its units. ``when`` is the scheduled time (or now)."""
    kind = CHECKS.get(check)
    if kind is None:
        raise CheckError(f"unknown check {check!r}; defined: {sorted(CHECKS)}")
    slot = (when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)).replace(second=0, microsecond=0)
    enabled = kind.enabled(rules)
    targets = fleet.targets(accounts, regions) if enabled else []
    first_region = {a.id: a.regions[0] for a in fleet.accounts if a.regions}
    run_id = new_run_id(check, slot)
    ledger.open_run(
        run_id,
        task=check,
        kind="breach-check",
        trigger=asdict(trigger),
        slot=slot_label(slot),
        dry_run=False,
        scope={"accounts": accounts, "regions": regions},
        planned_units=[f"{a}/{r}" for a, r in targets],
        note=None if enabled else f"{check} is disabled in rules/quotas.yaml",
        gsi1pk=CHECK_RUNS_KEY,
    )
    units = [CheckUnit(run_id, check, a, r, slot.isoformat(), first_region.get(a) == r) for a, r in targets]
    return Plan(run_id, units)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'ClientError')}: {err.get('Message', '')}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Observer:
    """Feeds observations to the alert book, notifies, and records each alert event as an action."""

    book: AlertBook
    notifier: Notifier | None
    account: str
    region: str
    account_name: str
    counts: Counter[str]
    record: Callable[[Action], None] | None = None

    def __call__(
        self, m: Measurement, rules: BreachRules, prev: Mapping[str, Any] | None, level: Level | None = None
    ) -> Transition | None:
        thresholds = rules.thresholds(self.account, m.service, m.quota_code)
        transition = self.book.observe(
            self.account, self.region, m, thresholds, prev, level=level, account_name=self.account_name
        )
        if transition is None:
            return None
        self.counts[transition.event] += 1
        if not transition.notify:
            return transition
        errors = self.notifier.send(alert_message(transition)) if self.notifier else []
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
                    detail={
                        "alert_id": s["alert_id"],
                        "severity": s["severity"],
                        "percent": s.get("percent"),
                        "usage": s.get("usage"),
                        "limit": s.get("limit"),
                        "name": s["name"],
                    },
                )
            )
        return transition


def _failure_measurement(check: str, error: str) -> Measurement:
    return Measurement(check=f"{check}-access", key=access_key(check), name=check, service="opsbot", note=error)


def report_failure(
    observe: _Observer, rules: BreachRules, check: str, error: str, prev: Mapping[str, Any] | None
) -> None:
    """Open (or keep open) the 'cannot check' alert; never raises (the unit record matters more)."""
    try:
        observe(_failure_measurement(check, error), rules, prev, Level.WARNING)
    except Exception:  # the ledger itself may be what failed
        log.exception("could not record the failure of %s in %s/%s", check, observe.account, observe.region)


def run_check_unit(
    unit: CheckUnit,
    *,
    rules: BreachRules,
    fleet: Fleet,
    broker: SessionBroker,
    ledger: Ledger,
    book: AlertBook,
    notifier: Notifier | None,
    deadline: Deadline | None = None,
    clock: Callable[[], datetime] = L.utcnow,
) -> dict[str, Any]:
    """Measure one account/region and move its alerts; always records the unit, whatever happens."""
    kind = CHECKS[unit.check]
    deadline = deadline or Deadline.never()
    member = fleet.account(unit.account)
    counts: Counter[str] = Counter()
    observe = _Observer(book, notifier, unit.account, unit.region, member.name if member else unit.account, counts)
    started = L.iso(clock())
    status, error = L.SUCCEEDED, None
    result = MeasureResult([], Counter())
    states: dict[str, dict[str, Any]] = {}
    try:
        if deadline.near():
            raise _NotStarted()
        clients = {s: broker.client(unit.account, unit.region, s) for s in kind.services}
        states = book.states(unit.account, unit.region)
        open_keys = frozenset(k for k, s in states.items() if s.get("status") == OPEN)
        result = kind.measure(clients, rules, clock(), unit, open_keys)
        counts.update(result.counts)
        with ledger.action_recorder(unit.run_id) as record:
            observe.record = record
            measured = set()
            for m in result.measurements:
                measured.add(m.key)
                counts[level_of(m, rules.thresholds(unit.account, m.service, m.quota_code)).value] += 1
                observe(m, rules, states.get(m.key))
            for key, state in states.items():
                if state.get("status") != OPEN:
                    continue
                if state.get("check") == unit.check and key not in measured:
                    gone = Measurement(
                        check=unit.check,
                        key=key,
                        name=state["name"],
                        service=state["service"],
                        quota_code=state.get("quota_code"),
                        limit=state.get("limit"),
                        unit=state.get("unit", "None"),
                        note="No longer measured: removed from the rules, the quota or the reservation is "
                        "gone, or the function is switched off (reserved concurrency 0).",
                    )
                    observe(gone, rules, state, Level.CLEAR)
                elif key == access_key(unit.check):
                    observe(_failure_measurement(unit.check, "recovered"), rules, state, Level.CLEAR)
        if result.errors:
            status, error = L.PARTIAL, "; ".join(result.errors)
    except _NotStarted:
        status, error = L.PARTIAL, "not started: the time limit was near"
    except AccountAccessError as exc:
        status, error = L.FAILED, f"{exc.code}: {exc.detail}"
    except (ClientError, BotoCoreError) as exc:
        status, error = L.FAILED, _error_text(exc)
    except Exception as exc:  # a bug must still leave a record behind, and not sink the other units
        log.exception("check unit %s %s/%s crashed", unit.check, unit.account, unit.region)
        status, error = L.FAILED, _error_text(exc)
    if status == L.FAILED and error:
        observe.record = None
        report_failure(observe, rules, unit.check, error, states.get(access_key(unit.check)))
    summary = {
        "check": unit.check,
        "status": status,
        "error": error,
        "counts": dict(counts),
        "metric_calls": result.metric_calls,
        "unmonitored": (result.unmonitored or [])[:200],
        "started_at": started,
    }
    ledger.record_unit(unit.run_id, unit.account, unit.region, **summary)
    return {"account": unit.account, "region": unit.region, **summary}


def close_check(
    run_id: str,
    ledger: Ledger,
    *,
    rules: BreachRules,
    fleet: Fleet,
    book: AlertBook,
    notifier: Notifier | None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Close the run from its unit records. A planned unit with no record opens its 'cannot check' alert."""
    run = ledger.get_run(run_id)
    if run is None:
        raise CheckError(f"no run {run_id!r} in the ledger")
    if run["status"] != L.RUNNING:
        return run  # a duplicate close neither rewrites nor re-notifies
    units = ledger.units(run_id)
    reported = {f"{u['account']}/{u['region']}" for u in units}
    missing = [p for p in run.get("planned_units", []) if p not in reported]
    counts: Counter[str] = Counter()
    for u in units:
        counts.update(u.get("counts", {}))
        counts["metric_calls"] += int(u.get("metric_calls") or 0)
    status, by_status, total = tally_units(units, missing)
    failures = [f"{u['account']}/{u['region']}: {u.get('error')}" for u in units if u["status"] != L.SUCCEEDED]
    for planned in missing:
        account, region = planned.split("/")
        error = "no result recorded" + (f" ({reason})" if reason else "")
        failures.append(f"{planned}: {error}")
        member = fleet.account(account)
        observe = _Observer(book, notifier, account, region, member.name if member else account, Counter())
        report_failure(observe, rules, run["task"], error, book.state(account, region, access_key(run["task"])))
    ledger.close_run(
        run_id,
        status,
        counts=dict(counts),
        units={"total": total, **{k.lower(): v for k, v in by_status.items()}},
        failures=failures,
    )
    return ledger.get_run(run_id) or run


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
    clock: Callable[[], datetime] = L.utcnow,
) -> dict[str, Any]:
    """Local/test runner: the state machine's plan/unit/close steps, with the units in a thread pool."""
    if plan.units:
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(plan.units)))) as pool:
            list(
                pool.map(
                    lambda u: run_check_unit(
                        u,
                        rules=rules,
                        fleet=fleet,
                        broker=broker,
                        ledger=ledger,
                        book=book,
                        notifier=notifier,
                        clock=clock,
                    ),
                    plan.units,
                )
            )
    return close_check(plan.run_id, ledger, rules=rules, fleet=fleet, book=book, notifier=notifier)


def recent_check_runs(ledger: Ledger, limit: int = 20) -> list[dict[str, Any]]:
    resp = ledger.table.query(
        IndexName=L.RUNS_INDEX,
        KeyConditionExpression=Key("gsi1pk").eq(CHECK_RUNS_KEY),
        ScanIndexForward=False,
        Limit=limit,
    )
    return [L.plain(i) for i in resp["Items"]]
