"""Kill-switch part of the local fleet: functions to switch off, the signing secret, the work queue,
and opsbot's own schedule rules in the hub (for `opsbot pause`)."""

from __future__ import annotations

import secrets
from typing import Any

import boto3

from opsbot.local.events import create_queues, install_schedules
from opsbot.local.lambda_functions import create_functions

SIGNING_SECRET_NAME = "opsbot/slack-signing-secret"
REGION = "us-east-1"
FUNCTIONS = {"orders-consumer": 25, "reporting-export": None}  # name -> reserved concurrency (None: unreserved)


def seed_functions(member: boto3.Session) -> list[str]:
    create_functions(member, REGION, "orders-service", FUNCTIONS)
    return list(FUNCTIONS)


def seed_killswitch(base: boto3.Session, member: boto3.Session, account: str) -> dict[str, Any]:
    functions = seed_functions(member)
    signing_secret = secrets.token_hex(16)
    sm = base.client("secretsmanager")
    sm.create_secret(Name=SIGNING_SECRET_NAME, SecretString=signing_secret)
    queues = create_queues(base)
    rules = install_schedules(base)
    return {
        "signing_secret": signing_secret,
        "queues": queues,
        "killswitch_env": {
            "OPSBOT_SLACK_SIGNING_SECRET_NAME": SIGNING_SECRET_NAME,
            "OPSBOT_KILLSWITCH_QUEUE_URL": queues["KillSwitchQueue"],
        },
        "functions": {"account": account, "region": REGION, "names": functions},
        "line": f"kill switches: functions {', '.join(functions)} in {account}/{REGION}; "
        f"{len(rules)} opsbot schedule rules in the hub; signing secret in Secrets Manager",
    }
