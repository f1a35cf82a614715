"""The fleet: which member accounts and regions opsbot acts in, and sessions into them.

The hub assumes one member role per capability (``<role_prefix>-snapshots``, ``-security-groups``,
``-breach-checks``, ``-kill-switches``; template-member.yaml), with an ExternalId, in each member account:
the read-only checker cannot delete a snapshot and the snapshot task cannot flip a switch. Each broker
acts for one capability (``for_capability``); credentials are cached per (account, role) and reused for
every region until they near expiry; clients are cached
per (account, region, service) because creating a boto3 client is far more expensive than a call,
and all are made from the hub's one session so each service model is loaded once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from automations.core import compiled
from automations.core.rulebook import LoadedDocument, Problem, RuleFile, load_document, validate_document

# Standard mode retries throttling and transient errors with backoff; 8 attempts rides out bursts.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8}, max_pool_connections=32)
# For creates that take no client token (CreateSnapshot, CopySnapshot): a retry must look first, so
# botocore must not retry by itself (automations.snapshots.common.create_once does it).
NO_RETRY_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 1})


@dataclass(frozen=True)
class MemberAccount:
    id: str
    name: str
    regions: tuple[str, ...]


@dataclass(frozen=True)
class Fleet:
    accounts: tuple[MemberAccount, ...]
    role_prefix: str = "opsbot"
    external_id: str | None = None
    session_duration_seconds: int = 3600
    partition: str = "aws"

    def account(self, account_id: str) -> MemberAccount | None:
        return next((a for a in self.accounts if a.id == account_id), None)

    def targets(
        self, accounts: Iterable[str] | None = None, regions: Iterable[str] | None = None
    ) -> list[tuple[str, str]]:
        """(account, region) pairs in scope, in fleet order. ``None`` means no restriction."""
        want_accounts = set(accounts) if accounts is not None else None
        want_regions = set(regions) if regions is not None else None
        return [
            (a.id, r)
            for a in self.accounts
            if want_accounts is None or a.id in want_accounts
            for r in a.regions
            if want_regions is None or r in want_regions
        ]

    def role_name(self, capability: str) -> str:
        """The member role of one capability (template-member.yaml names them ``<RolePrefix>-<capability>``)."""
        return f"{self.role_prefix}-{capability}"

    def role_arn(self, account_id: str, capability: str) -> str:
        return f"arn:{self.partition}:iam::{account_id}:role/{self.role_name(capability)}"


def _fleet_checks(doc: LoadedDocument) -> list[Problem]:
    problems = []
    seen: set[str] = set()
    for i, account in enumerate(doc.data["accounts"]):
        if account["id"] in seen:
            problems.append(doc.problem(("accounts", i, "id"), f"duplicate account id {account['id']!r}"))
        seen.add(account["id"])
        if "regions" not in account and "default_regions" not in doc.data:
            problems.append(doc.problem(("accounts", i), "no regions: set 'regions' or 'default_regions'"))
    return problems


FLEET_SCHEMA = Path(__file__).with_name("schemas") / "fleet.schema.json"
FLEET_COMPILED_FROM = (FLEET_SCHEMA, Path(__file__))  # a compiled fleet is stale when either changes


def fleet_from_document(doc: LoadedDocument) -> Fleet:
    validate_document(doc, FLEET_SCHEMA, [_fleet_checks])
    data = doc.data
    default_regions = tuple(data.get("default_regions", ()))
    accounts = tuple(
        MemberAccount(id=a["id"], name=a.get("name", a["id"]), regions=tuple(a.get("regions", default_regions)))
        for a in data["accounts"]
    )
    return Fleet(
        accounts=accounts,
        role_prefix=data.get("role_prefix", "opsbot"),
        external_id=data.get("external_id"),
        session_duration_seconds=data.get("session_duration_seconds", 3600),
        partition=data.get("partition", "aws"),
    )


def fleet_to_dict(fleet: Fleet) -> dict[str, Any]:
    return asdict(fleet)


def fleet_from_dict(data: dict[str, Any]) -> Fleet:
    """A fleet compiled (validated) ahead of time (``core/compiled.py``)."""
    accounts = tuple(MemberAccount(a["id"], a["name"], tuple(a["regions"])) for a in data["accounts"])
    return Fleet(**{**data, "accounts": accounts})


def load_fleet(path: str | Path, text: str | None = None, *, compiled_at: str | Path | None = None) -> Fleet:
    """``compiled_at``: the rules file whose compiled form may be used (by default ``path``); it is used
    only when it was compiled from this very text, e.g. a fleet parameter that holds the packaged file."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    value = compiled.read(compiled_at or path, text, *FLEET_COMPILED_FROM)
    if value is not None:
        return fleet_from_dict(value)
    return fleet_from_document(load_document(path, text))


