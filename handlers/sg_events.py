"""EventBridge "AWS API Call via CloudTrail" events for security-group rule changes -> remediation.

Member accounts forward these events to the hub's bus; the handler acts in ``event.account`` /
``event.region`` through the assumed role. Idempotent on the event id (Powertools Idempotency, DynamoDB
persistence): a redelivered event returns the first result without a second revoke or alert. A failure
raises, so Lambda's retries and then the dead-letter queue keep the event.

Built for the cold start (most of these events land on a cold container): only the remediation path is
imported (not the run engine, slack-sdk, YAML or JSON-schema; the rules are compiled at package time);
in Lambda the runtime is built during init; the group's tags (the exemption lookup) are read while the
idempotency record is written, and so is each rule's claim; the revoke comes before the exemption and
alert-only claims, the ledger record and the alert; the Slack token is read after the revoke.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.typing import LambdaContext

from automations.core import iam
from automations.core.boundary import InputError, source_id
from automations.security_groups.enforcement import FINDINGS_GRANTS
from automations.security_groups.policy import POLICY_FILE
from automations.security_groups.remediation import CAPABILITY_NAME, Lookahead, handle_event
from handlers import _wiring
from handlers._wiring import idempotency_store, logger, metrics, notifier, runtime, traced

PERMISSIONS = {
    "handler": iam.LEDGER_RECORD_EVENT
    | FINDINGS_GRANTS
    | iam.OUTBOX
    | iam.IDEMPOTENCY_STORE
    | iam.NOTIFY
    | iam.READ_FLEET
    | iam.DISCOVER_FLEET  # is the event's account in the fleet (one account's lookup, core/organization.py)
    | iam.assume_member_role(CAPABILITY_NAME),
}

_lookahead: ContextVar[Lookahead | None] = ContextVar("sg_lookahead", default=None)


@idempotent(
    # EventBridge always sends an id; an event without one is still judged (fail closed), just not deduplicated.
    config=IdempotencyConfig(event_key_jmespath="id", raise_on_no_idempotency_key=False),
    persistence_store=idempotency_store(),
)
def _remediate(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    if not rt.rules.exists(POLICY_FILE):
        raise InputError(source_id(event), "rules/security_groups.yaml", "not in the package")
    result = handle_event(event, rt.broker, rt.rules.get(POLICY_FILE), rt.ledger, notifier, ahead=_lookahead.get())
    for name in ("revoked", "alerted", "failed"):
        metrics.add_metric(name=f"SgRules{name.title()}", unit=MetricUnit.Count, value=result["counts"].get(name, 0))
    logger.info("security-group event handled", extra=result)
    return result


@logger.inject_lambda_context(correlation_id_path="id")
@traced
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    lookahead = None
    try:
        rt = runtime()
        if rt.rules.exists(POLICY_FILE):
            lookahead = Lookahead(event, rt.broker, rt.rules.get(POLICY_FILE), rt.ledger.table, datetime.now(UTC))
    except Exception:  # only a head start: the idempotent path builds, reads and raises again
        logger.debug("no tag lookahead", exc_info=True)
    token = _lookahead.set(lookahead)
    try:
        return _remediate(event, context)
    finally:
        _lookahead.reset(token)


def _init() -> None:
    """In Lambda, during init: what the first revoke needs, so the first event does not build it: the
    runtime (fleet, rules, ledger), the broker's STS client in this region, and the EC2 service model the
    member clients are made from (loaded, not a client: the hub never calls EC2). Not the notifier: the
    Slack token read (Secrets Manager) and slack-sdk come after the revoke (``handle_event`` asks for the
    notifier then), since the first event waits for init."""
    try:
        rt = runtime()
        rt.fleet.document  # noqa: B018 - the fleet parameter read, done at init rather than on the first event
        if rt.rules.exists(POLICY_FILE):
            rt.rules.get(POLICY_FILE)
        rt.broker.sts(_wiring.session().region_name or "us-east-1")
        # botocore keeps the loaded model (about 0.15 s of JSON for EC2): the member's clients are cheap.
        _wiring.session()._session.get_service_model("ec2")
    except Exception:  # the first invocation builds it again and raises what it raises
        logger.warning("runtime not built at init", exc_info=True)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    _init()
