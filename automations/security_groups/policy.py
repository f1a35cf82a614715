"""Security-group policy (``rules/security_groups.yaml``): forbidden rules, exemptions, and matching.

Matching works on a *normalised* rule (one CIDR, prefix list or referenced group per rule, as EC2's
security-group-rule API models it), with CIDR semantics rather than string matching; port ranges match
by overlap, and an all-traffic rule covers every port and protocol.

A source is judged by **coverage, not by prefix**: for each forbidden rule, the CIDRs of all the group's
rules on its ports are merged (``ipaddress.collapse_addresses``), so the world split into halves
(``0.0.0.0/1`` + ``128.0.0.0/1``, in one call or in two) is the world, and many narrow public ranges that
together are broader than the limit are broad. ``0.0.0.0/32`` is one address, not the world. When a union
breaks a rule, the rules that make it break are the offenders: the broadest first until what is left no
longer breaks it, and every other rule at least as broad as one of those (an office /24 beside a split
world stays).

Exemptions are governed: a group tag exempts only with a reason and for at most ``exemption_tag_max_days``
(longer ones belong in this file, where they are reviewed); every exemption is announced when first used
(``enforcement.RuleClaims``), and an expired one shows in the finding that follows it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automations.core import compiled
from automations.core.clock import parse_time
from automations.core.rulebook import LoadedDocument, Problem, RuleFile, load_document, validate_document

if TYPE_CHECKING:  # jmespath is imported only when a rule has a `when`
    from jmespath.parser import ParsedResult

ALL_PORTS = (0, 65535)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BITS = {4: 32, 6: 128}
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

    def network(self, family: int) -> Network | None:
        """This rule's CIDR as a network, if it has one of that IP version (4 or 6)."""
        cidr = self.cidr_ipv4 if family == 4 else self.cidr_ipv6
        return ipaddress.ip_network(cidr, strict=False) if cidr else None

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


def covered(networks: Sequence[Network], public_only: bool) -> int:
    """Addresses the union of these networks (one IP version) covers; only public ones if asked."""
    kept: list[Any] = [n for n in networks if not (public_only and n.is_private)]  # one IP version
    return sum(int(n.num_addresses) for n in ipaddress.collapse_addresses(kept))


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

    def in_scope(self, rule: SgRule) -> bool:
        """Direction, protocol and ports: everything but the source (and the ``when`` condition)."""
        return rule.direction == self.direction and self._protocol_matches(rule) and self._ports_match(rule)

    def condition_holds(self, rule: SgRule) -> bool:
        return self.when is None or bool(self.when.search(rule.as_dict()))

    def breaks(self, networks: Sequence[Network], family: int) -> bool:
        """Whether sources covering these networks (one IP version) break this rule: the whole address
        space for ``world``; more public addresses than a /N holds for ``broader_than``."""
        if not networks:
            return False
        if self.world and covered(networks, public_only=False) == 2 ** BITS[family]:
            return True
        limit = self.broader_than_ipv4 if family == 4 else self.broader_than_ipv6
        return limit is not None and covered(networks, public_only=True) > 2 ** (BITS[family] - limit)

    def offenders(self, rules: Sequence[SgRule], with_condition: bool = True) -> list[tuple[SgRule, str | None]]:
        """The rules of one group that break this forbidden rule, each with a note when it breaks it only
        together with others (a split). ``with_condition=False`` ignores ``when``: a superset, for
        deciding whether the group's tags are worth reading."""
        scoped = [r for r in rules if self.in_scope(r) and (not with_condition or self.condition_holds(r))]
        if not self.needs_cidr:
            return [(r, None) for r in scoped]
        found: list[tuple[SgRule, str | None]] = []
        for family in (4, 6):
            sources = [(r, n) for r in scoped if (n := r.network(family)) is not None]
            taken = _participants(sources, lambda nets, f=family: self.breaks(nets, f))  # type: ignore[misc]
            note = None
            if len(taken) > 1:
                note = (
                    f"split: {len(taken)} rules of {taken[0].group_id} together cover "
                    f"{covered([n for r, n in sources if r in taken], public_only=False):,} addresses "
                    f"({', '.join(str(r.cidr) for r in taken[:6])}{', ...' if len(taken) > 6 else ''})"
                )
            found += [(r, note) for r in taken]
        return found

    def matches(self, rule: SgRule) -> bool:
        """This one rule, alone, breaks the forbidden rule."""
        return bool(self.offenders([rule]))


def _participants(sources: list[tuple[SgRule, Network]], breaks: Callable[[list[Network]], bool]) -> list[SgRule]:
    """The broadest sources first until what is left no longer breaks the rule; then every other source at
    least as broad as the narrowest of those (equal pieces of a split are all taken, a narrow one stays)."""
    left = sorted(sources, key=lambda s: s[1].num_addresses, reverse=True)
    if not breaks([n for _, n in left]):
        return []
    taken: list[tuple[SgRule, Network]] = []
    while left and breaks([n for _, n in left]):
        taken.append(left.pop(0))
    narrowest = taken[-1][1].num_addresses
    taken += [s for s in left if s[1].num_addresses >= narrowest]
    return [r for r, _ in taken]


