"""Breach-flag rules (``rules/quotas.yaml``): thresholds, their overrides, and what each check reads.

Thresholds are percentages of a limit. An alert opens at ``warn_percent``, escalates at
``critical_percent`` and resolves only below ``warn_percent - hysteresis_percent``; while open it is
repeated at most every ``reminder_hours``. Overrides match on account, service and/or quota code and
are applied field by field from the least to the most specific (service < quota code < account), so
an account's own setting wins over a fleet-wide one for a quota.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from automations.breach_checks.kinds import CHECK_KINDS
from automations.core.rulebook import LoadedDocument, Problem, RuleFile, load_document, load_schema, validate_document

THRESHOLD_FIELDS = ("warn_percent", "critical_percent", "hysteresis_percent", "reminder_hours")
MATCH_FIELDS = ("account", "service", "quota_code")
_SPECIFICITY = {"service": 1, "quota_code": 2, "account": 4}
BASE_SCHEMA = Path(__file__).with_name("schemas") / "quotas.schema.json"


@dataclass(frozen=True)
class Thresholds:
    warn_percent: float = 80.0
    critical_percent: float = 95.0
    hysteresis_percent: float = 5.0
    reminder_hours: float = 24.0

    @property
    def resolve_below(self) -> float:
        return self.warn_percent - self.hysteresis_percent


@dataclass(frozen=True)
class Override:
    account: str | None
    service: str | None
    quota_code: str | None
    values: dict[str, float]

    @property
    def specificity(self) -> int:
        return sum(_SPECIFICITY[f] for f in MATCH_FIELDS if getattr(self, f) is not None)

    def matches(self, account: str, service: str, quota_code: str | None) -> bool:
        return (
            (self.account is None or self.account == account)
            and (self.service is None or self.service == service)
            and (self.quota_code is None or self.quota_code == quota_code)
        )


@dataclass(frozen=True)
class BreachRules:
    defaults: Thresholds = field(default_factory=Thresholds)
    settings: Mapping[str, Any] = field(default_factory=dict)  # check name -> its typed settings
    overrides: tuple[Override, ...] = ()

    def settings_of(self, check: str) -> Any:
        """A check's settings (its defaults when its section is absent)."""
        return self.settings[check] if check in self.settings else CHECK_KINDS.get(check).settings({})

    def enabled(self, check: str) -> bool:
        return CHECK_KINDS.get(check).enabled(self.settings_of(check))

    def thresholds(self, account: str, service: str, quota_code: str | None = None) -> Thresholds:
        result = self.defaults
        matching = [o for o in self.overrides if o.matches(account, service, quota_code)]
        for override in sorted(matching, key=lambda o: o.specificity):
            result = replace(result, **override.values)
        return result


def _effective_problems(doc: LoadedDocument, where: tuple[str | int, ...], t: Thresholds) -> list[Problem]:
    problems = []
    if t.warn_percent >= t.critical_percent:
        problems.append(
            doc.problem(
                where,
                f"warn_percent ({t.warn_percent:g}) must be below critical_percent ({t.critical_percent:g})",
            )
        )
    if t.resolve_below <= 0:
        problems.append(
            doc.problem(
                where,
                f"hysteresis_percent ({t.hysteresis_percent:g}) must be below warn_percent "
                f"({t.warn_percent:g}), or an alert could never resolve",
            )
        )
    return problems


def _semantic_checks(doc: LoadedDocument) -> list[Problem]:
    data = doc.data
    problems: list[Problem] = []
    defaults = Thresholds(**data["thresholds"])
    problems.extend(_effective_problems(doc, ("thresholds",), defaults))
    for kind in CHECK_KINDS:
        problems.extend(kind.check(doc))
    seen: dict[tuple[Any, ...], int] = {}
    for i, o in enumerate(data.get("overrides", [])):
        match = tuple(o.get(f) for f in MATCH_FIELDS)
        if not any(match):
            problems.append(doc.problem(("overrides", i), "needs at least one of account, service, quota_code"))
            continue
        if not any(f in o for f in THRESHOLD_FIELDS):
            problems.append(
                doc.problem(("overrides", i), f"sets nothing: give at least one of {', '.join(THRESHOLD_FIELDS)}")
            )
            continue
        if match in seen:
            line = doc.line_of(("overrides", seen[match]))
            problems.append(doc.problem(("overrides", i), f"same match as the override at line {line}"))
            continue
        seen[match] = i
        values = {f: o[f] for f in THRESHOLD_FIELDS if f in o}
        problems.extend(_effective_problems(doc, ("overrides", i), replace(defaults, **values)))
    return problems


def quotas_schema() -> dict[str, Any]:
    """rules/quotas.yaml: thresholds and overrides, plus one section per registered check."""
    base = load_schema(BASE_SCHEMA)
    sections = {kind.section: kind.schema for kind in CHECK_KINDS}
    return {**base, "properties": {**base["properties"], **sections}}


def rules_from_document(doc: LoadedDocument) -> BreachRules:
    validate_document(doc, quotas_schema(), [_semantic_checks])
    data = doc.data
    return BreachRules(
        defaults=Thresholds(**data["thresholds"]),
        settings={kind.name: kind.settings(data.get(kind.section) or {}) for kind in CHECK_KINDS},
        overrides=tuple(
            Override(
                account=o.get("account"),
                service=o.get("service"),
                quota_code=o.get("quota_code"),
                values={f: float(o[f]) for f in THRESHOLD_FIELDS if f in o},
            )
            for o in data.get("overrides", [])
        ),
    )


def load_breach_rules(path: str | Path, text: str | None = None) -> BreachRules:
    return rules_from_document(load_document(path, text))


QUOTAS_FILE = RuleFile("quotas.yaml", load_breach_rules)
