"""The breach checks in template.yaml / template-member.yaml agree with the code: one schedule per check
(both configurable), the state machine's wiring, the schedule role, and a member role that grants
exactly the read-only calls the checks make."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from automations.breach_checks.kinds import CHECK_KINDS
from automations.core.schedules import validate
from opsbot.local.seed import member_role_actions
from tests.test_templates import as_list, definition_of, load_cfn, resources, states_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hub() -> dict[str, Any]:
    return load_cfn(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def member() -> dict[str, Any]:
    return load_cfn(ROOT / "template-member.yaml")


def test_one_schedule_per_check_with_configurable_expressions(hub: dict[str, Any]) -> None:
    schedules = {
        s["Metadata"]["opsbot"]["check"]: s["Properties"] for s in resources(hub, "AWS::Scheduler::Schedule").values()
    }
    assert sorted(schedules) == sorted(CHECK_KINDS.names())
    parameters = {"lambda-concurrency": "LambdaConcurrencyCheckSchedule", "service-quotas": "ServiceQuotaCheckSchedule"}
    for check, props in schedules.items():
        parameter = parameters[check]
        assert props["ScheduleExpression"] == {"Ref": parameter}
        validate(hub["Parameters"][parameter]["Default"])  # EventBridge's own rules
        target = props["Target"]
        assert target["Arn"] == {"Ref": "BreachCheckStateMachine"}
        assert target["RoleArn"] == {"Fn::GetAtt": ["BreachCheckScheduleRole", "Arn"]}
        assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["BreachCheckScheduleDeadLetterQueue", "Arn"]}
        assert props["GroupName"] == {"Ref": "BreachCheckScheduleGroup"}
        # Scheduler replaces its context attributes; the scheduled time is the plan's idempotency key.
        rendered = (
            target["Input"]
            .replace("<aws.scheduler.execution-id>", "d32c5kddcf5bb8c3")
            .replace("<aws.scheduler.scheduled-time>", "2026-11-25T10:05:00Z")
        )
        assert json.loads(rendered) == {"check": check, "id": "d32c5kddcf5bb8c3", "time": "2026-11-25T10:05:00Z"}
    assert hub["Parameters"]["LambdaConcurrencyCheckSchedule"]["Default"] == "rate(5 minutes)"
    assert hub["Parameters"]["ServiceQuotaCheckSchedule"]["Default"] == "rate(1 hour)"


def test_schedule_role_starts_only_the_breach_check_machine(hub: dict[str, Any]) -> None:
    role = hub["Resources"]["BreachCheckScheduleRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": ["BreachCheckScheduleGroup", "Arn"]}
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert {(s["Action"], json.dumps(s["Resource"])) for s in statements} == {
        ("states:StartExecution", json.dumps({"Ref": "BreachCheckStateMachine"})),
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["BreachCheckScheduleDeadLetterQueue", "Arn"]})),
    }


def test_state_machine_wiring(hub: dict[str, Any]) -> None:
    machine = hub["Resources"]["BreachCheckStateMachine"]["Properties"]
    definition, substitutions = definition_of(machine), machine["DefinitionSubstitutions"]
    assert set(re.findall(r"\$\{(\w+)\}", json.dumps(definition))) == set(substitutions)
    states = states_of(definition)
    for name, state in states.items():
        for target in [state.get("Next"), *(c["Next"] for c in state.get("Catch", []))]:
            assert target is None or target in states, f"{name} -> {target}"
    invoked = {
        name: substitutions[re.fullmatch(r"\$\{(\w+)\}", s["Parameters"]["FunctionName"])[1]]["Fn::GetAtt"][0]
        for name, s in states.items()
        if s["Type"] == "Task"
    }
    assert invoked == {"Plan": "CheckPlanFunction", "RunUnit": "CheckUnitFunction", "Close": "CheckCloseFunction"}
    allowed = {p["LambdaInvokePolicy"]["FunctionName"]["Ref"] for p in machine["Policies"] if "LambdaInvokePolicy" in p}
    assert allowed == set(invoked.values())
    assert states["Plan"]["Parameters"]["Payload.$"] == "$"  # the schedule's {"check", "id", "time"}
    # A Standard parent (a Distributed Map needs one) whose children, the batches, are Express executions
    # (billed per execution, not per state transition). The units come from S3, not the state.
    assert machine["Type"] == "STANDARD" and machine["DefinitionUri"] == "statemachines/check.asl.yaml"
    run_units = states["RunUnits"]
    assert run_units["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"}
    assert run_units["ItemReader"]["Parameters"] == {
        "Bucket.$": "$.plan.manifest.bucket",
        "Key.$": "$.plan.manifest.key",
    }
    assert states["Plan"]["ResultSelector"]["manifest.$"] == "$.Payload.manifest"
    assert run_units["ItemBatcher"] == {"MaxItemsPerBatchPath": "$.plan.units_per_invocation"}
    assert states["Plan"]["ResultSelector"]["units_per_invocation.$"] == "$.Payload.units_per_invocation"
    assert hub["Parameters"]["CheckUnitsPerInvocation"]["Default"] >= 1
    plan_env = hub["Resources"]["CheckPlanFunction"]["Properties"]["Environment"]["Variables"]
    assert plan_env["OPSBOT_CHECK_UNITS_PER_INVOCATION"] == {"Ref": "CheckUnitsPerInvocation"}
    assert run_units["MaxConcurrencyPath"] == "$.plan.max_concurrency"
    assert run_units["ToleratedFailurePercentagePath"] == "$.plan.tolerated_failure_percentage"
    assert run_units["ResultWriter"]["Parameters"]["Bucket"] == "${ManifestBucket}"
    assert substitutions["ManifestBucket"] == {"Ref": "ManifestBucket"}
    assert states["Close"]["Parameters"]["Payload"] == {
        "run_id.$": "$.plan.run_id",
        "error.$": "$.error",
        "results.$": "$.map.results",
    }
    # $.error and $.map.results exist before the Map runs: a missing path would be a States.Runtime error.
    assert states["NoErrorYet"]["ResultPath"] == "$.error" and states["NoResultsYet"]["ResultPath"] == "$.map"
    assert "Catch" not in states["RunUnit"]  # a failed batch is a FAILED child in the results Close reads
    assert not any(k.endswith(".$") for k in states["RunUnit"]["ResultSelector"])


def test_failed_executions_and_dead_letters_alarm(hub: dict[str, Any]) -> None:
    alarms = [a["Properties"] for a in resources(hub, "AWS::CloudWatch::Alarm").values()]
    watched = {json.dumps(d["Value"]) for a in alarms for d in a["Dimensions"]}
    assert json.dumps({"Ref": "BreachCheckStateMachine"}) in watched
    assert json.dumps({"Fn::GetAtt": ["BreachCheckScheduleDeadLetterQueue", "QueueName"]}) in watched


def _calls(code: str) -> set[str]:
    """The AWS calls an automation makes: client.method( and get_paginator("method")."""
    return (
        set(re.findall(r"\b(?:lam|cloudwatch|client)\.((?:get|list)_\w+)\(", code))
        | set(re.findall(r"get_paginator\(\"(\w+)\"\)", code))
        | set(re.findall(r"_list\(client, \"(\w+)\"", code))
        | set(re.findall(r"\"(list_\w+_quotas)\"", code))
    )


def test_the_checks_declare_exactly_the_calls_they_make(member: dict[str, Any]) -> None:
    package = ROOT / "automations" / "breach_checks"
    code = {
        "lambda": (package / "lambda_concurrency.py").read_text(encoding="utf-8"),
        "servicequotas": (package / "service_quotas.py").read_text(encoding="utf-8"),
        "cloudwatch": (package / "metric_queries.py").read_text(encoding="utf-8"),
    }
    needed = set()
    for prefix, text in code.items():
        for call in _calls(text) - {"get_paginator"}:
            name = "".join(w.title() for w in call.split("_")).replace("Aws", "AWS")
            service = "cloudwatch" if name == "GetMetricData" else prefix
            needed.add(f"{service}:{name}")
    assert needed == {
        "lambda:GetAccountSettings",
        "lambda:ListFunctions",
        "lambda:GetFunctionConcurrency",
        "servicequotas:ListServiceQuotas",
        "servicequotas:ListAWSDefaultServiceQuotas",
        "cloudwatch:GetMetricData",
    }
    assert needed == set().union(*(kind.member_actions for kind in CHECK_KINDS))
    role = member["Resources"]["BreachChecksRole"]["Properties"]  # the read-only member role
    (policy,) = [p for p in role["Policies"] if p["PolicyName"] == "opsbot-breach-checks"]
    statements = policy["PolicyDocument"]["Statement"]
    (scoped,) = [s for s in statements if s["Resource"] != "*"]
    assert as_list(scoped["Action"]) == ["lambda:GetFunctionConcurrency"]
    assert scoped["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:lambda:*:${AWS::AccountId}:function:*"}
    assert needed <= set(member_role_actions()["breach-checks"])  # the local fleet's role gets them too
