"""The SAM hub template and the member template agree with the code and with rules/.

What cfn-lint cannot know: that every task in rules/tasks.yaml has its schedule rule, that each
function is granted what its code calls and nothing broad, that the member role trusts exactly the
hub roles the hub template creates, and that the state machine's wiring holds together.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from automations.core.fleet import load_fleet  # noqa: E402
from automations.core.ledger import PENDING_INDEX, RUNS_INDEX  # noqa: E402
from automations.core.tasks import load_tasks  # noqa: E402

HUB = ROOT / "template.yaml"
MEMBER = ROOT / "template-member.yaml"
# Read by the code from the environment but deliberately not set on AWS (local tooling only).
LOCAL_ONLY_ENV = {"OPSBOT_RULES_DIR", "OPSBOT_SLACK_API_URL"}


def load_cfn(path: Path) -> dict[str, Any]:
    """Parse a template the way CloudFormation does, short intrinsic tags (!Ref, !Sub, ...) included."""
    from cfnlint.decode import decode_str

    template, problems = decode_str(path.read_text(encoding="utf-8"))
    assert not problems, [str(p) for p in problems]
    assert template is not None
    return json.loads(json.dumps(template))  # plain dicts/lists/str, easy to compare


@pytest.fixture(scope="module")
def hub() -> dict[str, Any]:
    return load_cfn(HUB)


@pytest.fixture(scope="module")
def member() -> dict[str, Any]:
    return load_cfn(MEMBER)


def resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def definition_of(machine: dict[str, Any]) -> dict[str, Any]:
    """A state machine's definition: inline, or the file its DefinitionUri names (as SAM reads it)."""
    if "Definition" in machine:
        return dict(machine["Definition"])
    import yaml

    data: dict[str, Any] = yaml.safe_load((ROOT / machine["DefinitionUri"]).read_text(encoding="utf-8"))
    return data


def functions_by_handler(hub: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {f["Properties"]["Handler"]: (lid, f) for lid, f in resources(hub, "AWS::Serverless::Function").items()}


# ---- schedules ------------------------------------------------------------------------------
def test_every_task_has_exactly_one_schedule_rule_with_its_expression(hub: dict[str, Any]) -> None:
    tasks = load_tasks(ROOT / "rules" / "tasks.yaml")
    assert tasks
    by_task: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for lid, rule in resources(hub, "AWS::Events::Rule").items():
        task = ((rule.get("Metadata") or {}).get("opsbot") or {}).get("task")
        assert task, f"{lid}: every rule needs Metadata.opsbot.task"
        by_task.setdefault(task, []).append((lid, rule))
    assert sorted(by_task) == sorted(tasks), "a rule schedules an unknown task, or a task has no rule"
    for name, task in tasks.items():
        assert len(by_task[name]) == 1, f"task {name!r} has {len(by_task[name])} rules"
        lid, rule = by_task[name][0]
        props = rule["Properties"]
        assert props["ScheduleExpression"] == task.schedule, lid
        assert props["State"] == "ENABLED", lid
        assert props["Name"] == f"opsbot-task-{name}", lid


def test_schedule_rules_start_the_state_machine_with_the_task_input(hub: dict[str, Any]) -> None:
    for lid, rule in resources(hub, "AWS::Events::Rule").items():
        task = rule["Metadata"]["opsbot"]["task"]
        (target,) = rule["Properties"]["Targets"]
        assert target["Arn"] == {"Ref": "SnapshotRunStateMachine"}, lid
        assert target["RoleArn"] == {"Fn::GetAtt": ["ScheduleRole", "Arn"]}, lid
        transformer = target["InputTransformer"]
        assert transformer["InputPathsMap"] == {"id": "$.id", "time": "$.time"}, lid
        # EventBridge puts each value in as JSON: stand in quoted strings to parse the template.
        rendered = (
            transformer["InputTemplate"].replace("<id>", '"event-id"').replace("<time>", '"2026-01-01T03:00:00Z"')
        )
        assert json.loads(rendered) == {"task": task, "id": "event-id", "time": "2026-01-01T03:00:00Z"}, lid
        assert target["RetryPolicy"] == {"MaximumRetryAttempts": 4, "MaximumEventAgeInSeconds": 3600}, lid
        assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]}, lid


def test_dead_letter_queue_accepts_every_schedule_rule_and_nothing_else(hub: dict[str, Any]) -> None:
    policy = hub["Resources"]["ScheduleDeadLetterQueuePolicy"]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert as_list(statement["Action"]) == ["sqs:SendMessage"]
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    pattern = statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    prefix = "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/"
    assert pattern.startswith(prefix) and pattern.endswith("*")
    # Every schedule rule's name matches it, so a new task's rule needs no change to the policy.
    rules = resources(hub, "AWS::Events::Rule")
    assert rules and all(r["Properties"]["Name"].startswith(pattern.removeprefix(prefix)[:-1]) for r in rules.values())


