"""Step Functions steps for a breach check (Lambda concurrency, service quotas): plan -> unit -> close.

EventBridge Scheduler starts BreachCheckStateMachine (an Express workflow, statemachines/check.asl.yaml)
with ``{"check": ..., "id": <execution id>, "time": <scheduled time>}``. A retried or duplicated
invocation of one scheduled time gets the same plan back (Powertools Idempotency on check + scheduled
time). The Map hands each unit invocation a batch ``{"units": [...]}`` (many account-regions per
invocation; a single unit is still accepted). Units and close need no idempotency store: every alert
change is a conditional write, so a repeated unit finds nothing new to say.

Logs and metrics are chosen for what they cost (docs/cost.md): one INFO line per plan; what each unit
found is in the ledger, not the logs. EMF: per check (the one dimension), alerts opened, units that
could not check (both alarm-worthy) and GetMetricData metrics requested (the member accounts' bill).
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.breach_checks.alerts import ALERT_STATE_GRANTS, AlertBook
from automations.breach_checks.checks import (
    UNITS_PER_BATCH,
    close_check,
    plan_check,
    run_check_batch,
    run_check_unit,
)
from automations.breach_checks.kinds import CHECK_KINDS
from automations.breach_checks.rules import QUOTAS_FILE, BreachRules
from automations.core import iam
from automations.core.boundary import InputError
from automations.core.deadline import Deadline
from automations.core.runs import CloseRequest, RunError, ScheduleEvent, Unit
from handlers._wiring import idempotency_store, logger, metrics, notifier, runtime, tracer

# Stop before starting when 20 s are left: enough to record the unit (and its failure alert).
TIMEOUT_MARGIN_MS = 20_000
PERMISSIONS = {
    "plan": iam.LEDGER_OPEN_RUN | iam.IDEMPOTENCY_STORE | iam.READ_FLEET | iam.DISCOVER_FLEET | iam.MANIFEST_WRITE,
    "unit": iam.LEDGER_RECORD_UNIT
    | ALERT_STATE_GRANTS
    | iam.OUTBOX
    | iam.NOTIFY
    | iam.READ_FLEET
    | iam.DISCOVER_FLEET  # the account's name, for its alerts
    | iam.assume_member_role("breach-checks")
    | frozenset(g for kind in CHECK_KINDS for g in kind.hub_grants),
    # A planned unit with no record opens its "cannot check" alert.
    "close": iam.LEDGER_CLOSE_RUN
    | ALERT_STATE_GRANTS
    | iam.OUTBOX
    | iam.NOTIFY
    | iam.READ_FLEET
    | iam.DISCOVER_FLEET
    | iam.MANIFEST_READ,
}


def units_per_batch() -> int:
    try:
        return max(1, int(os.environ.get("OPSBOT_CHECK_UNITS_PER_INVOCATION", UNITS_PER_BATCH)))
    except ValueError:
        return UNITS_PER_BATCH


def rules() -> BreachRules:
    return runtime().rules.get(QUOTAS_FILE)


def book() -> AlertBook:
    rt = runtime()
    return AlertBook(rt.ledger.table, rt.settings.ledger_ttl_days)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@idempotent(config=IdempotencyConfig(event_key_jmespath="[check, time]"), persistence_store=idempotency_store())
def plan(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    scheduled = ScheduleEvent.parse(event, "check")  # InputError: the execution fails (PlanFailed, alarmed)
    if rt.manifests is None:  # before a run opens: the Distributed Map reads its units from S3
        raise RunError("OPSBOT_MANIFEST_BUCKET is not set: the run's units have nowhere to go")
    planned = plan_check(
        rt.ledger,
        rt.fleet,
        rules(),
        scheduled.job,
        scheduled.trigger(),
        scheduled.time,
        manifests=rt.manifests,
    )
    # The units are in S3: the Distributed Map reads them in batches of this many per invocation, and
    # neither this result nor its idempotency record grows with the fleet.
    result = {**planned.as_dict(), "units_per_invocation": units_per_batch()}
    logger.info("planned check", extra={"run_id": result["run_id"], "units": len(planned.units)})
    return result


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def unit(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One unit (``Unit.as_dict``), or a batch: ``{"Items": [...]}`` from the Distributed Map's ItemBatcher
    (or ``{"units": [...]}``); a batch's summaries come back as ``{"units": [...]}``."""
    rt = runtime()
    deadline = Deadline(context.get_remaining_time_in_millis, TIMEOUT_MARGIN_MS)
    context_of_units: dict[str, Any] = {
        "rules": rules(),
        "fleet": rt.fleet,
        "broker": rt.broker,
        "ledger": rt.ledger,
        "book": book(),
        "notifier": notifier(),
        "deadline": deadline,
    }
    batch_key = next((k for k in ("Items", "units") if isinstance(event, dict) and k in event), None)
    if batch_key is not None:
        if not isinstance(event[batch_key], list):
            raise InputError("unit batch", batch_key, "not a list")
        summaries = run_check_batch([Unit.from_dict(u) for u in event[batch_key]], **context_of_units)
        _emit(summaries)
        return {"units": summaries}
    summary = run_check_unit(Unit.from_dict(event), **context_of_units)
    _emit([summary])
    return summary


def _emit(summaries: list[dict[str, Any]]) -> None:
    """Per check: alerts opened, units that could not check, GetMetricData metrics requested."""
    if not summaries:
        return
    metrics.add_dimension(name="Check", value=summaries[0]["check"])
    opened = sum(s["counts"].get("opened", 0) for s in summaries)
    metrics.add_metric(name="BreachAlertsOpened", unit=MetricUnit.Count, value=opened)
    failed = sum(int(s["status"] == "FAILED") for s in summaries)
    metrics.add_metric(name="BreachChecksFailed", unit=MetricUnit.Count, value=failed)
    requested = sum(int(s.get("metrics") or 0) for s in summaries)
    metrics.add_metric(name="GetMetricDataMetrics", unit=MetricUnit.Count, value=requested)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def close(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    request = CloseRequest.parse(event)
    run = close_check(
        request.run_id,
        rt.ledger,
        rules=rules(),
        fleet=rt.fleet,
        book=book(),
        notifier=notifier(),
        reason=request.reason,
        manifests=rt.manifests,
        results=request.results,
    )
    return {"run_id": run["run_id"], "status": run["status"], "counts": run.get("counts", {})}
