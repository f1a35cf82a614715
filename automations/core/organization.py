"""The fleet's accounts from AWS Organizations: the fleet document's ``organization`` section.

    organization:
      include: [ou-ab12-workload, "111111111111"]   # OUs (and every OU under them), the root, accounts
      exclude: ["222222222222", ou-ab12-quarantn]  # accounts, and OUs whose whole subtree is left out
      regions: enabled                             # or a list; absent: the document's default_regions
      allowed_regions: [us-east-1, eu-west-1]      # with enabled: only these of each account's, in this order

**Which accounts.** From each included OU (or root) down through every OU nested under it, pruning excluded
OUs (``ListAccountsForParent``, ``ListChildren`` with ``ChildType=ORGANIZATIONAL_UNIT``, both paginated),
plus each account included by id (``DescribeAccount``). Kept: ACTIVE accounts (``State``, or ``Status``
where the API still answers only that), not excluded by id, not the management account: a
service-managed StackSet never deploys there (template-stackset.yaml), so it has no member roles; list it
under ``accounts`` to include it. An account included by id is in wherever it sits, unless its id is
excluded. An OU that does not exist fails the discovery (a fleet document naming nothing must be loud).

**Which regions.** The configured list, or each account's enabled regions: ``account:ListRegions`` with
``AccountId`` and ``RegionOptStatusContains`` ENABLED and ENABLED_BY_DEFAULT (the hub must be the
management account or a delegated administrator for Account Management; docs/organizations.md),
narrowed to ``allowed_regions`` (in its order) when given, else sorted.

**One account** (``Discovery.account``): what the event handlers ask ("is this account in the fleet?").
``DescribeAccount`` (state, name, and its path in the organisation when the API returns ``Paths``), else
``ListParents`` up to the root, and ListRegions if needed: a few calls instead of walking the organisation.
It answers as a whole discovery would: walking up from the account, the nearest excluded or included
ancestor decides (an OU both included and excluded is excluded).

**Caching** (per process; constants in fleet.py): membership for ``max_age`` seconds, regions per account
for ``regions_max_age``; a failed refresh serves the last answer for up to ``stale_limit`` seconds (logged)
and raises ``FleetDiscoveryError`` after that or when there is none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from automations.core.errors import error_code, error_text
from automations.core.fleet import MemberAccount, OrganizationScope

log = logging.getLogger(__name__)

ACTIVE = "ACTIVE"
ENABLED_STATES = ("ENABLED", "ENABLED_BY_DEFAULT")
# Organizations and Account Management are global: their one endpoint per partition is in this region.
GLOBAL_REGION = {"aws": "us-east-1", "aws-us-gov": "us-gov-west-1", "aws-cn": "cn-northwest-1"}
REGION_LOOKUPS = 8  # ListRegions calls in flight at once (a new organisation of a thousand accounts)


class FleetDiscoveryError(Exception):
    """The organisation could not be read: the call, what it was about, and AWS's error."""

    def __init__(self, call: str, about: str, error: str) -> None:
        self.call, self.about, self.error = call, about, error
        super().__init__(f"fleet discovery: {call} {about}: {error}")


def _active(account: Mapping[str, Any]) -> bool:
    return (account.get("State") or account.get("Status")) == ACTIVE


def _management_account(account: Mapping[str, Any]) -> str:
    """arn:aws:organizations::<management account>:account/o-.../<id>"""
    parts = str(account.get("Arn", "")).split(":")
    return parts[4] if len(parts) > 4 else ""


def parents_up_to_root(organizations: Any, child_id: str) -> list[str]:
    """The parents of an account or OU, nearest first, up to and including the root (ListParents, one
    call a level: an account or OU has exactly one parent)."""
    found: list[str] = []
    child = child_id
    while True:
        parents = organizations.list_parents(ChildId=child)["Parents"]
        if not parents:
            return found
        found.append(parents[0]["Id"])
        if parents[0]["Type"] == "ROOT":
            return found
        child = parents[0]["Id"]


