"""The demo's breach-flag chapter: the Lambda concurrency and service quota checks across the fleet.

payments-prod is at 85% of its Lambda concurrency (a warning naming the busiest functions),
analytics-prod at 96% of its EC2 vCPU quota (critical), and the hub may not enter legacy-sandbox (one
'cannot check' alert per check). The next scheduled checks say nothing new; twenty minutes later the
Lambda spike is over and its alert resolves, once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from automations.breach_checks.alerts import AlertBook
from automations.breach_checks.kinds import CHECK_KINDS
from automations.core.notify import Notifier
from automations.core.runs import Trigger
from automations.core.runtime import Runtime
from opsbot.local.seed_breaches import lambda_usage_data
from opsbot.local.slack_standin import SlackStandIn
from opsbot.quotas_cli import alerts_table, check_runs_table, load_rules, run_checks


def breach_chapter(
    state: dict[str, Any], rt: Runtime, notifier: Notifier, slack: SlackStandIn, say: Callable[[str], None]
) -> None:
    rules = load_rules(rt)
    now = datetime.now(UTC)
    posted = len(slack.messages())
    say("opsbot quotas check — Lambda concurrency (every 5 min) and service quotas (hourly), every account/region")
    runs = run_checks(rt, rules, notifier, CHECK_KINDS.names(), trigger=Trigger("schedule"), clock=lambda: now)
    print(check_runs_table(runs))
    print(f"  Slack messages from these checks: {len(slack.messages()) - posted}")

    say("opsbot alerts")
    print(alerts_table(AlertBook(rt.ledger.table).open_alerts()))

    five = now + timedelta(minutes=5)
    posted = len(slack.messages())
    say("five minutes later, the next scheduled checks: still over the thresholds, so nothing new is said")
    print(
        check_runs_table(
            run_checks(rt, rules, notifier, CHECK_KINDS.names(), trigger=Trigger("schedule"), clock=lambda: five)
        )
    )
    print(f"  Slack messages from these checks: {len(slack.messages()) - posted}")

    later = now + timedelta(minutes=20)
    hot = state["breaches"]["lambda"]
    say(f"twenty minutes later the spike in {hot['account']}/{hot['region']} is over: concurrency down to 30%")
    publisher = boto3.Session(**{k.lower(): v for k, v in state["breaches"]["metrics_keys"].items()})
    limits = (
        rt.broker.for_capability("breach-checks")
        .client(hot["account"], hot["region"], "lambda")
        .get_account_settings()["AccountLimit"]
    )
    allocated = limits["ConcurrentExecutions"] - limits["UnreservedConcurrentExecutions"]
    unreserved = round(0.3 * limits["ConcurrentExecutions"]) - allocated
    publisher.client("cloudwatch", region_name=hot["region"]).put_metric_data(
        Namespace="AWS/Lambda",
        MetricData=lambda_usage_data(  # type: ignore[arg-type]
            unreserved, allocated, later - timedelta(minutes=1), **{"checkout-api": unreserved, "ledger-sync": 40}
        ),
    )
    posted = len(slack.messages())
    runs = run_checks(rt, rules, notifier, ["lambda-concurrency"], trigger=Trigger("schedule"), clock=lambda: later)
    print(check_runs_table(runs))
    print(f"  Slack messages from this check: {len(slack.messages()) - posted}")
    say("opsbot alerts")
    print(alerts_table(AlertBook(rt.ledger.table).open_alerts()))
