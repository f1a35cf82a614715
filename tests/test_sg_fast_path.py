"""The security-group event path built for the cold start: rules compiled at package time, only the path's
modules imported, the exemption lookup read ahead of the dedupe write. Same outcomes as the plain path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from automations.core import compiled
from automations.core.fleet import FLEET_COMPILED_FROM, load_fleet
from automations.core.rulebook import RulebookError
from automations.security_groups import compiled as compile_cli
from automations.security_groups.policy import load_policy, policy_to_dict
from automations.security_groups.remediation import Lookahead, handle_event
from tests.conftest import ACCOUNT_A, ROOT_RULES, FakeLambdaContext
from tests.sg_events import NOW, POLICY, REGION

ROOT = Path(__file__).resolve().parent.parent
FLEET = f'external_id: opsbot-test\ndefault_regions: [{REGION}]\naccounts:\n  - {{id: "{ACCOUNT_A}"}}\n'
POLICY_WITH_EVERYTHING = """
settings: {exemption_tag_max_days: 10, sweep_report_only_after_rules_change: false}
rules:
  - {name: world-ssh, mode: remediate, protocols: [tcp], ports: [22, "8000-8100"], source: {world: true}}
  - name: prod-only
    mode: alert-only
    direction: egress
    ports: [4444]
    when: "group_tags.env == 'prod'"
  - {name: broad, mode: remediate, source: {broader_than: {ipv4: 8, ipv6: 32}}}
exemptions:
  - {group_id: sg-0123456789abcdef0, rule: world-ssh, reason: "partner SFTP, SEC-1", until: "2027-01-31"}
  - {account: "123456789012", reason: lab account}
