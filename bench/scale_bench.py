"""Benchmark: a run over an AWS Organization of 1,000 accounts in every enabled region (17 each), locally.

The local AWS (moto server, with opsbot's shims: account:ListRegions answers each account's 17 regions
enabled by default) runs in its own process and becomes an organisation of 1,000 accounts in four OUs.
The fleet document names the root (every OU under it) with ``regions: enabled``. The measured process
then does what the Plan Lambda does and prints:

- plan seconds (Organizations discovery, ListRegions for each account, the manifest, the run record) and
  the manifest's bytes in S3;
- the Plan process's peak RSS (target < 128 MB, the smallest Lambda);
- the largest state payload (what Plan returns to the state machine) for 10, 100 and 1,000 accounts:
  it must not grow with the fleet;
- 100 units really executed against the local AWS (one tagged volume each, snapshotted), with the
  member caps on: wall seconds, and ledger (DynamoDB) calls per unit.

    python bench/scale_bench.py [--accounts 1000] [--executed 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.snapshot_bench import peak_rss_mb  # noqa: E402

EXTERNAL_ID = "opsbot-bench"
OUS = ("Workloads-Prod", "Workloads-Dev", "Sandbox", "Shared")
TASKS = """
tasks:
  - {name: snapshot-daily, kind: ebs-snapshot, schedule: 'cron(0 3 * * ? *)', retention: {keep_last: 7}}
"""


def fleet_document(root: str) -> str:
    return f"""
role_prefix: opsbot
external_id: {EXTERNAL_ID}
organization:
  include: ["{root}"]
  regions: enabled
