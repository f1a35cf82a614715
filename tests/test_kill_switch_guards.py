"""What the kill switches may never flip is derived from what opsbot deploys: every rule and schedule the
two templates create, and every function of the hub, is recognised as opsbot's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automations.kill_switches.kinds import Identity
from automations.kill_switches.protection import HUB_FUNCTIONS, Protection, opsbot_own
from tests.test_templates import load_cfn, resources

ROOT = Path(__file__).resolve().parent.parent


def text(value: Any) -> str:
    """A name as the template writes it: a plain string or a !Sub template (its literal part is the prefix)."""
    return value["Fn::Sub"] if isinstance(value, dict) and "Fn::Sub" in value else str(value)


def deployed_rule_and_schedule_names() -> list[str]:
    names = []
    for path in ("template.yaml", "template-member.yaml"):
        template = load_cfn(ROOT / path)
        names += [f"rule:{text(r['Properties']['Name'])}" for r in resources(template, "AWS::Events::Rule").values()]
        for function in resources(template, "AWS::Serverless::Function").values():
            for event in function["Properties"].get("Events", {}).values():
                if event["Type"] == "EventBridgeRule":
                    names.append(f"rule:{text(event['Properties']['RuleName'])}")
                elif event["Type"] == "ScheduleV2":
                    names.append(f"schedule:default/{text(event['Properties']['Name'])}")
        groups = resources(template, "AWS::Scheduler::ScheduleGroup")
        for schedule in resources(template, "AWS::Scheduler::Schedule").values():
            group = groups[schedule["Properties"]["GroupName"]["Ref"]]["Properties"]["Name"]
            names.append(f"schedule:{group}/{text(schedule['Properties'].get('Name', 'generated'))}")
    return names


def test_every_rule_and_schedule_opsbot_deploys_is_its_own() -> None:
    names = deployed_rule_and_schedule_names()
    assert len(names) >= 8
    for name in names:
        assert opsbot_own(Identity((name,))), name


def test_hub_functions_are_exactly_template_yaml_functions() -> None:
    deployed = set(resources(load_cfn(ROOT / "template.yaml"), "AWS::Serverless::Function"))
    assert set(HUB_FUNCTIONS) == deployed
    for logical_id in deployed:
        # SAM names a function <stack>-<LogicalId>-<suffix>; CloudFormation also tags it with the logical id.
        assert opsbot_own(Identity((f"lambda:opsbot-prod-{logical_id}-1A2B3C4D5E6F",)))
        assert opsbot_own(Identity(("lambda:truncated",), {"aws:cloudformation:logical-id": logical_id}))


def test_the_deny_list_and_the_tag() -> None:
    protection = Protection.of(["rule:securityhub-*", "lambda:guardduty-*"])
    assert protection.refusal(Identity(("rule:securityhub-findings",)))
    assert protection.refusal(Identity(("esm:1234", "lambda:guardduty-forwarder")))  # a mapping feeding it
    assert protection.refusal(Identity(("lambda:orders",), {"opsbot:protected": ""})) is not None
    assert protection.refusal(Identity(("lambda:orders",), {"opsbot:protected": "False"})) is None
    assert protection.refusal(Identity(("lambda:orders", "rule:Securityhub-x"))) is None  # case-sensitive
    assert Protection.of([], tag=None).refusal(Identity(("lambda:orders",), {"opsbot:protected": "yes"})) is None
