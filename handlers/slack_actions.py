"""Slack interactivity endpoint (API Gateway -> Powertools Event Handler): kill switch buttons.

Parses the request, hands it to automations.kill_switches.slack_buttons.handle_request (verify, authorize,
resolve the alert, queue for handlers.kill_switch_worker) and returns its answer within Slack's 3 s. A
press on an alert that is no longer open is refused here (ephemeral) and queued only so the worker can
take the button off the message.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.core import iam
from automations.kill_switches.slack_buttons import ONCALL_FILE, REQUEST_GRANTS, handle_request, queue_sender
from handlers._kill_switches import breach_alerts, switchboard
from handlers._wiring import logger, notifier, runtime, sqs, traced

app = APIGatewayRestResolver()
PERMISSIONS = {
    # Replay guard (a put per request), the alert and the switch a press names (by-time index).
    "handler": REQUEST_GRANTS
    | iam.grants(iam.LEDGER, "dynamodb:GetItem")
    | iam.LEDGER_LISTS
    | iam.grants("KillSwitchQueue", "sqs:SendMessage")
    | iam.grants("SlackSigningSecret", "secretsmanager:GetSecretValue")
    | iam.grants("SlackBotTokenSecret", "secretsmanager:GetSecretValue")  # on-call user groups
    | iam.READ_FLEET,
}


@app.post("/slack/actions")
def slack_actions() -> Response[str]:
    event = app.current_event
    rt = runtime()
    answer = handle_request(
        event.get("body"),
        event.get("headers") or {},
        base64_encoded=bool(event.get("isBase64Encoded")),
        enqueue=queue_sender(sqs(), os.environ["OPSBOT_KILLSWITCH_QUEUE_URL"]),
        signing_secret=str(parameters.get_secret(os.environ["OPSBOT_SLACK_SIGNING_SECRET_NAME"], max_age=300)),
        table=rt.ledger.table,
        oncall=rt.rules.get(ONCALL_FILE),
        slack=notifier().slack,
        lookup_alert=breach_alerts(rt.ledger.table),
        board=switchboard(rt),
    )
    logger.info("slack action answered", extra={"status": answer.status, "reason": answer.body[:200]})
    return Response(status_code=answer.status, content_type=answer.content_type, body=answer.body)


@logger.inject_lambda_context
@traced  # the endpoint's cold start is inside Slack's 3-second budget
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
