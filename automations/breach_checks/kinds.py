"""Breach checks: the contract every check implements (``measure``), and the registry they join.

A check (``lambda-concurrency``, ``service-quotas``) is one class registered with
``@CHECK_KINDS.register``. It declares its section of ``rules/quotas.yaml`` and that section's schema
(``rules.py`` assembles the file's schema from them), the clients a unit needs in a member account,
the IAM it needs there, and how its alerts are labelled; ``measure`` reads one account/region and
returns measurements that the alert lifecycle (``alerts.py``) turns into opened/escalated/resolved.
Nothing a check does changes anything in a member account.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from automations.core.iam import Grant
from automations.core.registry import Registry
from automations.core.rulebook import LoadedDocument, Problem

if TYPE_CHECKING:  # the run machinery is the unit step's, not the alert lookups' (the Slack endpoint)
    from automations.core.runs import Unit

S = TypeVar("S")


@dataclass(frozen=True)
class Measurement:
    """Usage of one limit in one account/region, as one check saw it."""

    check: str  # lambda-concurrency | service-quotas | <check>-access (the check itself cannot run)
    key: str  # unique within (account, region), stable across checks
    name: str
    service: str
    quota_code: str | None = None
    usage: float | None = None  # None: no datapoints in the window
    limit: float | None = None
    unit: str = "None"
    window: str = ""
    breakdown: tuple[str, ...] = ()
    top: tuple[str, ...] = ()
    target: Mapping[str, Any] | None = None
    link: str | None = None
    note: str | None = None

    @property
    def percent(self) -> float | None:
        if self.usage is None or not self.limit:
            return None
        return 100.0 * self.usage / self.limit


def _never_near(service: str, quota_code: str | None) -> float:
    return 0.0  # without thresholds every reading may matter: read everything


@dataclass(frozen=True)
class MeasureContext:
    """What a check may use besides its clients to read less without missing a breach.

    ``memo``: what this check kept for this account/region last time (``MeasureResult.memo``; empty
    the first time). ``near(service, quota_code)``: the percent from which a reading can change an
    alert here (the threshold's ``warn - hysteresis`` for this account): a reading known to be below it
    is CLEAR whatever its exact value, so it need not be read exactly."""

    memo: Mapping[str, Any] = field(default_factory=dict)
    near: Callable[[str, str | None], float] = _never_near


@dataclass
class MeasureResult:
    """What one check measured in one account/region."""

    measurements: list[Measurement]
    counts: Counter[str] = field(default_factory=Counter)
    metric_calls: int = 0
    unmonitored: list[str] | None = None  # quotas with no usage metric: counted, not dropped
    errors: list[str] | None = None  # parts of the check that failed (the rest still counts)
    skipped: tuple[str, ...] = ()  # key prefixes not measured because of an error: their alerts stand
    metrics: int = 0  # metrics requested from GetMetricData (what CloudWatch bills the member account)
    memo: dict[str, Any] | None = None  # kept for the next check of this account/region (None: unchanged)


class CheckKind(Generic[S]):
    """Base of every breach check."""

    name: ClassVar[str]
    section: ClassVar[str]  # its key in rules/quotas.yaml
    summary: ClassVar[str]
    runbook: ClassVar[str]
    alert_kind: ClassVar[str]  # Alert.kind of its alerts (SNS subscribers filter on it)
    schema: ClassVar[dict[str, Any]]  # the JSON schema of its section
    services: ClassVar[tuple[str, ...]]  # the clients a unit needs in the member account
    member_actions: ClassVar[frozenset[str]] = frozenset()
    hub_grants: ClassVar[frozenset[Grant]] = frozenset()

    def settings(self, raw: Mapping[str, Any]) -> S:
        """Typed settings from its (schema-valid, possibly empty) section."""
        raise NotImplementedError

    def enabled(self, settings: S) -> bool:
        return bool(getattr(settings, "enabled", True))

    def check(self, doc: LoadedDocument) -> list[Problem]:
        """Problems in its section that the schema cannot see."""
        return []

    def measure(
        self,
        clients: Mapping[str, Any],
        settings: S,
        now: datetime,
        unit: Unit,
        open_keys: frozenset[str],
        context: MeasureContext | None = None,
    ) -> MeasureResult:
        """``open_keys``: the open alerts of this account/region, so a quiet one can still resolve.
        A key in ``open_keys`` must always be measured (a key not measured resolves as gone)."""
        raise NotImplementedError


# Both checks are loaded on the registry's first read: a path that only reads alerts loads neither.
CHECK_KINDS: Registry[CheckKind[Any]] = Registry(
    "breach check", ("automations.breach_checks.lambda_concurrency", "automations.breach_checks.service_quotas")
)
