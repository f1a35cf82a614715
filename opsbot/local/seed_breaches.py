"""Breach-flag part of the local fleet: an account at 85% of its Lambda concurrency and a quota at 96%.

Usage that AWS publishes itself (AWS/Lambda concurrency, AWS/Usage ResourceCount) is put with
PutMetricData into the member account, which the local AWS (moto) accepts and AWS would not; limits
come from the local shim (opsbot/local/aws_shims.py): the Lambda account limit is the account's
"Concurrent executions" quota, and a quota increase request is approved at once. The datapoints are
two minutes old at seed time, so the 10-minute Lambda window sees them for about eight minutes and the
hourly quota window for about an hour.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from automations.core.fleet import Fleet
from opsbot.local.lambda_functions import create_functions

LAMBDA_REGION = "us-east-1"
QUOTA_REGION = "eu-west-1"
STANDARD_VCPUS = "L-1216C47A"  # Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances
LAMBDA_PERCENT = 0.85
QUOTA_LIMIT, QUOTA_USAGE = 500, 480  # 96%
# Functions of this story; whatever other functions the account has keep their reservations.
FUNCTIONS = {"checkout-api": None, "image-resize": None, "ledger-sync": 100}  # name -> reserved concurrency
LEDGER_SYNC_PEAK = 62  # 62% of its reservation: below the warning
METRICS_STANDIN = "aws-metrics-standin"


def _datum(name: str, value: float, at: datetime, **dims: str) -> dict[str, Any]:
    return {
        "MetricName": name,
        "Value": value,
        "Timestamp": at,
        "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
    }


def seed_lambda_concurrency(member: boto3.Session, at: datetime) -> str:
    """Functions, then concurrency metrics putting the account's claimed concurrency at 85% of its limit."""
    create_functions(member, LAMBDA_REGION, "storefront-functions", FUNCTIONS)
    lam = member.client("lambda", region_name=LAMBDA_REGION)
    limits = lam.get_account_settings()["AccountLimit"]  # the shim: limit and what reservations leave
    limit, unreserved_limit = limits["ConcurrentExecutions"], limits["UnreservedConcurrentExecutions"]
    allocated = limit - unreserved_limit
    # ClaimedAccountConcurrency = unreserved usage + every reservation (Lambda Developer Guide).
    unreserved = round(LAMBDA_PERCENT * limit) - allocated
    checkout = round(unreserved * 0.6)
    data = lambda_usage_data(
        unreserved,
        allocated,
        at,
        **{"checkout-api": checkout, "image-resize": unreserved - checkout, "ledger-sync": LEDGER_SYNC_PEAK},
    )
    cloudwatch: Any = member.client("cloudwatch", region_name=LAMBDA_REGION)
    cloudwatch.put_metric_data(Namespace="AWS/Lambda", MetricData=data)
    return (
        f"Lambda in {LAMBDA_REGION}: claimed concurrency {unreserved + allocated} of {limit} "
        f"({100 * (unreserved + allocated) / limit:.0f}%), functions {', '.join(FUNCTIONS)}"
    )


def seed_quota(member: boto3.Session, at: datetime) -> str:
    """An EC2 vCPU quota raised to 500 with 480 in use (96%), and a little G-family usage."""
    sq = member.client("service-quotas", region_name=QUOTA_REGION)
    sq.request_service_quota_increase(ServiceCode="ec2", QuotaCode=STANDARD_VCPUS, DesiredValue=QUOTA_LIMIT)
    usage = {"Standard/OnDemand": QUOTA_USAGE, "G/OnDemand": 64}
    cloudwatch: Any = member.client("cloudwatch", region_name=QUOTA_REGION)
    cloudwatch.put_metric_data(
        Namespace="AWS/Usage",
        MetricData=[
            _datum(
                "ResourceCount",
                value,
                at - timedelta(minutes=8),
                Class=cls,
                Resource="vCPU",
                Service="EC2",
                Type="Resource",
            )
            for cls, value in usage.items()
        ],
    )
    return (
        f"EC2 in {QUOTA_REGION}: {QUOTA_USAGE} of {QUOTA_LIMIT} Standard vCPUs ({100 * QUOTA_USAGE / QUOTA_LIMIT:.0f}%)"
    )


def metrics_standin(member: boto3.Session) -> dict[str, str]:
    """Keys that may only PutMetricData in the member account: locally, what stands in for AWS publishing
    its own metrics once IAM enforcement is on (the demo lowers the Lambda usage with them)."""
    iam = member.client("iam")
    iam.create_user(UserName=METRICS_STANDIN)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*"}],
    }
    iam.put_user_policy(UserName=METRICS_STANDIN, PolicyName="put-metric-data", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=METRICS_STANDIN)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def lambda_usage_data(unreserved: float, allocated: float, at: datetime, **functions: float) -> list[dict[str, Any]]:
    """The account-level concurrency metrics for an unreserved usage, plus per-function datapoints."""
    reserved_usage = functions.get("ledger-sync", 0.0)
    return [
        _datum("ConcurrentExecutions", unreserved + reserved_usage, at),
        _datum("UnreservedConcurrentExecutions", unreserved, at),
        _datum("ClaimedAccountConcurrency", unreserved + allocated, at),
        *(_datum("ConcurrentExecutions", value, at, FunctionName=name) for name, value in functions.items()),
    ]


def seed_breaches(members: dict[str, boto3.Session], fleet: Fleet, now: datetime | None = None) -> dict[str, Any]:
    """Lambda at 85% in the first member account, a quota at 96% in the second."""
    at = (now or datetime.now(UTC)) - timedelta(minutes=2)
    hot, quota = fleet.accounts[0], fleet.accounts[1]
    lines = [
        f"{hot.name}/{seed_lambda_concurrency(members[hot.id], at)}",
        f"{quota.name}/{seed_quota(members[quota.id], at)}",
    ]
    return {
        "breaches": {
            "lambda": {"account": hot.id, "region": LAMBDA_REGION},
            "quota": {"account": quota.id, "region": QUOTA_REGION, "code": STANDARD_VCPUS},
            "metrics_keys": metrics_standin(members[hot.id]),
        },
        "line": "breach flags: " + "; ".join(lines),
    }
