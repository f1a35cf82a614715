"""The boundary for security-group events: one EventBridge "AWS API Call via CloudTrail" event in, typed
values out (``SgChange``), or ``Ignored`` with a reason, or an ``InputError`` naming the event and field.

What real producers send is normalised here and nowhere else: modern records with
``responseElements.securityGroupRuleSet``, older ones without, the flat ``cidrIp`` request form,
``groupName``-only requests, ``ModifySecurityGroupRules``, ports as numbers or numeric strings,
``items`` null, absent or a list, timestamps with or without a zone, IPv6, prefix lists and
referenced groups.

Fail closed: a part of the record that cannot be understood is not a reason to leave a forbidden rule
in place. It is noted in ``SgChange.unclear``, and remediation then judges the named group's actual
rules (DescribeSecurityGroupRules) instead of the record's.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from automations.core.boundary import (
    ACCOUNT_ID,
    REGION,
    InputError,
    items,
    mapping,
    optional_mapping,
    port,
    source_id,
    text,
    timestamp,
)
from automations.security_groups.policy import SgRule, normalise_protocol

AUTHORIZE = ("AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress")
MODIFY = "ModifySecurityGroupRules"
HANDLED_EVENTS = (*AUTHORIZE, MODIFY)
# Revokes only close: they can never leave a forbidden rule behind.
CLOSING_EVENTS = ("RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress")
MAX_NOTES = 50


@dataclass(frozen=True)
class Actor:
    arn: str
    principal_type: str
    source_ip: str
    user_agent: str

    @classmethod
    def parse(cls, detail: Mapping[str, Any]) -> Actor:
        """Who made the call, for the record; never a reason to refuse an event."""
        identity = detail.get("userIdentity")
        identity = identity if isinstance(identity, Mapping) else {}
        return cls(
            arn=(_plain(identity.get("arn")) or _plain(identity.get("principalId")) or "unknown")[:512],
            principal_type=(_plain(identity.get("type")) or "unknown")[:64],
            source_ip=_plain(detail.get("sourceIPAddress"))[:128],
            user_agent=_plain(detail.get("userAgent"))[:512],
        )


@dataclass(frozen=True)
class Requested:
    """One permission the request asked for, one source each (the legacy, rule-id-less records)."""

    protocol: str
    from_port: int | None
    to_port: int | None
    cidr_ipv4: str | None = None
    cidr_ipv6: str | None = None
    prefix_list_id: str | None = None
    referenced_group_id: str | None = None

    def same_as(self, rule: SgRule) -> bool:
        if rule.protocol != self.protocol:
            return False
        if rule.protocol != "all" and (self.from_port, self.to_port) != (rule.from_port, rule.to_port):
            return False
        return (rule.cidr_ipv4, rule.cidr_ipv6, rule.prefix_list_id, rule.referenced_group_id) == (
            self.cidr_ipv4,
            self.cidr_ipv6,
            self.prefix_list_id,
            self.referenced_group_id,
        )


@dataclass(frozen=True)
class Envelope:
    event_id: str
    event_name: str
    account: str
    region: str
    actor: Actor
    event_time: datetime


@dataclass(frozen=True)
class SgChange:
    """A security-group rule change, as far as the record says."""

    envelope: Envelope
    egress: bool
    group_id: str | None = None
    group_name: str | None = None
    rules: tuple[SgRule, ...] = ()  # responseElements.securityGroupRuleSet: rules with ids, as created
    rule_ids: tuple[str, ...] = ()  # ModifySecurityGroupRules: the rules changed
    requested: tuple[Requested, ...] = ()  # what the request asked for (records without rule ids)
    unclear: tuple[str, ...] = ()  # "field: problem" for parts not understood: judge the groups' real rules
    groups: tuple[str, ...] = ()  # every group id the record names

    @property
    def modify(self) -> bool:
        return self.envelope.event_name == MODIFY


@dataclass(frozen=True)
class Ignored:
    envelope: Envelope
    reason: str


@dataclass
class _Notes:
    """Parts of the record that could not be understood, and the group ids seen anywhere in it."""

    unclear: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def group(self, value: Any) -> str | None:
        if isinstance(value, str) and value.startswith("sg-"):
            if value not in self.groups:
                self.groups.append(value)
            return value
        return None


def parse_event(event: Any, now: datetime | None = None) -> SgChange | Ignored:
    """The one parse step for a security-group CloudTrail event. Raises ``InputError`` only when it cannot
    tell what was changed where (no account, region or event name, or no group at all)."""
    source = source_id(event)
    envelope_map = mapping(event, source, "event")
    detail = mapping(envelope_map.get("detail"), source, "detail")
    name = text(detail.get("eventName"), source, "detail.eventName")
    account = text(
        envelope_map.get("account") or detail.get("recipientAccountId"), source, "account", pattern=ACCOUNT_ID
    )
    region = text(envelope_map.get("region") or detail.get("awsRegion"), source, "region", pattern=REGION)
    envelope = Envelope(
        source.removeprefix("event "),
        name,
        account,
        region,
        Actor.parse(detail),
        _event_time(detail, envelope_map, source, now),
    )
    if name in CLOSING_EVENTS:
        return Ignored(envelope, f"{name} only removes rules")
    if name not in HANDLED_EVENTS:
        return Ignored(envelope, f"not a security-group rule change ({name})")
    if detail.get("errorCode") not in (None, ""):
        return Ignored(envelope, f"the call failed ({_plain(detail.get('errorCode'))}): nothing was changed")
    notes = _Notes()
    params = _section(detail, "requestParameters", source, notes)
    response = _section(detail, "responseElements", source, notes)
    if name == MODIFY:
        change = _modify(envelope, params, source, notes)
    else:
        change = _authorize(envelope, params, response, source, notes)
    if notes.unclear:  # fail closed: any group the record names anywhere gets its actual rules judged
        for found in _group_ids_in(detail):
            notes.group(found)
    if not notes.groups and not change.get("group_name") and not change.get("rule_ids"):
        raise InputError(source, "detail.requestParameters.groupId", "names no security group")
    # A record is one event: what it cannot say in a few dozen notes and groups, it does not say.
    return SgChange(
        **{**change, "unclear": tuple(notes.unclear[:MAX_NOTES]), "groups": tuple(notes.groups[:MAX_NOTES])}
    )


GROUP_ID = re.compile(r"^sg-[0-9a-f]{8,17}$")
MAX_NODES = 20_000  # a real record has a few hundred; an absurd one is not walked to its end


def _group_ids_in(node: Any) -> list[str]:
    """Every security-group id anywhere in the record (iteratively: no recursion on deep input)."""
    found: list[str] = []
    stack, seen = [node], 0
    while stack and seen < MAX_NODES:
        value = stack.pop()
        seen += 1
        if isinstance(value, str):
            if GROUP_ID.match(value) and value not in found:
                found.append(value)
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def _event_time(detail: Mapping[str, Any], envelope: Mapping[str, Any], source: str, now: datetime | None) -> datetime:
    for where, value in (("detail.eventTime", detail.get("eventTime")), ("time", envelope.get("time"))):
        if value is not None:
            try:
                return timestamp(value, source, where)
            except InputError:
                continue  # the time only dates the record (latency); an odd one is no reason to refuse
    return now or datetime.now(UTC)


def _section(detail: Mapping[str, Any], key: str, source: str, notes: _Notes) -> Mapping[str, Any]:
    try:
        return optional_mapping(detail.get(key), source, f"detail.{key}")
    except InputError as exc:
        notes.unclear.append(f"{exc.field}: {exc.problem}")
        return {}


def _modify(envelope: Envelope, params: Mapping[str, Any], source: str, notes: _Notes) -> dict[str, Any]:
    where = "detail.requestParameters.ModifySecurityGroupRulesRequest"
    request = params.get("ModifySecurityGroupRulesRequest", params)
    if not isinstance(request, Mapping):
        notes.unclear.append(f"{where}: expected an object")
        request = {}
    group_id = notes.group(request.get("GroupId"))
    entries = request.get("SecurityGroupRule", request.get("SecurityGroupRules"))
    entries = [entries] if isinstance(entries, Mapping) else entries
    ids: list[str] = []
    if not isinstance(entries, list):
        notes.unclear.append(f"{where}.SecurityGroupRule: expected a list of rules")
        entries = []
    for i, entry in enumerate(entries):
        rule_id = entry.get("SecurityGroupRuleId") if isinstance(entry, Mapping) else None
        if isinstance(rule_id, str) and rule_id.startswith("sgr-"):
            ids.append(rule_id)
        else:
            notes.unclear.append(f"{where}.SecurityGroupRule[{i}].SecurityGroupRuleId: not a rule id")
    if not ids and not notes.unclear:
        notes.unclear.append(f"{where}.SecurityGroupRule: names no rule")
    return {"envelope": envelope, "egress": False, "group_id": group_id, "rule_ids": tuple(dict.fromkeys(ids))}


def _authorize(
    envelope: Envelope, params: Mapping[str, Any], response: Mapping[str, Any], source: str, notes: _Notes
) -> dict[str, Any]:
    egress = envelope.event_name == "AuthorizeSecurityGroupEgress"
    group_id = notes.group(params.get("groupId"))
    group_name = params.get("groupName") if isinstance(params.get("groupName"), str) else None
    # A rule the record lists again is the same rule: judged (and claimed, and recorded) once. Listed
    # again differently, the record contradicts itself: the group's actual rules are judged instead.
    rules: dict[str | None, SgRule] = {}
    field_ = "detail.responseElements.securityGroupRuleSet"
    try:
        rule_set = items(response.get("securityGroupRuleSet"), source, field_)
    except InputError as exc:
        notes.unclear.append(f"{exc.field}: {exc.problem}")
        rule_set = []
    for i, item in enumerate(rule_set):
        try:
            rule = _rule(item, envelope, source, f"{field_}.items[{i}]", notes)
        except InputError as exc:
            notes.unclear.append(f"{exc.field}: {exc.problem}")
            continue
        if rules.setdefault(rule.rule_id, rule) != rule:
            notes.unclear.append(f"{field_}.items[{i}]: {rule.rule_id} is listed again, differently")
    requested = [] if rule_set else _requested(params, source, notes)
    if group_id is None and group_name is None and not notes.groups:
        notes.unclear.append("detail.requestParameters.groupId: names no group where CloudTrail puts it")
    return {
        "envelope": envelope,
        "egress": egress,
        "group_id": group_id,
        "group_name": group_name,
        "rules": tuple(rules.values()),
        "requested": tuple(dict.fromkeys(requested)),  # one per permission, however often it is repeated
    }


def _rule(item: Any, envelope: Envelope, source: str, where: str, notes: _Notes) -> SgRule:
    """One securityGroupRuleSet item (camelCase) as a rule; its group is noted before anything can fail."""
    item = mapping(item, source, where)
    group_id = notes.group(item.get("groupId"))
    if group_id is None:
        raise InputError(source, f"{where}.groupId", "not a security group id")
    referenced = item.get("referencedGroupInfo")
    referenced = referenced if isinstance(referenced, Mapping) else {}
    rule_id = item.get("securityGroupRuleId")
    if not isinstance(rule_id, str) or not rule_id.startswith("sgr-"):  # revokes go by rule id
        raise InputError(source, f"{where}.securityGroupRuleId", "not a rule id")
    return SgRule(
        account=envelope.account,
        region=envelope.region,
        group_id=group_id,
        rule_id=rule_id,
        is_egress=_flag(item.get("isEgress"), envelope.event_name == "AuthorizeSecurityGroupEgress"),
        protocol=normalise_protocol(_protocol(item.get("ipProtocol"), source, f"{where}.ipProtocol")),
        from_port=port(item.get("fromPort"), source, f"{where}.fromPort"),
        to_port=port(item.get("toPort"), source, f"{where}.toPort"),
        cidr_ipv4=_cidr(item.get("cidrIpv4"), 4, source, f"{where}.cidrIpv4"),
        cidr_ipv6=_cidr(item.get("cidrIpv6"), 6, source, f"{where}.cidrIpv6"),
        prefix_list_id=_plain(item.get("prefixListId")) or None,
        referenced_group_id=_plain(referenced.get("groupId")) or None,
        description=_plain(item.get("description"))[:255] or None,  # EC2's own limit
    )


def _requested(params: Mapping[str, Any], source: str, notes: _Notes) -> list[Requested]:
    """What the request asked for: ``ipPermissions`` items, or the flat ``ipProtocol``/``cidrIp`` form."""
    where = "detail.requestParameters.ipPermissions"
    try:
        permissions = items(params.get("ipPermissions"), source, where)
    except InputError as exc:
        notes.unclear.append(f"{exc.field}: {exc.problem}")
        return []
    if not permissions and params.get("ipProtocol") is not None:
        flat = {k: params.get(k) for k in ("ipProtocol", "fromPort", "toPort")}
        ranges = {"ipRanges": [{"cidrIp": params["cidrIp"]}]} if params.get("cidrIp") is not None else {}
        permissions, where = [{**flat, **ranges}], "detail.requestParameters"
    out: list[Requested] = []
    for i, perm in enumerate(permissions):
        at = f"{where}.items[{i}]" if where.endswith("ipPermissions") else where
        try:
            out += _permission(mapping(perm, source, at), source, at, notes)
        except InputError as exc:
            notes.unclear.append(f"{exc.field}: {exc.problem}")
    return out


def _permission(perm: Mapping[str, Any], source: str, at: str, notes: _Notes) -> list[Requested]:
    protocol = normalise_protocol(_protocol(perm.get("ipProtocol"), source, f"{at}.ipProtocol"))
    low, high = port(perm.get("fromPort"), source, f"{at}.fromPort"), port(perm.get("toPort"), source, f"{at}.toPort")
    out: list[Requested] = []
    for key, attr, inner, version in (
        ("ipRanges", "cidr_ipv4", "cidrIp", 4),
        ("ipv6Ranges", "cidr_ipv6", "cidrIpv6", 6),
        ("prefixListIds", "prefix_list_id", "prefixListId", 0),
        ("groups", "referenced_group_id", "groupId", 0),
    ):
        for j, entry in enumerate(items(perm.get(key), source, f"{at}.{key}")):
            value = mapping(entry, source, f"{at}.{key}.items[{j}]").get(inner)
            if version:
                value = _cidr(value, version, source, f"{at}.{key}.items[{j}].{inner}")
            elif not isinstance(value, str) or not value:
                raise InputError(source, f"{at}.{key}.items[{j}].{inner}", "missing")
            out.append(Requested(protocol, low, high, **{attr: value}))
    return out


def _protocol(value: Any, source: str, where: str) -> str | int:
    """EC2 writes -1 for all traffic; a missing protocol is not "all", it is something not understood."""
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
        return value
    raise InputError(source, where, f"not a protocol: {value!r}"[:100])


def _cidr(value: Any, version: int, source: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    try:
        network = ipaddress.ip_network(text(value, source, where).strip(), strict=False)
    except ValueError:
        raise InputError(source, where, f"not a CIDR: {value!r}"[:100]) from None
    if network.version != version:
        raise InputError(source, where, f"not an IPv{version} CIDR: {value!r}"[:100])
    return str(value).strip()  # as written: EC2 reports the rule with the CIDR it was given


def _flag(value: Any, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return default


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else ""
