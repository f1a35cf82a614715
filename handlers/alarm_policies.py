"""EventBridge "CloudWatch Alarm State Change" -> kill-switch policies (flip on ALARM, restore on OK).
Idempotent on the event id; a failure raises so retries and then the dead-letter queue keep the event.
The payload CloudWatch sends when this function is itself an alarm's action is refused the same way:
a designed error, recorded and announced (once an hour), then the dead-letter queue."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.core import iam
from automations.core.boundary import InputError
from automations.core.intake import report_unreadable
from automations.core.outbox import Outbox
from automations.kill_switches.policies import POLICIES_FILE, on_alarm_event, policy_alert
from automations.kill_switches.switchboard import CAPABILITY_NAME, SWITCHBOARD_GRANTS
from handlers._kill_switches import switchboard
from handlers._wiring import idempotency_store, logger, notifier, runtime, tracer

RUNBOOK = "docs/runbooks/kill-switch.md"

PERMISSIONS = {
    "handler": SWITCHBOARD_GRANTS
    | iam.OUTBOX
    | iam.IDEMPOTENCY_STORE
    | iam.NOTIFY
    | iam.READ_FLEET
    | iam.DISCOVER_FLEET
    | iam.assume_member_role(CAPABILITY_NAME),
}


@logger.inject_lambda_context(correlation_id_path="id")
@tracer.capture_lambda_handler
@idempotent(config=IdempotencyConfig(event_key_jmespath="id"), persistence_store=idempotency_store())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    try:
        results = on_alarm_event(event, rt.rules.get(POLICIES_FILE), switchboard(rt))
    except InputError as exc:  # recorded, announced once an hour, then raised for the dead-letter queue
        report_unreadable("alarm event", event, exc, rt.ledger, notifier(), rt.ledger.clock(), RUNBOOK)
        raise
    if alert := policy_alert(event, results):
        Outbox(rt.ledger.table, notifier(), rt.ledger.clock).announce(f"policy#{event.get('id')}", alert)
    return {"results": [{"target": str(r.target), "outcome": r.outcome} for r in results]}