@dataclass(frozen=True)
class Exemption:
    reason: str
    group_id: str | None = None
    account: str | None = None
    rule: str | None = None
    until: date | None = None

    def applies(self, rule: SgRule, forbidden: ForbiddenRule) -> bool:
        return (
            (self.group_id is None or self.group_id == rule.group_id)
            and (self.account is None or self.account == rule.account)
            and (self.rule is None or self.rule == forbidden.name)
        )

    @property
    def ident(self) -> str:
        """Stable for as long as the entry is unchanged: a changed entry is a new exemption, announced."""
        text = f"{self.group_id}|{self.account}|{self.rule}|{self.until}|{self.reason}"
        return "file:" + hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExemptionUse:
    """The exemption a verdict rests on: where it comes from, why, until when (for the announcement)."""

    ident: str  # "file:<hash>" or "tag:<until>"
    source: str  # "rules/security_groups.yaml" or the tag
    reason: str
    until: date | None

    def describe(self) -> str:
        return f"{self.source}: {self.reason}" + (f" (until {self.until})" if self.until else " (no end date)")


@dataclass(frozen=True)
class Verdict:
    rule: SgRule
    forbidden: ForbiddenRule
    exemption: ExemptionUse | None = None
    notes: tuple[str, ...] = ()  # a split it is part of; an exemption tag that was ignored or has expired

    @property
    def exempt_reason(self) -> str | None:
        return self.exemption.describe() if self.exemption else None

    @property
    def action(self) -> str:
        if self.exemption:
            return "exempt"
        return "revoke" if self.forbidden.mode == REMEDIATE else "alert"


def _group_key(rule: SgRule) -> tuple[str, str, str]:
    return (rule.account, rule.region, rule.group_id)


@dataclass(frozen=True)
class SgPolicy:
    rules: tuple[ForbiddenRule, ...]
    exemptions: tuple[Exemption, ...] = ()
    exemption_tag: str = "opsbot:exempt-until"
    exemption_reason_tag: str = "opsbot:exempt-reason"
    exemption_tag_max_days: int = 30
    sweep_report_only_after_rules_change: bool = True
    digest: str = ""

    def _offences(
        self, rules: Sequence[SgRule], with_condition: bool
    ) -> dict[int, list[tuple[ForbiddenRule, str | None]]]:
        """Per rule (by position): the forbidden rules it breaks, judged group by group."""
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, rule in enumerate(rules):
            groups.setdefault(_group_key(rule), []).append(i)
        found: dict[int, list[tuple[ForbiddenRule, str | None]]] = {}
        for members in groups.values():
            group = [rules[i] for i in members]
            for forbidden in self.rules:
                for offender, note in forbidden.offenders(group, with_condition):
                    index = members[next(k for k, r in enumerate(group) if r is offender)]
                    found.setdefault(index, []).append((forbidden, note))
        return found

    def may_offend(self, rules: Sequence[SgRule]) -> set[str]:
        """Groups where something may break the policy, whatever their tags say (``when`` conditions can
        only narrow a match): only their tags need reading."""
        return {rules[i].group_id for i in self._offences(rules, with_condition=False)}

    def may_revoke(self, rules: Sequence[SgRule]) -> list[SgRule]:
        """The rules that may be revoked, whatever their groups' tags say: they break a forbidden rule in
        remediate mode, ``when`` conditions ignored (tags can only narrow a match or exempt)."""
        found = self._offences(rules, with_condition=False)
        return [rules[i] for i, hits in sorted(found.items()) if any(f.mode == REMEDIATE for f, _ in hits)]

    def needs_group_view(self, rules: Sequence[SgRule]) -> bool:
        """Whether these rules could take part in a split with the rest of their group: a CIDR on a port a
        CIDR rule forbids that is not forbidden on its own. Then the group's other rules must be read."""
        for rule in rules:
            for forbidden in self.rules:
                if (
                    forbidden.needs_cidr
                    and forbidden.in_scope(rule)
                    and rule.cidr is not None
                    and not forbidden.offenders([rule], with_condition=False)
                ):
                    return True
        return False

    def tag_exemption(self, tags: Mapping[str, str], today: date) -> tuple[ExemptionUse | None, str | None]:
        """The group tag's exemption if it is honoured; else why not (None when there is no tag)."""
        raw = tags.get(self.exemption_tag)
        if not raw:
            return None, None
        shown = f"{self.exemption_tag}={raw[:40]}"
        try:
            until = parse_time(raw).date() if "T" in raw else date.fromisoformat(raw)
        except ValueError:
            return None, f"exemption tag ignored: {shown} is not a date"
        reason = (tags.get(self.exemption_reason_tag) or "").strip()
        if today > until:
            return None, f"exemption expired on {until} ({shown}: {reason or 'no reason'})"
        if not reason:
            return None, f"exemption tag ignored: {shown} has no {self.exemption_reason_tag} tag giving the reason"
        horizon = today + timedelta(days=self.exemption_tag_max_days)
        if until > horizon:
            return None, (
                f"exemption tag ignored: {shown} is more than {self.exemption_tag_max_days} days ahead; "
                "longer exemptions belong in rules/security_groups.yaml, where they are reviewed"
            )
        return ExemptionUse(f"tag:{until}", shown, reason[:200], until), None

    def _exemption(self, rule: SgRule, forbidden: ForbiddenRule, today: date) -> tuple[ExemptionUse | None, list[str]]:
        notes: list[str] = []
        for exemption in self.exemptions:
            if exemption.applies(rule, forbidden):
                if exemption.until is None or today <= exemption.until:
                    source = "rules/security_groups.yaml"
                    return ExemptionUse(exemption.ident, source, exemption.reason, exemption.until), notes
                notes.append(f"exemption expired on {exemption.until} (rules/security_groups.yaml: {exemption.reason})")
        tagged, why_not = self.tag_exemption(rule.group_tags, today)
        return tagged, notes + ([why_not] if why_not else [])

    def evaluate_all(self, rules: Sequence[SgRule], today: date) -> list[Verdict]:
        """Verdicts for the rules that break the policy, judging each group's rules together. For each
        rule the strictest forbidden rule it breaks (remediate beats alert-only), then its exemption."""
        verdicts = []
        for index, hits in sorted(self._offences(rules, with_condition=True).items()):
            rule = rules[index]
            forbidden, _ = next((h for h in hits if h[0].mode == REMEDIATE), hits[0])
            splits = tuple(dict.fromkeys(note for f, note in hits if note and f is forbidden))
            exemption, notes = self._exemption(rule, forbidden, today)
            verdicts.append(Verdict(rule, forbidden, exemption, splits + tuple(notes)))
        return verdicts

    def evaluate(self, rule: SgRule, today: date) -> Verdict | None:
        """One rule judged alone (its group's other rules unknown)."""
        verdicts = self.evaluate_all([rule], today)
        return verdicts[0] if verdicts else None


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
            import jmespath
            from jmespath.exceptions import JMESPathError

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


