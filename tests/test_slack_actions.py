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


# ---- only OPEN alerts: a stale button is refused and taken off the message ----------------------------
def resolve_alert(ledger) -> None:
    """The next check finds orders-consumer back at 10%: the alert resolves (the breach checks' own lifecycle)."""
    book = AlertBook(ledger.table)
    key = function_key("orders-consumer")
    reading = Measurement(
        check="lambda-concurrency",
        key=key,
        name="Lambda function orders-consumer concurrency",
        service="lambda",
        usage=1,
        limit=10,
        target={"function_name": "orders-consumer", "account": ACCOUNT_A, "region": REGION},
    )
    transition = book.observe(ACCOUNT_A, REGION, reading, Thresholds(), book.state(ACCOUNT_A, REGION, key))
    assert transition is not None and transition.event == "resolved"


def message_update(endpoint) -> dict:
    (update,) = [c for c in endpoint["slack"].calls if c["method"] == "response_url"]
    return update["payload"]


def test_kill_switch_on_a_resolved_alert_is_refused_and_the_button_taken_off(endpoint, ledger):
    resolve_alert(ledger)
    body = press_body(endpoint, FLIP, ONCALL_USER)
    response = post(endpoint, body, signed(body))
    answer = json.loads(response["body"])
    assert response["statusCode"] == 200 and answer["response_type"] == "ephemeral"
    assert f"alert {endpoint['alert_id']} is RESOLVED since" in answer["text"] and "stale" in answer["text"]
    (job,) = run_worker(endpoint)  # queued only to rewrite the message
    assert "RESOLVED" in job["refused"]
    assert reserved(endpoint) is None  # nothing flipped
    update = message_update(endpoint)
    assert update["replace_original"] is True
    assert not [b for b in update["blocks"] if b["type"] == "actions"]  # no button left to press
    assert "refused" in json.dumps(update["blocks"]) and "stale" in json.dumps(update["blocks"])


def test_restore_still_works_after_the_alert_resolved(endpoint, ledger):
    body = press_body(endpoint, FLIP, ONCALL_USER)
    post(endpoint, body, signed(body))
    run_worker(endpoint)
    assert reserved(endpoint) == 0
    resolve_alert(ledger)
    body = press_body(endpoint, RESTORE, ONCALL_USER)
    response = post(endpoint, body, signed(body))
    assert response["statusCode"] == 200 and response["body"] == ""  # accepted, not refused
    run_worker(endpoint)
    assert reserved(endpoint) is None


def test_a_flip_whose_alert_resolved_while_queued_is_refused_by_the_worker(endpoint, ledger):
    body = press_body(endpoint, FLIP, ONCALL_USER)
    assert post(endpoint, body, signed(body))["statusCode"] == 200  # the alert was open when pressed
    resolve_alert(ledger)
    run_worker(endpoint)
    assert reserved(endpoint) is None
    update = message_update(endpoint)
    assert not [b for b in update["blocks"] if b["type"] == "actions"] and "RESOLVED" in update["text"]


def test_a_protected_function_is_not_flipped_from_slack(endpoint):
    lam = endpoint["lam"]
    arn = lam.get_function(FunctionName="orders-consumer")["Configuration"]["FunctionArn"]
    lam.tag_resource(Resource=arn, Tags={"opsbot:protected": "payments core"})
    body = press_body(endpoint, FLIP, ONCALL_USER)
    post(endpoint, body, signed(body))
    run_worker(endpoint)
    assert reserved(endpoint) is None
    update = message_update(endpoint)
    assert "refused: protected" in update["text"] and not [b for b in update["blocks"] if b["type"] == "actions"]
