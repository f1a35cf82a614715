"""Benchmark: snapshot-daily over 10,000 tagged volumes in 2 accounts x 2 regions on the local AWS.

The local AWS (moto server) runs in its own process; the task runs in another process of its own so
its peak RSS is the task's alone. Prints EC2 API calls per volume snapshotted (target <= 1.05),
wall seconds, and the task process's peak RSS (target < 128 MB, the smallest Lambda size).

    python bench/snapshot_bench.py [--volumes 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
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
TASKS = """
tasks:
  - {name: snapshot-daily, kind: ebs-snapshot, schedule: 'cron(0 3 * * ? *)', retention: {keep_last: 7}}
"""


def seed(endpoint: str, volumes: int) -> None:
    from opsbot.local.hub import create_tables

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    base = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    create_tables(base)
    per_unit = volumes // (len(ACCOUNTS) * len(REGIONS))

    def fill(account: str, region: str) -> None:
        creds = base.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/opsbot-seed", RoleSessionName="seed"
        )["Credentials"]
        ec2 = boto3.client(
            "ec2",
            region_name=region,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        zone = f"{region}a"
        tags = [{"ResourceType": "volume", "Tags": [{"Key": "OpsTaskList", "Value": "snapshot-daily"}]}]
        for _ in range(per_unit):
            ec2.create_volume(AvailabilityZone=zone, Size=8, TagSpecifications=tags)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda ar: fill(*ar), [(a, r) for a in ACCOUNTS for r in REGIONS]))


def peak_rss_mb() -> float:
    """VmHWM, the process's own high-water mark. (getrusage's ru_maxrss survives fork+exec on Linux,
    so in a child it can report the parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_task(rules_dir: str) -> None:
    """The measured process: what a Lambda (or the local runner) does for one run."""
    from automations import catalog  # noqa: F401  (registers the task kinds, as the task handler does)
    from automations.core.runs import Trigger, plan_run, run_now
    from automations.core.runtime import Settings, build_runtime

    calls = {"ec2": 0, "other": 0}

    def count(client: object) -> None:
        service = client.meta.service_model.service_name  # type: ignore[attr-defined]
        key = "ec2" if service == "ec2" else "other"

        def bump(**_: object) -> None:
            calls[key] += 1

        client.meta.events.register("before-send", bump)  # type: ignore[attr-defined]

    if os.environ.get("BENCH_TRACEMALLOC"):
        import tracemalloc

        tracemalloc.start(25)
    settings = Settings(ledger_table="opsbot-ledger", rules_dir=Path(rules_dir))
    rt = build_runtime(settings, boto3.Session(region_name="us-east-1"), on_client=count)
    started = time.perf_counter()
    when = datetime.now(UTC).replace(hour=3, minute=5)
    plan = plan_run(rt.ledger, rt.fleet, rt.tasks, "snapshot-daily", Trigger("bench"), when)
    # Two units at a time: moto answers one request at a time and its tag filter costs ~8 ms a volume, so
    # four concurrent 2,500-volume listings (about 20 s each alone) pass botocore's 60 s read timeout.
    run = run_now(plan, rt.tasks, rt.broker, rt.ledger, None, max_workers=2)
    wall = time.perf_counter() - started
    if os.environ.get("BENCH_TRACEMALLOC"):
        import tracemalloc

        snap = tracemalloc.take_snapshot()
        print("traced peak MB", tracemalloc.get_traced_memory()[1] / 2**20, file=sys.stderr)
        for stat in snap.statistics("filename")[:12]:
            print(stat, file=sys.stderr)
    created = run["counts"].get("created", 0)
    print(
        json.dumps(
            {
                "status": run["status"],
                "failures": run.get("failures", [])[:4],
                "created": created,
                "ec2_calls": calls["ec2"],
                "wall_seconds": round(wall, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--volumes", type=int, default=10_000)
    parser.add_argument("--run-task", help=argparse.SUPPRESS)  # internal: the measured child process
    args = parser.parse_args()
    if args.run_task:
        run_task(args.run_task)
        return

    import tempfile

    from opsbot.local import server

    work = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
    (work / "fleet.yaml").write_text(FLEET)
    (work / "tasks.yaml").write_text(TASKS)
    with server.running(work / "moto.log") as url:
        t0 = time.perf_counter()
        seed(url, args.volumes)
        print(f"seeded {args.volumes} tagged volumes in {time.perf_counter() - t0:.1f}s", flush=True)
        result = server.run_measured(__file__, f"--run-task={work}", url)
    per_volume = result["ec2_calls"] / max(result["created"], 1)
    print(f"status                       {result['status']}")
    for failure in result["failures"]:
        print(f"  failure: {failure}")
    print(f"volumes snapshotted          {result['created']}")
    print(f"EC2 API calls                {result['ec2_calls']}")
    print(f"EC2 calls per volume         {per_volume:.4f}   (target <= 1.05)")
    print(f"wall seconds (task)          {result['wall_seconds']}")
    print(f"peak RSS of task process     {result['peak_rss_mb']} MB   (target < 128 MB)")


if __name__ == "__main__":
    main()
