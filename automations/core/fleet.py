"""The fleet: which member accounts and regions opsbot acts in, and sessions into them.

The fleet document (rules/fleet.yaml, or the SSM parameter the hub reads) lists accounts (``accounts``,
for small setups without an organisation) and/or names what to take from AWS Organizations
(``organization``: OUs and accounts to include, what to exclude, regions configured or each account's
enabled ones; ``automations/core/organization.py``). A fleet with an ``organization`` discovers its
accounts on first use, not when it is built, and again once the last discovery is older than
``DISCOVERY_MAX_AGE``: so a new account in a target OU is in the next plan without a redeploy, and a
function that never asks for the accounts (the Slack endpoint) never calls Organizations.

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
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from automations.core import compiled
from automations.core.lazy import Lazy
from automations.core.rulebook import LoadedDocument, Problem, RuleFile, load_document, validate_document

if TYPE_CHECKING:  # imported on first discovery: a fleet without an organisation never needs it
    from automations.core.organization import Discovery

# Standard mode retries throttling and transient errors with backoff; 8 attempts rides out bursts.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8}, max_pool_connections=32)
# For creates that take no client token (CreateSnapshot, CopySnapshot): a retry must look first, so
# botocore must not retry by itself (automations.snapshots.common.create_once does it).
NO_RETRY_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 1})

# How long a process trusts what it discovered in the organisation (seconds). Membership is re-read
# after a minute: every plan (at most one per check schedule, 5 minutes apart) sees the organisation
# as it is, while event handlers in a warm container do not walk it per event. Each account's enabled
# regions (one account:ListRegions call per account, the costly part at a thousand accounts) are re-read
# hourly: opting a region in is itself slow and rare; a new account's are read the first time it is seen.
# A failed re-discovery serves the last one for up to STALE_LIMIT, then raises.
DISCOVERY_MAX_AGE = 60.0
REGIONS_MAX_AGE = 3600.0
STALE_LIMIT = 900.0


@dataclass(frozen=True)
class MemberAccount:
    id: str
    name: str
    regions: tuple[str, ...]


@dataclass(frozen=True)
class OrganizationScope:
    """The fleet document's ``organization``: which accounts of the organisation are in the fleet."""

    include: tuple[str, ...]  # OU or root ids (with every OU nested under them) and account ids
    exclude: tuple[str, ...] = ()  # account ids, and OU ids whose whole subtree is left out
    regions: tuple[str, ...] | None = None  # None: each account's enabled regions (account:ListRegions)
    allowed_regions: tuple[str, ...] | None = None  # with enabled regions: only these, in this order

    @property
    def include_accounts(self) -> frozenset[str]:
        return frozenset(i for i in self.include if is_account_id(i))

    @property
    def include_parents(self) -> tuple[str, ...]:
        return tuple(i for i in self.include if not is_account_id(i))

    @property
    def exclude_accounts(self) -> frozenset[str]:
        return frozenset(i for i in self.exclude if is_account_id(i))

    @property
    def exclude_parents(self) -> frozenset[str]:
        return frozenset(i for i in self.exclude if not is_account_id(i))


def is_account_id(value: str) -> bool:
    return len(value) == 12 and value.isdigit()


@dataclass(frozen=True)
class FleetDocument:
    """What the fleet document says, validated: listed accounts, discovery, how to reach the members."""

    accounts: tuple[MemberAccount, ...] = ()
    role_prefix: str = "opsbot"
    external_id: str | None = None
    session_duration_seconds: int = 3600
    partition: str = "aws"
    organization: OrganizationScope | None = None


