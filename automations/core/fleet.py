"""The fleet: which member accounts and regions opsbot acts in, and sessions into them.

The hub assumes ``OpsBotExecutionRole`` (with an ExternalId) in each member account. Credentials
are cached per account and reused for every region until they near expiry; clients are cached
per (account, region, service) because creating a boto3 client is far more expensive than a call,
and all are made from the hub's one session so each service model is loaded once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

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
    role_name: str = "OpsBotExecutionRole"
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

    def role_arn(self, account_id: str) -> str:
        return f"arn:{self.partition}:iam::{account_id}:role/{self.role_name}"


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


def fleet_from_document(doc: LoadedDocument) -> Fleet:
    validate_document(doc, Path(__file__).with_name("schemas") / "fleet.schema.json", [_fleet_checks])
    data = doc.data
    default_regions = tuple(data.get("default_regions", ()))
    accounts = tuple(
        MemberAccount(id=a["id"], name=a.get("name", a["id"]), regions=tuple(a.get("regions", default_regions)))
        for a in data["accounts"]
    )
    return Fleet(
        accounts=accounts,
        role_name=data.get("role_name", "OpsBotExecutionRole"),
        external_id=data.get("external_id"),
        session_duration_seconds=data.get("session_duration_seconds", 3600),
        partition=data.get("partition", "aws"),
    )


def load_fleet(path: str | Path, text: str | None = None) -> Fleet:
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
class SessionBroker:
    """Hands out boto3 clients for (account, region), assuming the member role as needed."""

    base_session: boto3.Session
    fleet: Fleet
    session_name: str = "opsbot"
    refresh_margin_seconds: int = 300
    clock: Callable[[], float] = time.time
    client_config: Config = CLIENT_CONFIG
    on_client: Callable[[Any], None] | None = None  # instrumentation hook (the benchmark counts calls)
    _credentials: dict[str, _Credentials] = field(default_factory=dict, init=False)
    _clients: dict[tuple[str, str, str, bool], Any] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def _assume(self, account: str, region: str) -> _Credentials:
        cached = self._credentials.get(account)
        if cached and cached.expires_at - self.refresh_margin_seconds > self.clock():
            return cached
        sts = self.base_session.client("sts", region_name=region, config=self.client_config)
        params: dict[str, Any] = {
            "RoleArn": self.fleet.role_arn(account),
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
        self._credentials[account] = fresh
        # Clients made with the old credentials must not outlive them.
        for key in [k for k in self._clients if k[0] == account]:
            del self._clients[key]
        return fresh

    def client(self, account: str, region: str, service: str, *, retries: bool = True) -> Any:
        """A client in the member account/region; ``retries=False`` for calls opsbot retries itself."""
        with self._lock:
            creds = self._assume(account, region)
            key = (account, region, service, retries)
            client = self._clients.get(key)
            if client is None:
                # One botocore session for all clients: service models (EC2's is tens of MB in memory)
                # are loaded once, not once per (account, region).
                config = self.client_config if retries else self.client_config.merge(NO_RETRY_CONFIG)
                client = self.base_session.client(  # type: ignore[call-overload]
                    service, region_name=region, config=config, **creds.values
                )
                if self.on_client is not None:
                    self.on_client(client)
                self._clients[key] = client
            return client
