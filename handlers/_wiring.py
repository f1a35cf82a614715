"""Per-container wiring shared by the handlers: settings from the environment, Powertools objects,
and the runtime (ledger, fleet, broker, notifier) built once per cold start."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

from automations.core.fleet import CLIENT_CONFIG
from automations.core.notify import Notifier
from automations.core.runtime import Runtime, Settings, build_notifier, build_runtime

logger = Logger()
tracer = Tracer()
metrics = Metrics()


def runtime() -> Runtime:
    """Built once per container, rebuilt when the fleet parameter changes (Powertools re-reads it
    every 5 minutes), so a new member account is picked up without a redeploy."""
    fleet_parameter = os.environ.get("OPSBOT_FLEET_PARAMETER")
    fleet_text = parameters.get_parameter(fleet_parameter, max_age=300) if fleet_parameter else None
    return _runtime_for(str(fleet_text) if fleet_text else None)


@lru_cache(maxsize=1)
def _runtime_for(fleet_text: str | None) -> Runtime:
    return build_runtime(Settings.from_mapping(os.environ), boto3.Session(), fleet_text=fleet_text)


def reset() -> None:
    """Forget the built runtime (tests switch rules and tables between cases)."""
    _runtime_for.cache_clear()
    _notifier_for.cache_clear()
    sqs.cache_clear()


def notifier() -> Notifier:
    secret_name = os.environ.get("OPSBOT_SLACK_SECRET_NAME")
    # Powertools Parameters caches for max_age seconds: a rotated token is picked up without a redeploy.
    token = parameters.get_secret(secret_name, max_age=300) if secret_name else None
    return _notifier_for(str(token) if token else None)


@lru_cache(maxsize=2)
def _notifier_for(token: str | None) -> Notifier:
    """Clients are reused across warm invocations; a new token builds a new notifier."""
    return build_notifier(Settings.from_mapping(os.environ), boto3.Session(), token)


@lru_cache(maxsize=1)
def sqs() -> Any:
    return boto3.client("sqs", config=CLIENT_CONFIG)


def idempotency_store() -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=os.environ.get("OPSBOT_IDEMPOTENCY_TABLE", "opsbot-idempotency"))