class Fleet:
    """The member accounts and regions opsbot acts in, and how to reach them.

    ``accounts`` are the document's listed accounts, merged with those discovered from its
    ``organization`` (a listed account wins over a discovered one with the same id: its name and regions
    are used). Discovery happens on first use and is cached as described at DISCOVERY_MAX_AGE; it uses the
    session given to ``discovering_with`` (``build_runtime`` gives the hub's), else a default session.
    Role names and the ExternalId come from the document alone: a broker never discovers anything."""

    def __init__(
        self,
        accounts: Iterable[MemberAccount] = (),
        role_prefix: str = "opsbot",
        external_id: str | None = None,
        session_duration_seconds: int = 3600,
        partition: str = "aws",
        organization: OrganizationScope | None = None,
    ) -> None:
        document = FleetDocument(
            tuple(accounts), role_prefix, external_id, session_duration_seconds, partition, organization
        )
        self._read: Callable[[], FleetDocument] = lambda: document
        self._session: boto3.Session | None = None
        self._on_client: Callable[[Any], None] | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._max_age = (DISCOVERY_MAX_AGE, REGIONS_MAX_AGE, STALE_LIMIT)
        self._discovery: Discovery | None = None
        self._lock = threading.Lock()

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def of(cls, document: FleetDocument) -> Fleet:
        return cls(
            document.accounts,
            document.role_prefix,
            document.external_id,
            document.session_duration_seconds,
            document.partition,
            document.organization,
        )

    @classmethod
    def reading(cls, read: Callable[[], FleetDocument]) -> Fleet:
        """A fleet whose document ``read`` gives, called on each use (so it should cache: a parameter read
        through Powertools Parameters is re-fetched only every few minutes) and first called on first use:
        a process that never uses the fleet never reads it."""
        fleet = cls()
        fleet._read = read
        return fleet

    def discovering_with(
        self,
        session: boto3.Session,
        *,
        on_client: Callable[[Any], None] | None = None,
        clock: Callable[[], float] | None = None,
        max_age: float = DISCOVERY_MAX_AGE,
        regions_max_age: float = REGIONS_MAX_AGE,
        stale_limit: float = STALE_LIMIT,
    ) -> Fleet:
        """The same fleet (same document source), discovering with ``session``, with a cache of its own."""
        fleet = type(self)()
        fleet._read = self._read
        fleet._session, fleet._on_client = session, on_client
        fleet._clock = clock or time.monotonic
        fleet._max_age = (max_age, regions_max_age, stale_limit)
        return fleet

    # ---- the document --------------------------------------------------------------------------------
    @property
    def document(self) -> FleetDocument:
        return self._read()

    @property
    def role_prefix(self) -> str:
        return self.document.role_prefix

    @property
    def external_id(self) -> str | None:
        return self.document.external_id

    @property
    def session_duration_seconds(self) -> int:
        return self.document.session_duration_seconds

    @property
    def partition(self) -> str:
        return self.document.partition

    @property
    def organization(self) -> OrganizationScope | None:
        return self.document.organization

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fleet) and other.document == self.document

    def __hash__(self) -> int:
        return hash(self.document)

    def __repr__(self) -> str:
        return f"Fleet({self.document!r})"

    # ---- the accounts --------------------------------------------------------------------------------
    def _discovery_of(self, document: FleetDocument) -> Discovery | None:
        scope = document.organization
        if scope is None:
            return None
        with self._lock:
            if self._discovery is None or self._discovery.scope != scope:
                from automations.core.organization import Discovery

                max_age, regions_max_age, stale_limit = self._max_age
                self._discovery = Discovery(
                    scope,
                    self._session or boto3.Session(),
                    partition=document.partition,
                    client_config=CLIENT_CONFIG,
                    on_client=self._on_client,
                    clock=self._clock,
                    max_age=max_age,
                    regions_max_age=regions_max_age,
                    stale_limit=stale_limit,
                )
            return self._discovery

    @property
    def accounts(self) -> tuple[MemberAccount, ...]:
        """Listed and discovered, in the order: discovered (by account id), then listed-only ones."""
        document = self.document
        discovery = self._discovery_of(document)
        if discovery is None:
            return document.accounts
        listed = {a.id: a for a in document.accounts}
        found = discovery.accounts()
        merged = [listed.get(a.id, a) for a in found]
        known = {a.id for a in found}
        return (*merged, *(a for a in document.accounts if a.id not in known))

    def account(self, account_id: str) -> MemberAccount | None:
        """One account, if it is in the fleet. With an organisation, asks about this account only (a
        handful of calls) unless a whole discovery is fresh: the event handlers' question."""
        document = self.document
        listed = next((a for a in document.accounts if a.id == account_id), None)
        if listed is not None:
            return listed
        discovery = self._discovery_of(document)
        return discovery.account(account_id) if discovery is not None else None

    def covers(self, account_id: str, region: str) -> bool:
        """Whether opsbot may act in this account and region (``account``'s lookup, then its regions)."""
        member = self.account(account_id)
        return member is not None and region in member.regions

    def refresh(self) -> None:
        """Forget what was discovered: the next use asks the organisation again."""
        with self._lock:
            self._discovery = None

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
    data = doc.data
    if "accounts" not in data and "organization" not in data:
        problems.append(doc.problem((), "no accounts: list them under 'accounts' or discover them with 'organization'"))
    seen: set[str] = set()
    for i, account in enumerate(data.get("accounts", ())):
        if account["id"] in seen:
            problems.append(doc.problem(("accounts", i, "id"), f"duplicate account id {account['id']!r}"))
        seen.add(account["id"])
        if "regions" not in account and "default_regions" not in data:
            problems.append(doc.problem(("accounts", i), "no regions: set 'regions' or 'default_regions'"))
    org = data.get("organization")
    if org is not None:
        if "regions" not in org and "default_regions" not in data:
            problems.append(
                doc.problem(("organization",), "no regions: set 'regions' (a list, or enabled) or 'default_regions'")
            )
        if "allowed_regions" in org and org.get("regions") != "enabled":
            problems.append(
                doc.problem(
                    ("organization", "allowed_regions"),
                    "allowed_regions narrows each account's enabled regions: use it with 'regions: enabled'",
                )
            )
        excluded = set(org.get("exclude", ()))
        for i, target in enumerate(org["include"]):
            if target in excluded:
                problems.append(doc.problem(("organization", "include", i), f"{target!r} is also excluded"))
    return problems


