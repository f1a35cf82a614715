"""Per-container wiring shared by the handlers: settings from the environment, Powertools objects,
and the runtime (ledger, fleet, broker, notifier) built once per cold start.

What a handler does not use is not imported: the tracer (with the X-Ray SDK) is made on first use of
``tracer``, and Powertools Parameters only when a fleet parameter or a Slack secret is configured. The
runtime, the notifier and the idempotency store share one boto3 session, so each service model is
loaded once per container.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger, Metrics

from automations.core.fleet import CLIENT_CONFIG
from automations.core.notify import NOTIFICATION_FAILURES_METRIC, Notifier
from automations.core.runtime import Runtime, Settings, build_notifier, build_runtime

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    tracer: Tracer

logger = Logger()
metrics = Metrics()


def __getattr__(name: str) -> Any:
    """``tracer`` on first use: Powertools' Tracer imports the X-Ray SDK even when tracing is off."""
    if name != "tracer":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from aws_lambda_powertools import Tracer

    made = globals()["tracer"] = Tracer()
    return made


def traced(function: Any) -> Any:
    """``tracer.capture_lambda_handler`` only when tracing is on: Powertools' Tracer imports the X-Ray SDK
    even when tracing is off, a cost every cold start would pay."""
    # ``__getattr__`` makes the tracer on first use: a plain globals() lookup would not call it.
    if not tracing_enabled():
        return function
    made = globals().get("tracer") or __getattr__("tracer")
    return made.capture_lambda_handler(function)


def tracing_enabled() -> bool:
    """As Powertools decides: off when POWERTOOLS_TRACE_DISABLED is true, or outside Lambda (or in SAM local)."""
    if os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in ("1", "true", "yes", "on", "y", "t"):
        return False
    return bool(os.environ.get("LAMBDA_TASK_ROOT")) and not os.environ.get("AWS_SAM_LOCAL")


@lru_cache(maxsize=1)
def session() -> boto3.Session:
    """The container's one boto3 session (clients made from it share the loaded service models)."""
    _use_session_for_parameters()
    return boto3.Session()


class _OnSession:
    """A Powertools Parameters provider made on first use from the container's session: by default each
    provider makes a boto3 session of its own, which loads botocore's data (endpoints, models) again."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @cached_property
    def provider(self) -> Any:
        from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider

        made = {"ssm": SSMProvider, "secrets": SecretsProvider}[self.kind]
        return made(boto3_session=session())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.provider, name)


def _use_session_for_parameters() -> None:
    """``parameters.get_parameter`` / ``get_secret`` (here and in the handlers) go through these."""
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

    for kind in ("ssm", "secrets"):
        if not isinstance(DEFAULT_PROVIDERS.get(kind), _OnSession):
            DEFAULT_PROVIDERS[kind] = _OnSession(kind)


def runtime() -> Runtime:
    """Built once per container. The fleet document (the SSM parameter) is read on first use of the
    fleet, and again when Powertools' 5-minute cache of it expires, so a new member account is picked up
    without a redeploy, and a function that never asks about the fleet (the Slack endpoint) never reads
    it (issue 15: its cold acknowledgement)."""
    return _runtime_for(os.environ.get("OPSBOT_FLEET_PARAMETER") or None)


def _fleet_parameter_reader(name: str) -> Callable[[], str | None]:
    def read() -> str | None:
        session()  # Powertools' providers on the hub session (_use_session_for_parameters)
        from aws_lambda_powertools.utilities import parameters

        text = parameters.get_parameter(name, max_age=300)
        return str(text) if text else None

    return read


@lru_cache(maxsize=1)
def _runtime_for(fleet_parameter: str | None) -> Runtime:
    reader = _fleet_parameter_reader(fleet_parameter) if fleet_parameter else None
    return build_runtime(Settings.from_mapping(os.environ), session(), fleet_text=reader)


def reset() -> None:
    """Forget the built runtime (tests switch rules and tables between cases)."""
    _runtime_for.cache_clear()
    _notifier_for.cache_clear()
    sqs.cache_clear()
    session.cache_clear()
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

    for kind in ("ssm", "secrets"):  # made again, with what they cached, from the next session
        if isinstance(DEFAULT_PROVIDERS.get(kind), _OnSession):
            del DEFAULT_PROVIDERS[kind]


def notifier() -> Notifier:
    secret_name = os.environ.get("OPSBOT_SLACK_SECRET_NAME")
    token = None
    if secret_name:
        session()
        from aws_lambda_powertools.utilities import parameters

        # Powertools Parameters caches for max_age seconds: a rotated token is picked up without a redeploy.
        token = parameters.get_secret(secret_name, max_age=300)
    return _notifier_for(str(token) if token else None)


@lru_cache(maxsize=2)
def _notifier_for(token: str | None) -> Notifier:
    """Clients are reused across warm invocations; a new token builds a new notifier."""
    built = build_notifier(Settings.from_mapping(os.environ), session(), token)
    built.on_failure = count_notification_failure
    return built


def count_notification_failure(channel: str, error: str) -> None:
    """One ``NotificationFailures`` datapoint per failed channel (alarmed in template.yaml), flushed at once
    as EMF: it reaches CloudWatch whether or not the handler flushes ``metrics`` itself."""
    from aws_lambda_powertools.metrics import MetricUnit
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

    emf = AmazonCloudWatchEMFProvider(namespace=metrics.namespace, service=metrics.service)
    emf.add_metric(name=NOTIFICATION_FAILURES_METRIC, unit=MetricUnit.Count, value=1)
    emf.add_metadata(key="channel", value=channel)
    emf.flush_metrics()


@lru_cache(maxsize=1)
def sqs() -> Any:
    return session().client("sqs", config=CLIENT_CONFIG)


def idempotency_store() -> DynamoDBPersistenceLayer:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(
        table_name=os.environ.get("OPSBOT_IDEMPOTENCY_TABLE", "opsbot-idempotency"), boto3_session=session()
    )
