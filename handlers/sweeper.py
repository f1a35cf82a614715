"""Every few minutes: close runs left RUNNING past their deadline (a dead execution or CLI process), alert
on member regions whose heartbeat went silent (and on their recovery), and deliver announcements the
outbox still holds. Metrics: runs reaped, announcements delivered and still
undelivered (alarmed in template.yaml)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.breach_checks.alerts import ALERT_STATE_GRANTS
from automations.catalog import housekeeping
from automations.core import iam
from automations.core.heartbeat import WATCH_GRANTS as HEARTBEAT_WATCH_GRANTS
from handlers._wiring import logger, metrics, notifier, runtime, tracer

PERMISSIONS = {
    "handler": iam.LEDGER_CLOSE_RUN
    | iam.LEDGER_RECORD_UNIT
    | iam.OUTBOX
    | iam.PENDING_LIST
    | ALERT_STATE_GRANTS
    | HEARTBEAT_WATCH_GRANTS
    | iam.NOTIFY
    | iam.READ_FLEET
    | iam.DISCOVER_FLEET
    | iam.MANIFEST_READ,
}


class SweepIncomplete(Exception):
    """Raised after everything else was done, so the function's Errors alarm tells on-call."""


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = housekeeping(runtime(), notifier())
    metrics.add_metric(name="RunsReaped", unit=MetricUnit.Count, value=len(result.reaped))
    metrics.add_metric(name="AnnouncementsDelivered", unit=MetricUnit.Count, value=result.announcements["delivered"])
    undelivered = result.announcements["still_pending"]
    metrics.add_metric(name="AnnouncementsUndelivered", unit=MetricUnit.Count, value=undelivered)
    summary = {"reaped": [r["run_id"] for r in result.reaped], **result.announcements, "errors": result.errors}
    logger.info("swept", extra=summary)
    if result.errors:
        raise SweepIncomplete("; ".join(result.errors)[:2000])
    return summary
