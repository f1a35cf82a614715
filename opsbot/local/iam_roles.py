"""The IAM roles of template.yaml and template-member.yaml, created in the local AWS as the templates
define them, so each hub function, the operator CLI and each member role runs with exactly its deployed
permissions.

Parsed at seed time, generically: every ``AWS::Serverless::Function`` gets its SAM role (``<Id>Role``
under the function's RolePath, trusting lambda.amazonaws.com, with its Policies: managed policies of
the template by ``!Ref``, inline documents, and the SAM policy templates below), every
``AWS::IAM::Role`` (whose Condition holds) its trust and policies, every ``AWS::IAM::ManagedPolicy``
becomes a managed policy. Intrinsics (!Ref, !Sub, !GetAtt, pseudo parameters, parameters, conditions)
are resolved with the local names and ARNs (opsbot/local/hub.py). Not created: the AWS managed
policies SAM adds to every function role (AWSLambdaBasicExecutionRole, AWSXrayWriteOnlyAccess: logs and
traces, which nothing sends locally).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from opsbot.cfn import PROJECT_ROOT, evaluate_conditions, load_template, parameter_defaults, resolve

HUB_TEMPLATE = PROJECT_ROOT / "template.yaml"
MEMBER_TEMPLATE = PROJECT_ROOT / "template-member.yaml"
LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
FUNCTION_TYPES = ("AWS::Serverless::Function",)

# SAM policy templates a function may use, as aws-sam-translator's policy_templates.json expands them
# (transcribed: samtranslator is not a dependency here). No function uses one today (the state machines'
# LambdaInvokePolicy is not run locally); one not listed here fails seeding by name, never silently.
SAM_POLICY_TEMPLATES: dict[str, dict[str, Any]] = {
    "LambdaInvokePolicy": {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["lambda:InvokeFunction"],
                "Resource": {
                    "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${FunctionName}*"
                },
            }
        ]
    },
    "SQSSendMessagePolicy": {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["sqs:SendMessage*"],
                "Resource": {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${QueueName}"},
            }
        ]
    },
    "SNSPublishMessagePolicy": {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["sns:Publish"],
                "Resource": {"Fn::Sub": "arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:${TopicName}"},
            }
        ]
    },
    "DynamoDBCrudPolicy": {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "dynamodb:GetItem",
                    "dynamodb:DeleteItem",
                    "dynamodb:PutItem",
                    "dynamodb:Scan",
                    "dynamodb:Query",
                    "dynamodb:UpdateItem",
                    "dynamodb:BatchWriteItem",
                    "dynamodb:BatchGetItem",
                    "dynamodb:DescribeTable",
                    "dynamodb:ConditionCheckItem",
                ],
                "Resource": [
                    {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}"},
                    {
                        "Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:"
                        "table/${TableName}/index/*"
                    },
                ],
            }
        ]
    },
    "DynamoDBReadPolicy": {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "dynamodb:GetItem",
                    "dynamodb:Scan",
                    "dynamodb:Query",
                    "dynamodb:BatchGetItem",
                    "dynamodb:DescribeTable",
                ],
                "Resource": [
                    {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}"},
                    {
                        "Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:"
                        "table/${TableName}/index/*"
                    },
                ],
            }
        ]
    },
}


@dataclass(frozen=True)
class ManagedPolicySpec:
    logical_id: str
    name: str
    path: str
    document: dict[str, Any]


@dataclass(frozen=True)
class RoleSpec:
    logical_id: str  # the role's (for a function: the function's) logical id
    name: str
    path: str
    trust: dict[str, Any]
    inline: dict[str, dict[str, Any]]  # policy name -> document
    managed: tuple[str, ...]  # logical ids of the template's managed policies
    handler: str | None = None  # module.function, for a function's role

    def arn(self, account: str, partition: str = "aws") -> str:
        return f"arn:{partition}:iam::{account}:role{self.path}{self.name}"


@dataclass(frozen=True)
class TemplateRoles:
    roles: tuple[RoleSpec, ...]
    managed: tuple[ManagedPolicySpec, ...]

    def role(self, logical_id: str) -> RoleSpec:
        return next(r for r in self.roles if r.logical_id == logical_id)


@dataclass
class Locals:
    """What the template's references resolve to locally."""

    account: str
    region: str
    partition: str = "aws"
    parameters: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # logical id -> local name (an ARN for secrets)
    stack_name: str = "opsbot"


