"""Security-group policy (``rules/security_groups.yaml``): forbidden rules, exemptions, and matching.

Matching works on a *normalised* rule (one CIDR, prefix list or referenced group per rule, as EC2's
security-group-rule API models it), with CIDR semantics rather than string matching: "world" is a
prefix length of 0, so ``0.0.0.0/32`` is not the world; port ranges match by overlap, and an
all-traffic rule covers every port and protocol.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from automations.core.clock import parse_time
from automations.core.rulebook import LoadedDocument, Problem, RuleFile, load_document, validate_document

ALL_PORTS = (0, 65535)
PROTOCOL_NAMES = {"-1": "all", "all": "all", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}
REMEDIATE, ALERT_ONLY = "remediate", "alert-only"


def normalise_protocol(value: str | int | None) -> str:
    text = str(value if value is not None else "-1").lower()
    return PROTOCOL_NAMES.get(text, text)


@dataclass(frozen=True)
class SgRule:
    """One security-group rule, as DescribeSecurityGroupRules returns it, plus where it lives."""

    account: str
    region: str
    group_id: str
    rule_id: str | None
    is_egress: bool
    protocol: str  # all | tcp | udp | icmp | icmpv6 | other protocol number
    from_port: int | None
    to_port: int | None
    cidr_ipv4: str | None = None
    cidr_ipv6: str | None = None
    prefix_list_id: str | None = None
    referenced_group_id: str | None = None
    description: str | None = None
    group_tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return "egress" if self.is_egress else "ingress"

    @property
    def cidr(self) -> str | None:
        return self.cidr_ipv4 or self.cidr_ipv6

    def port_range(self) -> tuple[int, int]:
        if self.protocol == "all" or self.from_port is None or self.from_port == -1:
            return ALL_PORTS
        return (self.from_port, self.to_port if self.to_port not in (None, -1) else self.from_port)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["group_tags"] = dict(self.group_tags)
        data["direction"] = self.direction
        data["cidr"] = self.cidr
        return data

    def summary(self) -> str:
        low, high = self.port_range()
        ports = "all ports" if (low, high) == ALL_PORTS else (f"port {low}" if low == high else f"ports {low}-{high}")
        source = self.cidr or self.prefix_list_id or self.referenced_group_id or "?"
        arrow = "to" if self.is_egress else "from"
        return f"{self.direction} {self.protocol} {ports} {arrow} {source}"

    @classmethod
    def from_api(
        cls, account: str, region: str, rule: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> SgRule:
        """From a DescribeSecurityGroupRules item (PascalCase) or a CloudTrail securityGroupRuleSet item."""

        def get(*names: str) -> Any:
            return next((rule[n] for n in names if rule.get(n) is not None), None)

        referenced = get("ReferencedGroupInfo", "referencedGroupInfo") or {}
        return cls(
            account=account,
            region=region,
            group_id=get("GroupId", "groupId"),
            rule_id=get("SecurityGroupRuleId", "securityGroupRuleId"),
            is_egress=bool(get("IsEgress", "isEgress")),
            protocol=normalise_protocol(get("IpProtocol", "ipProtocol")),
            from_port=get("FromPort", "fromPort"),
            to_port=get("ToPort", "toPort"),
            cidr_ipv4=get("CidrIpv4", "cidrIpv4"),
            cidr_ipv6=get("CidrIpv6", "cidrIpv6"),
            prefix_list_id=get("PrefixListId", "prefixListId"),
            referenced_group_id=referenced.get("GroupId") or referenced.get("groupId"),
            description=get("Description", "description"),
            group_tags=dict(tags or {}),
        )


def _prefix_length(cidr: str) -> int:
    return ipaddress.ip_network(cidr, strict=False).prefixlen


@dataclass(frozen=True)
class ForbiddenRule:
    name: str
    mode: str
    direction: str = "ingress"
    description: str = ""
    protocols: frozenset[str] | None = None
    ports: tuple[tuple[int, int], ...] | None = None
    world: bool = False
    broader_than_ipv4: int | None = None
    broader_than_ipv6: int | None = None
    when: ParsedResult | None = None

    @property
    def needs_cidr(self) -> bool:
        return self.world or self.broader_than_ipv4 is not None or self.broader_than_ipv6 is not None

    def _protocol_matches(self, rule: SgRule) -> bool:
        # An all-traffic rule includes every protocol; "all" in the list matches only all-traffic rules.
        return self.protocols is None or rule.protocol == "all" or rule.protocol in self.protocols

    def _ports_match(self, rule: SgRule) -> bool:
        if self.ports is None:
            return True
        if rule.protocol not in ("all", "tcp", "udp"):
            return False  # ports mean nothing for icmp and other protocols
        low, high = rule.port_range()
        return any(low <= p_high and p_low <= high for p_low, p_high in self.ports)

    def _source_matches(self, rule: SgRule) -> bool:
        if not self.needs_cidr:
            return True
        if rule.cidr_ipv4:
            length = _prefix_length(rule.cidr_ipv4)
            limit = self.broader_than_ipv4
        elif rule.cidr_ipv6:
            length = _prefix_length(rule.cidr_ipv6)
            limit = self.broader_than_ipv6
        else:
            return False  # a referenced group or prefix list is never a CIDR match
        return (self.world and length == 0) or (limit is not None and length < limit)

    def matches_without_condition(self, rule: SgRule) -> bool:
        return (
            rule.direction == self.direction
            and self._protocol_matches(rule)
            and self._ports_match(rule)
            and self._source_matches(rule)
        )

    def matches(self, rule: SgRule) -> bool:
        if not self.matches_without_condition(rule):
            return False
        return self.when is None or bool(self.when.search(rule.as_dict()))


@dataclass(frozen=True)
class Exemption:
    reason: str
    group_id: str | None = None
    account: str | None = None
    rule: str | None = None
    until: date | None = None

    def covers(self, rule: SgRule, forbidden: ForbiddenRule, today: date) -> bool:
        return (
            (self.group_id is None or self.group_id == rule.group_id)
            and (self.account is None or self.account == rule.account)
            and (self.rule is None or self.rule == forbidden.name)
            and (self.until is None or today <= self.until)
        )


@dataclass(frozen=True)
class Verdict:
    rule: SgRule
    forbidden: ForbiddenRule
    exempt_reason: str | None = None

    @property
    def action(self) -> str:
        if self.exempt_reason:
            return "exempt"
        return "revoke" if self.forbidden.mode == REMEDIATE else "alert"


@dataclass(frozen=True)
class SgPolicy:
    rules: tuple[ForbiddenRule, ...]
    exemptions: tuple[Exemption, ...] = ()
    exemption_tag: str = "opsbot:exempt-until"
    exemption_reason_tag: str = "opsbot:exempt-reason"
    sweep_report_only_after_rules_change: bool = True
    digest: str = ""

    def candidates(self, rule: SgRule) -> list[ForbiddenRule]:
        """Forbidden rules this rule may break, before conditions that may need the group's tags."""
        return [f for f in self.rules if f.matches_without_condition(rule)]

    def tag_exemption(self, tags: Mapping[str, str], today: date) -> str | None:
        raw = tags.get(self.exemption_tag)
        if not raw:
            return None
        try:
            until = parse_time(raw).date() if "T" in raw else date.fromisoformat(raw)
        except ValueError:
            return None  # an unreadable date protects nothing; the finding says so via the tags it shows
        if today > until:
            return None
        return f"{self.exemption_tag}={raw}: {tags.get(self.exemption_reason_tag, 'no reason given')}"

    def evaluate(self, rule: SgRule, today: date) -> Verdict | None:
        """The strictest forbidden rule this rule breaks (remediate beats alert-only), or None."""
        matched = [f for f in self.rules if f.matches(rule)]
        if not matched:
            return None
        forbidden = next((f for f in matched if f.mode == REMEDIATE), matched[0])
        for exemption in self.exemptions:
            if exemption.covers(rule, forbidden, today):
                return Verdict(rule, forbidden, f"exemption: {exemption.reason}")
        if reason := self.tag_exemption(rule.group_tags, today):
            return Verdict(rule, forbidden, reason)
        return Verdict(rule, forbidden)


