"""The Slack interactivity endpoint and the kill-switch worker, end to end on moto, with requests
signed exactly as Slack signs them (verified against Slack's published test vector)."""

from __future__ import annotations

import json
import time

import pytest

from automations.breach_checks.alerts import AlertBook
from automations.breach_checks.kinds import Measurement
from automations.breach_checks.lambda_concurrency import function_key
from automations.breach_checks.rules import Thresholds
from automations.kill_switches.slack_buttons import FLIP, RESTORE, Rejected, verify
from opsbot.local.slack_standin import SlackStandIn
from tests.conftest import ACCOUNT_A
from tests.slack_support import ONCALL_USER, REGION, STRANGER, fixture, post, press_body, reserved, run_worker, signed


def test_slack_published_signature_vector():
    vector = fixture("slack/signature_example.json")
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(int(vector["timestamp"]), UTC)
    assert verify(vector["signing_secret"], vector["body"], vector["headers"], at) == vector["valid_signature"]
    with pytest.raises(Rejected, match="invalid signature"):
        verify(vector["signing_secret"], vector["body"] + "&x=1", vector["headers"], at)
    with pytest.raises(Rejected, match="stale request"):
        verify(
            vector["signing_secret"],
            vector["body"],
            vector["headers"],
            datetime.fromtimestamp(int(vector["timestamp"]) + 301, UTC),
        )


def test_on_call_press_flips_asynchronously_and_updates_the_message(endpoint):
    body = press_body(endpoint, FLIP, ONCALL_USER)
    response = post(endpoint, body, signed(body))
    assert response["statusCode"] == 200
    assert reserved(endpoint) is None  # the endpoint only queued the work
    (job,) = run_worker(endpoint)
    assert job["target"] == {"kind": "lambda", "id": "orders-consumer", "account": ACCOUNT_A, "region": REGION}
    assert reserved(endpoint) == 0
    (update,) = [c for c in endpoint["slack"].calls if c["method"] == "response_url"]
    blocks = update["payload"]["blocks"]
    assert update["payload"]["replace_original"] is True
    assert f"<@{ONCALL_USER}> pressed *flip*" in json.dumps(blocks)
    assert blocks[-1]["elements"][0]["action_id"] == RESTORE

    body = press_body(endpoint, RESTORE, ONCALL_USER)
    assert post(endpoint, body, signed(body))["statusCode"] == 200
    run_worker(endpoint)
    assert reserved(endpoint) is None  # back to exactly no reservation


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("forged", "invalid signature"),
        ("stale", "stale request"),
        ("unsigned", "missing X-Slack-Signature"),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(endpoint, case, reason):
    body = press_body(endpoint, FLIP, ONCALL_USER)
    headers = {
        "forged": signed(body, secret="not-the-signing-secret"),
        "stale": signed(body, timestamp=int(time.time()) - 301),
        "unsigned": {"Content-Type": "application/x-www-form-urlencoded"},
    }[case]
    response = post(endpoint, body, headers)
    assert response["statusCode"] == 401 and reason in response["body"]
    assert run_worker(endpoint) == [] and reserved(endpoint) is None


def test_replayed_request_is_refused(endpoint):
    body = press_body(endpoint, FLIP, ONCALL_USER)
    headers = signed(body)
    assert post(endpoint, body, headers)["statusCode"] == 200
    again = post(endpoint, body, headers)
    assert again["statusCode"] == 401 and "replayed" in again["body"]
    assert len(run_worker(endpoint)) == 1


def test_user_not_on_call_is_told_why_and_nothing_changes(endpoint):
    body = press_body(endpoint, FLIP, STRANGER)
    response = post(endpoint, body, signed(body))
    assert response["statusCode"] == 200
    assert run_worker(endpoint) == [] and reserved(endpoint) is None
    # Told in the response itself (ephemeral), not through a call to response_url within Slack's 3 s.
    answer = json.loads(response["body"])
    assert answer["response_type"] == "ephemeral" and "not on the on-call list" in answer["text"]
    assert [c for c in endpoint["slack"].calls if c["method"] == "response_url"] == []


def test_tampered_alert_id_names_nothing(endpoint):
    body = press_body(endpoint, FLIP, ONCALL_USER, alert_id="brk-20261125000000-f0f0f0")  # well formed, unknown
    response = post(endpoint, body, signed(body))
    assert response["statusCode"] == 200
    assert run_worker(endpoint) == [] and reserved(endpoint) is None
    assert "unknown, closed, or names no function" in json.loads(response["body"])["text"]
    malformed = press_body(endpoint, FLIP, ONCALL_USER, alert_id="ba-20261125-0000-forged")
    response = post(endpoint, malformed, signed(malformed))
    assert response["statusCode"] == 400 and "alert_id" in response["body"]
    assert run_worker(endpoint) == [] and reserved(endpoint) is None


def test_user_group_membership_counts_as_on_call(endpoint, monkeypatch, tmp_path):
    from slack_sdk import WebClient

    from automations.kill_switches.slack_buttons import OnCall

    with SlackStandIn("xoxb-g", user_groups={"S0SREONCALL": ["U0GROUPED"]}) as slack:
        client = WebClient("xoxb-g", base_url=slack.base_url)
        oncall = OnCall(frozenset(), ("S0SREONCALL", "S0MISSING"))
        assert oncall.allows("U0GROUPED", client) and not oncall.allows(STRANGER, client)


def test_function_concurrency_alert_carries_the_kill_switch_button(ledger):
    from automations.breach_checks.messages import alert_message

    book = AlertBook(ledger.table)
    function = Measurement(
        check="lambda-concurrency",
        key=function_key("orders-consumer"),
        name="Lambda function orders-consumer concurrency",
        service="lambda",
        usage=9,
        limit=10,
        target={"function_name": "orders-consumer", "account": ACCOUNT_A, "region": REGION},
    )
    opened = book.observe(ACCOUNT_A, REGION, function, Thresholds(), None)
    (button,) = next(b for b in alert_message(opened).as_blocks() if b.type == "actions").elements
    assert button.action_id == FLIP and json.loads(button.value) == {"alert_id": opened.state["alert_id"]}
    quota = Measurement(
        check="service-quotas", key="ec2/L-1216C47A", name="Running instances", service="ec2", usage=95, limit=100
    )
    opened = book.observe(ACCOUNT_A, REGION, quota, Thresholds(), None)
    assert not [b for b in alert_message(opened).as_blocks() if b.type == "actions"]


def test_a_redelivered_job_changes_nothing_and_updates_the_message_once(endpoint):
    body = press_body(endpoint, FLIP, ONCALL_USER)
    post(endpoint, body, signed(body))
    (job,) = run_worker(endpoint)
    endpoint["sqs"].send_message(QueueUrl=endpoint["queue"], MessageBody=json.dumps(job))  # SQS delivers twice
    run_worker(endpoint)
    assert reserved(endpoint) == 0
    assert len([c for c in endpoint["slack"].calls if c["method"] == "response_url"]) == 1