FLEET_SCHEMA = Path(__file__).with_name("schemas") / "fleet.schema.json"
FLEET_COMPILED_FROM = (FLEET_SCHEMA, Path(__file__))  # a compiled fleet is stale when either changes


def fleet_from_document(doc: LoadedDocument) -> Fleet:
    validate_document(doc, FLEET_SCHEMA, [_fleet_checks])
    data = doc.data
    default_regions = tuple(data.get("default_regions", ()))
    accounts = tuple(
        MemberAccount(id=a["id"], name=a.get("name", a["id"]), regions=tuple(a.get("regions", default_regions)))
        for a in data.get("accounts", ())
    )
    organization = None
    if (org := data.get("organization")) is not None:
        regions = org.get("regions", default_regions)
        organization = OrganizationScope(
            include=tuple(org["include"]),
            exclude=tuple(org.get("exclude", ())),
            regions=None if regions == "enabled" else tuple(regions),
            allowed_regions=tuple(org["allowed_regions"]) if "allowed_regions" in org else None,
        )
    return Fleet(
        accounts=accounts,
        role_prefix=data.get("role_prefix", "opsbot"),
        external_id=data.get("external_id"),
        session_duration_seconds=data.get("session_duration_seconds", 3600),
        partition=data.get("partition", "aws"),
        organization=organization,
    )


def fleet_to_dict(fleet: Fleet) -> dict[str, Any]:
    """The document (a fleet with an organisation is compiled as what to discover, not as its accounts)."""
    return asdict(fleet.document)


def fleet_from_dict(data: dict[str, Any]) -> Fleet:
    """A fleet compiled (validated) ahead of time (``core/compiled.py``)."""
    accounts = tuple(MemberAccount(a["id"], a["name"], tuple(a["regions"])) for a in data["accounts"])
    org = data.get("organization")
    organization = None
    if org is not None:
        organization = OrganizationScope(
            include=tuple(org["include"]),
            exclude=tuple(org["exclude"]),
            regions=tuple(org["regions"]) if org["regions"] is not None else None,
            allowed_regions=tuple(org["allowed_regions"]) if org["allowed_regions"] is not None else None,
        )
    return Fleet.of(FleetDocument(**{**data, "accounts": accounts, "organization": organization}))


def load_fleet(path: str | Path, text: str | None = None, *, compiled_at: str | Path | None = None) -> Fleet:
    """``compiled_at``: the rules file whose compiled form may be used (by default ``path``); it is used
    only when it was compiled from this very text, e.g. a fleet parameter that holds the packaged file.
    Validated now; an organisation's accounts are discovered later, on first use."""
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
    sts: dict[str, Any] = field(default_factory=dict)  # the hub's STS client per region (assuming roles)
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

    def sts(self, region: str) -> Any:
        """The hub's STS client in ``region`` (regional endpoint), made once: a handler's init can make it
        before the first event, which then only assumes the role."""
        if (client := self.cache.sts.get(region)) is None:
            client = self.cache.sts[region] = self.base_session.client(
                "sts", region_name=region, config=self.client_config
            )
        return client

    def _assume(self, account: str, region: str, capability: str) -> _Credentials:
        cached = self.cache.credentials.get((account, capability))
        if cached and cached.expires_at - self.refresh_margin_seconds > self.clock():
            return cached
        sts = self.sts(region)
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

    def lazy_client(self, account: str, region: str, service: str, *, retries: bool = True) -> Any:
        """``client``, made (and the role assumed) on first use: a path that may never call it does not pay
        for it (a client costs 10-20 ms of CPU, on a cold start's critical path)."""
        return Lazy(lambda: self.client(account, region, service, retries=retries))

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