def test_schedule_role_may_only_start_the_state_machine(hub: dict[str, Any]) -> None:
    role = hub["Resources"]["ScheduleRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert statements == [
        {"Effect": "Allow", "Action": "states:StartExecution", "Resource": {"Ref": "SnapshotRunStateMachine"}}
    ]


# ---- functions -------------------------------------------------------------------------------
# What each function, member policy and the operator may do: tests/test_permissions.py.
def test_handlers_exist_in_the_code(hub: dict[str, Any]) -> None:
    for handler, (lid, _function) in functions_by_handler(hub).items():
        module, _, name = handler.rpartition(".")
        source = ROOT / (module.replace(".", "/") + ".py")
        assert source.exists(), f"{lid}: {source} missing"
        defined = {n.name for n in ast.parse(source.read_text(encoding="utf-8")).body if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{lid}: no function {name!r} in {source.name}"
    assert functions_by_handler(hub)["handlers.scheduled_task.unit"][1]["Properties"]["Timeout"] == 900


def test_every_setting_the_code_reads_is_set_by_the_template(hub: dict[str, Any]) -> None:
    variables = hub["Globals"]["Function"]["Environment"]["Variables"]
    read = set()
    for source in (ROOT / "handlers" / "_wiring.py", ROOT / "automations" / "core" / "runtime.py"):
        read |= set(re.findall(r"\"(OPSBOT_[A-Z_]+)\"", source.read_text(encoding="utf-8")))
    assert read, "found no OPSBOT_ settings in the code"
    assert read - LOCAL_ONLY_ENV <= set(variables), sorted(read - LOCAL_ONLY_ENV - set(variables))
    assert variables["POWERTOOLS_SERVICE_NAME"] == "opsbot"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "Opsbot"


# ---- member role ----------------------------------------------------------------------------
def member_role(member: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = member["Resources"]["OpsBotExecutionRole"]["Properties"]
    return properties


def test_member_role_trust_requires_external_id_and_hub_opsbot_roles(member: dict[str, Any]) -> None:
    role = member_role(member)
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert as_list(statement["Action"]) == ["sts:AssumeRole"]
    assert statement["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${HubAccountId}:root"}}
    assert statement["Condition"]["StringEquals"]["sts:ExternalId"] == {"Ref": "ExternalId"}
    assert "aws:PrincipalArn" in statement["Condition"]["ArnLike"]
    assert member["Parameters"]["ExternalId"]["NoEcho"] is True
    assert role["MaxSessionDuration"] == 3600
    assert role["RoleName"] == {"Ref": "RoleName"}


def test_member_trust_admits_the_hub_roles_the_hub_template_creates(
    hub: dict[str, Any], member: dict[str, Any]
) -> None:
    (statement,) = member_role(member)["AssumeRolePolicyDocument"]["Statement"]
    pattern = statement["Condition"]["ArnLike"]["aws:PrincipalArn"]["Fn::Sub"]
    prefix = "arn:${AWS::Partition}:iam::${HubAccountId}:role"
    assert pattern.startswith(prefix) and pattern.endswith("*")
    unit_lid, unit = functions_by_handler(hub)["handlers.scheduled_task.unit"]
    path = unit["Properties"].get("RolePath", hub["Globals"]["Function"].get("RolePath"))
    assert path and path.startswith("/") and path.endswith("/"), f"{unit_lid} needs a RolePath"
    assert pattern == f"{prefix}{path}*"
    # The role name the hub may assume is the one member stacks create by default.
    assert hub["Parameters"]["MemberRoleName"]["Default"] == member["Parameters"]["RoleName"]["Default"]


def test_member_role_changes_only_what_opsbot_creates(member: dict[str, Any]) -> None:
    statements = [s for p in member_role(member)["Policies"] for s in p["PolicyDocument"]["Statement"]]
    for statement in statements:
        actions = set(as_list(statement["Action"]))
        if actions & {"ec2:DeleteSnapshot"}:
            assert actions == {"ec2:DeleteSnapshot"}
            assert "aws:ResourceTag/opsbot:task" in statement["Condition"]["StringLike"]
        if actions & {"ec2:CreateTags"}:
            assert actions == {"ec2:CreateTags"}
            assert statement["Condition"]["StringEquals"]["ec2:CreateAction"] == ["CreateSnapshot", "CopySnapshot"]
        if actions & {"ec2:CreateSnapshot", "ec2:CopySnapshot"} and "snapshot/" in json.dumps(statement["Resource"]):
            assert statement["Condition"]["Null"] == {"aws:RequestTag/opsbot:task": "false"}, statement
        if actions & {"ec2:ModifySnapshotAttribute"}:
            assert actions == {"ec2:ModifySnapshotAttribute"}
            assert "aws:ResourceTag/opsbot:task" in statement["Condition"]["StringLike"]
        if any(a.startswith("kms:") for a in actions):
            condition = statement["Condition"]
            assert (
                condition.get("StringLike", {}).get("kms:ViaService") == "ec2.*.amazonaws.com"
                or condition.get("Bool", {}).get("kms:GrantIsForAWSResource") == "true"
            ), statement
        if statement["Resource"] == "*":
            assert all(a.startswith("ec2:Describe") or a in READ_ONLY_WITHOUT_RESOURCES for a in actions), statement


# Read-only actions that take no resource ARN (Service Authorization Reference): the breach checks'.
READ_ONLY_WITHOUT_RESOURCES = {
    "servicequotas:ListServiceQuotas",
    "servicequotas:ListAWSDefaultServiceQuotas",
    "cloudwatch:GetMetricData",
    "lambda:GetAccountSettings",
    "lambda:ListFunctions",
}


def test_member_forwards_exactly_the_events_the_hub_handles(hub: dict[str, Any], member: dict[str, Any]) -> None:
    (lid, function) = functions_by_handler(hub)["handlers.sg_events.handler"]
    (event,) = function["Properties"]["Events"].values()
    forward = member["Resources"]["ForwardSecurityGroupEvents"]["Properties"]
    assert forward["EventPattern"] == event["Properties"]["Pattern"], lid
    (target,) = forward["Targets"]
    # Every fleet region forwards to the hub's bus in the hub's region (CloudTrail events stay regional).
    assert target["Arn"] == {"Fn::Sub": "arn:${AWS::Partition}:events:${HubRegion}:${HubAccountId}:event-bus/default"}
    assert member["Resources"]["OpsBotExecutionRole"]["Condition"] == "IsRoleRegion"


# ---- state ----------------------------------------------------------------------------------
def test_ledger_table_has_ttl_pitr_and_the_runs_index(hub: dict[str, Any]) -> None:
    table = hub["Resources"]["LedgerTable"]
    props = table["Properties"]
    assert table["DeletionPolicy"] == "Retain"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    by_time, pending = props["GlobalSecondaryIndexes"]
    assert (by_time["IndexName"], pending["IndexName"]) == (RUNS_INDEX, PENDING_INDEX)
    assert [k["AttributeName"] for k in by_time["KeySchema"]] == ["gsi1pk", "gsi1sk"]
    assert [k["AttributeName"] for k in pending["KeySchema"]] == ["pending_pk", "pending_sk"]
    assert by_time["Projection"] == pending["Projection"] == {"ProjectionType": "ALL"}


def test_idempotency_table_matches_powertools_defaults(hub: dict[str, Any]) -> None:
    props = hub["Resources"]["IdempotencyTable"]["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_default_fleet_document_is_valid_and_names_the_member_role(hub: dict[str, Any]) -> None:
    default = hub["Parameters"]["FleetDocument"]["Default"]
    fleet = load_fleet("template.yaml:FleetDocument", default)
    assert fleet.role_name == hub["Parameters"]["MemberRoleName"]["Default"]
    assert hub["Resources"]["FleetParameter"]["Properties"]["Value"] == {"Ref": "FleetDocument"}


def test_no_slack_token_is_committed(hub: dict[str, Any]) -> None:
    props = hub["Resources"]["SlackBotTokenSecret"]["Properties"]
    assert "xox" not in json.dumps(props.get("SecretString", "")).lower()


# ---- state machine --------------------------------------------------------------------------
def states_of(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every state, nested Map/Parallel states included, by name."""
    found: dict[str, dict[str, Any]] = {}
    for name, state in definition["States"].items():
        found[name] = state
        for inner in [state.get("ItemProcessor") or state.get("Iterator"), *state.get("Branches", [])]:
            if inner:
                found.update(states_of(inner))
    return found


def test_state_machine_wiring(hub: dict[str, Any]) -> None:
    machine = hub["Resources"]["SnapshotRunStateMachine"]["Properties"]
    definition = definition_of(machine)
    substitutions = machine["DefinitionSubstitutions"]
    placeholders = set(re.findall(r"\$\{(\w+)\}", json.dumps(definition)))
    assert placeholders == set(substitutions), "substitutions and ${...} placeholders differ"

    states = states_of(definition)
    for name, state in states.items():
        for target in [state.get("Next"), *(c["Next"] for c in state.get("Catch", []))]:
            assert target is None or target in states, f"{name} -> {target}"
    assert definition["StartAt"] in states

    invoked = {}
    for name, state in states.items():
        if state["Type"] == "Task":
            assert state["Resource"] == "arn:${Partition}:states:::lambda:invoke", name
            ref = re.fullmatch(r"\$\{(\w+)\}", state["Parameters"]["FunctionName"])
            assert ref, name
            invoked[name] = substitutions[ref[1]]["Fn::GetAtt"][0]
    assert invoked == {"Plan": "PlanFunction", "RunUnit": "UnitFunction", "Close": "CloseFunction"}
    allowed = {p["LambdaInvokePolicy"]["FunctionName"]["Ref"] for p in machine["Policies"] if "LambdaInvokePolicy" in p}
    assert allowed == set(invoked.values())


def test_state_machine_error_handling(hub: dict[str, Any]) -> None:
    machine = hub["Resources"]["SnapshotRunStateMachine"]["Properties"]
    definition = definition_of(machine)
    states = states_of(definition)
    for name in ("Plan", "RunUnit"):
        retried = {e for r in states[name]["Retry"] for e in r["ErrorEquals"]}
        assert {"Lambda.TooManyRequestsException", "IdempotencyAlreadyInProgressError"} <= retried, name
    assert [c["Next"] for c in states["Plan"]["Catch"]] == ["PlanFailed"]
    assert states["PlanFailed"]["Type"] == "Fail"

    run_units = states["RunUnits"]
    assert run_units["Type"] == "Map"
    assert run_units["ItemsPath"] == "$.plan.units"
    # The concurrency comes from the UnitMaxConcurrency parameter, as a number.
    assert run_units["MaxConcurrencyPath"] == "$.plan.max_concurrency"
    assert states["Plan"]["ResultSelector"]["max_concurrency.$"] == "States.StringToJson('${UnitMaxConcurrency}')"
    assert machine["DefinitionSubstitutions"]["UnitMaxConcurrency"] == {"Ref": "UnitMaxConcurrency"}
    assert run_units["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Close"}]
    assert run_units["Next"] == "Close"

    # A failed unit is swallowed inside the iteration and never fails the Map.
    (unit_catch,) = states["RunUnit"]["Catch"]
    assert unit_catch["ErrorEquals"] == ["States.ALL"]
    assert states[unit_catch["Next"]]["Parameters"]["status"] == "FAILED"
    # No path is read from the unit's result: a missing path is a States.Runtime error, which no Catch takes.
    assert not any(k.endswith(".$") for k in states["RunUnit"].get("ResultSelector", {}))

    close = states["Close"]["Parameters"]["Payload"]
    assert close == {"run_id.$": "$.plan.run_id", "error.$": "$.error"}
    # $.error must exist when the Map succeeds too: the first state sets an empty one.
    first = states[definition["StartAt"]]
    assert first["Type"] == "Pass" and first["ResultPath"] == "$.error" and first["Result"] == {}


def test_alarms_report_failed_runs_and_dead_letters(hub: dict[str, Any]) -> None:
    alarms = {a["Properties"]["MetricName"]: a["Properties"] for a in resources(hub, "AWS::CloudWatch::Alarm").values()}
    assert {"ExecutionsFailed", "ApproximateNumberOfMessagesVisible"} <= set(alarms)
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}]
    assert alarms["ExecutionsFailed"]["Dimensions"] == [
        {"Name": "StateMachineArn", "Value": {"Ref": "SnapshotRunStateMachine"}}
    ]
    dlq = alarms["ApproximateNumberOfMessagesVisible"]
    assert dlq["Threshold"] == 0 and dlq["ComparisonOperator"] == "GreaterThanThreshold"


def test_outputs(hub: dict[str, Any], member: dict[str, Any]) -> None:
    assert {"StateMachineArn", "LedgerTableName", "AlertTopicArn", "SlackSecretArn", "HubRoleArns"} <= set(
        hub["Outputs"]
    )
    assert hub["Outputs"]["HubRoleArns"]["Value"] == {"Fn::GetAtt": ["UnitFunctionRole", "Arn"]}
    assert "RoleArn" in member["Outputs"]


def test_member_forwards_alarm_state_changes_the_hub_handles(hub: dict[str, Any], member: dict[str, Any]) -> None:
    (lid, function) = functions_by_handler(hub)["handlers.alarm_policies.handler"]
    (event,) = function["Properties"]["Events"].values()
    forward = member["Resources"]["ForwardAlarmStateChanges"]["Properties"]
    assert forward["EventPattern"] == event["Properties"]["Pattern"], lid


def test_slack_endpoint_is_an_api_post_with_its_url_as_output(hub: dict[str, Any]) -> None:
    (lid, function) = functions_by_handler(hub)["handlers.slack_actions.handler"]
    (event,) = function["Properties"]["Events"].values()
    assert event == {"Type": "Api", "Properties": {"Path": "/slack/actions", "Method": "post"}}, lid
    assert "/slack/actions" in hub["Outputs"]["SlackInteractivityUrl"]["Value"]["Fn::Sub"]
    assert function["Properties"]["Timeout"] <= 10