_NAME_PROPERTY = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Serverless::StateMachine": "Name",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::S3::Bucket": "BucketName",
}


def _pseudo(loc: Locals) -> dict[str, Any]:
    return {
        "AWS::Partition": loc.partition,
        "AWS::AccountId": loc.account,
        "AWS::Region": loc.region,
        "AWS::StackName": loc.stack_name,
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::NoValue": None,
    }


def _physical(template: dict[str, Any], loc: Locals) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ref and GetAtt values of every resource (and of SAM's implicit function roles and event rules)."""
    p, r, a = loc.partition, loc.region, loc.account
    base_refs = {**parameter_defaults(template), **loc.parameters, **_pseudo(loc)}
    refs: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    for lid, res in (template.get("Resources") or {}).items():
        kind = res.get("Type", "")
        props = res.get("Properties") or {}
        name = loc.names.get(lid)
        if name is None:
            literal = props.get(_NAME_PROPERTY.get(kind, "Name"))
            try:
                name = str(resolve(literal, base_refs, {})) if literal is not None else None
            except KeyError:
                name = None
        name = name or f"opsbot-local-{lid}"
        path = str(props.get("Path") or "/")
        arn = f"arn:{p}:local:{r}:{a}:{lid}"
        ref: Any = name
        if kind == "AWS::DynamoDB::Table":
            arn = f"arn:{p}:dynamodb:{r}:{a}:table/{name}"
        elif kind == "AWS::SQS::Queue":
            arn, ref = f"arn:{p}:sqs:{r}:{a}:{name}", f"https://sqs.{r}.amazonaws.com/{a}/{name}"
            attrs[f"{lid}.QueueName"] = name
        elif kind == "AWS::SNS::Topic":
            arn = ref = f"arn:{p}:sns:{r}:{a}:{name}"
            attrs[f"{lid}.TopicName"] = name
        elif kind == "AWS::SecretsManager::Secret":
            arn = ref = name if name.startswith("arn:") else f"arn:{p}:secretsmanager:{r}:{a}:secret:{name}"
        elif kind == "AWS::IAM::ManagedPolicy":
            arn = ref = f"arn:{p}:iam::{a}:policy{path}{name}"
        elif kind == "AWS::IAM::Role":
            arn = f"arn:{p}:iam::{a}:role{path}{name}"
        elif kind in FUNCTION_TYPES:
            arn = f"arn:{p}:lambda:{r}:{a}:function:{name}"
            role = function_role_name(lid)
            attrs[f"{role}.Arn"] = f"arn:{p}:iam::{a}:role{function_role_path(template, res)}{role}"
            refs[role] = role
            for event, spec in (props.get("Events") or {}).items():
                rule = (spec.get("Properties") or {}).get("RuleName") or f"opsbot-local-{lid}-{event}"[:64]
                attrs[f"{lid}{event}.Arn"] = f"arn:{p}:events:{r}:{a}:rule/{rule}"
        elif kind == "AWS::KMS::Key":
            arn, ref = f"arn:{p}:kms:{r}:{a}:key/{name}", name
        elif kind == "AWS::S3::Bucket":
            arn = f"arn:{p}:s3:::{name}"
        elif kind in ("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine"):
            arn = ref = f"arn:{p}:states:{r}:{a}:stateMachine:{name}"
        elif kind == "AWS::Scheduler::ScheduleGroup":
            arn = f"arn:{p}:scheduler:{r}:{a}:schedule-group/{name}"
        elif kind == "AWS::Events::Rule":
            arn = f"arn:{p}:events:{r}:{a}:rule/{name}"
        elif kind == "AWS::Logs::LogGroup":
            arn = f"arn:{p}:logs:{r}:{a}:log-group:{name}:*"
        refs[lid] = ref
        attrs[f"{lid}.Arn"] = arn
    return {**base_refs, **refs}, attrs


def function_role_name(logical_id: str) -> str:
    """SAM's logical id for a function's generated role; locally also the role's name."""
    return f"{logical_id}Role"


def function_role_path(template: dict[str, Any], function: dict[str, Any]) -> str:
    props = function.get("Properties") or {}
    globals_ = ((template.get("Globals") or {}).get("Function")) or {}
    return str(props.get("RolePath") or globals_.get("RolePath") or "/")


def _function_policies(
    lid: str, policies: Any, template: dict[str, Any], sub: Any
) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
    inline: dict[str, dict[str, Any]] = {}
    managed: list[str] = []
    for i, policy in enumerate(policies if isinstance(policies, list) else [policies]):
        if isinstance(policy, dict) and set(policy) == {"Ref"}:
            target = (template.get("Resources") or {}).get(policy["Ref"]) or {}
            if target.get("Type") != "AWS::IAM::ManagedPolicy":
                raise ValueError(f"{lid}: policy !Ref {policy['Ref']} is not a managed policy of the template")
            managed.append(policy["Ref"])
        elif isinstance(policy, dict) and "Statement" in policy:
            inline[f"{lid}Policy{i}"] = sub(policy)
        elif isinstance(policy, dict) and len(policy) == 1 and next(iter(policy)) in SAM_POLICY_TEMPLATES:
            ((name, args),) = policy.items()
            doc = SAM_POLICY_TEMPLATES[name]
            inline[f"{lid}{name}{i}"] = {"Version": "2012-10-17", **sub(doc, {k: sub(v) for k, v in args.items()})}
        else:
            raise ValueError(f"{lid}: policy {policy!r} is not supported locally (opsbot/local/iam_roles.py)")
    return inline, tuple(managed)


def template_roles(template_path: Path, loc: Locals) -> TemplateRoles:
    """Every role and managed policy a template deploys, resolved with ``loc``."""
    template = load_template(template_path)
    refs, attrs = _physical(template, loc)
    conditions = evaluate_conditions(template, refs)

    def sub(node: Any, extra: Mapping[str, Any] | None = None) -> Any:
        return resolve(node, {**refs, **(extra or {})}, attrs, conditions)

    resources = template.get("Resources") or {}
    roles: list[RoleSpec] = []
    managed: list[ManagedPolicySpec] = []
    for lid, res in resources.items():
        if res.get("Condition") and not conditions[res["Condition"]]:
            continue
        kind, props = res.get("Type"), res.get("Properties") or {}
        if kind == "AWS::IAM::ManagedPolicy":
            arn = attrs[f"{lid}.Arn"]
            managed.append(
                ManagedPolicySpec(
                    lid, arn.rsplit("/", 1)[-1], str(props.get("Path") or "/"), sub(props["PolicyDocument"])
                )
            )
        elif kind in FUNCTION_TYPES:
            if props.get("Role"):
                continue  # a function with an existing role: that role is an AWS::IAM::Role of its own
            inline, policies = _function_policies(lid, props.get("Policies") or [], template, sub)
            path = function_role_path(template, res)
            roles.append(RoleSpec(lid, function_role_name(lid), path, LAMBDA_TRUST, inline, policies, props["Handler"]))
        elif kind == "AWS::IAM::Role":
            arn = attrs[f"{lid}.Arn"]
            inline = {p["PolicyName"]: sub(p["PolicyDocument"]) for p in props.get("Policies") or []}
            attached: list[str] = []
            by_arn = {attrs[f"{m}.Arn"]: m for m, r in resources.items() if r.get("Type") == "AWS::IAM::ManagedPolicy"}
            for ref in props.get("ManagedPolicyArns") or []:
                value = sub(ref)
                if value not in by_arn:
                    raise ValueError(f"{lid}: managed policy {value} is not one of the template's")
                attached.append(by_arn[value])
            roles.append(
                RoleSpec(
                    lid,
                    arn.rsplit("/", 1)[-1],
                    str(props.get("Path") or "/"),
                    sub(props["AssumeRolePolicyDocument"]),
                    inline,
                    tuple(attached),
                )
            )
    return TemplateRoles(tuple(roles), tuple(managed))


def enforceable(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the local AWS can enforce it. moto evaluates no condition of an identity policy
    (an Allow with a Condition allows, a Deny with one denies, whatever the request): so an Allow's
    Condition is dropped (moto ignores it anyway) and a conditional Deny is dropped whole (moto would
    deny every request it names). Those conditions are tested from the template text instead
    (tests/test_templates.py, tests/test_local_iam.py); unconditional Denies stay and are enforced."""
    statements = document.get("Statement", [])
    kept = []
    for statement in statements if isinstance(statements, list) else [statements]:
        if "Condition" in statement:
            if statement.get("Effect") == "Deny":
                continue
            statement = {k: v for k, v in statement.items() if k != "Condition"}
        kept.append(statement)
    return {**document, "Statement": kept}


def create_roles(session: boto3.Session, spec: TemplateRoles) -> dict[str, str]:
    """Create (or update) the roles and managed policies in the session's account; logical id -> role ARN."""
    iam: Any = session.client("iam")
    account = session.client("sts").get_caller_identity()["Account"]
    policy_arns: dict[str, str] = {}
    for policy in spec.managed:
        arn = f"arn:aws:iam::{account}:policy{policy.path}{policy.name}"
        text = json.dumps(enforceable(policy.document))
        try:
            iam.create_policy(PolicyName=policy.name, Path=policy.path, PolicyDocument=text)
        except iam.exceptions.EntityAlreadyExistsException:  # seeded again: the template's version wins
            for version in iam.list_policy_versions(PolicyArn=arn)["Versions"]:
                if not version["IsDefaultVersion"]:
                    iam.delete_policy_version(PolicyArn=arn, VersionId=version["VersionId"])
            iam.create_policy_version(PolicyArn=arn, PolicyDocument=text, SetAsDefault=True)
        policy_arns[policy.logical_id] = arn
    arns: dict[str, str] = {}
    for role in spec.roles:
        trust = json.dumps(role.trust)
        try:
            iam.create_role(RoleName=role.name, Path=role.path, AssumeRolePolicyDocument=trust)
        except iam.exceptions.EntityAlreadyExistsException:  # seeded again: the template's version wins
            iam.update_assume_role_policy(RoleName=role.name, PolicyDocument=trust)
            for name in iam.list_role_policies(RoleName=role.name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=role.name, PolicyName=name)
            for attached in iam.list_attached_role_policies(RoleName=role.name)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=role.name, PolicyArn=attached["PolicyArn"])
        for policy_name, document in role.inline.items():
            iam.put_role_policy(
                RoleName=role.name, PolicyName=policy_name, PolicyDocument=json.dumps(enforceable(document))
            )
        for lid in role.managed:
            iam.attach_role_policy(RoleName=role.name, PolicyArn=policy_arns[lid])
        arns[role.logical_id] = role.arn(account)
    return arns


def role_credentials(session: boto3.Session, role_arn: str, session_name: str) -> dict[str, str]:
    """A session of the role, as the environment variables a process (or Lambda) runs with.

    Locally the seeder assumes the function roles before IAM enforcement is on: that stands in for the
    Lambda service, whose principal (lambda.amazonaws.com) the roles trust. moto never expires them."""
    creds = session.client("sts").assume_role(RoleArn=role_arn, RoleSessionName=session_name[:64])["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
        "AWS_SESSION_TOKEN": creds["SessionToken"],
    }
