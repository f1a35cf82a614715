"""Benchmark: the service quota check over 1,000 quotas in 2 accounts x 2 regions on the local AWS.

The local AWS (moto server, with opsbot/local/aws_shims.py) runs in its own process, with a quota
catalog of 250 quotas per service listing, each with a usage metric; the check runs in another
process of its own. Prints GetMetricData calls per quota checked (target <= 0.01: usage is read in
batches of up to 500 metrics, never one call per quota) and wall seconds.

    python bench/quota_bench.py [--quotas 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ACCOUNTS = ("210987654321", "345678901234")
REGIONS = ("us-east-1", "eu-west-1")
FLEET = f"""
role_prefix: opsbot
external_id: opsbot-bench
default_regions: [{", ".join(REGIONS)}]
accounts:
  - {{id: "{ACCOUNTS[0]}", name: bench-a}}
  - {{id: "{ACCOUNTS[1]}", name: bench-b}}
"""
TASKS = "tasks:\n  - {name: snapshot-daily, kind: ebs-snapshot, schedule: 'cron(0 3 * * ? *)'}\n"
RULES = (
    "thresholds: {}\nlambda_concurrency: {enabled: false}\nservice_quotas: {services: [ec2], lookback_minutes: 60}\n"
)


def catalog(per_unit: int) -> dict[str, object]:
    """``per_unit`` quotas shaped like EC2's vCPU quotas (ServiceQuota / MetricInfo), one usage metric each."""
    return {
        "_source": "bench/quota_bench.py: synthetic quotas in the shape of the real ec2 entries in "
        "opsbot/local/service_quotas.json",
        "services": {
            "ec2": {
                "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                "Quotas": [
                    {
                        "QuotaCode": f"L-B{i:07d}",
                        "QuotaName": f"Bench instances family {i}",
                        "Value": 1000.0,
                        "Unit": "None",
                        "Adjustable": True,
                        "GlobalQuota": False,
                        "UsageMetric": {
                            "MetricNamespace": "AWS/Usage",
                            "MetricName": "ResourceCount",
                            "MetricDimensions": {
                                "Class": f"Bench{i}/OnDemand",
                                "Resource": "vCPU",
                                "Service": "EC2",
                                "Type": "Resource",
                            },
                            "MetricStatisticRecommendation": "Maximum",
                        },
                    }
                    for i in range(per_unit)
                ],
            }
        },
    }


def seed(endpoint: str, per_unit: int) -> None:
    from opsbot.local.hub import create_tables

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    base = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    create_tables(base)
    now = datetime.now(UTC)
    rng = random.Random(7)

    def fill(account: str, region: str) -> None:
        creds = base.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/opsbot-seed", RoleSessionName="seed"
        )["Credentials"]
        cw = boto3.client(
            "cloudwatch",
            region_name=region,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        data = [
            {
                "MetricName": "ResourceCount",
                "Dimensions": [
                    {"Name": "Class", "Value": f"Bench{i}/OnDemand"},
                    {"Name": "Resource", "Value": "vCPU"},
                    {"Name": "Service", "Value": "EC2"},
                    {"Name": "Type", "Value": "Resource"},
                ],
                "Timestamp": now - timedelta(minutes=rng.randint(2, 50)),
                # One quota in twenty over 80%, as a busy fleet might have.
                "Value": float(rng.randint(800, 990) if i % 20 == 0 else rng.randint(0, 700)),
            }
            for i in range(per_unit)
        ]
        for start in range(0, len(data), 1000):  # PutMetricData takes at most 1,000 datapoints
            cw.put_metric_data(Namespace="AWS/Usage", MetricData=data[start : start + 1000])

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda ar: fill(*ar), [(a, r) for a in ACCOUNTS for r in REGIONS]))


def run_check(rules_dir: str) -> None:
    """The measured process: what the state machine's plan/units/close do for one scheduled check."""
    from automations.breach_checks.alerts import AlertBook
    from automations.breach_checks.checks import plan_check, run_checks_now
    from automations.breach_checks.rules import load_breach_rules
    from automations.core.runs import Trigger
    from automations.core.runtime import Settings, build_runtime

    calls = {"GetMetricData": 0, "other": 0}

    def count(client: object) -> None:
        def bump(model: object, **_: object) -> None:
            calls["GetMetricData" if model.name == "GetMetricData" else "other"] += 1  # type: ignore[attr-defined]

        client.meta.events.register("before-call", bump)  # type: ignore[attr-defined]

    settings = Settings(ledger_table="opsbot-ledger", rules_dir=Path(rules_dir))
    rt = build_runtime(settings, boto3.Session(region_name="us-east-1"), on_client=count)
    rules = load_breach_rules(Path(rules_dir) / "quotas.yaml")
    started = time.perf_counter()
    plan = plan_check(rt.ledger, rt.fleet, rules, "service-quotas", Trigger("bench"), datetime.now(UTC))
    run = run_checks_now(
        plan,
        rules=rules,
        fleet=rt.fleet,
        broker=rt.broker,
        ledger=rt.ledger,
        book=AlertBook(rt.ledger.table),
        notifier=None,
    )
    wall = time.perf_counter() - started
    counts = run["counts"]
    print(
        json.dumps(
            {
                "status": run["status"],
                "units": run["units"],
                "quotas_checked": counts.get("monitored", 0),
                "opened": counts.get("opened", 0),
                "get_metric_data": calls["GetMetricData"],
                "other_member_calls": calls["other"],
                "wall_seconds": round(wall, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quotas", type=int, default=1000, help="in total, over 2 accounts x 2 regions")
    parser.add_argument("--run-check", help=argparse.SUPPRESS)  # internal: the measured child process
    args = parser.parse_args()
    if args.run_check:
        run_check(args.run_check)
        return

    import tempfile

    from opsbot.local import server
    from opsbot.local.aws_shims import CATALOG_ENV

    per_unit = args.quotas // (len(ACCOUNTS) * len(REGIONS))
    work = Path(tempfile.mkdtemp(prefix="opsbot-quota-bench-"))
    (work / "fleet.yaml").write_text(FLEET)
    (work / "tasks.yaml").write_text(TASKS)
    (work / "quotas.yaml").write_text(RULES)
    (work / "catalog.json").write_text(json.dumps(catalog(per_unit)))
    os.environ[CATALOG_ENV] = str(work / "catalog.json")  # the local AWS lists these quotas
    with server.running(work / "moto.log") as url:
        t0 = time.perf_counter()
        seed(url, per_unit)
        print(f"seeded {per_unit * 4} quotas with usage in 4 account-regions in {time.perf_counter() - t0:.1f}s")
        result = server.run_measured(__file__, f"--run-check={work}", url)
    per_quota = result["get_metric_data"] / max(result["quotas_checked"], 1)
    print(f"status                          {result['status']} {result['units']}")
    print(f"quotas checked                  {result['quotas_checked']}")
    print(f"alerts opened                   {result['opened']}")
    print(f"GetMetricData calls             {result['get_metric_data']}")
    print(f"GetMetricData calls per quota   {per_quota:.4f}   (target <= 0.01)")
    print(f"other member API calls          {result['other_member_calls']}   (Service Quotas list pages)")
    print(f"wall seconds (check)            {result['wall_seconds']}")


if __name__ == "__main__":
    main()
