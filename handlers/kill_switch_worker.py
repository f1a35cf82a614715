"""Does the flip/restore a Slack button asked for (queued by handlers.slack_actions), then updates the
original Slack message through response_url with who did what and the outcome. SQS batch with
Powertools' partial-failure reporting: one failing record is retried (then dead-lettered) alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from slack_sdk.webhook import WebhookClient

from automations.kill_switches import Switchboard
from automations.slack_interactions import Press, perform, updated_blocks
from handlers._wiring import logger, runtime, tracer

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> dict[str, Any]:
    job = json.loads(record.body)
    rt = runtime()
    result = perform(job, Switchboard(rt.ledger.table, rt.broker.client))
    press = Press(**job["press"])
    if press.response_url:
        WebhookClient(press.response_url).send(
            text=result.sentence(), blocks=updated_blocks(press, result, datetime.now(UTC)), replace_original=True
        )
    logger.info("kill switch", extra={"outcome": result.outcome, "target": str(result.target)})
    return {"outcome": result.outcome, "target": str(result.target)}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
