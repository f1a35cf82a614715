"""Step Functions steps for a breach check (Lambda concurrency, service quotas): plan -> unit -> close.

EventBridge Scheduler starts BreachCheckStateMachine with ``{"check": ..., "id": <execution id>,
"time": <scheduled time>}``. A retried or duplicated invocation of one scheduled time gets the same
plan back (Powertools Idempotency on check + scheduled time). Units and close need no idempotency
store: every alert change is a conditional write, so a repeated unit finds nothing new to say.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.breach_checks.alerts import ALERT_STATE_GRANTS, AlertBook
from automations.breach_checks.checks import close_check, plan_check, run_check_unit
from automations.breach_checks.kinds import CHECK_KINDS
from automations.breach_checks.rules import QUOTAS_FILE, BreachRules
from automations.core import iam
from automations.core.deadline import Deadline
from automations.core.runs import CloseRequest, ScheduleEvent, Unit
from handlers._wiring import idempotency_store, logger, metrics, notifier, runtime, tracer

# Stop before starting when 20 s are left: enough to record the unit (and its failure alert).
TIMEOUT_MARGIN_MS = 20_000
PERMISSIONS = {
    "plan": iam.LEDGER_OPEN_RUN | iam.IDEMPOTENCY_STORE | iam.READ_FLEET,
    "unit": iam.LEDGER_RECORD_UNIT
    | ALERT_STATE_GRANTS
    | iam.OUTBOX
    | iam.NOTIFY
    | iam.READ_FLEET
    | iam.ASSUME_MEMBER_ROLE
    | frozenset(g for kind in CHECK_KINDS for g in kind.hub_grants),
    # A planned unit with no record opens its "cannot check" alert.
    "close": iam.LEDGER_CLOSE_RUN | ALERT_STATE_GRANTS | iam.OUTBOX | iam.NOTIFY | iam.READ_FLEET,
}


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
    result = plan_check(rt.ledger, rt.fleet, rules(), scheduled.job, scheduled.trigger(), scheduled.time).as_dict()
    logger.info("planned check", extra={"run_id": result["run_id"], "units": len(result["units"])})
    return result


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def unit(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    summary = run_check_unit(
        Unit.from_dict(event),
        rules=rules(),
        fleet=rt.fleet,
        broker=rt.broker,
        ledger=rt.ledger,
        book=book(),
        notifier=notifier(),
        deadline=Deadline(context.get_remaining_time_in_millis, TIMEOUT_MARGIN_MS),
    )
    counts = summary["counts"]
    metrics.add_dimension(name="Check", value=summary["check"])
    for event_name in ("opened", "escalated", "reminder", "resolved"):
        metrics.add_metric(
            name=f"BreachAlerts{event_name.title()}", unit=MetricUnit.Count, value=counts.get(event_name, 0)
        )
    metrics.add_metric(name="BreachChecksFailed", unit=MetricUnit.Count, value=int(summary["status"] == "FAILED"))
    metrics.add_metric(name="GetMetricDataCalls", unit=MetricUnit.Count, value=summary["metric_calls"])
    return summary


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
    )
    return {"run_id": run["run_id"], "status": run["status"], "counts": run.get("counts", {})}
