"""Benchmark: security-group remediation on the local AWS (moto server in its own process), against the floor.

The floor is what any remediation must do at minimum: Python plus boto3, one conditional DynamoDB put
(dedupe on the event id) and one RevokeSecurityGroupIngress by rule id. It runs in the same run, as a
process of its own, against the same local AWS, on real CloudTrail records (a group opened to the world
on 22), in rounds that alternate with opsbot's process so both see the same machine and the same moto.

Prints, floor vs opsbot (``handlers.sg_events.handler``) and their ratio:
  cold          a fresh process, from its first line to the revoke returning (median over the rounds)
  warm median   handler start to the revoke returning, over every event but each process's first
  warm p99      the same, 99th percentile (target: at most 2x the floor's *median*)
  whole handler handler start to its return (opsbot tells: ledger record, outbox, SNS)
  import        ``import handlers.sg_events`` (with its init, as in Lambda) vs ``import boto3`` plus the
                floor's two clients
and the AWS API calls per remediation (modern record, warm). Then a third process, measured the same way:
the floor plus the two requests opsbot must make before the revoke (the group's tags, for exemptions, and
the rule's claim), made at once beside the dedupe put as opsbot makes them; opsbot's ratio to it is the
cost of opsbot's own code. The local AWS is one Python process: it answers concurrent requests one after
another, so requests that overlap on AWS add up here.

    python bench/sg_bench.py [--rounds 15] [--events 20]     # events per process per round

A cold start's time on this 2-CPU machine varies by a third from one process to the next (the spread is
printed): the cold figures are medians over the rounds, and even a median of 15 rounds moves by about 5%
from one run of this script to the next.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import json  # noqa: E402 - the clock above must start before any import; both measured roles import json
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ACCOUNT, REGION = "210987654321", "us-east-1"
FLEET = f'external_id: opsbot-bench\ndefault_regions: [{REGION}]\naccounts:\n  - {{id: "{ACCOUNT}", name: bench}}\n'
CPU_AT_FIRST_REVOKE: list[float] = []  # CPU seconds of the process when its first revoke returned
TARGETS = {"cold": 1.3, "warm_median": 1.3, "warm_p99_vs_floor_median": 2.0}
ROLES = ("floor", "work", "opsbot")


def _revoke_clock() -> list[float]:
    """Times at which a RevokeSecurityGroupIngress reply came back (botocore's endpoint, both roles)."""
    import botocore.endpoint

    stamps: list[float] = []
    original = botocore.endpoint.Endpoint.make_request

    def timed(self, operation_model, request_dict):  # type: ignore[no-untyped-def]
        reply = original(self, operation_model, request_dict)
        if operation_model.name == "RevokeSecurityGroupIngress":
            stamps.append(time.perf_counter())
            if len(stamps) == 1:
                CPU_AT_FIRST_REVOKE.append(time.process_time())
        return reply

    botocore.endpoint.Endpoint.make_request = timed  # type: ignore[method-assign]
    return stamps


def floor_process(work: Path, chunk: int, role: str = "floor") -> None:
    """The floor, measured: boto3, a conditional put on the event id, a revoke by rule id.

    ``role="work"``: the floor plus the two requests opsbot cannot leave out, made as opsbot makes them
    (at once, on threads, beside the dedupe put): the group's tags (the exemption lookup) and the rule's
    claim (a conditional put: a retry recognises its own revoke). Not a target: it shows what opsbot's
    required requests cost on this local AWS, and so how much of the gap is opsbot's own code."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    stamps = _revoke_clock()
    events = json.loads((work / f"{role}-{chunk}.json").read_text())
    member = json.loads(os.environ["BENCH_MEMBER_CREDENTIALS"])
    session = boto3.Session()
    ddb = session.client("dynamodb")
    ec2 = session.client("ec2", region_name=REGION, **member)
    table, ledger = os.environ["OPSBOT_IDEMPOTENCY_TABLE"], os.environ["OPSBOT_LEDGER_TABLE"]
    pool = ThreadPoolExecutor(max_workers=2) if role == "work" else None
    to_revoke, cold = [], 0.0
    for i, event in enumerate(events):
        t0 = time.perf_counter()
        detail = event["detail"]
        group = detail["requestParameters"]["groupId"]
        ids = [r["securityGroupRuleId"] for r in detail["responseElements"]["securityGroupRuleSet"]["items"]]
        beside = []
        if pool is not None:
            claim = {"pk": {"S": f"REVOKE#{ACCOUNT}#{REGION}#{ids[0]}"}, "sk": {"S": "REVOKE"}}
            beside = [
                pool.submit(ec2.describe_tags, Filters=[{"Name": "resource-id", "Values": [group]}]),
                pool.submit(ddb.put_item, TableName=ledger, Item=claim, ConditionExpression="attribute_not_exists(pk)"),
            ]
        ddb.put_item(
            TableName=table,
            Item={"id": {"S": f"{role}#{event['id']}"}, "expiration": {"N": str(int(time.time()) + 3600)}},
            ConditionExpression="attribute_not_exists(id)",
        )
        for future in beside:
            future.result()
        ec2.revoke_security_group_ingress(GroupId=group, SecurityGroupRuleIds=ids)
        if i == 0:
            cold = stamps[-1] - PROCESS_START
        else:
            to_revoke.append(stamps[-1] - t0)
    print(json.dumps({"cold": cold, "cold_cpu": CPU_AT_FIRST_REVOKE[0], "to_revoke": to_revoke, "whole": to_revoke}))


class _Context:
    """What the Lambda runtime passes as ``context`` (the attributes Powertools reads)."""

    function_name = "opsbot-sg-events"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:opsbot-sg-events"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def opsbot_process(work: Path, chunk: int) -> None:
    """opsbot, measured: ``handlers.sg_events.handler`` on each event; API calls counted."""
    from collections import Counter

    import botocore.endpoint

    stamps = _revoke_clock()
    calls: Counter[str] = Counter()
    timed = botocore.endpoint.Endpoint.make_request

    def counting(self, operation_model, request_dict):  # type: ignore[no-untyped-def]
        calls[f"{operation_model.service_model.service_name}:{operation_model.name}"] += 1
        return timed(self, operation_model, request_dict)

    botocore.endpoint.Endpoint.make_request = counting  # type: ignore[method-assign]
    events = json.loads((work / f"opsbot-{chunk}.json").read_text())
    from handlers.sg_events import handler

    context = _Context()
    to_revoke, whole, cold, steady = [], [], 0.0, Counter[str]()
    for i, event in enumerate(events):
        before = Counter(calls)
        t0 = time.perf_counter()
        result = handler(event, context)
        t1 = time.perf_counter()
        assert result["counts"].get("revoked") == 1, result
        if i == 0:
            cold = stamps[-1] - PROCESS_START
        else:
            to_revoke.append(stamps[-1] - t0)
            whole.append(t1 - t0)
            steady = calls - before
    import resource

    print(
        json.dumps(
            {
                "cold": cold,
                "cold_cpu": CPU_AT_FIRST_REVOKE[0],
                "to_revoke": to_revoke,
                "whole": whole,
                "calls": dict(sorted(steady.items())),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def import_process(what: str) -> None:
    t0 = time.perf_counter()
    if what == "opsbot":
        import handlers.sg_events  # noqa: F401
    else:
        import boto3

        session = boto3.Session()
        session.client("dynamodb")
        session.client("ec2", region_name=REGION)
    print(json.dumps({"import": time.perf_counter() - t0}))


def prepare(endpoint: str, rounds: int, per: int, work: Path) -> tuple[str, dict[str, str]]:
    """Hub tables/topic, then groups each opened to the world on 22, and their CloudTrail records: one
    file of ``per`` records per round and role. Returns the topic and the member credentials."""
    import boto3

    from opsbot.local.cloudtrail import authorize_ingress_event
    from opsbot.local.hub import create_hub

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    hub = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    resources = create_hub(hub)
    creds = hub.client("sts").assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/opsbot-seed", RoleSessionName="prep")[
        "Credentials"
    ]
    member = {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }
    ec2 = boto3.client("ec2", region_name=REGION, **member)
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    perms = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    for chunk in range(rounds):
        for role in ROLES:
            events = []
            for i in range(per):
                name = f"{role}-{chunk}-{i}"
                group = ec2.create_security_group(GroupName=name, Description="bench", VpcId=vpc)["GroupId"]
                created = ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=perms)
                events.append(
                    authorize_ingress_event(
                        account=ACCOUNT,
                        region=REGION,
                        user_arn=f"arn:aws:iam::{ACCOUNT}:user/bench",
                        access_key_id="AKIAIOSFODNN7EXAMPLE",
                        source_ip="198.51.100.7",
                        group_id=group,
                        permissions=perms,
                        created_rules=created["SecurityGroupRules"],
                    )
                )
            (work / f"{role}-{chunk}.json").write_text(json.dumps(events))
    return resources.topic_arn, member


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def _p99(values: list[float]) -> float:
    import statistics

    return statistics.quantiles(values, n=100)[98]


def main() -> None:
    import argparse
    import subprocess
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15, help="cold processes per side")
    parser.add_argument("--events", type=int, default=20, help="events per process")
    args = parser.parse_args()

    from opsbot.local import server
    from opsbot.local.slack_standin import SlackStandIn

    work = Path(tempfile.mkdtemp(prefix="opsbot-sg-bench-"))
    rules = work / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(FLEET)
    (rules / "tasks.yaml").write_text("tasks: []\n")
    (rules / "security_groups.yaml").write_text((ROOT / "rules" / "security_groups.yaml").read_text())
    # As `make package` does for the Lambda package: the rules validated and compiled ahead of time.
    subprocess.run([sys.executable, "-m", "automations.security_groups.compiled", str(rules)], check=True, cwd=ROOT)
    results: dict[str, list[dict]] = {role: [] for role in ROLES}  # type: ignore[type-arg]
    imports: dict[str, list[float]] = {"floor": [], "opsbot": []}
    with server.running(work / "moto.log") as url, SlackStandIn("xoxb-bench") as slack:
        topic, member = prepare(url, args.rounds, args.events, work)
        env = {
            "OPSBOT_RULES_DIR": str(rules),
            "OPSBOT_LEDGER_TABLE": "opsbot-ledger",
            "OPSBOT_IDEMPOTENCY_TABLE": "opsbot-idempotency",
            "OPSBOT_ALERT_TOPIC_ARN": topic,
            "OPSBOT_SLACK_CHANNEL": "#sec",
            "OPSBOT_SLACK_API_URL": slack.base_url,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "Opsbot",  # as template.yaml's Globals set it
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            # As in Lambda: importing the handler module runs its init (handlers/sg_events.py `_init`).
            "AWS_LAMBDA_FUNCTION_NAME": _Context.function_name,
            "BENCH_MEMBER_CREDENTIALS": json.dumps(member),
        }
        for chunk in range(args.rounds):
            for role in ROLES:
                results[role].append(server.run_measured(__file__, f"--{role}={work}:{chunk}", url, **env))
                if role in imports:
                    imports[role].append(server.run_measured(__file__, f"--import={role}", url, **env)["import"])
    opsbot_calls = results["opsbot"][-1]["calls"]
    figures = {}
    for role, runs in results.items():
        to_revoke = [v for r in runs for v in r["to_revoke"]]
        figures[role] = {
            "cold": _median([r["cold"] for r in runs]),
            "cold_cpu": _median([r["cold_cpu"] for r in runs]),
            "warm_median": _median(to_revoke),
            "warm_p99": _p99(to_revoke),
            "whole": _median([v for r in runs for v in r["whole"]]),
            "import": _median(imports[role]) if role in imports else 0.0,
        }
    floor, ops = figures["floor"], figures["opsbot"]
    ratios = {
        "cold": ops["cold"] / floor["cold"],
        "cold_cpu": ops["cold_cpu"] / floor["cold_cpu"],
        "warm_median": ops["warm_median"] / floor["warm_median"],
        "warm_p99_vs_floor_median": ops["warm_p99"] / floor["warm_median"],
        "whole": ops["whole"] / floor["whole"],
        "import": ops["import"] / floor["import"],
    }
    n = sum(len(r["to_revoke"]) for r in results["opsbot"])
    print(f"rounds {args.rounds} (cold processes per side), warm events per side {n}")
    print(f"{'path':<48}{'floor':>10}{'opsbot':>10}{'ratio':>8}  target")
    rows = [
        ("cold: process first line -> revoke returned", "cold", "cold", "s"),
        ("cold: CPU seconds of the process at that revoke", "cold_cpu", "cold_cpu", "s"),
        ("warm: handler start -> revoke returned, median", "warm_median", "warm_median", "ms"),
        ("warm: p99 (ratio to the floor's median)", "warm_p99", "warm_p99_vs_floor_median", "ms"),
        ("warm: the whole handler, median", "whole", "whole", "ms"),
        ("import: sg_events vs boto3 + two clients", "import", "import", "s"),
    ]
    for label, key, ratio_key, unit in rows:
        scale = 1000 if unit == "ms" else 1
        target = TARGETS.get(ratio_key)
        verdict = f"<= {target}x {'ok' if ratios[ratio_key] <= target else 'MISSED'}" if target else "-"
        print(
            f"{label:<48}{floor[key] * scale:>8.{1 if unit == 'ms' else 3}f}{unit:<2}"
            f"{ops[key] * scale:>8.{1 if unit == 'ms' else 3}f}{unit:<2}{ratios[ratio_key]:>6.2f}x  {verdict}"
        )
    spread = {role: sorted(r["cold"] for r in results[role]) for role in ("floor", "opsbot")}
    print(
        "cold, every round (the machine's noise): "
        + ", ".join(f"{role} {v[0]:.3f}-{v[-1]:.3f}s" for role, v in spread.items())
    )
    work_ = figures["work"]
    print(
        "the floor plus opsbot's required requests (the tags and the claim, beside the dedupe put): warm median "
        f"{work_['warm_median'] * 1000:.1f}ms ({work_['warm_median'] / floor['warm_median']:.2f}x the floor), "
        f"p99 {work_['warm_p99'] * 1000:.1f}ms; opsbot {ops['warm_median'] / work_['warm_median']:.2f}x it "
        f"(median), {ops['warm_p99'] / work_['warm_p99']:.2f}x (p99)"
    )
    rss = max(r["peak_rss_mb"] for r in results["opsbot"])
    print(f"opsbot process peak RSS {rss:.0f} MB (Lambda MemorySize must exceed it; CPU share grows with it)")
    print("AWS API calls per remediation (opsbot, modern record, warm):")
    for call, count in opsbot_calls.items():
        print(f"  {count} x {call}")
    print(json.dumps({"floor": floor, "work": work_, "opsbot": ops, "ratios": ratios}))


if __name__ == "__main__":
    # The measured roles (server.run_measured passes "--role value"): no argparse before the clock stops.
    if len(sys.argv) == 3 and sys.argv[1] in ("--floor", "--work", "--opsbot"):
        directory, _, number = sys.argv[2].rpartition(":")
        if sys.argv[1] == "--opsbot":
            opsbot_process(Path(directory), int(number))
        else:
            floor_process(Path(directory), int(number), sys.argv[1].removeprefix("--"))
    elif len(sys.argv) == 3 and sys.argv[1] == "--import":
        import_process(sys.argv[2])
    else:
        main()
