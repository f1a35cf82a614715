"""The SAM hub template and the member template agree with the code and with rules/.

What cfn-lint cannot know: that every task in rules/tasks.yaml has its schedule rule, that each
function is granted what its code calls and nothing broad, that the member role trusts exactly the
hub roles the hub template creates, and that the state machine's wiring holds together.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from automations import catalog  # noqa: E402
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


# ---- member roles: one per capability ---------------------------------------------------------
def member_roles(member: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """capability name -> role properties (RoleName is ``${RolePrefix}-<capability>``)."""
    found = {}
    for lid, role in resources(member, "AWS::IAM::Role").items():
        name = role["Properties"].get("RoleName")
        if isinstance(name, dict) and name.get("Fn::Sub", "").startswith("${RolePrefix}-"):
            assert role["Condition"] == "IsRoleRegion", lid  # IAM is global: one stack per account makes it
            found[name["Fn::Sub"].removeprefix("${RolePrefix}-")] = role["Properties"]
    return found


def test_one_member_role_per_capability(member: dict[str, Any]) -> None:
    assert sorted(member_roles(member)) == sorted(c.name for c in catalog.CAPABILITIES)
    for capability in catalog.CAPABILITIES:
        policies = {p["PolicyName"] for p in member_roles(member)[capability.name]["Policies"]}
        assert capability.member_policy in policies, capability.name


def test_member_role_trust_requires_external_id_and_hub_opsbot_roles(member: dict[str, Any]) -> None:
    for name, role in member_roles(member).items():
        (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Effect"] == "Allow"
        assert as_list(statement["Action"]) == ["sts:AssumeRole"]
        assert statement["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${HubAccountId}:root"}}
        assert statement["Condition"]["StringEquals"]["sts:ExternalId"] == {"Ref": "ExternalId"}, name
        assert "aws:PrincipalArn" in statement["Condition"]["ArnLike"], name
        assert role["MaxSessionDuration"] == 3600
    assert member["Parameters"]["ExternalId"]["NoEcho"] is True


def hub_roles_by_capability(hub: dict[str, Any]) -> dict[str, set[str]]:
    """capability -> the IAM paths of the hub roles that may assume its member role (from their policies)."""
    policies: dict[str, str] = {}  # managed policy -> the capability whose member role it assumes
    for lid, policy in resources(hub, "AWS::IAM::ManagedPolicy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "sts:AssumeRole" in as_list(statement["Action"]):
                (resource,) = as_list(statement["Resource"])
                match = re.fullmatch(
                    r"arn:\$\{AWS::Partition\}:iam::\*:role/\$\{MemberRolePrefix\}-([a-z-]+)", resource["Fn::Sub"]
                )
                assert match, resource
                policies[lid] = match[1]
    by_capability: dict[str, set[str]] = {}
    default_path = hub["Globals"]["Function"]["RolePath"]
    holders = [
        (f["Properties"].get("Policies", []), f["Properties"].get("RolePath", default_path))
        for f in resources(hub, "AWS::Serverless::Function").values()
    ]
    holders += [
        (r["Properties"].get("ManagedPolicyArns", []), r["Properties"].get("Path", "/"))
        for r in resources(hub, "AWS::IAM::Role").values()
    ]
    for attached, path in holders:
        for ref in attached:
            if isinstance(ref, dict) and ref.get("Ref") in policies:
                by_capability.setdefault(policies[ref["Ref"]], set()).add(path)
    return by_capability


def test_member_trust_admits_exactly_the_hub_roles_of_its_capability(
    hub: dict[str, Any], member: dict[str, Any]
) -> None:
    """Each member role trusts the paths of the hub roles that assume it, and no hub role that may not
    assume it lives under one of those paths (the read-only checker cannot take the kill-switch role)."""
    prefix = "arn:${AWS::Partition}:iam::${HubAccountId}:role"
    users = hub_roles_by_capability(hub)
    assert sorted(users) == sorted(member_roles(member))
    for capability, role in member_roles(member).items():
        (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
        trusted = {
            p["Fn::Sub"].removeprefix(prefix).removesuffix("*")
            for p in as_list(statement["Condition"]["ArnLike"]["aws:PrincipalArn"])
        }
        assert trusted == users[capability], capability
        assert "/opsbot/" not in trusted, f"{capability}: every hub role lives under /opsbot/"
        for path in trusted:
            assert path.startswith("/opsbot/") and path.endswith("/"), path
    # The prefix the hub may assume is the one member stacks create by default.
    assert hub["Parameters"]["MemberRolePrefix"]["Default"] == member["Parameters"]["RolePrefix"]["Default"]


def test_hub_roles_share_a_trusted_path_only_with_roles_of_the_same_capabilities(hub: dict[str, Any]) -> None:
    """A path a member role trusts holds only roles that assume that role: the read-only checker, the
    Slack endpoint or the sweeper cannot sit beside the kill-switch worker and borrow its trust."""
    default_path = hub["Globals"]["Function"]["RolePath"]
    trusted = set().union(*hub_roles_by_capability(hub).values())
    holders = [
        (lid, f["Properties"].get("RolePath", default_path), f["Properties"].get("Policies", []))
        for lid, f in resources(hub, "AWS::Serverless::Function").items()
    ] + [
        (lid, r["Properties"].get("Path", "/"), r["Properties"].get("ManagedPolicyArns", []))
        for lid, r in resources(hub, "AWS::IAM::Role").items()
    ]
    by_path: dict[str, set[str]] = {}
    for lid, path, attached in holders:
        if path in trusted:
            assumes = frozenset(
                r["Ref"] for r in attached if isinstance(r, dict) and str(r.get("Ref", "")).startswith("Assume")
            )
            assert assumes, f"{lid} sits under the trusted path {path} but assumes no member role"
            by_path.setdefault(path, set()).add(",".join(sorted(assumes)))
    assert all(len(kinds) == 1 for kinds in by_path.values()), by_path


def member_statements(member: dict[str, Any], effect: str = "Allow") -> list[dict[str, Any]]:
    return [
        s
        for role in member_roles(member).values()
        for p in role["Policies"]
        for s in p["PolicyDocument"]["Statement"]
        if s["Effect"] == effect
    ]


def test_member_role_changes_only_what_opsbot_creates(member: dict[str, Any]) -> None:
    statements = member_statements(member)
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


def test_the_kill_switch_role_may_not_stop_opsbot_or_protected_targets(member: dict[str, Any]) -> None:
    """The member side of protection.py: AWS itself refuses opsbot's own rules (every one the member
    template creates), Control Tower's, and anything tagged opsbot:protected (moto does not evaluate
    conditions, so the tag condition is held here, from the template text)."""
    role = member_roles(member)["kill-switches"]
    denies = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    stopping = {"events:DisableRule", "events:PutRule", "lambda:PutFunctionConcurrency"}
    by_name = [s for s in denies if "Condition" not in s]
    patterns = [r["Fn::Sub"].rsplit(":", 1)[-1] for s in by_name for r in as_list(s["Resource"])]
    for rule in resources(member, "AWS::Events::Rule").values():
        name = rule["Properties"]["Name"]
        assert any(fnmatch.fnmatchcase(f"rule/{name}", p) for p in patterns), name
    (tagged,) = [s for s in denies if "Condition" in s]
    assert stopping <= set(as_list(tagged["Action"])) and tagged["Resource"] == "*"
    assert tagged["Condition"]["Null"] == {"aws:ResourceTag/opsbot:protected": "false"}
    assert tagged["Condition"]["StringNotEqualsIgnoreCase"] == {"aws:ResourceTag/opsbot:protected": "false"}


def test_forwarding_role_is_for_this_accounts_opsbot_rules_only(member: dict[str, Any]) -> None:
    role = member["Resources"]["ForwardToHubRole"]["Properties"]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    source = statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"].rsplit(":", 1)[-1]
    for lid, rule in resources(member, "AWS::Events::Rule").items():
        if any(t.get("RoleArn") == {"Fn::GetAtt": ["ForwardToHubRole", "Arn"]} for t in rule["Properties"]["Targets"]):
            assert fnmatch.fnmatchcase(f"rule/{rule['Properties']['Name']}", source), lid


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
    assert fleet.role_prefix == hub["Parameters"]["MemberRolePrefix"]["Default"]
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
    # A Distributed Map over the manifest Plan wrote to S3: the state carries where it is, not the units.
    assert run_units["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert run_units["ItemReader"]["Resource"] == "arn:${Partition}:states:::s3:getObject"
    assert run_units["ItemReader"]["Parameters"] == {
        "Bucket.$": "$.plan.manifest.bucket",
        "Key.$": "$.plan.manifest.key",
    }
    assert run_units["ItemSelector"]["account.$"] == "$$.Map.Item.Value.account"
    assert run_units["ItemSelector"]["run_id.$"] == "$.plan.run_id"
    assert run_units["ResultWriter"]["Parameters"]["Bucket"] == "${ManifestBucket}"
    assert run_units["ResultSelector"] == {"results.$": "$.ResultWriterDetails"}
    # The concurrency comes from the UnitMaxConcurrency parameter, as a number; so does the tolerance.
    assert run_units["MaxConcurrencyPath"] == "$.plan.max_concurrency"
    assert states["Plan"]["ResultSelector"]["max_concurrency.$"] == "States.StringToJson('${UnitMaxConcurrency}')"
    assert machine["DefinitionSubstitutions"]["UnitMaxConcurrency"] == {"Ref": "UnitMaxConcurrency"}
    assert run_units["ToleratedFailurePercentagePath"] == "$.plan.tolerated_failure_percentage"
    assert hub["Parameters"]["UnitToleratedFailurePercentage"]["Default"] == 100  # one account never stops all
    assert run_units["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Close"}]
    assert run_units["Next"] == "Close"

    # A unit refused by a member's cap waits and tries again; a unit that still fails is a FAILED child.
    assert "MemberBusy" in {e for r in states["RunUnit"]["Retry"] for e in r["ErrorEquals"]}
    assert "Catch" not in states["RunUnit"]
    # No path is read from the unit's result: a missing path is a States.Runtime error, which no Catch takes.
    assert not any(k.endswith(".$") for k in states["RunUnit"].get("ResultSelector", {}))

    close = states["Close"]["Parameters"]["Payload"]
    assert close == {"run_id.$": "$.plan.run_id", "error.$": "$.error", "results.$": "$.map.results"}
    # $.error and $.map.results must exist whatever the Map did: the first states set empty ones.
    first = states[definition["StartAt"]]
    assert first["Type"] == "Pass" and first["ResultPath"] == "$.error" and first["Result"] == {}
    second = states[first["Next"]]
    assert second["ResultPath"] == "$.map" and second["Result"] == {"results": None}

    # The machine may start and watch its own children, and read and write only opsbot's manifests.
    statements = [s for p in machine["Policies"] if "Statement" in p for s in p["Statement"]]
    by_sid = {s["Sid"]: s for s in statements}
    assert by_sid["ChildExecutions"]["Action"] == "states:StartExecution"
    assert machine["Name"] == {"Fn::Sub": "${AWS::StackName}-snapshot-run"}
    assert by_sid["ManifestAndResults"]["Resource"] == {"Fn::Sub": "${ManifestBucket.Arn}/*"}


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
    hub_roles = json.dumps(hub["Outputs"]["HubRoleArns"]["Value"])
    for role in ("UnitFunctionRole", "SgEventFunctionRole", "CheckUnitFunctionRole", "KillSwitchWorkerFunctionRole"):
        assert role in hub_roles, role
    assert {
        f"{lid}Arn" for lid in ("SnapshotsRole", "SecurityGroupsRole", "BreachChecksRole", "KillSwitchesRole")
    } <= set(member["Outputs"])


def test_member_forwards_alarm_state_changes_the_hub_handles(hub: dict[str, Any], member: dict[str, Any]) -> None:
    (lid, function) = functions_by_handler(hub)["handlers.alarm_policies.handler"]
    (event,) = function["Properties"]["Events"].values()
    forward = member["Resources"]["ForwardAlarmStateChanges"]["Properties"]
    pattern = dict(forward["EventPattern"])
    # Members forward only the alarms the policies name (a parameter the deployer sets from the rules).
    assert pattern.pop("detail") == {"alarmName": {"Ref": "KillSwitchAlarmNames"}}
    assert member["Parameters"]["KillSwitchAlarmNames"]["Type"] == "CommaDelimitedList"
    assert pattern == event["Properties"]["Pattern"], lid


def test_slack_endpoint_is_an_api_post_with_its_url_as_output(hub: dict[str, Any]) -> None:
    (lid, function) = functions_by_handler(hub)["handlers.slack_actions.handler"]
    (event,) = function["Properties"]["Events"].values()
    assert event == {"Type": "Api", "Properties": {"Path": "/slack/actions", "Method": "post"}}, lid
    assert "/slack/actions" in hub["Outputs"]["SlackInteractivityUrl"]["Value"]["Fn::Sub"]
    assert function["Properties"]["Timeout"] <= 10


# ---- self-watch: log groups, function and dead-letter alarms, heartbeats (docs/runbooks/) ----------------------
def alarms_of(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lid: a["Properties"] for lid, a in resources(template, "AWS::CloudWatch::Alarm").items()}


def alarm_on(template: dict[str, Any], namespace: str, metric: str, dimension: dict[str, Any]) -> dict[str, Any]:
    found = [
        a
        for a in alarms_of(template).values()
        if a["Namespace"] == namespace and a["MetricName"] == metric and a.get("Dimensions") == [dimension]
    ]
    assert len(found) == 1, f"{len(found)} alarms on {namespace} {metric} {dimension}"
    return found[0]


def test_every_function_logs_to_its_own_group_with_retention(hub: dict[str, Any]) -> None:
    functions = resources(hub, "AWS::Serverless::Function")
    groups = resources(hub, "AWS::Logs::LogGroup")
    names = set()
    retention = hub["Parameters"]["LogRetentionDays"]
    assert retention["Default"] == 90 and 90 in retention["AllowedValues"]
    for lid, function in functions.items():
        ref = function["Properties"].get("LoggingConfig", {}).get("LogGroup")
        assert isinstance(ref, dict) and set(ref) == {"Ref"}, f"{lid}: no LoggingConfig.LogGroup"
        group = groups[ref["Ref"]]
        props = group["Properties"]
        assert props["RetentionInDays"] == {"Ref": "LogRetentionDays"}, lid
        assert props["LogGroupName"]["Fn::Sub"].startswith("/aws/lambda/${AWS::StackName}-"), lid
        names.add(props["LogGroupName"]["Fn::Sub"])
        # Named without the function: function -> group only, so no circular dependency.
        assert lid not in json.dumps(props).replace(f"-{lid}", ""), f"{lid}: its log group refers to it"
        assert group["DeletionPolicy"] == "Delete", lid
    assert len(names) == len(functions)


def test_every_function_has_errors_and_throttles_alarms(hub: dict[str, Any]) -> None:
    for lid in resources(hub, "AWS::Serverless::Function"):
        for metric in ("Errors", "Throttles"):
            alarm = alarm_on(hub, "AWS/Lambda", metric, {"Name": "FunctionName", "Value": {"Ref": lid}})
            assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}], (lid, metric)
            assert (alarm["Statistic"], alarm["Threshold"]) == ("Sum", 1), (lid, metric)
            assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold", (lid, metric)
            assert alarm["TreatMissingData"] == "notBreaching", (lid, metric)


def dead_letter_queues(node: Any) -> set[str]:
    """Every queue the template names as a dead-letter queue: rule and schedule targets and SAM events
    (DeadLetterConfig.Arn), functions (DeadLetterQueue.TargetArn), queues (RedrivePolicy)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            arn = None
            if key == "DeadLetterConfig":
                arn = value["Arn"]
            elif key == "DeadLetterQueue" and isinstance(value, dict) and "TargetArn" in value:
                arn = value["TargetArn"]
            elif key == "RedrivePolicy":
                arn = value["deadLetterTargetArn"]
            if arn is not None:
                assert set(arn) == {"Fn::GetAtt"} and arn["Fn::GetAtt"][1] == "Arn", f"{key}: {arn}"
                found.add(arn["Fn::GetAtt"][0])
            found |= dead_letter_queues(value)
    elif isinstance(node, list):
        for value in node:
            found |= dead_letter_queues(value)
    return found


