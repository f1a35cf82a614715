"""The forbidden-rule policy: CIDR semantics, port overlap, protocols, JMESPath, exemptions, schema."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from automations.core.rulebook import RulebookError
from automations.security_groups.policy import SgRule, load_policy

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "rules" / "security_groups.yaml")
TODAY = date(2026, 11, 25)


def rule(
    protocol: str = "tcp", ports: tuple[int, int] | None = (22, 22), egress: bool = False, tags=None, **source
) -> SgRule:
    low, high = ports if ports else (-1, -1)
    return SgRule(
        account="210987654321",
        region="us-east-1",
        group_id="sg-0123456789abcdef0",
        rule_id="sgr-0123456789abcdef0",
        is_egress=egress,
        protocol=protocol,
        from_port=low,
        to_port=high,
        group_tags=tags or {},
        **source,
    )


def verdict(r: SgRule) -> str | None:
    v = POLICY.evaluate(r, TODAY)
    return None if v is None else f"{v.action}:{v.forbidden.name}"


@pytest.mark.parametrize(
    ("sg_rule", "expected"),
    [
        (rule(cidr_ipv4="0.0.0.0/0"), "revoke:no-world-admin-and-database-ports"),
        (rule(cidr_ipv6="::/0"), "revoke:no-world-admin-and-database-ports"),
        (rule(cidr_ipv4="0.0.0.0/32"), None),  # a single address, not the world
        (rule(cidr_ipv4="10.0.0.0/8"), None),
        (rule(cidr_ipv4="0.0.0.0/1"), "alert:no-broad-ranges-on-admin-ports"),  # broader than /8
        (rule(cidr_ipv6="2001::/16"), "alert:no-broad-ranges-on-admin-ports"),  # broader than /32
        (rule(ports=(0, 65535), cidr_ipv4="0.0.0.0/0"), "revoke:no-world-admin-and-database-ports"),
        (rule(ports=(20, 23), cidr_ipv4="0.0.0.0/0"), "revoke:no-world-admin-and-database-ports"),
        (rule(ports=(5432, 5432), cidr_ipv4="0.0.0.0/0"), "revoke:no-world-admin-and-database-ports"),
        (rule("udp", ports=(3389, 3389), cidr_ipv4="0.0.0.0/0"), "revoke:no-world-admin-and-database-ports"),
        (rule(ports=(80, 80), cidr_ipv4="0.0.0.0/0"), None),  # web to the world is allowed
        (rule(ports=(443, 443), cidr_ipv6="::/0"), None),
        (rule("all", ports=None, cidr_ipv4="0.0.0.0/0"), "revoke:no-world-admin-and-database-ports"),
        (rule("icmp", ports=(8, 0), cidr_ipv4="0.0.0.0/0"), None),  # icmp type 8 is not port 22
        (rule(referenced_group_id="sg-0fedcba9876543210"), None),  # group references are never CIDR matches
        (rule(prefix_list_id="pl-63a5400a"), None),
        (rule("all", ports=None, referenced_group_id="sg-0fedcba9876543210"), None),
        (rule(egress=True, cidr_ipv4="0.0.0.0/0"), None),  # ingress rules do not judge egress
    ],
)
def test_shipped_policy_semantics(sg_rule, expected):
    assert verdict(sg_rule) == expected


def test_all_traffic_rule_is_caught_by_the_all_protocols_rule_too():
    only_all = load_policy(
        "p.yaml", "rules:\n  - {name: a, mode: remediate, protocols: [all], source: {world: true}}\n"
    )
    assert only_all.evaluate(rule("all", ports=None, cidr_ipv4="0.0.0.0/0"), TODAY) is not None
    assert only_all.evaluate(rule("tcp", ports=(0, 65535), cidr_ipv4="0.0.0.0/0"), TODAY) is None


def test_jmespath_condition_on_group_tags():
    policy = load_policy(
        "p.yaml",
        "rules:\n  - name: prod-only\n    mode: alert-only\n    ports: [8080]\n"
        "    when: \"group_tags.Environment == 'prod'\"\n",
    )
    assert policy.evaluate(rule(ports=(8080, 8080), cidr_ipv4="10.1.0.0/16", tags={"Environment": "prod"}), TODAY)
    assert (
        policy.evaluate(rule(ports=(8080, 8080), cidr_ipv4="10.1.0.0/16", tags={"Environment": "dev"}), TODAY) is None
    )


def test_exemption_tag_until_date_and_its_expiry():
    tags = {"opsbot:exempt-until": "2026-12-31", "opsbot:exempt-reason": "SFTP partner, SEC-12"}
    v = POLICY.evaluate(rule(cidr_ipv4="0.0.0.0/0", tags=tags), TODAY)
    assert v is not None and v.action == "exempt" and "SEC-12" in (v.exempt_reason or "")
    expired = {"opsbot:exempt-until": "2026-11-24", "opsbot:exempt-reason": "old"}
    assert POLICY.evaluate(rule(cidr_ipv4="0.0.0.0/0", tags=expired), TODAY).action == "revoke"
    garbage = {"opsbot:exempt-until": "soon"}
    assert POLICY.evaluate(rule(cidr_ipv4="0.0.0.0/0", tags=garbage), TODAY).action == "revoke"


def test_exemptions_by_group_account_rule_and_until():
    policy = load_policy(
        "p.yaml",
        """