"""


def rules_dir(tmp_path: Path, policy: str | None = None) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "fleet.yaml").write_text(FLEET)
    (rules / "tasks.yaml").write_text("tasks: []\n")
    (rules / "security_groups.yaml").write_text(policy or (ROOT_RULES / "security_groups.yaml").read_text())
    return rules


# ---- rules compiled at package time ------------------------------------------------------------------
@pytest.mark.parametrize("text", [None, POLICY_WITH_EVERYTHING], ids=["shipped", "every-feature"])
def test_a_compiled_policy_is_the_policy_the_yaml_gives(tmp_path, text):
    rules = rules_dir(tmp_path, text)
    source = rules / "security_groups.yaml"
    from_yaml = load_policy(source)
    written = compile_cli.compile_rules(rules)
    assert compiled.compiled_path(source) in written and compiled.compiled_path(rules / "fleet.yaml") in written
    from_compiled = load_policy(source)
    assert policy_to_dict(from_compiled) == policy_to_dict(from_yaml)
    # Frozen dataclasses compare by value; a `when` is a compiled JMESPath, compared by its expression.
    assert [r.when.expression if r.when else None for r in from_compiled.rules] == [
        r.when.expression if r.when else None for r in from_yaml.rules
    ]
    assert [(r.name, r.ports, r.protocols) for r in from_compiled.rules] == [
        (r.name, r.ports, r.protocols) for r in from_yaml.rules
    ]
    assert from_compiled.exemptions == from_yaml.exemptions and from_compiled.digest == from_yaml.digest


def test_a_compiled_fleet_is_the_fleet_the_yaml_gives_and_serves_a_parameter_with_the_same_text(tmp_path):
    rules = rules_dir(tmp_path)
    fleet_file = rules / "fleet.yaml"
    from_yaml = load_fleet(fleet_file)
    compile_cli.compile_rules(rules)
    assert load_fleet(fleet_file) == from_yaml
    assert load_fleet("ssm:fleet", FLEET, compiled_at=fleet_file) == from_yaml
    other = FLEET.replace("opsbot-test", "opsbot-other")
    assert load_fleet("ssm:fleet", other, compiled_at=fleet_file).external_id == "opsbot-other"


def test_an_edited_rules_file_is_validated_again_not_read_from_its_stale_compiled_form(tmp_path):
    rules = rules_dir(tmp_path)
    compile_cli.compile_rules(rules)
    source = rules / "security_groups.yaml"
    source.write_text("rules:\n  - {name: x, mode: remediate, bogus: 1, ports: [22]}\n")
    with pytest.raises(RulebookError, match="bogus"):
        load_policy(source)
    (rules / "fleet.yaml").write_text(FLEET + "unknown_key: 1\n")
    with pytest.raises(RulebookError, match="unknown_key"):
        load_fleet(rules / "fleet.yaml")


def test_a_compiled_value_is_stale_when_its_schema_or_loader_changes(tmp_path):
    rules = rules_dir(tmp_path)
    compile_cli.compile_rules(rules)
    fleet_file = rules / "fleet.yaml"
    text = fleet_file.read_text()
    assert compiled.read(fleet_file, text, *FLEET_COMPILED_FROM) is not None
    changed = tmp_path / "fleet.py"
    changed.write_text(FLEET_COMPILED_FROM[1].read_text() + "\n# changed\n")
    assert compiled.read(fleet_file, text, FLEET_COMPILED_FROM[0], changed) is None


def test_the_compile_step_fails_the_build_on_a_bad_rules_file(tmp_path, capsys):
    rules = rules_dir(tmp_path, "rules:\n  - {name: x, mode: sometimes, ports: [22]}\n")
    assert compile_cli.main([str(rules)]) == 1
    assert "security_groups.yaml:2:" in capsys.readouterr().err
    assert not compiled.compiled_path(rules / "security_groups.yaml").exists()
    assert compile_cli.main([]) == 2


def test_the_make_package_step_compiles_the_packaged_rules(tmp_path):
    """`make package` runs the compile step on build/lambda/rules: the shipped rules compile cleanly, and
    the Slack endpoint then reads oncall.yaml without YAML or JSON-schema."""
    rules = tmp_path / "rules"
    rules.mkdir()
    for name in ("fleet.yaml", "security_groups.yaml", "oncall.yaml", "kill_switches.yaml"):
        (rules / name).write_text((ROOT_RULES / name).read_text())
    out = subprocess.run(
        [sys.executable, "-m", "automations.compiled_rules", str(rules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.count("compiled ") == 4
    assert "automations.compiled_rules" in (ROOT / "Makefile").read_text()
    probe = (
        "import sys\n"
        "from automations.kill_switches.slack_buttons import load_oncall\n"
        "for m in ('yaml', 'jsonschema'):\n"
        "    sys.modules.pop(m, None)\n"
        f"print(load_oncall({str(rules / 'oncall.yaml')!r}), [m for m in ('yaml', 'jsonschema') if m in sys.modules])\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "OnCall(users=frozenset(), user_groups=()) []"
    (rules / "oncall.yaml").write_text("users: [U0EDITED]\n")  # edited after packaging: validated again
    from automations.kill_switches.slack_buttons import load_oncall

    assert load_oncall(rules / "oncall.yaml").users == frozenset({"U0EDITED"})


# ---- only the path's modules ----------------------------------------------------------------------------
def test_the_event_handler_imports_only_the_remediation_path(tmp_path):
    rules = rules_dir(tmp_path)
    compile_cli.compile_rules(rules)
    probe = (
        "import sys\n"
        "import handlers.sg_events\n"
        "from automations.core.fleet import load_fleet\n"
        "from automations.security_groups.policy import load_policy\n"
        f"load_fleet({str(rules / 'fleet.yaml')!r}); load_policy({str(rules / 'security_groups.yaml')!r})\n"
        "heavy = ('slack_sdk', 'jsonschema', 'yaml', 'automations.core.runs', 'automations.core.kinds',\n"
        "         'automations.snapshots', 'automations.security_groups.sweep', 'aws_xray_sdk')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMBDA_", "AWS_LAMBDA_"))}
    env.update(AWS_DEFAULT_REGION=REGION, POWERTOOLS_TRACE_DISABLED="true", OPSBOT_RULES_DIR=str(rules))
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_in_lambda_the_runtime_is_built_during_init_and_the_notifier_after_the_revoke(tmp_path):
    """The first event waits for init: init builds what the revoke needs, not the Slack notifier (a
    Secrets Manager read and slack-sdk), which handle_event asks for once opsbot has acted."""
    rules = rules_dir(tmp_path)
    compile_cli.compile_rules(rules)
    probe = (
        "import sys\n"
        "import handlers.sg_events\n"
        "from handlers import _wiring\n"
        "print(_wiring._runtime_for.cache_info().currsize, _wiring._notifier_for.cache_info().currsize)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMBDA_", "AWS_LAMBDA_"))}
    env.update(
        AWS_DEFAULT_REGION=REGION,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_LAMBDA_FUNCTION_NAME="opsbot-sg-events",
        POWERTOOLS_TRACE_DISABLED="true",
        OPSBOT_RULES_DIR=str(rules),
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0"] and "not built at init" not in out.stdout + out.stderr


def test_the_catalog_still_registers_the_sweep_and_the_capability():
    from automations import catalog, security_groups
    from automations.core.kinds import TASK_KINDS

    assert "security-group-sweep" in TASK_KINDS.names()
    assert security_groups.CAPABILITY in catalog.CAPABILITIES
    assert "ec2:RevokeSecurityGroupIngress" in security_groups.CAPABILITY.member_actions


# ---- the exemption lookup read ahead ---------------------------------------------------------------------
def handle_with_lookahead(sg: Any, event: dict[str, Any], lookahead: Lookahead | None = None) -> dict[str, Any]:
    ahead = lookahead or Lookahead(event, sg.broker, POLICY, sg.ledger.table, NOW)
    return handle_event(event, sg.broker, POLICY, sg.ledger, lambda: sg.notifier, clock=lambda: NOW, ahead=ahead)


def test_the_tags_read_ahead_are_used_once_and_the_revoke_is_the_same(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    sg.calls.clear()
    result = handle_with_lookahead(sg, event)
    calls = list(sg.calls)
    assert result["counts"]["revoked"] == 1 and sg.rules(group) == []
    assert calls == ["DescribeTags", "RevokeSecurityGroupIngress"]
    (message,) = sg.slack.messages()
    assert "revoked" in message["blocks"][0]["text"]["text"]


def test_an_exemption_read_ahead_still_exempts(sg):
    group = sg.group({"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "vendor SFTP, SEC-77"})
    event = sg.apply("authorize_sg_ingress_modern", group)
    sg.calls.clear()
    result = handle_with_lookahead(sg, event)
    calls = list(sg.calls)
    assert result["counts"] == {"exempt": 1, "rules_checked": 1}
    assert calls == ["DescribeTags"] and len(sg.rules(group)) == 1
    (message,) = sg.slack.messages()
    assert "SEC-77" in str(message["blocks"])


def test_tags_read_ahead_for_another_group_are_not_used(sg):
    exempt = sg.group({"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "vendor SFTP"}, name="a")
    plain = sg.group(name="b")
    for_exempt = sg.apply("authorize_sg_ingress_modern", exempt)
    for_plain = sg.apply("authorize_sg_ingress_modern", plain, event_id="event-for-b")
    ahead = Lookahead(for_exempt, sg.broker, POLICY, sg.ledger.table, NOW)
    result = handle_with_lookahead(sg, for_plain, ahead)
    assert result["counts"]["revoked"] == 1 and sg.rules(plain) == []
    assert len(sg.rules(exempt)) == 1


def rule_id(event: dict[str, Any]) -> str:
    return str(event["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["securityGroupRuleId"])


def claim(sg: Any, event: dict[str, Any]) -> dict[str, Any] | None:
    key = {"pk": f"REVOKE#{event['account']}#{event['region']}#{rule_id(event)}", "sk": "REVOKE"}
    return sg.ledger.table.get_item(Key=key, ConsistentRead=True).get("Item")


def test_the_rule_is_claimed_ahead_once_and_the_revoke_announced(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    ahead = Lookahead(event, sg.broker, POLICY, sg.ledger.table, NOW)
    assert ahead.claims() == {f"REVOKE#{event['account']}#{event['region']}#{rule_id(event)}": "new"}
    held = claim(sg, event)
    assert held is not None and held["by"] == f"event:{event['id']}"
    result = handle_with_lookahead(sg, event, ahead)
    assert result["counts"]["revoked"] == 1 and sg.rules(group) == []
    assert claim(sg, event) == held, "the claim made ahead is the one the revoke used, not made again"
    assert len(sg.slack.messages()) == 1


def test_a_rule_claimed_ahead_but_exempt_does_not_stop_a_later_revoke(sg):
    """The claim is made before the tags are known; a rule that turns out exempt keeps the claim for an
    hour. When the exemption goes, the next event for the rule still revokes it and says so."""
    group = sg.group({"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "vendor SFTP, SEC-77"})
    event = sg.apply("authorize_sg_ingress_modern", group)
    assert handle_with_lookahead(sg, event)["counts"]["exempt"] == 1
    assert claim(sg, event) is not None and len(sg.rules(group)) == 1
    sg.ec2.delete_tags(Resources=[group], Tags=[{"Key": "opsbot:exempt-until"}])
    again = dict(event, id="the-rule-modified-later")
    result = handle_with_lookahead(sg, again)
    assert result["counts"]["revoked"] == 1 and sg.rules(group) == []
    assert "revoked" in sg.slack.messages()[-1]["blocks"][0]["text"]["text"]


def test_a_retry_after_a_revoke_whose_process_died_announces_it(sg):
    """The first attempt claimed ahead and revoked, then died before the record and the alert. The
    retry finds the rule gone and its own claim: the revoke is its own, recorded and announced."""
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    Lookahead(event, sg.broker, POLICY, sg.ledger.table, NOW).claims()  # the first attempt's claim
    sg.ec2.revoke_security_group_ingress(GroupId=group, SecurityGroupRuleIds=[rule_id(event)])  # its revoke
    result = handle_with_lookahead(sg, event)
    assert result["counts"].get("revoked") == 1 and not result["counts"].get("already_gone")
    assert "revoked" in sg.slack.messages()[0]["blocks"][0]["text"]["text"]


def test_a_rule_another_caller_claimed_is_still_revoked_by_whoever_gets_there(sg):
    """Another event claimed the rule and never revoked it (it died): this one revokes and announces."""
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    Lookahead(dict(event, id="an-event-that-died"), sg.broker, POLICY, sg.ledger.table, NOW).claims()
    result = handle_with_lookahead(sg, event)
    assert result["counts"]["revoked"] == 1 and sg.rules(group) == []
    assert len(sg.slack.messages()) == 1


def test_a_record_the_lookahead_cannot_read_is_judged_as_before(sg):
    group = sg.group()
    event = sg.apply("authorize_sg_ingress_modern", group)
    unreadable = json.loads(json.dumps(event))
    unreadable["detail"] = "not a record"
    ahead = Lookahead(unreadable, sg.broker, POLICY, sg.ledger.table, NOW)
    result = handle_with_lookahead(sg, event, ahead)
    assert result["counts"]["revoked"] == 1 and sg.rules(group) == []


def test_the_handler_on_compiled_rules_revokes_and_exempts_as_before(sg, tmp_path, monkeypatch):
    rules = rules_dir(tmp_path)
    compile_cli.compile_rules(rules)
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    monkeypatch.setenv("OPSBOT_SLACK_CHANNEL", "#sec")
    monkeypatch.setenv("OPSBOT_SLACK_API_URL", sg.slack.base_url)
    monkeypatch.setenv("OPSBOT_SLACK_SECRET_NAME", "opsbot/slack")
    sg.broker.base_session.client("secretsmanager").create_secret(Name="opsbot/slack", SecretString="xoxb-test")
    from handlers import _wiring, sg_events

    _wiring.reset()
    try:
        open_group = sg.group(name="open")
        exempt_group = sg.group({"opsbot:exempt-until": "2026-12-20", "opsbot:exempt-reason": "SEC-9"}, name="x")
        revoked = sg_events.handler(sg.apply("authorize_sg_ingress_modern", open_group), FakeLambdaContext())
        exempt = sg_events.handler(
            sg.apply("authorize_sg_ingress_modern", exempt_group, event_id="second-event"), FakeLambdaContext()
        )
    finally:
        _wiring.reset()
    assert revoked["counts"]["revoked"] == 1 and sg.rules(open_group) == []
    assert exempt["counts"]["exempt"] == 1 and len(sg.rules(exempt_group)) == 1
    assert len(sg.slack.messages()) == 2


def test_with_tracing_on_as_in_lambda_every_handler_imports(tmp_path):
    """On Lambda (LAMBDA_TASK_ROOT set, Tracing: Active) ``traced`` makes the tracer: every handler module
    must import and wrap its handler, not only with tracing off as elsewhere in the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_TRACE", "LAMBDA_", "AWS_LAMBDA_"))}
    env.update(LAMBDA_TASK_ROOT=str(ROOT), AWS_DEFAULT_REGION=REGION, AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR")
    probe = (
        "import importlib, pathlib\n"
        "for path in sorted(pathlib.Path('handlers').glob('[a-z]*.py')):\n"
        "    importlib.import_module(f'handlers.{path.stem}')\n"
        "import handlers._wiring as w\n"
        "print(type(w.tracer).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "Tracer"
