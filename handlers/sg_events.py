"""EventBridge "AWS API Call via CloudTrail" events for security-group rule changes -> remediation.

Member accounts forward these events to the hub's bus; the handler acts in ``event.account`` /
``event.region`` through the assumed role. Idempotent on the event id (Powertools Idempotency, DynamoDB
persistence): a redelivered event returns the first result without a second revoke or alert. A failure
raises, so Lambda's retries and then the dead-letter queue keep the event.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.core import iam
from automations.core.boundary import InputError, source_id
from automations.security_groups.enforcement import FINDINGS_GRANTS
from automations.security_groups.policy import POLICY_FILE
from automations.security_groups.remediation import handle_event
from handlers._wiring import idempotency_store, logger, metrics, notifier, runtime, tracer

PERMISSIONS = {
    "handler": iam.LEDGER_RECORD_EVENT
    | FINDINGS_GRANTS
    | iam.OUTBOX
    | iam.IDEMPOTENCY_STORE
    | iam.NOTIFY
    | iam.READ_FLEET
    | iam.ASSUME_MEMBER_ROLE,
}


@logger.inject_lambda_context(correlation_id_path="id")
@tracer.capture_lambda_handler
@metrics.log_metrics
@idempotent(
    # EventBridge always sends an id; an event without one is still judged (fail closed), just not deduplicated.
    config=IdempotencyConfig(event_key_jmespath="id", raise_on_no_idempotency_key=False),
    persistence_store=idempotency_store(),
)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    if not rt.rules.exists(POLICY_FILE):
        raise InputError(source_id(event), "rules/security_groups.yaml", "not in the package")
    result = handle_event(event, rt.broker, rt.rules.get(POLICY_FILE), rt.ledger, notifier())
    for name in ("revoked", "alerted", "failed"):
        metrics.add_metric(name=f"SgRules{name.title()}", unit=MetricUnit.Count, value=result["counts"].get(name, 0))
    logger.info("security-group event handled", extra=result)
    return result
