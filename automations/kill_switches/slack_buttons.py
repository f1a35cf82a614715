"""Slack button presses (block_actions) on opsbot alerts: verify, authorize, resolve, then act.

The endpoint must answer Slack within 3 seconds, so it only verifies and queues; the worker flips or
restores and updates the original message through ``response_url``. A request is refused, with a clear
reason and no change, when its signature is wrong, its timestamp is over 5 minutes old, it was seen
before (replay), the user is not on call, or its alert id names no stored alert. The button carries
only an alert id: the target is whatever the stored alert (or the switch flipped for it) names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from botocore.exceptions import ClientError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, ContextBlock, MarkdownTextObject
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.webhook import WebhookClient

from automations.core.iam import LEDGER, grants
from automations.core.notify import KILL_SWITCH_FLIP, KILL_SWITCH_RESTORE
from automations.core.rulebook import RuleFile, load_document, validate_document
from automations.kill_switches.switchboard import Actor, Result, Switchboard, Target

MAX_AGE_SECONDS = 300
REQUEST_GRANTS = grants(LEDGER, "dynamodb:PutItem")  # ``remember``: one conditional put per request
FLIP, RESTORE = KILL_SWITCH_FLIP, KILL_SWITCH_RESTORE


class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        self.status, self.reason = status, reason
        super().__init__(f"{status}: {reason}")


@dataclass(frozen=True)
class OnCall:
    users: frozenset[str]
    user_groups: tuple[str, ...] = ()

    def allows(self, user_id: str, slack: WebClient | None) -> bool:
        if user_id in self.users:
            return True
        for group in self.user_groups:
            if slack is None:
                break
            try:
                if user_id in slack.usergroups_users_list(usergroup=group).get("users", []):
                    return True
            except SlackApiError:
                continue  # a group we cannot read admits nobody
        return False


def load_oncall(path: str | Path, text: str | None = None) -> OnCall:
    doc = load_document(path, text)
    validate_document(doc, Path(__file__).with_name("schemas") / "oncall.schema.json")
    return OnCall(frozenset(doc.data.get("users", [])), tuple(doc.data.get("user_groups", [])))


ONCALL_FILE = RuleFile("oncall.yaml", load_oncall)


@dataclass(frozen=True)
class Press:
    """One button press, as the worker needs it."""

    action: str  # flip | restore
    alert_id: str
    user_id: str
    user_name: str
    response_url: str
    blocks: list[dict[str, Any]]


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def verify(secret: str, body: str, headers: Mapping[str, str], now: datetime) -> str:
    """slack-sdk's SignatureVerifier, with the refusal reason spelled out. Returns the signature."""
    timestamp, signature = _header(headers, "X-Slack-Request-Timestamp"), _header(headers, "X-Slack-Signature")
    if not timestamp or not signature:
        raise Rejected(401, "missing X-Slack-Signature or X-Slack-Request-Timestamp")
    try:
        age = now.timestamp() - int(timestamp)
    except ValueError:
        raise Rejected(401, f"bad X-Slack-Request-Timestamp {timestamp!r}") from None
    if abs(age) > MAX_AGE_SECONDS:
        raise Rejected(401, f"stale request: timestamp is {int(age)} s old (limit {MAX_AGE_SECONDS} s)")
    verifier = SignatureVerifier(secret, clock=_FixedClock(now))
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        raise Rejected(401, "invalid signature: not signed with this app's signing secret")
    return signature


class _FixedClock(Clock):
    """SignatureVerifier asks a clock for 'now'; give it ours so tests and checks agree."""

    def __init__(self, now: datetime):
        self._now = now

    def now(self) -> float:
        return self._now.timestamp()


