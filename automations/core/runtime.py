"""Composition: build the ledger, fleet, tasks, session broker and notifier from settings.

Handlers and the operator CLI both call ``build_runtime``; they differ only in where settings come from.
``Settings.from_mapping`` takes the mapping it is given (a handler passes ``os.environ``), so nothing
in ``automations`` reads the environment by itself. Rules files other than the fleet and the tasks are
loaded by the capability that needs them, on first use, through ``Runtime.rules``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from automations.core.clock import utcnow
from automations.core.fleet import CLIENT_CONFIG, Fleet, FleetDocument, SessionBroker, load_fleet
from automations.core.lazy import Lazy
from automations.core.ledger import Ledger
from automations.core.notify import Notifier
from automations.core.rulebook import DEFAULT_RULES_DIR, RuleSource

if TYPE_CHECKING:  # imported where used: a handler that runs no task kind needs none of them (cold start)
    from slack_sdk import WebClient

    from automations.core.caps import MemberCaps
    from automations.core.kinds import KindEnv, TaskDefinition
    from automations.core.manifest import ManifestStore


@dataclass(frozen=True)
class Settings:
    ledger_table: str
    rules_dir: Path = DEFAULT_RULES_DIR
    alert_topic_arn: str | None = None
    slack_channel: str | None = None
    slack_api_url: str | None = None
    ledger_ttl_days: int = 90
    # Where runs put their unit manifests (template.yaml ManifestBucket); None: units in the run record.
    manifest_bucket: str | None = None
    # Units at once in one member account and in one of its regions (automations/core/caps.py; 0: no cap).
    member_account_max_units: int = 4
    member_region_max_units: int = 1

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            ledger_table=env.get("OPSBOT_LEDGER_TABLE", "opsbot-ledger"),
            rules_dir=Path(env.get("OPSBOT_RULES_DIR", str(DEFAULT_RULES_DIR))),
            alert_topic_arn=env.get("OPSBOT_ALERT_TOPIC_ARN") or None,
            slack_channel=env.get("OPSBOT_SLACK_CHANNEL") or None,
            slack_api_url=env.get("OPSBOT_SLACK_API_URL") or None,
            ledger_ttl_days=int(env.get("OPSBOT_LEDGER_TTL_DAYS", "90")),
            manifest_bucket=env.get("OPSBOT_MANIFEST_BUCKET") or None,
            member_account_max_units=int(env.get("OPSBOT_MEMBER_ACCOUNT_MAX_UNITS", "4")),
            member_region_max_units=int(env.get("OPSBOT_MEMBER_REGION_MAX_UNITS", "1")),
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

    @cached_property
    def manifests(self) -> ManifestStore | None:
        """Made on first use: the functions that never plan or close a run make no S3 client (cold start)."""
        if not self.settings.manifest_bucket:
            return None
        from automations.core.manifest import ManifestStore

        s3 = self.broker.base_session.client("s3", config=CLIENT_CONFIG)
        return ManifestStore(s3, self.settings.manifest_bucket)

    @cached_property
    def caps(self) -> MemberCaps:
        from automations.core.caps import MemberCaps

        return MemberCaps(
            self.ledger.table,
            self.settings.member_account_max_units,
            self.settings.member_region_max_units,
            self.ledger.clock,
        )


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
    fleet_text: str | Callable[[], str | None] | None = None,
    clock: Callable[[], datetime] = utcnow,
    on_client: Callable[[Any], None] | None = None,
) -> Runtime:
    """``fleet_text`` (e.g. from an SSM parameter) overrides ``rules/fleet.yaml`` when given. A callable is
    read on first use of the fleet and on each use after (so it should cache, as Powertools Parameters
    does): a function that never uses the fleet never reads it. The fleet's organisation, if it names
    one, is discovered with ``session`` on first use of its accounts and again after a minute (fleet.py)."""
    fleet = _fleet(settings.rules_dir / "fleet.yaml", fleet_text).discovering_with(session, on_client=on_client)
    # Made on first use: the security-group path first needs it on a thread of its own, beside the
    # dedupe write, so a cold start does not make it before the event is read (automations/core/lazy.py).
    table = Lazy(lambda: session.resource("dynamodb", config=CLIENT_CONFIG).Table(settings.ledger_table))
    broker = SessionBroker(session, fleet, on_client=on_client)
    rules = RuleSource(settings.rules_dir)
    return Runtime(settings, Ledger(table, settings.ledger_ttl_days, clock), fleet, broker, rules)


def _fleet(fleet_file: Path, fleet_text: str | Callable[[], str | None] | None) -> Fleet:
    if not callable(fleet_text):
        return load_fleet(fleet_file if fleet_text is None else "ssm:fleet", fleet_text, compiled_at=fleet_file)
    read, lock = fleet_text, threading.Lock()
    last: dict[str | None, FleetDocument] = {}

    def document() -> FleetDocument:
        text = read()
        with lock:
            if text not in last:  # parsed (and validated) again only when the text changes
                last.clear()
                last[text] = _fleet(fleet_file, text).document
            return last[text]

    return Fleet.reading(document)