class Discovery:
    """What the organisation holds for one ``OrganizationScope``, with its caches (thread-safe)."""

    def __init__(
        self,
        scope: OrganizationScope,
        session: boto3.Session,
        *,
        partition: str = "aws",
        client_config: Config | None = None,
        on_client: Callable[[Any], None] | None = None,
        clock: Callable[[], float],
        max_age: float,
        regions_max_age: float,
        stale_limit: float,
    ) -> None:
        self.scope = scope
        self._session, self._partition, self._config, self._on_client = session, partition, client_config, on_client
        self._clock, self._max_age, self._regions_max_age, self._stale_limit = (
            clock,
            max_age,
            regions_max_age,
            stale_limit,
        )
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()  # apart from _lock: ListRegions threads make clients too
        self._lock = threading.RLock()
        self._found: tuple[tuple[MemberAccount, ...], float] | None = None
        self._one: dict[str, tuple[MemberAccount | None, float]] = {}
        self._regions: dict[str, tuple[tuple[str, ...], float]] = {}

    # ---- clients ----------------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        with self._clients_lock:
            if service not in self._clients:
                region = GLOBAL_REGION.get(self._partition, "us-east-1")
                client = self._session.client(service, region_name=region, config=self._config)  # type: ignore[call-overload]
                if self._on_client is not None:
                    self._on_client(client)
                self._clients[service] = client
            return self._clients[service]

    def _pages(self, service: str, operation: str, **params: Any) -> Iterator[dict[str, Any]]:
        yield from self._client(service).get_paginator(operation).paginate(**params)

    # ---- the whole fleet -----------------------------------------------------------------------------
    def accounts(self) -> tuple[MemberAccount, ...]:
        with self._lock:
            now = self._clock()
            if self._found is not None and now - self._found[1] < self._max_age:
                return self._found[0]
            try:
                found = self._discover()
            except FleetDiscoveryError as exc:
                if self._found is not None and now - self._found[1] < self._stale_limit:
                    log.warning("%s; the fleet discovered %.0f s ago is used", exc, now - self._found[1])
                    return self._found[0]
                raise
            self._found = (found, now)
            self._one.clear()
            return found

    def _discover(self) -> tuple[MemberAccount, ...]:
        scope = self.scope
        seen: set[str] = set()
        listed: dict[str, Mapping[str, Any]] = {}
        pending = list(scope.include_parents)
        while pending:
            parent = pending.pop(0)
            if parent in seen or parent in scope.exclude_parents:
                continue
            seen.add(parent)
            try:
                for page in self._pages("organizations", "list_accounts_for_parent", ParentId=parent):
                    for account in page["Accounts"]:
                        listed.setdefault(account["Id"], account)
                for page in self._pages(
                    "organizations", "list_children", ParentId=parent, ChildType="ORGANIZATIONAL_UNIT"
                ):
                    pending.extend(child["Id"] for child in page["Children"])
            except (ClientError, BotoCoreError) as exc:
                call = "organizations:ListAccountsForParent/ListChildren"
                raise FleetDiscoveryError(call, parent, error_text(exc)) from exc
        for account_id in sorted(scope.include_accounts - set(listed)):
            described = self._describe(account_id)
            if described is not None:
                listed[account_id] = described
        kept = [
            a
            for account_id, a in sorted(listed.items())
            if account_id not in scope.exclude_accounts and _active(a) and _management_account(a) != account_id
        ]
        regions = self._regions_of([a["Id"] for a in kept])
        return tuple(MemberAccount(a["Id"], a.get("Name") or a["Id"], regions[a["Id"]]) for a in kept)

    # ---- one account ---------------------------------------------------------------------------------
    def account(self, account_id: str) -> MemberAccount | None:
        with self._lock:
            now = self._clock()
            if self._found is not None and now - self._found[1] < self._max_age:
                return next((a for a in self._found[0] if a.id == account_id), None)
            known = self._one.get(account_id)
            if known is not None and now - known[1] < self._max_age:
                return known[0]
            try:
                member = self._look_up(account_id)
            except FleetDiscoveryError as exc:
                if known is not None and now - known[1] < self._stale_limit:
                    log.warning("%s; the answer of %.0f s ago is used", exc, now - known[1])
                    return known[0]
                raise
            self._one[account_id] = (member, now)
            return member

    def _look_up(self, account_id: str) -> MemberAccount | None:
        scope = self.scope
        if account_id in scope.exclude_accounts:
            return None
        described = self._describe(account_id)
        if described is None or not _active(described) or _management_account(described) == account_id:
            return None
        if account_id not in scope.include_accounts and not self._under_included(account_id, described):
            return None
        regions = self._regions_of([account_id])[account_id]
        return MemberAccount(account_id, described.get("Name") or account_id, regions)

    def _describe(self, account_id: str) -> Mapping[str, Any] | None:
        try:
            organizations = self._client("organizations")
            described: Mapping[str, Any] = organizations.describe_account(AccountId=account_id)["Account"]
        except ClientError as exc:
            if error_code(exc) == "AccountNotFoundException":
                log.warning("fleet discovery: account %s is not in the organisation", account_id)
                return None
            raise FleetDiscoveryError("organizations:DescribeAccount", account_id, error_text(exc)) from exc
        except BotoCoreError as exc:
            raise FleetDiscoveryError("organizations:DescribeAccount", account_id, error_text(exc)) from exc
        return described

    def _ancestors(self, account_id: str, described: Mapping[str, Any]) -> list[str]:
        """The account's parents, nearest first, up to the root."""
        for path in described.get("Paths") or ():  # o-.../r-.../ou-.../<account id>/
            ids = [p for p in str(path).strip("/").split("/") if p.startswith(("r-", "ou-"))]
            if ids:
                return ids[::-1]
        try:
            return parents_up_to_root(self._client("organizations"), account_id)
        except (ClientError, BotoCoreError) as exc:
            raise FleetDiscoveryError("organizations:ListParents", account_id, error_text(exc)) from exc

    def _under_included(self, account_id: str, described: Mapping[str, Any]) -> bool:
        included, excluded = set(self.scope.include_parents), self.scope.exclude_parents
        for parent in self._ancestors(account_id, described):
            if parent in excluded:
                return False
            if parent in included:
                return True
        return False

    # ---- regions -------------------------------------------------------------------------------------
    def _regions_of(self, account_ids: list[str]) -> dict[str, tuple[str, ...]]:
        if self.scope.regions is not None:
            return dict.fromkeys(account_ids, self.scope.regions)
        now = self._clock()
        out: dict[str, tuple[str, ...]] = {}
        wanted = []
        for account_id in account_ids:
            cached = self._regions.get(account_id)
            if cached is not None and now - cached[1] < self._regions_max_age:
                out[account_id] = cached[0]
            else:
                wanted.append(account_id)
        if wanted:
            with ThreadPoolExecutor(max_workers=min(REGION_LOOKUPS, len(wanted))) as pool:
                for account_id, regions in zip(wanted, pool.map(self._enabled_regions, wanted), strict=True):
                    self._regions[account_id] = (regions, now)
                    out[account_id] = regions
        return out

    def _enabled_regions(self, account_id: str) -> tuple[str, ...]:
        try:
            enabled = {
                r["RegionName"]
                for page in self._pages(
                    "account", "list_regions", AccountId=account_id, RegionOptStatusContains=list(ENABLED_STATES)
                )
                for r in page["Regions"]
                if r.get("RegionOptStatus") in ENABLED_STATES
            }
        except (ClientError, BotoCoreError) as exc:
            raise FleetDiscoveryError("account:ListRegions", account_id, error_text(exc)) from exc
        allowed = self.scope.allowed_regions
        return tuple(r for r in allowed if r in enabled) if allowed is not None else tuple(sorted(enabled))
