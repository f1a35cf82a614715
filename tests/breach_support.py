"""Shared fixtures and helpers for the breach-flag tests (Lambda concurrency, service quotas).

Everything runs on moto (``mock_aws``) with the local shim (opsbot/local/aws_shims.py) installed for
the length of a test: moto lacks lambda:GetAccountSettings and Service Quotas data. Alerts go out
through the real Notifier to moto SNS, subscribed by an SQS queue the tests read.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest

from automations.breach_checks.alerts import AlertBook
from automations.breach_checks.rules import BreachRules, load_breach_rules
from automations.core.notify import Notifier
from opsbot.local.aws_shims import shims

RULES = """
thresholds: {warn_percent: 80, critical_percent: 95, hysteresis_percent: 5, reminder_hours: 6}
lambda_concurrency: {lookback_minutes: 10, top_functions: 3}
service_quotas: {services: [ec2, vpc], lookback_minutes: 60}
"""


def rules(text: str = RULES) -> BreachRules:
    return load_breach_rules("rules/quotas.yaml", text)


@pytest.fixture
def shimmed(aws: None) -> Iterator[None]:
    with shims():
        yield


@dataclass
class Inbox:
    """An SNS topic (what the Notifier publishes to) and the SQS queue subscribed to it."""

    notifier: Notifier
    sqs: Any
    queue_url: str

    def alerts(self) -> list[dict[str, Any]]:
        out = []
        while True:
            msgs = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(json.loads(m["Body"])["Message"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])


@pytest.fixture
def inbox(hub_session: boto3.Session) -> Inbox:
    sns = hub_session.client("sns")
    topic = sns.create_topic(Name="opsbot-alerts")["TopicArn"]
    sqs = hub_session.client("sqs")
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return Inbox(Notifier(sns=sns, topic_arn=topic), sqs, queue)


@pytest.fixture
def book(ledger: Any) -> AlertBook:
    return AlertBook(ledger.table)


def put_metric(
    cloudwatch: Any,
    namespace: str,
    name: str,
    value: float,
    at: datetime,
    dimensions: dict[str, str] | None = None,
) -> None:
    """What AWS publishes itself (AWS/Lambda, AWS/Usage), put with PutMetricData: moto accepts it."""
    cloudwatch.put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": name,
                "Value": value,
                "Timestamp": at,
                "Dimensions": [{"Name": k, "Value": v} for k, v in (dimensions or {}).items()],
            }
        ],
    )


def lambda_usage(cloudwatch: Any, at: datetime, total: float, unreserved: float, **functions: float) -> None:
    put_metric(cloudwatch, "AWS/Lambda", "ConcurrentExecutions", total, at)
    put_metric(cloudwatch, "AWS/Lambda", "UnreservedConcurrentExecutions", unreserved, at)
    for name, value in functions.items():
        put_metric(cloudwatch, "AWS/Lambda", "ConcurrentExecutions", value, at, {"FunctionName": name})


def create_function(lam: Any, iam: Any, name: str, reserved: int | None = None) -> str:
    try:
        role = iam.get_role(RoleName="fn-role")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        role = iam.create_role(RoleName="fn-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return event\n")
    arn: str = lam.create_function(
        FunctionName=name, Runtime="python3.11", Role=role, Handler="app.handler", Code={"ZipFile": code.getvalue()}
    )["FunctionArn"]
    if reserved is not None:
        lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=reserved)
    return arn


def minutes_ago(now: datetime, n: float) -> datetime:
    return now - timedelta(minutes=n)
