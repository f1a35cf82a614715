"""The forbidden-rule policy: CIDR semantics, port overlap, protocols, JMESPath, exemptions, schema."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
        (rule(cidr_ipv4="0.0.0.0/1"), "revoke:no-broad-ranges-on-admin-and-database-ports"),  # broader than /8
        (rule(cidr_ipv6="2001::/16"), "revoke:no-broad-ranges-on-admin-and-database-ports"),  # broader than /32
        (rule(cidr_ipv4="52.0.0.0/8"), None),  # a /8 is not broader than a /8
        (rule(cidr_ipv6="fc00::/7"), None),  # private (unique local): not the internet, however broad
        (rule(ports=(3306, 3306), cidr_ipv4="0.0.0.0/2"), "revoke:no-broad-ranges-on-admin-and-database-ports"),
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
    tags = {"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "SFTP partner, SEC-12"}
    v = POLICY.evaluate(rule(cidr_ipv4="0.0.0.0/0", tags=tags), TODAY)
    assert v is not None and v.action == "exempt" and "SEC-12" in (v.exempt_reason or "")
    assert v.exemption is not None and v.exemption.ident == "tag:2026-12-20"
    expired = {"opsbot:exempt-until": "2026-11-24", "opsbot:exempt-reason": "old"}
    v = POLICY.evaluate(rule(cidr_ipv4="0.0.0.0/0", tags=expired), TODAY)
    assert v.action == "revoke" and v.notes == (
        "exemption expired on 2026-11-24 (opsbot:exempt-until=2026-11-24: old)",
    )
    garbage = {"opsbot:exempt-until": "soon"}
    assert POLICY.evaluate(rule(cidr_ipv4="0.0.0.0/0", tags=garbage), TODAY).action == "revoke"


@pytest.mark.parametrize(
    ("tags", "why"),
    [
        ({"opsbot:exempt-until": "2026-12-20"}, "has no opsbot:exempt-reason tag"),
        ({"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "  "}, "has no opsbot:exempt-reason tag"),
        ({"opsbot:exempt-until": "2099-12-31", "opsbot:exempt-reason": "forever"}, "more than 30 days ahead"),
        ({"opsbot:exempt-until": "2026-12-26", "opsbot:exempt-reason": "31 days"}, "more than 30 days ahead"),
    ],
)
def test_a_tag_exemption_needs_a_reason_and_ends_within_the_horizon(tags, why):
    v = POLICY.evaluate(rule(cidr_ipv4="0.0.0.0/0", tags=tags), TODAY)
    assert v is not None and v.action == "revoke"
    assert len(v.notes) == 1 and why in v.notes[0] and "exemption tag ignored" in v.notes[0]


def test_the_horizon_is_a_setting_and_the_file_may_exempt_for_longer():
    text = (ROOT / "rules" / "security_groups.yaml").read_text()
    policy = load_policy("p.yaml", text.replace("exemption_tag_max_days: 30", "exemption_tag_max_days: 60"))
    tags = {"opsbot:exempt-until": "2027-01-20", "opsbot:exempt-reason": "migration"}
    assert policy.evaluate(rule(cidr_ipv4="0.0.0.0/0", tags=tags), TODAY).action == "exempt"
    reviewed = load_policy(
        "p.yaml",
        text.replace(
            "exemptions: []",
            'exemptions:\n  - {group_id: sg-0123456789abcdef0, reason: "public SFTP, SEC-1234", until: "2027-06-30"}',
        ),
    )
    v = reviewed.evaluate(rule(cidr_ipv4="0.0.0.0/0"), TODAY)
    assert v.action == "exempt" and v.exemption.source == "rules/security_groups.yaml"
    assert v.exemption.ident.startswith("file:") and "SEC-1234" in v.exempt_reason


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
    assert [r.name for r in POLICY.rules] == [
        "no-world-admin-and-database-ports",
        "no-world-all-traffic",
        "no-broad-ranges-on-admin-and-database-ports",
    ]
    assert all(r.mode == "remediate" for r in POLICY.rules)  # the shipped defaults remediate, not only alert
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


# ---- world by coverage, not by prefix ---------------------------------------------------------------
WORLD_ONLY = load_policy("p.yaml", "rules:\n  - {name: ssh, mode: remediate, ports: [22], source: {world: true}}\n")


def group_rules(*cidrs: str, port: int = 22, group: str = "sg-0123456789abcdef0") -> list[SgRule]:
    return [
        SgRule(
            account="210987654321",
            region="us-east-1",
            group_id=group,
            rule_id=f"sgr-{i:017x}",
            is_egress=False,
            protocol="tcp",
            from_port=port,
            to_port=port,
            cidr_ipv4=c if ":" not in c else None,
            cidr_ipv6=c if ":" in c else None,
        )
        for i, c in enumerate(cidrs)
    ]


def judged(policy, rules) -> dict[str, str]:
    return {v.rule.cidr: f"{v.action}:{v.forbidden.name}" for v in policy.evaluate_all(rules, TODAY)}


def test_the_world_in_halves_is_the_world_and_both_halves_go():
    verdicts = WORLD_ONLY.evaluate_all(group_rules("0.0.0.0/1", "128.0.0.0/1", "203.0.113.0/24"), TODAY)
    assert sorted(v.rule.cidr for v in verdicts) == ["0.0.0.0/1", "128.0.0.0/1"]  # the office /24 stays
    assert all(v.action == "revoke" and v.notes[0].startswith("split: 2 rules of sg-") for v in verdicts)
    assert judged(WORLD_ONLY, group_rules("::/1", "8000::/1")) == {"::/1": "revoke:ssh", "8000::/1": "revoke:ssh"}
    assert judged(WORLD_ONLY, group_rules("0.0.0.0/1")) == {}  # half is not the world (the broad rule's job)


def test_public_ranges_that_together_are_broader_than_a_slash_8_are_broad():
    assert judged(POLICY, group_rules("52.0.0.0/8")) == {}
    both = judged(POLICY, group_rules("52.0.0.0/8", "54.0.0.0/8", port=5432))
    assert both == dict.fromkeys(["52.0.0.0/8", "54.0.0.0/8"], "revoke:no-broad-ranges-on-admin-and-database-ports")
    # 300 /16s: each narrow, together more than a /8; equal pieces of the split all go.
    many = [f"{1 + i // 256}.{i % 256}.0.0/16" for i in range(300)]
    assert len(judged(POLICY, group_rules(*many))) == 300
    # Private ranges are not the internet: they do not add up to "broad".
    assert judged(POLICY, group_rules("10.0.0.0/8", "172.16.0.0/12", "52.0.0.0/8")) == {}
    # Other ports, and other groups, do not add up either.
    assert judged(POLICY, group_rules("52.0.0.0/8", "54.0.0.0/8", port=8080)) == {}
    apart = group_rules("52.0.0.0/8") + group_rules("54.0.0.0/8", group="sg-0fedcba9876543210")
    assert judged(POLICY, apart) == {}


def test_only_the_rules_that_make_it_broad_go():
    rules = group_rules("0.0.0.0/2", "64.0.0.0/2", "198.51.100.0/24", "203.0.113.7/32")
    assert sorted(judged(POLICY, rules)) == ["0.0.0.0/2", "64.0.0.0/2"]


@given(
    prefixes=st.lists(
        st.tuples(st.integers(1, 223), st.integers(0, 255), st.sampled_from([4, 6, 7, 8, 9, 12, 16, 24, 32])),
        min_size=1,
        max_size=40,
    )
)
def test_after_revoking_the_offenders_what_is_left_is_not_broad(prefixes):
    import ipaddress

    from automations.security_groups.policy import covered

    cidrs = sorted({str(ipaddress.ip_network(f"{a}.{b}.0.0/{n}", strict=False)) for a, b, n in prefixes})
    rules = group_rules(*cidrs)
    offenders = {v.rule.cidr for v in POLICY.evaluate_all(rules, TODAY)}
    limit = 2**24
    nets = [ipaddress.ip_network(c) for c in cidrs]
    assert bool(offenders) == (covered(nets, public_only=True) > limit)
    left = [n for n in nets if str(n) not in offenders]
    assert covered(left, public_only=True) <= limit
