"""EventBridge "opsbot heartbeat" (a member region's canary, forwarded to the hub's bus) -> when that
account/region was last heard from, in the ledger. One conditional update, so a redelivered canary
changes nothing and needs no idempotency record. The sweeper alerts on silence
(``automations/core/heartbeat.py``). A canary that cannot be read raises (the function's Errors alarm);
it is not retried, since the next one comes a few minutes later. Runbook: docs/runbooks/heartbeat.md"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.core import iam
from automations.core.heartbeat import RECORD_GRANTS, parse_heartbeat, record
from handlers._wiring import logger, metrics, runtime, tracer

PERMISSIONS = {"handler": RECORD_GRANTS | iam.READ_FLEET | iam.DISCOVER_FLEET}


@logger.inject_lambda_context(correlation_id_path="id")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    heartbeat = parse_heartbeat(event)
    rt = runtime()
    where = {"account": heartbeat.account, "region": heartbeat.region}
    # One account's lookup (a few Organizations calls, cached), not the whole organisation per container.
    if not rt.fleet.covers(heartbeat.account, heartbeat.region):
        logger.warning("heartbeat from outside the fleet, ignored", extra=where)
        metrics.add_metric(name="HeartbeatsIgnored", unit=MetricUnit.Count, value=1)
        return {**where, "recorded": False, "reason": "not in the fleet"}
    recorded = record(rt.ledger.table, heartbeat, rt.ledger.clock())
    metrics.add_metric(name="HeartbeatsRecorded", unit=MetricUnit.Count, value=int(recorded))
    return {**where, "recorded": recorded, "at": heartbeat.at.isoformat()}
