"""Every few minutes: close runs left RUNNING past their deadline (a dead execution or CLI process) and
deliver announcements the outbox still holds. Metrics: runs reaped, announcements delivered and still
undelivered (alarmed in template.yaml)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations import catalog  # noqa: F401  (task kinds announce their reaped runs)
from automations.breach_checks.alerts import ALERT_STATE_GRANTS, AlertBook
from automations.breach_checks.checks import reap_check_runs
from automations.breach_checks.rules import QUOTAS_FILE
from automations.core import iam
from automations.core.runs import reap_task_runs
from automations.core.sweeper import flush_outbox
from handlers._wiring import logger, metrics, notifier, runtime, tracer

PERMISSIONS = {
    "handler": iam.LEDGER_CLOSE_RUN
    | iam.LEDGER_RECORD_UNIT
    | iam.OUTBOX
    | iam.PENDING_LIST
    | ALERT_STATE_GRANTS
    | iam.NOTIFY
    | iam.READ_FLEET,
}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    alerts = notifier()
    reaped = reap_task_runs(rt.ledger, alerts, rules=rt.rules)
    reaped += reap_check_runs(
        rt.ledger, rules=rt.rules.get(QUOTAS_FILE), fleet=rt.fleet, book=AlertBook(rt.ledger.table), notifier=alerts
    )
    counts = flush_outbox(rt.ledger, alerts)
    metrics.add_metric(name="RunsReaped", unit=MetricUnit.Count, value=len(reaped))
    metrics.add_metric(name="AnnouncementsDelivered", unit=MetricUnit.Count, value=counts["delivered"])
    metrics.add_metric(name="AnnouncementsUndelivered", unit=MetricUnit.Count, value=counts["still_pending"])
    result = {"reaped": [r["run_id"] for r in reaped], **counts}
    logger.info("swept", extra=result)
    return result
