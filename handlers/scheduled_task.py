"""Step Functions steps for a scheduled task run: plan -> unit (inside a Map) -> close.

The EventBridge schedule rule for a task sends ``{"task": ..., "id": <event id>, "time": <event time>}``.
Duplicate deliveries of one schedule event (same id) get the same plan back (Powertools Idempotency);
a unit is idempotent on (run, account, region) so a retried Map branch does not repeat its work.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.deadline import Deadline
from automations.runs import Trigger, Unit, close_run, plan_run, run_unit
from handlers._wiring import idempotency_store, logger, metrics, notifier, runtime, tracer

# Stop starting new volumes when 30 s are left: enough to flush the ledger and record the unit.
TIMEOUT_MARGIN_MS = 30_000


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@idempotent(config=IdempotencyConfig(event_key_jmespath="[task, id]"), persistence_store=idempotency_store())
def plan(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    trigger = Trigger(type="schedule", event_id=event.get("id"), event_time=event.get("time"))
    when = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    result = plan_run(rt.ledger, rt.fleet, rt.tasks, event["task"], trigger, when, kinds=rt.kinds).as_dict()
    logger.info("planned run", extra={"run_id": result["run_id"], "units": len(result["units"])})
    return result


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@idempotent(
    config=IdempotencyConfig(event_key_jmespath="[run_id, account, region]"),
    persistence_store=idempotency_store(),
)
def unit(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    deadline = Deadline(context.get_remaining_time_in_millis, TIMEOUT_MARGIN_MS)
    summary = run_unit(Unit.from_dict(event), rt.tasks, rt.broker, rt.ledger, deadline, kinds=rt.kinds)
    for name in ("created", "deleted", "failed"):
        metrics.add_metric(name=f"Snapshots{name.title()}", unit=MetricUnit.Count, value=summary["counts"].get(name, 0))
    return summary


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def close(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    # The state machine passes the Map's error (if the Map itself failed) so the record says why.
    reason = (event.get("error") or {}).get("Error")
    run = close_run(event["run_id"], rt.ledger, notifier(), reason=reason)
    return {"run_id": run["run_id"], "status": run["status"], "counts": run.get("counts", {})}