POLICY_SCHEMA = Path(__file__).with_name("schemas") / "security_groups.schema.json"
POLICY_COMPILED_FROM = (POLICY_SCHEMA, Path(__file__))  # a compiled policy is stale when either changes


def policy_from_document(doc: LoadedDocument, text: str) -> SgPolicy:
    import jmespath

    validate_document(doc, POLICY_SCHEMA, [_checks])
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
        exemption_tag_max_days=settings.get("exemption_tag_max_days", 30),
        sweep_report_only_after_rules_change=settings.get("sweep_report_only_after_rules_change", True),
        digest=hashlib.sha256(text.encode()).hexdigest()[:16],
    )


def policy_to_dict(policy: SgPolicy) -> dict[str, Any]:
    """The policy as plain JSON data (``core/compiled.py``); ``policy_from_dict`` reads it back."""
    return {
        "rules": [
            {
                "name": r.name,
                "mode": r.mode,
                "direction": r.direction,
                "description": r.description,
                "protocols": sorted(r.protocols) if r.protocols is not None else None,
                "ports": [list(p) for p in r.ports] if r.ports is not None else None,
                "world": r.world,
                "broader_than_ipv4": r.broader_than_ipv4,
                "broader_than_ipv6": r.broader_than_ipv6,
                "when": r.when.expression if r.when is not None else None,
            }
            for r in policy.rules
        ],
        "exemptions": [{**asdict(e), "until": e.until.isoformat() if e.until else None} for e in policy.exemptions],
        "exemption_tag": policy.exemption_tag,
        "exemption_reason_tag": policy.exemption_reason_tag,
        "exemption_tag_max_days": policy.exemption_tag_max_days,
        "sweep_report_only_after_rules_change": policy.sweep_report_only_after_rules_change,
        "digest": policy.digest,
    }


def policy_from_dict(data: dict[str, Any]) -> SgPolicy:
    """A policy compiled (validated) ahead of time: no YAML, no JSON-schema."""
    rules = []
    for r in data["rules"]:
        when = None
        if r["when"] is not None:
            import jmespath

            when = jmespath.compile(r["when"])
        rules.append(
            ForbiddenRule(
                **{
                    **r,
                    "protocols": frozenset(r["protocols"]) if r["protocols"] is not None else None,
                    "ports": tuple((low, high) for low, high in r["ports"]) if r["ports"] is not None else None,
                    "when": when,
                }
            )
        )
    exemptions = tuple(
        Exemption(**{**e, "until": date.fromisoformat(e["until"]) if e["until"] else None}) for e in data["exemptions"]
    )
    return SgPolicy(**{**data, "rules": tuple(rules), "exemptions": exemptions})


def load_policy(path: str | Path, text: str | None = None) -> SgPolicy:
    """The policy from its compiled form when that was compiled from this text (``make package``), else
    parsed and validated."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    value = compiled.read(path, text, *POLICY_COMPILED_FROM)
    if value is not None:
        return policy_from_dict(value)
    return policy_from_document(load_document(path, text), text)


POLICY_FILE = RuleFile("security_groups.yaml", load_policy)