def remember(table: Any, signature: str, now: datetime) -> None:
    """Refuse a replay: a signature is accepted once (kept past the 5-minute window, then expires)."""
    try:
        table.put_item(
            Item={
                "pk": f"SLACKREQ#{signature}",
                "sk": "SEEN",
                "at": now.isoformat(),
                "expires_at": int((now + timedelta(seconds=2 * MAX_AGE_SECONDS)).timestamp()),
            },
            ConditionExpression="attribute_not_exists(pk)",
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            raise Rejected(401, "replayed request: this signed request was already handled") from None
        raise


def parse(body: str) -> Press:
    try:
        payload = json.loads(parse_qs(body)["payload"][0])
    except (KeyError, IndexError, ValueError):
        raise Rejected(400, "no interaction payload in the request body") from None
    if payload.get("type") != "block_actions" or not payload.get("actions"):
        raise Rejected(400, f"unsupported interaction type {payload.get('type')!r}")
    action = payload["actions"][0]
    if action.get("action_id") not in (FLIP, RESTORE):
        raise Rejected(400, f"unknown action {action.get('action_id')!r}")
    try:
        alert_id = str(json.loads(action.get("value") or "{}")["alert_id"])
    except (ValueError, KeyError, TypeError):
        raise Rejected(400, "the button carries no alert id") from None
    user = payload.get("user") or {}
    return Press(
        action="flip" if action["action_id"] == FLIP else "restore",
        alert_id=alert_id,
        user_id=str(user.get("id", "")),
        user_name=str(user.get("username") or user.get("name") or user.get("id", "")),
        response_url=str(payload.get("response_url", "")),
        blocks=list((payload.get("message") or {}).get("blocks", [])),
    )


def resolve(press: Press, lookup_alert: Callable[[str], Mapping[str, Any] | None], board: Switchboard) -> Target:
    """The target the stored alert names; for Restore, the switch flipped for that alert."""
    if press.action == "restore" and (flipped := board.target_for_alert(press.alert_id)):
        return flipped
    alert = lookup_alert(press.alert_id)
    target = (alert or {}).get("target") or {}
    if not target.get("function_name"):
        raise Rejected(403, f"alert {press.alert_id!r} is unknown, closed, or names no function: nothing done")
    return Target("lambda", str(target["function_name"]), str(target["account"]), str(target["region"]))


def accept(
    body: str,
    headers: Mapping[str, str],
    *,
    signing_secret: str,
    table: Any,
    oncall: OnCall,
    slack: WebClient | None,
    lookup_alert: Callable[[str], Mapping[str, Any] | None],
    board: Switchboard,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the endpoint checks before queueing; returns the job for the worker."""
    now = now or datetime.now(UTC)
    signature = verify(signing_secret, body, headers, now)
    remember(table, signature, now)
    press = parse(body)
    if not oncall.allows(press.user_id, slack):
        raise Rejected(403, f"<@{press.user_id}> is not on the on-call list (rules/oncall.yaml): nothing done")
    target = resolve(press, lookup_alert, board)
    return {
        "request_id": signature,  # the worker's idempotency key: one press, one flip, one message update
        "press": asdict(press),
        "target": asdict(target),
        "accepted_at": now.isoformat(),
    }


def queue_sender(sqs: Any, queue_url: str) -> Callable[[dict[str, Any]], None]:
    """How an accepted press reaches the worker: one SQS message per job."""

    def send(job: dict[str, Any]) -> None:
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(job))

    return send


def handle_request(
    body: str,
    headers: Mapping[str, str],
    *,
    enqueue: Callable[[dict[str, Any]], None],
    **checks: Any,
) -> tuple[int, str]:
    """The endpoint's whole job: (HTTP status, body) for Slack. Accepted presses are queued; a refusal
    after the signature checked out is told to the presser (ephemeral, through response_url)."""
    try:
        job = accept(body, headers, **checks)
    except Rejected as exc:
        if exc.status == 403:
            url = parse(body).response_url
            if url:
                WebhookClient(url).send(
                    text=f":no_entry: {exc.reason}", response_type="ephemeral", replace_original=False
                )
            return 200, ""
        return exc.status, exc.reason
    enqueue(job)
    return 200, ""


def complete(job: Mapping[str, Any], board: Switchboard, now: datetime | None = None) -> Result:
    """The worker's job: flip or restore, then replace the original message with who did what."""
    result = perform(job, board)
    press = Press(**job["press"])
    if press.response_url:
        WebhookClient(press.response_url).send(
            text=result.sentence(),
            blocks=updated_blocks(press, result, now or datetime.now(UTC)),
            replace_original=True,
        )
    return result


def perform(job: Mapping[str, Any], board: Switchboard) -> Result:
    press = Press(**job["press"])
    target = Target(**job["target"])
    actor = Actor("slack", press.user_id, press.user_name)
    if press.action == "flip":
        return board.flip(target, actor, alert_id=press.alert_id)
    return board.restore(target, actor, alert_id=press.alert_id)


def updated_blocks(press: Press, result: Result, now: datetime) -> list[dict[str, Any]]:
    """The original alert, its buttons replaced by who did what, and the next button."""
    kept = [b for b in press.blocks if b.get("type") != "actions" and b.get("block_id") != "opsbot-killswitch-log"]
    note = f"<@{press.user_id}> pressed *{press.action}* at {now:%Y-%m-%d %H:%M:%S}Z: {result.sentence()}"
    kept.append(ContextBlock(block_id="opsbot-killswitch-log", elements=[MarkdownTextObject(text=note)]).to_dict())
    switch_on = (result.outcome in ("flipped", "already-flipped")) or (
        result.outcome == "failed" and press.action == "restore"
    )
    value = json.dumps({"alert_id": press.alert_id})
    button = (
        ButtonElement(text="Restore", action_id=RESTORE, value=value, style="primary")
        if switch_on
        else ButtonElement(text="Kill switch", action_id=FLIP, value=value, style="danger")
    )
    kept.append(ActionsBlock(block_id="opsbot-actions", elements=[button]).to_dict())
    return kept
