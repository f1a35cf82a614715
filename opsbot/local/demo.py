"""`make demo`: the local story, start to finish, on a fresh embedded AWS (own ports, own state).

1. start moto (its own process) and the Slack stand-in; seed the fleet; switch on IAM enforcement
2. run snapshot-daily: snapshots, retention, an AMI-backed snapshot kept, a denied account -> Slack alert
3. run the same slot again: nothing duplicated
   then snapshot-dr-copy: encrypted, tagged copies in the DR region, twice for one slot, no duplicate
4. breach flags (demo_breaches.py): Lambda concurrency at 85%, a quota at 96%, a resolve once usage drops
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from automations.core.runs import Trigger, plan_run, run_now
from automations.core.runtime import Settings, build_notifier, build_runtime
from opsbot.environment import apply_local_environment, session
from opsbot.local import server
from opsbot.local.demo_breaches import breach_chapter
from opsbot.local.demo_dr import dr_copy_chapter
from opsbot.local.demo_killswitch import killswitch_chapter
from opsbot.local.demo_security import security_chapter
from opsbot.local.events import WORKERS, api_routes, queue_routes, routes
from opsbot.local.lifecycle import seed_into
from opsbot.local.slack_standin import SlackStandIn
from opsbot.runs_view import runs_table
from opsbot.tables import table


def _say(text: str) -> None:
    print(f"\n\033[1m>> {text}\033[0m", flush=True)


# The template functions (logical ids) the chapters deliver events to: security, then kill switches.
DELIVERED_TO = frozenset({"SgEventFunction", "SlackActionsFunction", "KillSwitchWorkerFunction"})


def demo(port: int = 0) -> int:
    started = time.monotonic()
    port = port or server.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="opsbot-demo-"))
    _say(f"starting the local AWS (moto server) on 127.0.0.1:{port}")
    moto = server.start(port, workdir / "moto.log")
    token = "xoxb-local-demo-token"
    try:
        with SlackStandIn(token, echo=lambda text: print(f"\n{text}", flush=True)) as slack:
            _say("seeding the fleet: hub + 3 member accounts x 2 regions, the templates' roles; IAM enforcement on")
            state = seed_into(server.endpoint(port), slack.base_url, token)
            for line in state["seed_lines"]:
                print("  " + line)
            apply_local_environment({"endpoint": server.endpoint(port), **state})
            # The functions the story delivers events to, started now as Lambda containers would be
            # (each in its own process, as its own role), so their imports overlap the first chapters.
            every: list[Any] = [*routes(), *queue_routes(), *api_routes()]
            WORKERS.prewarm(sorted({r.handler for r in every if r.function in DELIVERED_TO}))
            settings = Settings.from_mapping(os.environ)
            rt = build_runtime(settings, session())
            from aws_lambda_powertools.utilities import parameters

            notifier = build_notifier(settings, session(), str(parameters.get_secret(settings_secret())))
            now = datetime.now(UTC).replace(hour=3, minute=7)  # as if the 03:00 schedule fired
            for attempt in ("first run of today's 03:00 slot", "the same slot again (a retried event)"):
                _say(f"opsbot run snapshot-daily — {attempt}")
                plan = plan_run(
                    rt.ledger,
                    rt.fleet,
                    rt.tasks,
                    "snapshot-daily",
                    Trigger("schedule", event_time=now.isoformat()),
                    now,
                    manifests=rt.manifests,
                )
                run = run_now(plan, rt.tasks, rt.broker, rt.ledger, notifier, manifests=rt.manifests, caps=rt.caps)
                print(runs_table([run]))
                if attempt.startswith("first"):
                    first = run
            _say("opsbot runs")
            print(runs_table(rt.ledger.recent_runs(5)))
            _say(f"opsbot runs show {first['run_id']}  (one account/region's actions)")
            actions = [
                a
                for a in rt.ledger.actions(first["run_id"])
                if a["region"] == "us-east-1" and a["account"] == rt.fleet.accounts[0].id
            ]
            print(
                table(
                    ["RESOURCE", "ACTION", "OUTCOME", "IDS"],
                    [
                        [
                            a["resource"],
                            a["action"],
                            a["outcome"],
                            ",".join(a.get("created_ids", []) + a.get("deleted_ids", [])),
                        ]
                        for a in actions
                    ],
                )
            )
            print("unknown task names in tags:", first.get("unknown_tasks"))
            dr_copy_chapter(rt, notifier, now.replace(hour=5, minute=37), _say)
            breach_chapter(state, rt, notifier, slack, _say)
            security_chapter(state, rt, notifier, _say)
            killswitch_chapter(state, rt, notifier, slack, _say)
            print(f"\nSlack messages posted: {len(slack.messages())}")
    finally:
        WORKERS.close()  # the hub functions' processes (events.py), before the AWS they talk to
        server.stop(moto.pid)
    _say(f"demo finished in {time.monotonic() - started:.1f}s")
    return 0


def settings_secret() -> str:
    return os.environ["OPSBOT_SLACK_SECRET_NAME"]
