"""Where the CLI points: the local embedded AWS when `opsbot local up` has run, else the usual AWS
credential chain. Either way only standard settings (AWS_ENDPOINT_URL, credentials) are used."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

import boto3

from opsbot.local import server

LOCAL_REGION = "us-east-1"
FUNCTION_KEYS_ENV = "OPSBOT_LOCAL_FUNCTION_KEYS"  # handler -> its role's credentials (JSON)


def local_environment(state: Mapping[str, object]) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": str(state["endpoint"]),
        "AWS_DEFAULT_REGION": LOCAL_REGION,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        # Disabled metrics still accumulate; with a namespace they serialize like on AWS (template Globals).
        "POWERTOOLS_METRICS_NAMESPACE": "Opsbot",
        "POWERTOOLS_LOG_LEVEL": "ERROR",  # handlers run in this process: keep their JSON logs quiet
        "POWERTOOLS_SERVICE_NAME": "opsbot",
    }
    # The operator role's session (template.yaml OperatorRole), as `opsbot local seed` assumed it.
    keys = state.get("operator_keys") or server.BOOTSTRAP_CREDENTIALS
    env.update({k: str(v) for k, v in dict(keys).items()})  # type: ignore[call-overload]
    if functions := state.get("function_keys"):
        # Each handler the local event router delivers to runs as its own function role (events.py).
        env[FUNCTION_KEYS_ENV] = json.dumps(functions)
    env.update({k: str(v) for k, v in dict(state.get("hub_env") or {}).items()})  # type: ignore[call-overload]
    return env


def apply_local_environment(state: Mapping[str, object]) -> None:
    """Point this process at the local AWS as the hub operator; no stray token or profile may win."""
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", FUNCTION_KEYS_ENV):
        os.environ.pop(name, None)
    os.environ.update(local_environment(state))


class LocalAwsError(Exception):
    """The local AWS was started (`opsbot local up`) but is not answering, or was never seeded."""


def activate() -> bool:
    """Point this process at the local AWS if one was started and nothing else was asked for. Raises
    ``LocalAwsError`` when it was started but is down now, or is up but was not seeded: every command
    would otherwise fail deep inside with a connection or missing-table error."""
    state = server.read_state()
    if not state or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("OPSBOT_USE_AWS"):
        return False
    endpoint = state.get("endpoint")
    if not endpoint or not server.is_up(str(endpoint)):
        raise LocalAwsError(
            f"the local AWS ({endpoint or 'no endpoint recorded'}) is not running: "
            "run `opsbot local up`, then `opsbot local seed`"
        )
    if not state.get("hub_env"):
        raise LocalAwsError(f"the local AWS at {endpoint} is up but not seeded: run `opsbot local seed`")
    apply_local_environment(state)
    print(f"(local AWS at {state['endpoint']})", file=sys.stderr)
    return True


def session() -> boto3.Session:
    return boto3.Session()
