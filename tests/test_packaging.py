"""The Lambda package's pins agree with the full lock, and the demo runs end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_lambda_requirements_are_a_subset_of_the_lock():
    lock = pins(ROOT / "requirements.lock")
    lam = pins(ROOT / "requirements-lambda.txt")
    assert {"boto3", "aws-lambda-powertools", "slack-sdk", "jmespath"} <= set(lam)
    assert {k: lock.get(k) for k in lam} == lam
    assert "moto" not in lam and "pytest" not in lam


def test_demo_runs_end_to_end_on_the_local_aws():
    """`make demo`'s story: moto server in its own process, seeded fleet, run, re-run the slot."""
    proc = subprocess.run(
        [sys.executable, "-m", "opsbot.cli", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("snapshot-daily-")]
    first, second = rows[0], rows[1]
    # RUN TASK SLOT TRIGGER STATUS STARTED TOOK CREATED SKIPPED DELETED FAILED UNITS
    assert first[4] == "PARTIAL" and int(first[7]) == 16 and int(first[8]) == 0 and int(first[9]) == 8
    assert second[4] == "PARTIAL" and int(second[7]) == 0 and int(second[8]) == 16  # nothing duplicated
    assert first[11] == "4/5"  # the legacy-sandbox account is denied: recorded, the others finish
    assert "AccessDenied" in out and "== opsbot task snapshot-daily PARTIAL ==" in out
    assert "kept-ami" in out
    # DR copies: made once for the slot, found (not copied again) when the slot is re-run.
    copies = [line.split() for line in out.splitlines() if line.startswith("snapshot-dr-copy-")]
    assert int(copies[0][7]) > 0 and int(copies[1][7]) == 0 and int(copies[1][8]) == int(copies[0][7])
    assert "alias/opsbot-dr  yes" in out
    assert "snapshot-dialy" in out
    # Breach flags: the 85% warning, the 96% critical quota, silence while steady, one resolve.
    assert "== Warning: Lambda concurrency at 85.0% in payments-prod/us-east-1 ==" in out
    assert "instances at 96.0% in analytics-prod/eu-west-1 ==" in out and "== Critical: Running On-Demand" in out
    assert "Slack messages from these checks: 0" in out
    assert "== Resolved: Lambda concurrency back to 30.0% in payments-prod/us-east-1 ==" in out
