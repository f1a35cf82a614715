"""Benchmark: security-group remediation on the local AWS (moto server in its own process).

Prints, for the event handler (handlers.sg_events.handler) run in a process of its own:
  cold start  - process start to the first event handled (imports, clients, AssumeRole included)
  warm        - median and p99 of event-to-revoke-done over the remaining events (default 200 in all)
  API calls per remediation for a modern record (rule ids in the record), by service and operation.

    python bench/sg_bench.py [--events 200]
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402 - the clock above must start before any import
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ACCOUNT, REGION = "210987654321", "us-east-1"
FLEET = f'external_id: opsbot-bench\ndefault_regions: [{REGION}]\naccounts:\n  - {{id: "{ACCOUNT}", name: bench}}\n'


def prepare(endpoint: str, count: int, work: Path) -> None:
    """Hub tables/topic, then ``count`` groups each opened to the world on 22, and their events."""
    import boto3

    from opsbot.local.cloudtrail import authorize_ingress_event
    from opsbot.local.hub import create_hub

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    hub = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    resources = create_hub(hub)
    creds = hub.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/OpsBotExecutionRole", RoleSessionName="prep"
    )["Credentials"]
    ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    perms = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    events = []
    for i in range(count):
        group = ec2.create_security_group(GroupName=f"g{i}", Description="bench", VpcId=vpc)["GroupId"]
        created = ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=perms)["SecurityGroupRules"]
        events.append(
            authorize_ingress_event(
                account=ACCOUNT,
                region=REGION,
                user_arn=f"arn:aws:iam::{ACCOUNT}:user/bench",
                access_key_id="AKIAIOSFODNN7EXAMPLE",
                source_ip="198.51.100.7",
                group_id=group,
                permissions=perms,
                created_rules=created,
            )
        )
    (work / "events.json").write_text(json.dumps(events))
    (work / "topic").write_text(resources.topic_arn)


def handle_all(work: Path) -> None:
    """The measured process."""
    import botocore.endpoint

    calls: Counter[str] = Counter()
    original = botocore.endpoint.Endpoint.make_request

    def counting(self, operation_model, request_dict):  # type: ignore[no-untyped-def]
        calls[f"{operation_model.service_model.service_name}:{operation_model.name}"] += 1
        return original(self, operation_model, request_dict)

    botocore.endpoint.Endpoint.make_request = counting  # type: ignore[method-assign]
    events = json.loads((work / "events.json").read_text())
    from handlers.sg_events import handler
    from opsbot.local.events import LocalLambdaContext

    context = LocalLambdaContext(function_name="opsbot-sg-events")
    durations, per_event = [], []
    for i, event in enumerate(events):
        before = Counter(calls)
        t0 = time.perf_counter()
        result = handler(event, context)
        durations.append(time.perf_counter() - t0)
        assert result["counts"].get("revoked") == 1, result
        if i == 0:
            cold = time.perf_counter() - PROCESS_START
        else:
            per_event.append(calls - before)
    steady = per_event[-1]
    print(
        json.dumps(
            {
                "cold_start_s": round(cold, 3),
                "warm_median_ms": round(statistics.median(durations[1:]) * 1000, 1),
                "warm_p99_ms": round(statistics.quantiles(durations[1:], n=100)[98] * 1000, 1),
                "events": len(events),
                "calls_per_remediation": dict(sorted(steady.items())),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--handle", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.handle:
        handle_all(Path(args.handle))
        return

    from opsbot.local import server
    from opsbot.local.slack_standin import SlackStandIn

    work = Path(tempfile.mkdtemp(prefix="opsbot-sg-bench-"))
    rules = work / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(FLEET)
    (rules / "tasks.yaml").write_text("tasks: []\n")
    (rules / "security_groups.yaml").write_text((ROOT / "rules" / "security_groups.yaml").read_text())
    with server.running(work / "moto.log") as url, SlackStandIn("xoxb-bench") as slack:
        prepare(url, args.events, work)
        result = server.run_measured(
            __file__,
            f"--handle={work}",
            url,
            OPSBOT_RULES_DIR=str(rules),
            OPSBOT_LEDGER_TABLE="opsbot-ledger",
            OPSBOT_IDEMPOTENCY_TABLE="opsbot-idempotency",
            OPSBOT_ALERT_TOPIC_ARN=(work / "topic").read_text(),
            OPSBOT_SLACK_CHANNEL="#sec",
            OPSBOT_SLACK_API_URL=slack.base_url,
            POWERTOOLS_TRACE_DISABLED="true",
            POWERTOOLS_METRICS_DISABLED="true",
            POWERTOOLS_METRICS_NAMESPACE="Opsbot",  # as template.yaml's Globals set it
            POWERTOOLS_LOG_LEVEL="WARNING",
        )
    print(f"events handled               {result['events']}")
    print(f"cold start (process start -> first event handled)  {result['cold_start_s']} s")
    print(f"warm event -> revoke done    median {result['warm_median_ms']} ms, p99 {result['warm_p99_ms']} ms")
    print("AWS API calls per remediation (modern record, warm):")
    for call, n in result["calls_per_remediation"].items():
        print(f"  {n} x {call}")


if __name__ == "__main__":
    main()