def _port_ranges(items: list[int | str]) -> tuple[tuple[int, int], ...]:
    out = []
    for item in items:
        if isinstance(item, int):
            out.append((item, item))
        else:
            low, high = (int(x) for x in item.split("-"))
            out.append((low, high))
    return tuple(out)


def _checks(doc: LoadedDocument) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(doc.data["rules"]):
        if rule["name"] in seen:
            problems.append(doc.problem(("rules", i, "name"), f"duplicate rule name {rule['name']!r}"))
        seen.setdefault(rule["name"], i)
        for j, item in enumerate(rule.get("ports", [])):
            if isinstance(item, str):
                low, high = (int(x) for x in item.split("-"))
                if not 0 <= low <= high <= 65535:
                    problems.append(doc.problem(("rules", i, "ports", j), f"bad port range {item!r}"))
        if "when" in rule:
            try:
                jmespath.compile(rule["when"])
            except JMESPathError as exc:
                problems.append(doc.problem(("rules", i, "when"), f"bad JMESPath: {exc}"))
        if "source" not in rule and "when" not in rule and "ports" not in rule:
            problems.append(doc.problem(("rules", i), "matches every rule: give it a source, ports or when"))
    for i, exemption in enumerate(doc.data.get("exemptions", [])):
        if "rule" in exemption and exemption["rule"] not in seen:
            problems.append(doc.problem(("exemptions", i, "rule"), f"no rule named {exemption['rule']!r}"))
        if "until" in exemption:
            try:
                date.fromisoformat(exemption["until"])
            except ValueError:
                problems.append(doc.problem(("exemptions", i, "until"), f"not a date: {exemption['until']!r}"))
    return problems


