"""Slack interactivity endpoint (API Gateway -> Powertools Event Handler): kill switch buttons.

Verifies and authorizes within Slack's 3-second budget, queues the work for handlers.kill_switch_worker,
and answers 200 at once. A refusal after the signature checked out is shown to the presser (ephemeral,
through response_url); a bad signature, stale timestamp or replay gets 401 and nothing else.
"""

from __future__ import annotations

import base64
import json
import os
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext
from slack_sdk.webhook import WebhookClient

from automations.breach_alerts import AlertBook
from automations.fleet import CLIENT_CONFIG
from automations.kill_switches import Switchboard
from automations.slack_interactions import OnCall, Rejected, accept, load_oncall
from handlers._wiring import logger, notifier, runtime, tracer

app = APIGatewayRestResolver()


@cache
def _oncall() -> OnCall:
    return load_oncall(runtime().settings.rules_dir / "oncall.yaml")


@cache
def _sqs() -> Any:
    return boto3.client("sqs", config=CLIENT_CONFIG)


def _signing_secret() -> str:
    return str(parameters.get_secret(os.environ["OPSBOT_SLACK_SIGNING_SECRET_NAME"], max_age=300))


@app.post("/slack/actions")
def slack_actions() -> Response[str]:
    event = app.current_event
    body = event.body or ""
    if event.is_base64_encoded:
        body = base64.b64decode(body).decode()
    rt = runtime()
    board = Switchboard(rt.ledger.table, rt.broker.client)
    try:
        job = accept(
            body,
            dict(event.headers or {}),
            signing_secret=_signing_secret(),
            table=rt.ledger.table,
            oncall=_oncall(),
            slack=notifier().slack,
            lookup_alert=AlertBook(rt.ledger.table).get,
            board=board,
        )
    except Rejected as exc:
        logger.warning("slack action refused", extra={"status": exc.status, "reason": exc.reason})
        if exc.status == 403:  # verified, but not allowed: tell the presser why
            url = json.loads(_payload(body)).get("response_url")
            if url:
                WebhookClient(url).send(
                    text=f":no_entry: {exc.reason}", response_type="ephemeral", replace_original=False
                )
            return Response(status_code=200, content_type="text/plain", body="")
        return Response(status_code=exc.status, content_type="text/plain", body=exc.reason)
    _sqs().send_message(QueueUrl=os.environ["OPSBOT_KILLSWITCH_QUEUE_URL"], MessageBody=json.dumps(job))
    logger.info("slack action queued", extra={"target": job["target"], "press": job["press"]["action"]})
    return Response(status_code=200, content_type="text/plain", body="")


def _payload(body: str) -> str:
    from urllib.parse import parse_qs

    return parse_qs(body).get("payload", ["{}"])[0]


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
