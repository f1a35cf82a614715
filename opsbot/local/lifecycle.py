"""`opsbot local up | seed | slack | down`: the local embedded AWS as background processes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3

from automations.core.fleet import load_fleet
from opsbot.local import hub, server
from opsbot.local import seed as seeding
from opsbot.local.demo_rules import assemble
from opsbot.local.iam_roles import HUB_TEMPLATE, MEMBER_TEMPLATE

SLACK_CHANNEL = "#ops-alerts"


def up(port: int, slack_port: int) -> str:
    if (state := server.read_state()) and server.is_up(state["endpoint"]):
        return f"already up at {state['endpoint']} (opsbot local down to stop)"
    server.STATE_DIR.mkdir(parents=True, exist_ok=True)
    moto = server.start(port, server.STATE_DIR / "moto.log")
    token = f"xoxb-local-{secrets.token_hex(12)}"
    slack = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsbot.local.slack_standin",
            "--port",
            str(slack_port),
            "--token",
            token,
            "--log",
            str(server.STATE_DIR / "slack.jsonl"),
        ],
        start_new_session=True,
    )
    server.write_state(
        {
            "endpoint": server.endpoint(port),
            "moto_pid": moto.pid,
            "slack_pid": slack.pid,
            "slack_api_url": f"http://127.0.0.1:{slack_port}/api/",
            "slack_token": token,
        }
    )
    return (
        f"local AWS up at {server.endpoint(port)} (moto pid {moto.pid}); Slack stand-in on :{slack_port}\n"
        "next: opsbot local seed"
    )


def seed_into(
    endpoint: str,
    slack_api_url: str,
    slack_token: str,
    *,
    hub_template: Path = HUB_TEMPLATE,
    member_template: Path = MEMBER_TEMPLATE,
) -> dict[str, Any]:
    """Seed a running moto server; returns the state entries the CLI needs to act as the hub: the
    operator role's session (``operator_keys``) and each function role's (``function_keys``)."""
    server.set_enforce_iam(endpoint, False)
    os.environ["AWS_ENDPOINT_URL"] = endpoint  # every client below, and later ones, go to the local AWS
    base = boto3.Session(
        aws_access_key_id=server.BOOTSTRAP_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server.BOOTSTRAP_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    # The demo's rules: the shipped rules/ with opsbot/local/rules/ laid over (its fleet, on-call, policy).
    rules_dir = assemble(server.STATE_DIR / "rules")
    os.environ["OPSBOT_RULES_DIR"] = str(rules_dir)  # the demo's in-process runtimes, like the CLI's below
    fleet_file = rules_dir / "fleet.yaml"
    resources = hub.create_hub(base, slack_token=slack_token, fleet_text=fleet_file.read_text())
    report = seeding.seed_fleet(
        base, load_fleet(fleet_file), hub_template=hub_template, member_template=member_template
    )
    # From here on moto checks every signature and IAM policy, as AWS would.
    server.set_enforce_iam(endpoint, True)
    return {
        "operator_keys": report.operator_keys,
        "function_keys": report.function_keys,
        "hub_env": hub.hub_environment(
            resources,
            OPSBOT_SLACK_API_URL=slack_api_url,
            OPSBOT_SLACK_CHANNEL=SLACK_CHANNEL,
            OPSBOT_RULES_DIR=str(rules_dir),
            **report.killswitch["killswitch_env"],
        ),
        "seed_lines": report.lines,
        **{k: v for k, v in report.security.items() if k != "line"},
        **{k: v for k, v in report.killswitch.items() if k not in ("line", "killswitch_env")},
        **{k: v for k, v in report.breaches.items() if k != "line"},
    }


def seed() -> str:
    state = server.read_state()
    if not state or not server.is_up(state["endpoint"]):
        return "local AWS is not up: run `opsbot local up` first"
    state.update(seed_into(state["endpoint"], state["slack_api_url"], state["slack_token"]))
    server.write_state(state)
    return "\n".join(["seeded:", *state["seed_lines"]])


def slack_log() -> str:
    log = server.STATE_DIR / "slack.jsonl"
    if not log.exists():
        return "no Slack messages yet"
    return "\n\n".join(json.loads(line)["text"] for line in log.read_text().splitlines() if line.strip())


def down() -> str:
    state = server.read_state()
    for key in ("moto_pid", "slack_pid"):
        if pid := state.get(key):
            server.stop(int(pid))
    server.STATE_FILE.unlink(missing_ok=True)
    return "local AWS stopped"