def policy_from_document(doc: LoadedDocument, text: str) -> SgPolicy:
    validate_document(doc, Path(__file__).with_name("schemas") / "security_groups.schema.json", [_checks])
    settings = doc.data.get("settings", {})
    rules = []
    for r in doc.data["rules"]:
        source = r.get("source", {})
        broader = source.get("broader_than", {})
        rules.append(
            ForbiddenRule(
                name=r["name"],
                mode=r["mode"],
                direction=r.get("direction", "ingress"),
                description=r.get("description", ""),
                protocols=frozenset(r["protocols"]) if "protocols" in r else None,
                ports=_port_ranges(r["ports"]) if "ports" in r else None,
                world=bool(source.get("world")),
                broader_than_ipv4=broader.get("ipv4"),
                broader_than_ipv6=broader.get("ipv6"),
                when=jmespath.compile(r["when"]) if "when" in r else None,
            )
        )
    exemptions = tuple(
        Exemption(
            reason=e["reason"],
            group_id=e.get("group_id"),
            account=e.get("account"),
            rule=e.get("rule"),
            until=date.fromisoformat(e["until"]) if "until" in e else None,
        )
        for e in doc.data.get("exemptions", [])
    )
    return SgPolicy(
        rules=tuple(rules),
        exemptions=exemptions,
        exemption_tag=settings.get("exemption_tag", "opsbot:exempt-until"),
        exemption_reason_tag=settings.get("exemption_reason_tag", "opsbot:exempt-reason"),
        sweep_report_only_after_rules_change=settings.get("sweep_report_only_after_rules_change", True),
        digest=hashlib.sha256(text.encode()).hexdigest()[:16],
    )


def load_policy(path: str | Path, text: str | None = None) -> SgPolicy:
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    return policy_from_document(load_document(path, text), text)


POLICY_FILE = RuleFile("security_groups.yaml", load_policy)
