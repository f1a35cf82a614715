"""The demo's kill-switch chapter: a concurrency alert with its button; a correctly signed press from
on-call flips the function (through API -> queue -> worker, as deployed); a forged press and one from
someone not on call are refused; Restore puts the exact previous setting back; then pause/resume."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
from slack_sdk.signature import SignatureVerifier

from automations.breach_checks.alerts import AlertBook
from automations.breach_checks.kinds import Measurement
from automations.breach_checks.lambda_concurrency import function_key
from automations.breach_checks.messages import alert_message
from automations.breach_checks.rules import Thresholds
from automations.core.notify import Notifier
from automations.core.runtime import Runtime
from automations.kill_switches import pause as pausing
from automations.kill_switches.policies import protection_of
from automations.kill_switches.slack_buttons import FLIP, RESTORE
from automations.kill_switches.switchboard import CAPABILITY_NAME, Actor, Switchboard, describe
from opsbot.local.events import api_request, deliver_queues
from opsbot.local.slack_standin import SlackStandIn
from opsbot.tables import table

ON_CALL, NOT_ON_CALL = "U0LOCALDANA", "U0LOCALMALLORY"


def _press(slack: SlackStandIn, blocks: list[dict[str, Any]], action_id: str, alert_id: str, user: str) -> str:
    payload = copy.deepcopy(
        json.loads((Path(__file__).with_name("records") / "block_actions_payload.json").read_text())["payload"]
    )
    value = json.dumps({"alert_id": alert_id})
    payload["user"] = {"id": user, "username": "dana" if user == ON_CALL else "mallory", "team_id": "T0LOCAL"}
    payload["message"]["blocks"] = blocks
    payload["response_url"] = slack.response_url()
    payload["actions"] = [
        {**payload["actions"][0], "action_id": action_id, "block_id": "opsbot-actions", "value": value}
    ]
    return urlencode({"payload": json.dumps(payload)})


def _signed(body: str, secret: str) -> dict[str, str]:
    ts = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body) or ""
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def killswitch_chapter(
    state: dict[str, Any], rt: Runtime, notifier: Notifier, slack: SlackStandIn, say: Callable[[str], None]
) -> None:
    account, region = state["functions"]["account"], state["functions"]["region"]
    lam = rt.broker.for_capability(CAPABILITY_NAME).client(account, region, "lambda")
    infra = boto3.Session(
        aws_access_key_id=state["infra_keys"]["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=state["infra_keys"]["AWS_SECRET_ACCESS_KEY"],
        region_name=region,
    )

    def reserved() -> str:
        value = lam.get_function_concurrency(FunctionName="orders-consumer").get("ReservedConcurrentExecutions")
        return describe({"reserved_concurrency": value})

    say(f"orders-consumer in {account}/{region} runs hot: 23 of its 25 reserved executions")
    arn = f"arn:aws:lambda:{region}:{account}:function:orders-consumer"
    transition = AlertBook(rt.ledger.table).observe(
        account,
        region,
        Measurement(
            check="lambda-concurrency",
            key=function_key("orders-consumer"),
            name="Lambda function orders-consumer concurrency",
            service="lambda",
            usage=23,
            limit=25,
            unit="concurrent executions",
            window="peak over 15 minutes, against its reserved concurrency",
            target={
                "function_name": "orders-consumer",
                "function_arn": arn,
                "account": account,
                "region": region,
                "reserved_concurrency": 25,
            },
        ),
        Thresholds(),
        None,
    )
    assert transition is not None
    alert = alert_message(transition)
    notifier.send(alert)
    alert_id = transition.state["alert_id"]
    blocks = [b.to_dict() for b in alert.as_blocks()]
    print(f"  before: {reserved()}")

    say(f"<@{ON_CALL}> (on call) presses Kill switch: signed with the app's signing secret, as Slack does")
    body = _press(slack, blocks, FLIP, alert_id, ON_CALL)
    answer = api_request("/slack/actions", "POST", _signed(body, state["signing_secret"]), body)
    print(f"  endpoint answered {answer['statusCode']} at once; the worker does the flip from the queue")
    deliver_queues(infra, state["queues"])
    print(f"  after: {reserved()}")

    say("a forged press (wrong signing secret) and a press by someone not on call")
    forged = _press(slack, blocks, RESTORE, alert_id, ON_CALL)
    answer = api_request("/slack/actions", "POST", _signed(forged, "not-the-signing-secret"), forged)
    print(f"  forged: {answer['statusCode']} {answer['body']}")
    stranger = _press(slack, blocks, RESTORE, alert_id, NOT_ON_CALL)
    answer = api_request("/slack/actions", "POST", _signed(stranger, state["signing_secret"]), stranger)
    deliver_queues(infra, state["queues"])
    told = json.loads(answer["body"])  # the refusal comes back in the response itself, to the presser only
    print(f"  not on call: {answer['statusCode']} {told['response_type']}: {told['text']}; still {reserved()}")

    board = Switchboard(
        rt.ledger.table, rt.broker.for_capability(CAPABILITY_NAME).client, rt.fleet, protection_of(rt.rules)
    )
    say("opsbot killswitch status")
    print(
        table(
            ["TARGET", "SINCE", "BY", "WAS"],
            [
                [
                    f"{i['target']['kind']}:{i['target']['id']}",
                    i["flipped_at"],
                    i["flipped_by"].get("name"),
                    describe(i.get("previous")),
                ]
                for i in board.flipped()
            ],
        )
    )

    say(f"<@{ON_CALL}> presses Restore")
    body = _press(slack, [b for b in slack.calls[-1]["payload"].get("blocks", blocks)], RESTORE, alert_id, ON_CALL)
    api_request("/slack/actions", "POST", _signed(body, state["signing_secret"]), body)
    deliver_queues(infra, state["queues"])
    print(f"  after restore: {reserved()} (exactly as before)")

    say("opsbot pause, then opsbot resume (opsbot's own rules, previous states recorded)")
    hub: Any = boto3.Session(region_name=region)
    hub_board = Switchboard(rt.ledger.table, lambda a, r, service: hub.client(service, region_name=r), None)
    operator = Actor("cli", "opsbot-operator", "opsbot-operator")
    hub_account = hub.client("sts").get_caller_identity()["Account"]
    scheduler = hub.client("scheduler")
    for result in pausing.pause(hub_board, hub.client("events"), hub_account, region, operator, scheduler=scheduler):
        print("  " + result.sentence())
    for result in pausing.resume(hub_board, operator):
        print("  " + result.sentence())
