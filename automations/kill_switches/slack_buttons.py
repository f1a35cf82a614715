"""Slack button presses (block_actions) on opsbot alerts: verify, authorize, resolve, then act.

The endpoint must answer Slack within 3 seconds, so it only verifies and queues; the worker flips or
restores and updates the original message through ``response_url``. A request is refused, with a clear
reason and no change, when its signature is wrong, its timestamp is over 5 minutes old, it was seen
before (replay), the user is not on call, or its alert id names no stored alert. The button carries
only an alert id: the target is whatever the stored alert (or the switch flipped for it) names.

Kill switch acts only on an OPEN alert. A press on a resolved one (a stale button) is refused to the
presser (ephemeral) and the message loses its button (the worker rewrites it with a note); the worker
asks again before it flips, in case the alert resolved while the press was queued. Restore still finds
the switch flipped for the alert after the alert itself has resolved.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
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

from automations.core import compiled
from automations.core.boundary import ACCOUNT_ID, REGION, InputError, loads, mapping, text
from automations.core.iam import LEDGER, grants
from automations.core.notify import KILL_SWITCH_FLIP, KILL_SWITCH_RESTORE
from automations.core.rulebook import RuleFile, load_document, validate_document
from automations.kill_switches.kinds import SWITCH_KINDS
from automations.kill_switches.switchboard import Actor, Result, Switchboard, Target

log = logging.getLogger(__name__)
MAX_AGE_SECONDS = 300
MAX_BLOCKS = 50  # Slack's own limit for a message
MAX_BLOCKS_BYTES = 64_000  # well inside an SQS message (256 KiB), with room for the rest of the job
ALERT_ID = re.compile(r"^brk-\d{14}-[0-9a-f]{6}$")  # automations.breach_checks.alerts.new_alert_id
USER_ID = re.compile(r"^[A-Z0-9]{2,32}$")
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


ONCALL_SCHEMA = Path(__file__).with_name("schemas") / "oncall.schema.json"
# What a compiled oncall.yaml depends on besides its text (core/compiled.py): a change to either recompiles.
ONCALL_COMPILED_FROM = (ONCALL_SCHEMA, Path(__file__))


def oncall_from_data(data: Mapping[str, Any]) -> OnCall:
    return OnCall(frozenset(data.get("users") or []), tuple(data.get("user_groups") or []))


def load_oncall(path: str | Path, text: str | None = None) -> OnCall:
    """The Slack endpoint's cold start reads the form `make package` compiled, when it was compiled from
    exactly this text (no YAML or JSON-schema import inside Slack's 3 seconds); otherwise it validates."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    if (value := compiled.read(path, text, *ONCALL_COMPILED_FROM)) is not None:
        return oncall_from_data(value)
    return oncall_from_data(validated_oncall(path, text))


def validated_oncall(path: str | Path, text: str) -> dict[str, Any]:
    """The file's data, valid (``RulebookError`` with every problem as file:line otherwise)."""
    doc = load_document(path, text)
    validate_document(doc, ONCALL_SCHEMA)
    return dict(doc.data)


ONCALL_FILE = RuleFile("oncall.yaml", load_oncall)


@dataclass(frozen=True)
class AlertFacts:
    """What a button needs of the alert it was pressed on. The breach checks own alerts; the handler
    adapts theirs to this (two capabilities meet only in an entry point)."""

    alert_id: str
    is_open: bool
    status: str  # e.g. OPEN, RESOLVED
    target: Mapping[str, Any] | None  # the function it names: function_name, account, region
    closed_at: str | None = None


AlertLookup = Callable[[str], AlertFacts | None]


@dataclass(frozen=True)
class Press:
    """One button press, as the worker needs it."""

    action: str  # flip | restore
    alert_id: str
    user_id: str
    user_name: str
    response_url: str
    blocks: list[dict[str, Any]]


@dataclass(frozen=True)
class Answer:
    """What the endpoint says to Slack: a status, and a body (an ephemeral message for a refusal)."""

    status: int
    body: str = ""
    content_type: str = "text/plain"

    @classmethod
    def ephemeral(cls, text: str) -> Answer:
        """A refusal told to the presser only, in the response itself: no call out within Slack's 3 s."""
        message = {"response_type": "ephemeral", "replace_original": False, "text": f":no_entry: {text}"}
        return cls(200, json.dumps(message), "application/json")


def _header(headers: Mapping[str, Any], name: str) -> str:
    found = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == name.lower()), "")
    return found if isinstance(found, str) else ""