FLEET_FILE = RuleFile("fleet.yaml", load_fleet)


class AccountAccessError(Exception):
    """A member account/region could not be reached (AssumeRole denied, region not enabled, ...)."""

    def __init__(self, account: str, region: str, code: str, message: str):
        self.account, self.region, self.code, self.detail = account, region, code, message
        super().__init__(f"{account}/{region}: {code}: {message}")


@dataclass
class _Credentials:
    values: dict[str, str]
    expires_at: float


@dataclass
class _BrokerCache:
    credentials: dict[tuple[str, str], _Credentials] = field(default_factory=dict)  # (account, capability)
    clients: dict[tuple[str, str, str, str, bool], Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class SessionBroker:
    """Hands out boto3 clients for (account, region), assuming the member role as needed."""

    base_session: boto3.Session
    fleet: Fleet
    session_name: str = "opsbot"
    refresh_margin_seconds: int = 300
    clock: Callable[[], float] = time.time
    client_config: Config = CLIENT_CONFIG
    on_client: Callable[[Any], None] | None = None  # instrumentation hook (the benchmark counts calls)
    # The member role it acts as (a capability's name). None: a broker that hands out nothing until
    # ``for_capability`` names one, so no code path can act with another capability's role by default.
    capability: str | None = None
    # Shared by every ``for_capability`` view of one broker: one credentials and client cache, one lock.
    cache: _BrokerCache = field(default_factory=lambda: _BrokerCache())

    def for_capability(self, capability: str) -> SessionBroker:
        """The same broker acting as ``capability``'s member role (``<role_prefix>-<capability>``)."""
        return replace(self, capability=capability)

    def _assume(self, account: str, region: str, capability: str) -> _Credentials:
        cached = self.cache.credentials.get((account, capability))
        if cached and cached.expires_at - self.refresh_margin_seconds > self.clock():
            return cached
        sts = self.base_session.client("sts", region_name=region, config=self.client_config)
        params: dict[str, Any] = {
            "RoleArn": self.fleet.role_arn(account, capability),
            "RoleSessionName": self.session_name,
            "DurationSeconds": self.fleet.session_duration_seconds,
        }
        if self.fleet.external_id:
            params["ExternalId"] = self.fleet.external_id
        try:
            creds = sts.assume_role(**params)["Credentials"]
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise AccountAccessError(account, region, err.get("Code", "ClientError"), err.get("Message", "")) from exc
        except BotoCoreError as exc:
            raise AccountAccessError(account, region, type(exc).__name__, str(exc)) from exc
        fresh = _Credentials(
            values={
                "aws_access_key_id": creds["AccessKeyId"],
                "aws_secret_access_key": creds["SecretAccessKey"],
                "aws_session_token": creds["SessionToken"],
            },
            expires_at=creds["Expiration"].timestamp(),
        )
        self.cache.credentials[(account, capability)] = fresh
        # Clients made with the old credentials must not outlive them.
        for key in [k for k in self.cache.clients if k[:2] == (account, capability)]:
            del self.cache.clients[key]
        return fresh

    def client(self, account: str, region: str, service: str, *, retries: bool = True) -> Any:
        """A client in the member account/region, as this broker's capability; ``retries=False`` for
        calls opsbot retries itself."""
        if self.capability is None:
            raise RuntimeError("SessionBroker.client: no capability; use broker.for_capability(name)")
        with self.cache.lock:
            creds = self._assume(account, region, self.capability)
            key = (account, self.capability, region, service, retries)
            client = self.cache.clients.get(key)
            if client is None:
                # One botocore session for all clients: service models (EC2's is tens of MB in memory)
                # are loaded once, not once per (account, region).
                config = self.client_config if retries else self.client_config.merge(NO_RETRY_CONFIG)
                client = self.base_session.client(  # type: ignore[call-overload]
                    service, region_name=region, config=config, **creds.values
                )
                if self.on_client is not None:
                    self.on_client(client)
                self.cache.clients[key] = client
            return client
