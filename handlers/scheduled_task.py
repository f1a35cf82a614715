"""Step Functions steps for a scheduled task run: plan -> unit (inside a Map) -> close.

The EventBridge schedule rule for a task sends ``{"task": ..., "id": <event id>, "time": <event time>}``.
Duplicate deliveries of one schedule event (same id) get the same plan back (Powertools Idempotency);
a unit is idempotent on (run, account, region) so a retried Map branch does not repeat its work.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations import catalog
from automations.core import iam
from automations.core.caps import GRANTS as MEMBER_CAPS
from automations.core.deadline import Deadline
from automations.core.runs import CloseRequest, RunError, ScheduleEvent, Unit, close_run, plan_run, run_unit
from automations.security_groups.enforcement import FINDINGS_GRANTS
from handlers._wiring import idempotency_store, logger, metrics, notifier, runtime, tracer

# Stop starting new volumes when 30 s are left: enough to flush the ledger and record the unit.
TIMEOUT_MARGIN_MS = 30_000
_KIND_GRANTS = frozenset(g for kind in catalog.TASK_KINDS for g in kind.hub_grants)
PERMISSIONS = {
    # Plan reaps this task's dead runs (their announcements go to the outbox for the sweeper), takes the
    # slot lock, writes the unit manifest, opens the run; a report-only first sweep swaps the rules digest.
    "plan": iam.LEDGER_OPEN_RUN
    | iam.MANIFEST_WRITE
    | iam.MANIFEST_READ
    | iam.SLOT_LOCK
    | iam.LEDGER_CLOSE_RUN
    | iam.PENDING_LIST
    | iam.IDEMPOTENCY_STORE
    | iam.READ_FLEET
    | iam.DISCOVER_FLEET,
    # Units record RUNNING, their actions and their summary; the sweep claims findings and revokes.
    "unit": iam.LEDGER_RECORD_UNIT
    | MEMBER_CAPS
    | FINDINGS_GRANTS
    | iam.IDEMPOTENCY_STORE
    | iam.READ_FLEET
    | iam.assume_member_role("snapshots", "security-groups")
    | _KIND_GRANTS,
    "close": iam.LEDGER_CLOSE_RUN | iam.SLOT_LOCK | iam.OUTBOX | iam.NOTIFY | iam.READ_FLEET | iam.MANIFEST_READ,
}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@idempotent(config=IdempotencyConfig(event_key_jmespath="[task, id]"), persistence_store=idempotency_store())
def plan(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    scheduled = ScheduleEvent.parse(event, "task")  # InputError: the execution fails (PlanFailed, alarmed)
    if rt.manifests is None:  # before a run opens: the Distributed Map reads its units from S3
        raise RunError("OPSBOT_MANIFEST_BUCKET is not set: the run's units have nowhere to go")
    planned = plan_run(
        rt.ledger,
        rt.fleet,
        rt.tasks,
        scheduled.job,
        scheduled.trigger(),
        scheduled.time,
        rules=rt.rules,
        manifests=rt.manifests,
    )
    # The units are in S3 (the Distributed Map reads them): this result and its idempotency record stay
    # the same few hundred bytes whatever the fleet's size.
    logger.info("planned run", extra={"run_id": planned.run_id, "units": len(planned.units)})
    return planned.as_dict()


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
    summary = run_unit(Unit.from_dict(event), rt.tasks, rt.broker, rt.ledger, deadline, rules=rt.rules, caps=rt.caps)
    for name in ("created", "deleted", "failed"):
        metrics.add_metric(name=f"Snapshots{name.title()}", unit=MetricUnit.Count, value=summary["counts"].get(name, 0))
    return summary


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def close(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    # The state machine passes the Map's error (if the Map itself failed) so the record says why.
    request = CloseRequest.parse(event)
    run = close_run(
        request.run_id,
        rt.ledger,
        notifier(),
        reason=request.reason,
        rules=rt.rules,
        manifests=rt.manifests,
        results=request.results,
    )
    return {"run_id": run["run_id"], "status": run["status"], "counts": run.get("counts", {})}
