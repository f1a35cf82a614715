"""Composition: build the ledger, fleet, tasks, session broker and notifier from settings.

Handlers and the operator CLI both call ``build_runtime``; they differ only in where settings come from.
``Settings.from_mapping`` takes the mapping it is given (a handler passes ``os.environ``), so nothing
in ``automations`` reads the environment by itself. Rules files other than the fleet and the tasks are
loaded by the capability that needs them, on first use, through ``Runtime.rules``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from automations.core.clock import utcnow
from automations.core.fleet import CLIENT_CONFIG, Fleet, SessionBroker, load_fleet
from automations.core.ledger import Ledger
from automations.core.notify import Notifier
from automations.core.rulebook import DEFAULT_RULES_DIR, RuleSource

if TYPE_CHECKING:  # imported where used: a handler that runs no task kind needs neither (cold start)
    from slack_sdk import WebClient

    from automations.core.kinds import KindEnv, TaskDefinition


@dataclass(frozen=True)
class Settings:
    ledger_table: str
    rules_dir: Path = DEFAULT_RULES_DIR
    alert_topic_arn: str | None = None
    slack_channel: str | None = None
    slack_api_url: str | None = None
    ledger_ttl_days: int = 90

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            ledger_table=env.get("OPSBOT_LEDGER_TABLE", "opsbot-ledger"),
            rules_dir=Path(env.get("OPSBOT_RULES_DIR", str(DEFAULT_RULES_DIR))),
            alert_topic_arn=env.get("OPSBOT_ALERT_TOPIC_ARN") or None,
            slack_channel=env.get("OPSBOT_SLACK_CHANNEL") or None,
            slack_api_url=env.get("OPSBOT_SLACK_API_URL") or None,
            ledger_ttl_days=int(env.get("OPSBOT_LEDGER_TTL_DAYS", "90")),
        )


@dataclass
class Runtime:
    settings: Settings
    ledger: Ledger
    fleet: Fleet
    broker: SessionBroker
    rules: RuleSource

    @property
    def tasks(self) -> dict[str, TaskDefinition]:
        from automations.core.tasks import TASKS_FILE

        return self.rules.get(TASKS_FILE)

    @property
    def env(self) -> KindEnv:
        from automations.core.kinds import KindEnv

        return KindEnv(self.ledger, self.rules)


def slack_client(token: str | None, api_url: str | None) -> WebClient | None:
    # The deployed secret holds a placeholder until someone puts the bot token in: no token, no Slack
    # (SNS still alerts), rather than a failing call per alert.
    if not token or not token.startswith("xox"):
        return None
    from slack_sdk import WebClient

    return WebClient(token=token, base_url=api_url) if api_url else WebClient(token=token)


def build_notifier(settings: Settings, session: boto3.Session, slack_token: str | None) -> Notifier:
    """Separate from the runtime so only the functions that notify need the Slack secret."""
    return Notifier(
        sns=session.client("sns", config=CLIENT_CONFIG) if settings.alert_topic_arn else None,
        topic_arn=settings.alert_topic_arn,
        slack=slack_client(slack_token, settings.slack_api_url),
        slack_channel=settings.slack_channel,
    )


def build_runtime(
    settings: Settings,
    session: boto3.Session,
    *,
    fleet_text: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    on_client: Callable[[Any], None] | None = None,
) -> Runtime:
    """``fleet_text`` (e.g. from an SSM parameter) overrides ``rules/fleet.yaml`` when given."""
    fleet_file = settings.rules_dir / "fleet.yaml"
    fleet = load_fleet(fleet_file if fleet_text is None else "ssm:fleet", fleet_text, compiled_at=fleet_file)
    table = session.resource("dynamodb", config=CLIENT_CONFIG).Table(settings.ledger_table)
    broker = SessionBroker(session, fleet, on_client=on_client)
    rules = RuleSource(settings.rules_dir)
    return Runtime(settings, Ledger(table, settings.ledger_ttl_days, clock), fleet, broker, rules)