"""


def base_session() -> boto3.Session:
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")


def seed(endpoint: str, accounts: int) -> tuple[str, list[str]]:
    """The organisation: OUs under the root, ``accounts`` accounts spread over them. Returns the root id
    and the account ids in the order the organisation lists them."""
    from opsbot.local.hub import create_manifest_bucket, create_tables
    from opsbot.local.organization import create_organization, create_ou

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    base = base_session()
    create_tables(base)
    create_manifest_bucket(base)
    root = create_organization(base)
    ous = [create_ou(base, root, name) for name in OUS]
    org = base.client("organizations")

    def join(i: int) -> str:
        made = org.create_account(AccountName=f"bench-{i:04d}", Email=f"aws+bench-{i:04d}@opsbot.local")
        account = str(made["CreateAccountStatus"]["AccountId"])
        parent = org.list_parents(ChildId=account)["Parents"][0]["Id"]
        org.move_account(AccountId=account, SourceParentId=parent, DestinationParentId=ous[i % len(ous)])
        return account

    with ThreadPoolExecutor(max_workers=8) as pool:
        return root, list(pool.map(join, range(accounts)))


def prepare_members(endpoint: str, units: list[dict[str, Any]]) -> None:
    """What the StackSet deploys (the snapshots member role) and one tagged volume, in each unit executed."""
    from opsbot.local.organization import member_session

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    base = base_session()
    hub = base.client("sts").get_caller_identity()["Account"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{hub}:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}},
            }
        ],
    }

    def prepare(unit: dict[str, Any]) -> None:
        member = member_session(base, unit["account"])
        iam = member.client("iam")
        with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
            iam.create_role(RoleName="opsbot-snapshots", AssumeRolePolicyDocument=json.dumps(trust))
        ec2 = member.client("ec2", region_name=unit["region"])
        tags = [{"ResourceType": "volume", "Tags": [{"Key": "OpsTaskList", "Value": "snapshot-daily"}]}]
        ec2.create_volume(AvailabilityZone=f"{unit['region']}a", Size=8, TagSpecifications=tags)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(prepare, units))


def plan_process(work: str) -> None:
    """The measured process: Plan over the whole organisation, then 100 of its units executed."""
    from automations import catalog  # noqa: F401  (registers the task kinds, as the handlers do)
    from automations.core.deadline import Deadline
    from automations.core.runs import Trigger, close_run, manifest_units, plan_run, run_in_pool, run_unit
    from automations.core.runtime import Settings, build_runtime
    from opsbot.local.hub import MANIFEST_BUCKET

    executed = int(os.environ["BENCH_EXECUTED"])
    settings = Settings(ledger_table="opsbot-ledger", rules_dir=Path(work), manifest_bucket=MANIFEST_BUCKET)
    rt = build_runtime(settings, boto3.Session(region_name="us-east-1"))
    when = datetime.now(UTC).replace(hour=3, minute=5)

    if os.environ.get("BENCH_PROFILE"):  # where discovery's time goes
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(lambda: rt.fleet.accounts)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    started = time.perf_counter()
    discovered = len(rt.fleet.accounts)  # Organizations and ListRegions: the first part of Plan
    discovery_seconds = time.perf_counter() - started
    if os.environ.get("BENCH_PROFILE"):
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(
            plan_run, rt.ledger, rt.fleet, rt.tasks, "snapshot-daily", Trigger("bench"), when,
            dry_run=True, manifests=rt.manifests,
        )  # fmt: skip
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumtime").print_stats(25)
    plan = plan_run(rt.ledger, rt.fleet, rt.tasks, "snapshot-daily", Trigger("bench"), when, manifests=rt.manifests)
    plan_seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    assert plan.manifest is not None
    state = {len(rt.fleet.accounts): len(json.dumps(plan.as_dict()))}
    close_run(plan.run_id, rt.ledger, None, reason="bench: measured plan only", manifests=rt.manifests)

    # The same payload for smaller fleets (a scope of the first 10 and 100 accounts), dry runs.
    ids = [a.id for a in rt.fleet.accounts]
    for n in (10, 100):
        small = plan_run(
            rt.ledger, rt.fleet, rt.tasks, "snapshot-daily", Trigger("bench"), when,
            accounts=ids[:n], dry_run=True, manifests=rt.manifests,
        )  # fmt: skip
        state[n] = len(json.dumps(small.as_dict()))
        close_run(small.run_id, rt.ledger, None, reason="bench: payload only", manifests=rt.manifests)

    # Units really executed: the first ones of a fresh run's manifest, as the Distributed Map starts them.
    run = plan_run(rt.ledger, rt.fleet, rt.tasks, "snapshot-daily", Trigger("bench"), when, manifests=rt.manifests)
    units = manifest_units(run, rt.manifests)[:executed]
    print(json.dumps({"units": [{"account": u.account, "region": u.region} for u in units]}), flush=True)
    sys.stdin.readline()  # the parent prepares their member roles and volumes
    ledger_calls = [0]
    rt.ledger.table.meta.client.meta.events.register(
        "before-send.dynamodb", lambda **_: ledger_calls.__setitem__(0, ledger_calls[0] + 1)
    )
    t0 = time.perf_counter()
    raised = run_in_pool(
        units,
        lambda u: run_unit(u, rt.tasks, rt.broker, rt.ledger, Deadline.never(), rules=rt.rules, caps=rt.caps),
        max_workers=8,
    )
    units_wall = time.perf_counter() - t0
    unit_rows = rt.ledger.units(run.run_id)
    close_run(run.run_id, rt.ledger, None, reason="bench: only the first units executed", manifests=rt.manifests)
    print(
        json.dumps(
            {
                "accounts": len(ids),
                "units": run.manifest.units if run.manifest else 0,
                "plan_seconds": round(plan_seconds, 2),
                "discovery_seconds": round(discovery_seconds, 2),
                "discovered": discovered,
                "manifest_bytes": plan.manifest.bytes,
                "plan_peak_rss_mb": round(rss, 1),
                "state_bytes": state,
                "executed": len(units),
                "executed_ok": sum(1 for u in unit_rows if u["status"] == "SUCCEEDED"),
                "raised": raised,
                "units_wall_seconds": round(units_wall, 2),
                "ledger_calls_per_unit": round(ledger_calls[0] / max(len(units), 1), 2),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--executed", type=int, default=100)
    parser.add_argument("--plan", help=argparse.SUPPRESS)  # internal: the measured process
    args = parser.parse_args()
    if args.plan:
        plan_process(args.plan)
        return

    import subprocess

    from opsbot.local import server

    work = Path(tempfile.mkdtemp(prefix="opsbot-scale-"))
    with server.running(work / "moto.log") as url:
        t0 = time.perf_counter()
        root, _ = seed(url, args.accounts)
        (work / "fleet.yaml").write_text(fleet_document(root))
        (work / "tasks.yaml").write_text(TASKS)
        print(f"seeded an organisation of {args.accounts} accounts in {time.perf_counter() - t0:.1f}s", flush=True)
        env = {k: v for k, v in os.environ.items() if k not in ("AWS_SESSION_TOKEN", "AWS_PROFILE")}
        env.update(server.BOOTSTRAP_CREDENTIALS, AWS_ENDPOINT_URL=url, AWS_DEFAULT_REGION="us-east-1")
        env["BENCH_EXECUTED"] = str(args.executed)
        child = subprocess.Popen(
            [sys.executable, __file__, f"--plan={work}"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        chosen = json.loads(child.stdout.readline())["units"]
        prepare_members(url, chosen)
        child.stdin.write("go\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        child.wait()
    print(f"accounts x regions           {result['accounts']} accounts, {result['units']} units")
    print(f"plan seconds                 {result['plan_seconds']}  (of which discovery {result['discovery_seconds']})")
    print(f"manifest bytes (S3)          {result['manifest_bytes']}")
    print(f"peak RSS of Plan             {result['plan_peak_rss_mb']} MB   (target < 128 MB)")
    sizes = ", ".join(f"{n} accounts: {b} B" for n, b in sorted(result["state_bytes"].items(), key=lambda x: int(x[0])))
    print(f"largest state payload        {sizes}   (must not grow with the fleet)")
    print(f"units executed               {result['executed']} ({result['executed_ok']} succeeded)")
    print(f"wall seconds, those units    {result['units_wall_seconds']}")
    print(f"ledger calls per unit        {result['ledger_calls_per_unit']}")
    if result["raised"]:
        print(f"  raised: {result['raised']}")


if __name__ == "__main__":
    main()
