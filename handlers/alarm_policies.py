"""EventBridge "CloudWatch Alarm State Change" -> kill-switch policies (flip on ALARM, restore on OK).
Idempotent on the event id; a failure raises so retries and then the dead-letter queue keep the event."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.kill_switch_policies import Policy, load_policies, on_alarm_event, policy_alert
from automations.kill_switches import Switchboard
from handlers._wiring import idempotency_store, logger, notifier, runtime, tracer


@cache
def _policies() -> tuple[Policy, ...]:
    return load_policies(runtime().settings.rules_dir / "kill_switches.yaml")


@logger.inject_lambda_context(correlation_id_path="id")
@tracer.capture_lambda_handler
@idempotent(config=IdempotencyConfig(event_key_jmespath="id"), persistence_store=idempotency_store())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    results = on_alarm_event(event, _policies(), Switchboard(rt.ledger.table, rt.broker.client))
    if alert := policy_alert(event, results):
        notifier().send(alert)
    return {"results": [{"target": str(r.target), "outcome": r.outcome} for r in results]}