rules:
  - {name: ssh, mode: remediate, ports: [22], source: {world: true}}
exemptions:
  - {group_id: sg-0123456789abcdef0, reason: bastion, until: "2026-11-30"}
  - {account: "999999999999", reason: sandbox}
""",
    )
    assert policy.evaluate(rule(cidr_ipv4="0.0.0.0/0"), TODAY).action == "exempt"
    assert policy.evaluate(rule(cidr_ipv4="0.0.0.0/0"), date(2026, 12, 1)).action == "revoke"  # expired


def test_shipped_rules_and_bad_files(tmp_path):
    assert [r.name for r in POLICY.rules][:2] == ["no-world-admin-and-database-ports", "no-world-all-traffic"]
    bad = """rules:
  - name: ssh
    mode: delete-it
    ports: [22]
  - name: ssh
    mode: remediate
    ports: ["30-20"]
    when: "group_tags.["
    colour: red
"""
    with pytest.raises(RulebookError) as err:
        load_policy("rules/security_groups.yaml", bad)
    problems = [str(p) for p in err.value.problems]
    assert (
        "rules/security_groups.yaml:3: rules[0].mode: 'delete-it' is not one of ['remediate', 'alert-only']" in problems
    )
    assert any(p.startswith("rules/security_groups.yaml:9: rules[1].colour: unknown key(s)") for p in problems)
    with pytest.raises(RulebookError) as err:
        load_policy(
            "rules/security_groups.yaml",
            bad.replace("delete-it", "remediate").replace("    colour: red\n", ""),
        )
    problems = [str(p) for p in err.value.problems]
    assert "rules/security_groups.yaml:5: rules[1].name: duplicate rule name 'ssh'" in problems
    assert "rules/security_groups.yaml:7: rules[1].ports[0]: bad port range '30-20'" in problems
    assert any(p.startswith("rules/security_groups.yaml:8: rules[1].when: bad JMESPath") for p in problems)


def test_opsbot_validate_checks_the_security_group_rules(tmp_path, capsys):
    from opsbot.cli import main

    for name in ("fleet.yaml", "tasks.yaml"):
        (tmp_path / name).write_text((ROOT / "rules" / name).read_text())
    (tmp_path / "security_groups.yaml").write_text("rules:\n  - {name: x, mode: nope, ports: [22]}\n")
    assert main(["validate", "--rules", str(tmp_path)]) == 1
    assert f"{tmp_path}/security_groups.yaml:2: rules[0].mode: 'nope' is not one of" in capsys.readouterr().out