def test_every_dead_letter_queue_has_a_depth_alarm(hub: dict[str, Any], member: dict[str, Any]) -> None:
    for template, actions in (
        (hub, [{"Ref": "AlertTopic"}]),
        (member, {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}),
    ):
        queues = dead_letter_queues(template["Resources"])
        assert queues, "no dead-letter queue found"
        for queue in queues:
            assert template["Resources"][queue]["Type"] == "AWS::SQS::Queue", queue
            dimension = {"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}
            alarm = alarm_on(template, "AWS/SQS", "ApproximateNumberOfMessagesVisible", dimension)
            assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold"), queue
            assert alarm["Statistic"] == "Maximum" and alarm["AlarmActions"] == actions, queue
    assert {"ScheduleDeadLetterQueue", "SgEventDeadLetterQueue", "KillSwitchDeadLetterQueue"} <= dead_letter_queues(
        hub["Resources"]
    )


def test_member_forwarding_rule_targets_have_a_dead_letter_queue(member: dict[str, Any]) -> None:
    hub_bus = {"Fn::Sub": "arn:${AWS::Partition}:events:${HubRegion}:${HubAccountId}:event-bus/default"}
    policies = resources(member, "AWS::SQS::QueuePolicy").values()
    forwarding = {
        lid: rule
        for lid, rule in resources(member, "AWS::Events::Rule").items()
        if any(t["Arn"] == hub_bus for t in rule["Properties"]["Targets"])
    }
    assert {"ForwardSecurityGroupEvents", "ForwardAlarmStateChanges", "ForwardHeartbeats"} <= set(forwarding)
    for lid, rule in forwarding.items():
        assert rule["Properties"]["Name"].startswith("opsbot-forward-"), lid  # ForwardToHubRole's trust
        for target in rule["Properties"]["Targets"]:
            queue = target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
            admitted = [
                s
                for p in policies
                if {"Ref": queue} in p["Properties"]["Queues"]
                for s in p["Properties"]["PolicyDocument"]["Statement"]
                if s["Principal"] == {"Service": "events.amazonaws.com"} and s["Action"] == "sqs:SendMessage"
            ]
            sources = [as_list(s["Condition"]["ArnEquals"]["aws:SourceArn"]) for s in admitted]
            assert any({"Fn::GetAtt": [lid, "Arn"]} in arns for arns in sources), f"{lid}: {queue} refuses it"
            assert all(s["Resource"] == {"Fn::GetAtt": [queue, "Arn"]} for s in admitted), lid


def test_heartbeat_is_scheduled_in_members_forwarded_and_routed_in_the_hub(
    hub: dict[str, Any], member: dict[str, Any]
) -> None:
    from automations.core import heartbeat

    schedule = member["Resources"]["HeartbeatSchedule"]["Properties"]
    target = schedule["Target"]
    own_bus = "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default"
    assert target["Arn"] == {"Fn::Sub": own_bus}
    assert target["EventBridgeParameters"] == {"Source": heartbeat.SOURCE, "DetailType": heartbeat.DETAIL_TYPE}
    assert not heartbeat.SOURCE.startswith("aws.")  # PutEvents refuses those
    interval = member["Parameters"]["HeartbeatIntervalMinutes"]
    assert interval["Default"] == heartbeat.DEFAULT_INTERVAL_MINUTES
    assert (interval["MinValue"], interval["MaxValue"]) == (
        heartbeat.MIN_INTERVAL_MINUTES,
        heartbeat.MAX_INTERVAL_MINUTES,
    )
    assert schedule["ScheduleExpression"] == {"Fn::Sub": "rate(${HeartbeatIntervalMinutes} minutes)"}
    assert '"interval_minutes": ${HeartbeatIntervalMinutes}' in target["Input"]["Fn::Sub"]
    # The schedule's role may put events on its own default bus and dead-letter, nothing else.
    role = member["Resources"][target["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    allowed = {
        (a, json.dumps(s["Resource"]))
        for p in role["Policies"]
        for s in p["PolicyDocument"]["Statement"]
        for a in as_list(s["Action"])
    }
    queue = target["DeadLetterConfig"]["Arn"]
    assert allowed == {("events:PutEvents", json.dumps({"Fn::Sub": own_bus})), ("sqs:SendMessage", json.dumps(queue))}

    (lid, function) = functions_by_handler(hub)["handlers.heartbeat.handler"]
    (event,) = function["Properties"]["Events"].values()
    pattern = {"source": [heartbeat.SOURCE], "detail-type": [heartbeat.DETAIL_TYPE]}
    assert (
        event["Properties"]["Pattern"]
        == pattern
        == member["Resources"]["ForwardHeartbeats"]["Properties"]["EventPattern"]
    )
    # opsbot's own (kill switches never flip it); the member schedule's group is too.
    assert event["Properties"]["RuleName"].startswith("opsbot-"), lid
    group = member["Resources"][schedule["GroupName"]["Ref"]]["Properties"]["Name"]
    assert group.startswith("opsbot-") and trust["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::GetAtt": [schedule["GroupName"]["Ref"], "Arn"]
    }


def test_notification_failures_and_run_timeouts_are_alarmed(hub: dict[str, Any]) -> None:
    from automations.core.notify import NOTIFICATION_FAILURES_METRIC

    variables = hub["Globals"]["Function"]["Environment"]["Variables"]
    service = {"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}
    alarm = alarm_on(hub, variables["POWERTOOLS_METRICS_NAMESPACE"], NOTIFICATION_FAILURES_METRIC, service)
    assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}] and alarm["Statistic"] == "Sum"
    for machine in resources(hub, "AWS::Serverless::StateMachine"):
        for metric in ("ExecutionsFailed", "ExecutionsTimedOut"):
            found = alarm_on(hub, "AWS/States", metric, {"Name": "StateMachineArn", "Value": {"Ref": machine}})
            assert found["AlarmActions"] == [{"Ref": "AlertTopic"}], (machine, metric)


def test_every_alarm_links_an_existing_runbook(hub: dict[str, Any], member: dict[str, Any]) -> None:
    for template in (hub, member):
        for lid, alarm in alarms_of(template).items():
            linked = re.findall(r"Runbook: (docs/runbooks/[\w.-]+\.md)", alarm["AlarmDescription"])
            assert linked, f"{lid}: no 'Runbook: docs/runbooks/....md' in its description"
            for path in linked:
                assert (ROOT / path).is_file(), f"{lid}: {path} does not exist"
