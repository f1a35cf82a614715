"""Alerts to SNS and Slack (Block Kit through slack-sdk).

One ``Alert`` is rendered twice: as JSON for SNS subscribers (e-mail, pager, chat bridges) and as
Block Kit for Slack. A failure to notify is logged and returned, never raised: a Slack outage must
not turn a finished run into a failed one. Each failure is also handed to ``Notifier.on_failure`` when
one is set: the handlers count it as the ``NotificationFailures`` metric (alarmed in template.yaml;
runbook docs/runbooks/notification-failures.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:  # slack-sdk is imported when a message is rendered for Slack, not by every importer
    from slack_sdk import WebClient
    from slack_sdk.models.blocks import Block

log = logging.getLogger(__name__)

SEVERITY_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
MAX_DETAIL_LINES = 10  # Slack sections hold 3,000 characters; on-call needs the first failures, not all.
# Slack button action ids, shared by who shows a button (breach alerts) and who handles it (kill switches).
KILL_SWITCH_FLIP, KILL_SWITCH_RESTORE = "killswitch_flip", "killswitch_restore"
# The metric a failed delivery is counted as (namespace POWERTOOLS_METRICS_NAMESPACE, dimension service).
NOTIFICATION_FAILURES_METRIC = "NotificationFailures"


@dataclass
class Alert:
    title: str
    severity: str  # info | warning | critical
    summary: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    context: str = ""
    kind: str = "opsbot"
    # Machine-readable facts for SNS subscribers (e.g. a breach alert's id, usage, limit); not shown in Slack.
    data: dict[str, Any] = field(default_factory=dict)
    # Slack buttons: (label, action_id, value, style). The value names a stored alert, never a free target.
    buttons: list[tuple[str, str, str, str | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """For the outbox: the whole alert, as JSON-ready data (``from_dict`` reads it back)."""
        return {
            "title": self.title,
            "severity": self.severity,
            "summary": self.summary,
            "fields": [list(f) for f in self.fields],
            "details": list(self.details),
            "context": self.context,
            "kind": self.kind,
            "data": self.data,
            "buttons": [list(b) for b in self.buttons],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        return cls(
            title=str(data["title"]),
            severity=str(data["severity"]),
            summary=str(data["summary"]),
            fields=[(str(k), str(v)) for k, v in data.get("fields", [])],
            details=[str(d) for d in data.get("details", [])],
            context=str(data.get("context", "")),
            kind=str(data.get("kind", "opsbot")),
            data=dict(data.get("data") or {}),
            buttons=[(str(a), str(b), str(c), None if d is None else str(d)) for a, b, c, d in data.get("buttons", [])],
        )

    def as_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "kind": self.kind,
            "title": self.title,
            "severity": self.severity,
            "summary": self.summary,
            "fields": dict(self.fields),
            "details": self.details,
            "context": self.context,
        }
        if self.data:
            message["data"] = self.data
        return message

    def as_blocks(self) -> list[Block]:
        from slack_sdk.models.blocks import (
            ActionsBlock,
            ButtonElement,
            ContextBlock,
            HeaderBlock,
            MarkdownTextObject,
            PlainTextObject,
            SectionBlock,
        )

        emoji = SEVERITY_EMOJI.get(self.severity, "")
        blocks: list[Block] = [
            HeaderBlock(text=PlainTextObject(text=f"{self.title}"[:150])),
            SectionBlock(text=MarkdownTextObject(text=f"{emoji} {self.summary}".strip())),
        ]
        if self.fields:
            blocks.append(SectionBlock(fields=[MarkdownTextObject(text=f"*{k}*\n{v}") for k, v in self.fields[:10]]))
        if self.details:
            shown = self.details[:MAX_DETAIL_LINES]
            more = len(self.details) - len(shown)
            text = "\n".join(f"• {line}" for line in shown) + (f"\n…and {more} more" if more > 0 else "")
            blocks.append(SectionBlock(text=MarkdownTextObject(text=text[:2900])))
        if self.context:
            blocks.append(ContextBlock(elements=[MarkdownTextObject(text=self.context)]))
        if self.buttons:
            blocks.append(
                ActionsBlock(
                    block_id="opsbot-actions",
                    elements=[
                        ButtonElement(text=label, action_id=action_id, value=value, style=style)
                        for label, action_id, value, style in self.buttons
                    ],
                )
            )
        return blocks


@dataclass
class Notifier:
    sns: Any | None = None
    topic_arn: str | None = None
    slack: WebClient | None = None
    slack_channel: str | None = None
    # Told of each channel that failed: (channel, error). It must not raise (it is a metric, not a retry).
    on_failure: Callable[[str, str], None] | None = None

    def channels(self) -> frozenset[str]:
        """The channels this notifier delivers to: "sns", "slack"."""
        return frozenset(
            name
            for name, ready in (
                ("sns", self.sns is not None and self.topic_arn),
                ("slack", self.slack is not None and self.slack_channel),
            )
            if ready
        )

    def send(self, alert: Alert, announcement_id: str | None = None, skip: frozenset[str] = frozenset()) -> list[str]:
        """Deliver to every configured channel; returns the errors (empty when all went out).

        ``announcement_id`` (the outbox's) goes with the message, so a subscriber can drop the duplicate
        that a delivery retried after a crash may cause."""
        errors: list[str] = []
        attributes = {
            "severity": {"DataType": "String", "StringValue": alert.severity},
            "kind": {"DataType": "String", "StringValue": alert.kind},
        }
        if announcement_id:
            attributes["announcement_id"] = {"DataType": "String", "StringValue": announcement_id}
        if self.sns is not None and self.topic_arn and "sns" not in skip:
            try:
                self.sns.publish(
                    TopicArn=self.topic_arn,
                    Subject=f"[opsbot] {alert.title}"[:100],
                    Message=json.dumps(alert.as_message(), indent=2),
                    MessageAttributes=attributes,
                )
            except (ClientError, BotoCoreError) as exc:
                log.error("SNS publish failed: %s", exc)
                errors.append(f"sns: {exc}")
                self._failed("sns", str(exc))
        if self.slack is not None and self.slack_channel and "slack" not in skip:
            from slack_sdk.errors import SlackApiError

            metadata = (
                {"event_type": "opsbot_announcement", "event_payload": {"announcement_id": announcement_id}}
                if announcement_id
                else None
            )
            try:
                self.slack.chat_postMessage(
                    channel=self.slack_channel,
                    text=f"{alert.title}: {alert.summary}",
                    blocks=alert.as_blocks(),
                    metadata=metadata,
                )
            except (SlackApiError, OSError) as exc:
                log.error("Slack chat.postMessage failed: %s", exc)
                errors.append(f"slack: {exc}")
                self._failed("slack", str(exc))
        return errors

    def _failed(self, channel: str, error: str) -> None:
        if self.on_failure is None:
            return
        try:
            self.on_failure(channel, error)
        except Exception:  # counting a failure must never become one
            log.exception("on_failure hook failed for %s", channel)
