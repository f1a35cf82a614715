"""The demo's DR chapter: snapshot-dr-copy copies snapshot-daily's snapshots to the DR region, encrypted
with the DR key and tagged with their source; a re-run of the same slot copies nothing twice."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from automations.core.notify import Notifier
from automations.core.runs import Trigger, plan_run, run_now
from automations.core.runtime import Runtime
from opsbot.runs_view import runs_table
from opsbot.tables import table

TASK = "snapshot-dr-copy"


def dr_copy_chapter(rt: Runtime, notifier: Notifier, at: datetime, say: Callable[[str], None]) -> None:
    options = rt.tasks[TASK].options
    for attempt in ("the 05:30 slot", "the same slot again (a retried event)"):
        say(f"opsbot run {TASK} — {attempt}: copies of snapshot-daily's snapshots to {options.region}")
        trigger = Trigger("schedule", event_time=at.isoformat())
        plan = plan_run(rt.ledger, rt.fleet, rt.tasks, TASK, trigger, at, manifests=rt.manifests)
        run = run_now(
            plan, rt.tasks, rt.broker, rt.ledger, notifier, rules=rt.rules, manifests=rt.manifests, caps=rt.caps
        )
        print(runs_table([run]))
        counts = run.get("counts", {})
        print(
            f"  copied {counts.get('copied', 0)}, already there {counts.get('skipped_existing', 0)}, "
            f"waiting for a pending source {counts.get('deferred_pending', 0)}, pruned in DR {counts.get('deleted', 0)}"
        )
    account = rt.fleet.accounts[0].id
    ec2: Any = rt.broker.for_capability("snapshots").client(account, options.region, "ec2")
    found = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag:opsbot:task", "Values": [TASK]}])
    say(f"the copies in {account}/{options.region} (first five): source, key, carried tags")
    rows = []
    for snap in sorted(found["Snapshots"], key=lambda s: s["SnapshotId"])[:5]:
        tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
        rows.append(
            [
                snap["SnapshotId"],
                tags.get("opsbot:source-snapshot"),
                f"{tags.get('opsbot:source-account')}/{tags.get('opsbot:source-region')}",
                snap.get("KmsKeyId"),
                "yes" if snap.get("Encrypted") else "no",
                tags.get("Name", "-"),
            ]
        )
    print(table(["COPY", "SOURCE", "FROM", "KMS KEY", "ENCRYPTED", "NAME"], rows))
    print(f"  {len(found['Snapshots'])} copies in {account}/{options.region}, one per source snapshot")
