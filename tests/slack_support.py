"""The Slack endpoint and kill-switch worker on moto, wired as the handlers run (the ``endpoint`` fixture),
and requests built and signed exactly as Slack builds and signs them."""

from __future__ import annotations

import copy
import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from slack_sdk.signature import SignatureVerifier

from automations.breach_checks.alerts import AlertBook
from automations.breach_checks.kinds import Measurement
from automations.breach_checks.lambda_concurrency import function_key
from automations.breach_checks.rules import Thresholds
from automations.core.notify import Alert
from automations.kill_switches.slack_buttons import FLIP
from opsbot.local.slack_standin import SlackStandIn
from tests.conftest import ACCOUNT_A, FIXTURES, FakeLambdaContext
from tests.test_kill_switches import _zip

REGION = "us-east-1"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # Slack's documented example signing secret
ONCALL_USER, STRANGER = "U0ONCALLDANA", "U0NOTONCALL"


def fixture(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / path).read_text())["payload"]
    return data


@pytest.fixture
def endpoint(hub_session, broker, ledger, tmp_path, monkeypatch) -> Any:
    lam = broker.client(ACCOUNT_A, REGION, "lambda")
    iam = broker.client(ACCOUNT_A, REGION, "iam")
    role = iam.create_role(RoleName="fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam.create_function(
        FunctionName="orders-consumer", Runtime="python3.11", Role=role, Handler="app.handler", Code={"ZipFile": _zip()}
    )
    transition = AlertBook(ledger.table).observe(
        ACCOUNT_A,
        REGION,
        Measurement(
            check="lambda-concurrency",
            key=function_key("orders-consumer"),
            name="Lambda function orders-consumer concurrency",
            service="lambda",
            usage=9,
            limit=10,
            target={"function_name": "orders-consumer", "account": ACCOUNT_A, "region": REGION},
        ),
        Thresholds(),
        None,
    )
    alert_id = transition.state["alert_id"]
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(
        f'external_id: opsbot-test\ndefault_regions: [{REGION}]\naccounts:\n  - {{id: "{ACCOUNT_A}"}}\n'
    )
    (rules / "tasks.yaml").write_text("tasks: []\n")
    (rules / "oncall.yaml").write_text(f"users: [{ONCALL_USER}]\n")
    hub_session.client("secretsmanager").create_secret(Name="opsbot/slack-signing", SecretString=SECRET)
    queue = hub_session.client("sqs").create_queue(QueueName="opsbot-killswitch")["QueueUrl"]
    for key, value in {
        "OPSBOT_RULES_DIR": str(rules),
        "OPSBOT_SLACK_SIGNING_SECRET_NAME": "opsbot/slack-signing",
        "OPSBOT_KILLSWITCH_QUEUE_URL": queue,
    }.items():
        monkeypatch.setenv(key, value)
    from handlers import _wiring, kill_switch_worker, slack_actions

    _wiring.reset()  # the runtime, and with it the on-call list it loaded
    with SlackStandIn("xoxb-test") as slack:
        yield {
            "api": slack_actions,
            "worker": kill_switch_worker,
            "slack": slack,
            "alert_id": alert_id,
            "lam": lam,
            "sqs": hub_session.client("sqs"),
            "queue": queue,
        }
    _wiring.reset()


def press_body(env: dict[str, Any], action_id: str, user: str, alert_id: str | None = None) -> str:
    """Slack's block_actions payload (recorded shape) for a press on an opsbot alert's button."""
    payload = copy.deepcopy(fixture("slack/block_actions_payload.json"))
    value = json.dumps({"alert_id": alert_id or env["alert_id"]})
    alert = Alert(
        "Lambda function orders-consumer concurrency at 90%",
        "warning",
        "s",
        buttons=[("Kill switch", FLIP, value, "danger")],
    )
    payload["user"] = {"id": user, "username": "dana" if user == ONCALL_USER else "mallory", "team_id": "T0G9PQBBK"}
    payload["message"]["blocks"] = [b.to_dict() for b in alert.as_blocks()]
    payload["response_url"] = env["slack"].response_url()
    payload["actions"] = [
        {
            **payload["actions"][0],
            "action_id": action_id,
            "block_id": "opsbot-actions",
            "value": value,
            "text": {"type": "plain_text", "text": "Kill switch"},
        }
    ]
    return urlencode({"payload": json.dumps(payload)})


def signed(body: str, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp or int(time.time()))
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": SignatureVerifier(secret).generate_signature(timestamp=ts, body=body),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def post(env: dict[str, Any], body: str, headers: dict[str, str]) -> dict[str, Any]:
    event = copy.deepcopy(fixture("lambda/api_gateway_proxy_event.json"))
    event.update(httpMethod="POST", path="/slack/actions", resource="/slack/actions", headers=headers, body=body)
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    event["requestContext"].update(httpMethod="POST", path="/slack/actions", resourcePath="/slack/actions")
    event["queryStringParameters"] = event["multiValueQueryStringParameters"] = None
    result: dict[str, Any] = env["api"].handler(event, FakeLambdaContext())
    return result


def run_worker(env: dict[str, Any]) -> list[dict[str, Any]]:
    messages = env["sqs"].receive_message(QueueUrl=env["queue"], MaxNumberOfMessages=10).get("Messages", [])
    if not messages:
        return []
    event = copy.deepcopy(fixture("lambda/sqs_event.json"))
    template = event["Records"][0]
    event["Records"] = [
        {
            **template,
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "md5OfBody": m["MD5OfBody"],
        }
        for m in messages
    ]
    env["worker"].handler(event, FakeLambdaContext())
    return [json.loads(m["Body"]) for m in messages]


def reserved(env: dict[str, Any]) -> int | None:
    return env["lam"].get_function_concurrency(FunctionName="orders-consumer").get("ReservedConcurrentExecutions")