def decode_body(body: Any, base64_encoded: bool) -> str:
    """The request body as Slack signed it. API Gateway hands binary bodies over base64-encoded."""
    if body is None:
        return ""
    if not isinstance(body, str):
        raise Rejected(400, "the request body is not text")
    if not base64_encoded:
        return body
    try:
        return base64.b64decode(body, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Rejected(400, "the request body is not valid base64 of UTF-8 text") from None


def verify(secret: str, body: str, headers: Mapping[str, Any], now: datetime) -> str:
    """slack-sdk's SignatureVerifier, with the refusal reason spelled out. Returns the signature."""
    timestamp, signature = _header(headers, "X-Slack-Request-Timestamp"), _header(headers, "X-Slack-Signature")
    if not timestamp or not signature:
        raise Rejected(401, "missing X-Slack-Signature or X-Slack-Request-Timestamp")
    if not re.fullmatch(r"\d{1,12}", timestamp):
        raise Rejected(401, f"bad X-Slack-Request-Timestamp {timestamp[:40]!r}")
    age = now.timestamp() - int(timestamp)
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
    """The one parse step for an interaction: a block_actions press of one of opsbot's buttons, or a 400
    that says what was wrong. Nothing in a signed body can make it fail otherwise."""
    source = "slack request"
    try:
        fields = parse_qs(body, max_num_fields=20)
        payload = mapping(loads(fields["payload"][0], source, "payload"), source, "payload")
        if payload.get("type") != "block_actions":
            raise InputError(source, "payload.type", f"unsupported interaction type {str(payload.get('type'))[:40]!r}")
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions:
            raise InputError(source, "payload.actions", "no action")
        action = mapping(actions[0], source, "payload.actions[0]")
        action_id = action.get("action_id")
        if action_id not in (FLIP, RESTORE):
            raise InputError(source, "payload.actions[0].action_id", f"unknown action {str(action_id)[:40]!r}")
        value = mapping(loads(text(action.get("value"), source, "value"), source, "value"), source, "value")
        alert_id = text(value.get("alert_id"), source, "payload.actions[0].value.alert_id", pattern=ALERT_ID)
        user = mapping(payload.get("user"), source, "payload.user")
        user_id = text(user.get("id"), source, "payload.user.id", pattern=USER_ID)
    except KeyError:
        raise Rejected(400, "no interaction payload in the request body") from None
    except (InputError, ValueError) as exc:
        reason = f"{exc.field}: {exc.problem}" if isinstance(exc, InputError) else "malformed form body"
        raise Rejected(400, reason) from None
    name = next((n for n in (user.get("username"), user.get("name")) if isinstance(n, str) and n), user_id)
    message = payload.get("message")
    blocks = message.get("blocks") if isinstance(message, Mapping) else None
    url = payload.get("response_url")
    return Press(
        action="flip" if action_id == FLIP else "restore",
        alert_id=alert_id,
        user_id=user_id,
        user_name=name[:80],
        response_url=url if isinstance(url, str) and url.startswith(("https://", "http://")) else "",
        blocks=kept_blocks(blocks),
    )


def kept_blocks(blocks: Any) -> list[dict[str, Any]]:
    """The message's blocks, carried to the worker so it can rewrite the message; dropped (the worker then
    posts a fresh reply) when they are not what Slack itself sends: at most 50 blocks, a small message."""
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        return []
    kept = [b for b in blocks if isinstance(b, dict)]
    return kept if len(json.dumps(kept, default=str)) <= MAX_BLOCKS_BYTES else []


class Stale(Exception):
    """A press on an alert that is no longer open: refused, and the message loses its button."""

    def __init__(self, target: Target, reason: str):
        self.target, self.reason = target, reason
        super().__init__(reason)


def alert_target(alert: AlertFacts | None, alert_id: str) -> Target:
    target = (alert.target if alert else None) or {}
    if not target.get("function_name"):
        raise Rejected(403, f"alert {alert_id!r} is unknown, closed, or names no function: nothing done")
    return Target("lambda", str(target["function_name"]), str(target["account"]), str(target["region"]))


def stale_reason(alert: AlertFacts) -> str:
    since = f" since {alert.closed_at}" if alert.closed_at else ""
    return f"alert {alert.alert_id} is {alert.status}{since}: this button is stale and nothing was done"


def resolve(press: Press, lookup_alert: AlertLookup, board: Switchboard) -> Target:
    """The target the stored, still-open alert names; for Restore, the switch flipped for that alert
    (whatever became of the alert since). Raises ``Stale`` for a press on a closed alert."""
    if press.action == "restore" and (flipped := board.target_for_alert(press.alert_id)):
        return flipped
    alert = lookup_alert(press.alert_id)
    target = alert_target(alert, press.alert_id)
    if alert is not None and not alert.is_open:
        raise Stale(target, stale_reason(alert))
    return target


def accept(
    body: str,
    headers: Mapping[str, str],
    *,
    signing_secret: str,
    table: Any,
    oncall: OnCall,
    slack: WebClient | None,
    lookup_alert: AlertLookup,
    board: Switchboard,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the endpoint checks before queueing; returns the job for the worker (with ``refused``
    set for a stale button: the worker only records it and rewrites the message)."""
    now = now or datetime.now(UTC)
    signature = verify(signing_secret, body, headers, now)
    remember(table, signature, now)
    press = parse(body)
    if not oncall.allows(press.user_id, slack):
        raise Rejected(403, f"<@{press.user_id}> is not on the on-call list (rules/oncall.yaml): nothing done")
    refused = None
    try:
        target = resolve(press, lookup_alert, board)
    except Stale as exc:
        target, refused = exc.target, exc.reason
    return {
        "request_id": signature,  # the worker's idempotency key: one press, one flip, one message update
        "press": asdict(press),
        "target": asdict(target),
        "accepted_at": now.isoformat(),
        **({"refused": refused} if refused else {}),
    }


def queue_sender(sqs: Any, queue_url: str) -> Callable[[dict[str, Any]], None]:
    """How an accepted press reaches the worker: one SQS message per job."""

    def send(job: dict[str, Any]) -> None:
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(job))

    return send


def handle_request(
    body: Any,
    headers: Mapping[str, Any],
    *,
    enqueue: Callable[[dict[str, Any]], None],
    base64_encoded: bool = False,
    **checks: Any,
) -> Answer:
    """The endpoint's whole job. Unsigned or badly signed: 401 before anything is parsed. Signed but
    malformed: 400 with the reason. Refused (not on call, no such alert): an ephemeral message in the
    response itself. Accepted: queued for the worker, 200."""
    try:
        job = accept(decode_body(body, base64_encoded), headers if isinstance(headers, Mapping) else {}, **checks)
    except Rejected as exc:
        return Answer.ephemeral(exc.reason) if exc.status == 403 else Answer(exc.status, exc.reason)
    enqueue(job)  # a stale press too: the worker takes the button off the message
    if refused := job.get("refused"):
        return Answer.ephemeral(f"{refused}. The message is being updated.")
    return Answer(200)


@dataclass(frozen=True)
class Job:
    """What the endpoint queues for the worker (``accept`` makes it; ``parse_job`` reads it back)."""

    request_id: str
    press: Press
    target: Target
    refused: str | None = None  # a stale button: record it, rewrite the message, change nothing


def parse_job(data: Any) -> Job:
    """The one parse step for a queued job: typed, or an InputError naming the field."""
    source = "kill-switch job"
    job = mapping(data, source, "job")
    press = mapping(job.get("press"), source, "press")
    target = mapping(job.get("target"), source, "target")
    action = text(press.get("action"), source, "press.action")
    if action not in ("flip", "restore"):
        raise InputError(source, "press.action", f"not flip or restore: {action[:20]!r}")
    kind = text(target.get("kind"), source, "target.kind")
    if kind not in SWITCH_KINDS:
        raise InputError(source, "target.kind", f"not a kill-switch kind: {kind[:20]!r}")
    blocks = press.get("blocks")
    url, name = press.get("response_url"), press.get("user_name")
    refused = job.get("refused")
    return Job(
        request_id=text(job.get("request_id"), source, "request_id"),
        press=Press(
            action=action,
            alert_id=text(press.get("alert_id"), source, "press.alert_id", pattern=ALERT_ID),
            user_id=text(press.get("user_id"), source, "press.user_id", pattern=USER_ID),
            user_name=name if isinstance(name, str) else "",
            response_url=url if isinstance(url, str) and url.startswith(("https://", "http://")) else "",
            blocks=kept_blocks(blocks),
        ),
        target=Target(
            kind=kind,
            id=text(target.get("id"), source, "target.id"),
            account=text(target.get("account"), source, "target.account", pattern=ACCOUNT_ID),
            region=text(target.get("region"), source, "target.region", pattern=REGION),
        ),
        refused=None if refused is None else text(refused, source, "refused")[:500],
    )


def complete(
    data: Mapping[str, Any], board: Switchboard, lookup_alert: AlertLookup, now: datetime | None = None
) -> Result:
    """The worker's job: flip or restore, then replace the original message with who did what. A flip is
    asked again whether its alert is still open: it may have resolved while the press was queued."""
    job = parse_job(data)
    if job.refused is None and job.press.action == "flip":
        alert = lookup_alert(job.press.alert_id)
        if alert is None or not alert.is_open:
            gone = f"alert {job.press.alert_id} is no longer open: this button is stale and nothing was done"
            job = replace(job, refused=stale_reason(alert) if alert else gone)
    result = perform(job, board)
    press = job.press
    if press.response_url:
        try:
            WebhookClient(press.response_url, timeout=5).send(
                text=result.sentence(),
                blocks=updated_blocks(press, result, now or datetime.now(UTC)),
                # Without the original blocks, replacing would erase the alert's text: post beside it.
                replace_original=bool(press.blocks),
            )
        except Exception:  # the switch is flipped and audited; an unreachable Slack must not undo the job
            log.exception("could not update the Slack message for %s", job.request_id)
    return result


def perform(job: Job, board: Switchboard) -> Result:
    press, target = job.press, job.target
    actor = Actor("slack", press.user_id, press.user_name)
    if job.refused is not None:
        return board.decline(target, actor, press.action, "refused", job.refused, alert_id=press.alert_id)
    if press.action == "flip":
        return board.flip(target, actor, alert_id=press.alert_id)
    return board.restore(target, actor, alert_id=press.alert_id)


def updated_blocks(press: Press, result: Result, now: datetime) -> list[dict[str, Any]]:
    """The original alert, its buttons replaced by who did what, and the next button (none after a
    refusal: a stale or protected target's button would only be refused again)."""
    kept = [b for b in press.blocks if b.get("type") != "actions" and b.get("block_id") != "opsbot-killswitch-log"]
    note = f"<@{press.user_id}> pressed *{press.action}* at {now:%Y-%m-%d %H:%M:%S}Z: {result.sentence()}"
    kept.append(ContextBlock(block_id="opsbot-killswitch-log", elements=[MarkdownTextObject(text=note)]).to_dict())
    if result.outcome == "refused":
        return kept
    switch_on = (result.outcome in ("flipped", "already-flipped", "drifted")) or (
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
