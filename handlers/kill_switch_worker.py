"""Does the flip/restore a Slack press asked for (queued by handlers.slack_actions) and updates the
original message; a flip only while its alert is still open. SQS batch with Powertools' partial-failure
reporting (one failing record is retried, then dead-lettered, alone) and Idempotency on the request: a
redelivered message changes nothing."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.core import iam
from automations.core.boundary import loads
from automations.kill_switches.slack_buttons import complete, parse_job
from automations.kill_switches.switchboard import CAPABILITY_NAME, SWITCHBOARD_GRANTS
from handlers._kill_switches import breach_alerts, switchboard
from handlers._wiring import idempotency_store, logger, runtime, tracer

PERMISSIONS = {
    "handler": SWITCHBOARD_GRANTS
    | iam.IDEMPOTENCY_STORE
    | iam.READ_FLEET
    | iam.DISCOVER_FLEET
    | iam.assume_member_role(CAPABILITY_NAME),
}

processor = BatchProcessor(event_type=EventType.SQS)
idempotency = IdempotencyConfig(event_key_jmespath="request_id")


@idempotent_function(data_keyword_argument="job", config=idempotency, persistence_store=idempotency_store())
def do(job: dict[str, Any]) -> dict[str, Any]:
    rt = runtime()
    result = complete(job, switchboard(rt), breach_alerts(rt.ledger.table))
    logger.info("kill switch", extra={"outcome": result.outcome, "target": str(result.target)})
    return {"outcome": result.outcome, "target": str(result.target)}


def record_handler(record: SQSRecord) -> dict[str, Any]:
    # A job that cannot be read fails this record alone: redelivered, then dead-lettered with the others'
    # success kept (partial batch response).
    job = loads(record.body, f"message {record.message_id}", "body")
    parse_job(job)
    return do(job=job)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> Any:
    idempotency.register_lambda_context(context)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
