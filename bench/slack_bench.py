"""Benchmark: the Slack interactivity endpoint (``handlers.slack_actions.handler``) from a cold start.

Slack gives an interactive endpoint 3 seconds to acknowledge. A real press on a real open breach alert
(a signed ``block_actions`` request, as Slack signs it, through the API Gateway proxy event) is answered
by a fresh process against the local AWS (moto server in its own process). Measured in that process:
  import        its first line to ``import handlers.slack_actions`` done
  first ack     the first request, handler in -> response out (verify, authorize, look up, queue)
  cold ack      the two together: first line to the first acknowledgement (target: <= 1 s)
  warm ack      a second press in the same process
The median over the rounds is printed, with the answer's status.

    python bench/slack_bench.py [--rounds 5]
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import json  # noqa: E402 - the clock above must start before any import
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ACCOUNT, REGION = "210987654321", "us-east-1"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # Slack's documented example signing secret
ONCALL_USER = "U0ONCALLDANA"
FLEET = f'external_id: opsbot-bench\ndefault_regions: [{REGION}]\naccounts:\n  - {{id: "{ACCOUNT}", name: bench}}\n'
TARGET_COLD_ACK_S = 1.0


class _Context:
    """What the Lambda runtime passes as ``context`` (the attributes Powertools reads)."""

    function_name = "opsbot-slack-actions"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:opsbot-slack-actions"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def endpoint_process(events_file: Path) -> None:
    """Measured: import the endpoint, answer the first press, then a second one."""
    events = json.loads(events_file.read_text())
    from handlers.slack_actions import handler

    imported = time.perf_counter()
    if profile := os.environ.get("BENCH_PROFILE"):  # where the first request's time goes (pstats file)
        import cProfile

        with cProfile.Profile() as profiler:
            first = handler(events[0], _Context())
        profiler.dump_stats(profile)
    else:
        first = handler(events[0], _Context())
    acked = time.perf_counter()
    second = handler(events[1], _Context())
    warm = time.perf_counter() - acked
    print(
        json.dumps(
            {
                "import": imported - PROCESS_START,
                "first_ack": acked - imported,
                "cold_ack": acked - PROCESS_START,
                "warm_ack": warm,
                "status": [first["statusCode"], second["statusCode"]],
                "body": str(first.get("body"))[:200],
            }
        )
    )


def _press_event(alert_id: str, response_url: str, n: int) -> dict:  # type: ignore[type-arg]
    """A signed press on the alert's kill-switch button, in API Gateway's proxy event (recorded shapes)."""
    import copy
    from urllib.parse import urlencode

    from slack_sdk.signature import SignatureVerifier

    from automations.core.notify import KILL_SWITCH_FLIP, Alert

    fixtures = ROOT / "tests" / "fixtures"
    payload = json.loads((fixtures / "slack" / "block_actions_payload.json").read_text())["payload"]
    value = json.dumps({"alert_id": alert_id})
    alert = Alert("Lambda function orders-consumer concurrency at 90%", "warning", "s")
    alert.buttons = [("Kill switch", KILL_SWITCH_FLIP, value, "danger")]
    payload["user"] = {"id": ONCALL_USER, "username": "dana", "team_id": "T0G9PQBBK"}
    payload["message"]["blocks"] = [b.to_dict() for b in alert.as_blocks()]
    payload["response_url"] = response_url
    payload["trigger_id"] = f"{payload.get('trigger_id', 'trigger')}-{n}"
    payload["actions"] = [
        {
            **payload["actions"][0],
            "action_id": KILL_SWITCH_FLIP,
            "block_id": "opsbot-actions",
            "value": value,
            "action_ts": f"{time.time():.6f}",
            "text": {"type": "plain_text", "text": "Kill switch"},
        }
    ]
    body = urlencode({"payload": json.dumps(payload)})
    ts = str(int(time.time()))
    headers = {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=ts, body=body),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    event = copy.deepcopy(json.loads((fixtures / "lambda" / "api_gateway_proxy_event.json").read_text())["payload"])
    event.update(httpMethod="POST", path="/slack/actions", resource="/slack/actions", headers=headers, body=body)
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    event["requestContext"].update(httpMethod="POST", path="/slack/actions", resourcePath="/slack/actions")
    event["queryStringParameters"] = event["multiValueQueryStringParameters"] = None
    return event


def prepare(url: str, rules: Path) -> tuple[str, dict[str, str]]:
    """Hub resources, a member function near its concurrency limit and the open alert about it."""
    import io
    import os
    import zipfile

    import boto3

    from automations.breach_checks.alerts import AlertBook
    from automations.breach_checks.kinds import Measurement
    from automations.breach_checks.lambda_concurrency import function_key
    from automations.breach_checks.rules import Thresholds
    from opsbot.local.hub import create_hub, hub_environment

    os.environ["AWS_ENDPOINT_URL"] = url
    hub = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    resources = create_hub(hub, slack_token="xoxb-bench", fleet_text=FLEET)
    hub.client("secretsmanager").create_secret(Name="opsbot/slack-signing", SecretString=SIGNING_SECRET)
    queue = hub.client("sqs").create_queue(QueueName="opsbot-killswitch")["QueueUrl"]
    creds = hub.client("sts").assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/opsbot-seed", RoleSessionName="prep")[
        "Credentials"
    ]
    member = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=REGION,
    )
    role = member.client("iam").create_role(RoleName="fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return event\n")
    member.client("lambda").create_function(
        FunctionName="orders-consumer",
        Runtime="python3.11",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": code.getvalue()},
    )
    table = hub.resource("dynamodb").Table(resources.ledger_table)
    transition = AlertBook(table).observe(
        ACCOUNT,
        REGION,
        Measurement(
            check="lambda-concurrency",
            key=function_key("orders-consumer"),
            name="Lambda function orders-consumer concurrency",
            service="lambda",
            usage=9,
            limit=10,
            target={"function_name": "orders-consumer", "account": ACCOUNT, "region": REGION},
        ),
        Thresholds(),
        None,
    )
    env = hub_environment(
        resources,
        OPSBOT_RULES_DIR=rules,
        OPSBOT_SLACK_SIGNING_SECRET_NAME="opsbot/slack-signing",
        OPSBOT_KILLSWITCH_QUEUE_URL=queue,
        OPSBOT_SLACK_CHANNEL="#ops",
    )
    return str(transition.state["alert_id"]), env


def main() -> None:
    import argparse
    import statistics
    import subprocess
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from opsbot.local import server
    from opsbot.local.slack_standin import SlackStandIn

    work = Path(tempfile.mkdtemp(prefix="opsbot-slack-bench-"))
    rules = work / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(FLEET)
    (rules / "tasks.yaml").write_text("tasks: []\n")
    (rules / "oncall.yaml").write_text(f"users: [{ONCALL_USER}]\n")
    # As `make package` does for the Lambda package: the rules it can compile, validated ahead of time.
    subprocess.run([sys.executable, "-m", "automations.compiled_rules", str(rules)], check=True, cwd=ROOT)
    runs = []
    with server.running(work / "moto.log") as url, SlackStandIn("xoxb-bench") as slack:
        alert_id, env = prepare(url, rules)
        env.update(
            OPSBOT_SLACK_API_URL=slack.base_url,
            POWERTOOLS_TRACE_DISABLED="true",
            POWERTOOLS_METRICS_DISABLED="true",
            POWERTOOLS_METRICS_NAMESPACE="Opsbot",
            POWERTOOLS_LOG_LEVEL="WARNING",
        )
        for n in range(args.rounds):
            events = work / f"events-{n}.json"
            events.write_text(json.dumps([_press_event(alert_id, slack.response_url(), 2 * n + k) for k in (0, 1)]))
            runs.append(server.run_measured(__file__, f"--endpoint={events}", url, **env))
    statuses = sorted({s for r in runs for s in r["status"]})
    print(f"rounds {args.rounds} (a fresh process each); answers {statuses}; first answer: {runs[0]['body']}")
    for key, label in (
        ("import", "import handlers.slack_actions"),
        ("first_ack", "first request -> acknowledgement"),
        ("cold_ack", "cold: first line -> first acknowledgement"),
        ("warm_ack", "warm: a second press -> acknowledgement"),
    ):
        values = [r[key] for r in runs]
        target = f"  target <= {TARGET_COLD_ACK_S} s " if key == "cold_ack" else ""
        verdict = ("ok" if statistics.median(values) <= TARGET_COLD_ACK_S else "MISSED") if target else ""
        print(f"{label:<44} median {statistics.median(values):.3f} s  (max {max(values):.3f} s){target}{verdict}")
    print(json.dumps({k: statistics.median(r[k] for r in runs) for k in ("import", "first_ack", "cold_ack")}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--endpoint":
        endpoint_process(Path(sys.argv[2]))
    else:
        main()
