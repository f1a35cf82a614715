"""LOCAL ONLY - which resource ARN(s) an AWS request acts on, for the local IAM check.

moto (5.2) evaluates identity policies against the resource "*" for almost every request (only SQS,
IAM roles and sts:AssumeRole pass a real ARN), so a policy that names a table, a topic or a security
group never matches and one that says "*" always does. The shim (opsbot/local/aws_shims.py, item 6)
asks this module instead, and checks each (action, ARN) pair it returns against the caller's policies.

ARN formats are the Service Authorization Reference's ("Resource types defined by ..."). A request this
module does not know returns ``None`` and keeps moto's own resource: "*" (which only a "*" grant
matches), so an unknown request fails closed for a role that names its resources. Actions that take no
resource (List*, Describe* on EC2, GetMetricData, ...) are "*" on AWS too.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

Pairs = list[tuple[str, str]]

# DynamoDB transactions and batches are authorized per item, under the item's own action.
_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
_EC2_PREFIX_TYPES = {
    "snap-": "snapshot",
    "vol-": "volume",
    "i-": "instance",
    "sg-": "security-group",
    "ami-": "image",
    "vpc-": "vpc",
    "subnet-": "subnet",
}
_EC2_GLOBAL_TYPES = {"snapshot", "image"}  # their ARNs carry no account


def _json(body: bytes | str | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _query(data: Any) -> dict[str, str]:
    """A query-protocol request's parameters, first value of each."""
    if not isinstance(data, dict):
        return {}
    return {k: (v[0] if isinstance(v, list) and v else v) for k, v in data.items() if isinstance(k, str)}


def ec2_arn(partition: str, region: str, account: str, resource_id: str) -> str:
    kind = next((t for p, t in _EC2_PREFIX_TYPES.items() if resource_id.startswith(p)), None)
    if kind is None:
        return "*"
    owner = "" if kind in _EC2_GLOBAL_TYPES else account
    return f"arn:{partition}:ec2:{region}:{owner}:{kind}/{resource_id}"


def request_resources(
    *,
    service: str,
    action: str,
    partition: str,
    region: str,
    account: str,
    path: str,
    body: bytes | str | None,
    data: Any,
) -> Pairs | None:
    """(IAM action, resource ARN) pairs the request needs, or None to keep moto's resource.

    ``service``/``action``: the IAM names ("dynamodb", "PutItem"); ``path``: the request path with its
    query string; ``body``: the raw body; ``data``: moto's parsed parameters (query protocol)."""
    p, r, a = partition, region, account
    verb = f"{service}:{action}"
    handler = _HANDLERS.get(service)
    if handler is None:
        return None
    return handler(verb, action, p, r, a, path, body, data)


def _dynamodb(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    req = _json(body)

    def table(name: str) -> str:
        return name if name.startswith("arn:") else f"arn:{p}:dynamodb:{r}:{a}:table/{name}"

    if action in ("BatchWriteItem", "BatchGetItem"):
        return [(verb, table(t)) for t in req.get("RequestItems", {})]
    if action == "TransactWriteItems":
        pairs = []
        for item in req.get("TransactItems", []):
            for op, spec in item.items():
                pairs.append((f"dynamodb:{_TRANSACT_ACTIONS.get(op, op)}", table(spec["TableName"])))
        return pairs
    if action == "TransactGetItems":
        return [("dynamodb:GetItem", table(i["Get"]["TableName"])) for i in req.get("TransactItems", [])]
    if name := req.get("TableName"):
        arn = table(name)
        if index := req.get("IndexName"):
            arn = f"{arn}/index/{index}"
        return [(verb, arn)]
    if resource := req.get("ResourceArn"):
        return [(verb, str(resource))]
    return None


def _sns(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    q = _query(data)
    arn = q.get("TopicArn") or q.get("TargetArn") or q.get("ResourceArn")
    if not arn and action == "CreateTopic" and q.get("Name"):
        arn = f"arn:{p}:sns:{r}:{a}:{q['Name']}"
    return [(verb, arn)] if arn else None


def _lambda(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    route = urlparse(path).path
    if m := re.search(r"/tags/(.+)$", route):
        return [(verb, unquote(m[1]))]
    if m := re.search(r"/event-source-mappings/([^/]+)", route):
        return [(verb, f"arn:{p}:lambda:{r}:{a}:event-source-mapping:{unquote(m[1])}")]
    if m := re.search(r"/functions/([^/]+)", route):
        name = unquote(m[1])
        if name.startswith("arn:"):
            return [(verb, ":".join(name.split(":")[:7]))]
        return [(verb, f"arn:{p}:lambda:{r}:{a}:function:{name.split(':')[0]}")]
    return None


def _events(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    req = _json(body)

    def bus(name: str | None) -> str:
        if name and name.startswith("arn:"):
            return name
        return f"arn:{p}:events:{r}:{a}:event-bus/{name or 'default'}"

    if action == "PutEvents":
        return [(verb, bus(e.get("EventBusName"))) for e in req.get("Entries", [])] or None
    if arn := req.get("ResourceARN"):
        return [(verb, arn)]
    rule = req.get("Name") if action.endswith("Rule") else req.get("Rule")
    if rule:
        on_bus = req.get("EventBusName")
        if on_bus and on_bus.startswith("arn:"):
            on_bus = on_bus.rsplit("/", 1)[-1]
        prefix = f"{on_bus}/" if on_bus and on_bus != "default" else ""
        return [(verb, f"arn:{p}:events:{r}:{a}:rule/{prefix}{rule}")]
    return None


def _ssm(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    req = _json(body)

    def parameter(name: str) -> str:
        if name.startswith("arn:"):
            return name
        return f"arn:{p}:ssm:{r}:{a}:parameter{name if name.startswith('/') else '/' + name}"

    names = req.get("Names") or ([req["Name"]] if req.get("Name") else [])
    return [(verb, parameter(n)) for n in names] or None


def _secretsmanager(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    req = _json(body)
    secret = req.get("SecretId")
    # A name, not an ARN: the shim looks up the secret's ARN (its random suffix) in the local AWS.
    return [(verb, secret if secret.startswith("arn:") else f"secret-name:{r}:{a}:{secret}")] if secret else None


def _ec2(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    q = _query(data)

    def arn(resource_id: str) -> str:
        return ec2_arn(p, r, a, resource_id)

    tagged = any(k.startswith("TagSpecification") for k in q)
    new_snapshot = f"arn:{p}:ec2:{r}::snapshot/*"
    if action == "CreateSnapshot" and q.get("VolumeId"):
        pairs = [(verb, arn(q["VolumeId"])), (verb, new_snapshot)]
        return pairs + ([("ec2:CreateTags", new_snapshot)] if tagged else [])
    if action == "CopySnapshot" and q.get("SourceSnapshotId"):
        source = ec2_arn(p, q.get("SourceRegion") or r, a, q["SourceSnapshotId"])
        pairs = [(verb, source), (verb, new_snapshot)]
        return pairs + ([("ec2:CreateTags", new_snapshot)] if tagged else [])
    if action == "CreateTags" or action == "DeleteTags":
        ids = [v for k, v in sorted(q.items()) if re.fullmatch(r"ResourceId\.\d+|Resource\.\d+", k)]
        return [(verb, arn(i)) for i in ids] or None
    for key in ("SnapshotId", "GroupId", "VolumeId", "InstanceId", "ImageId"):
        if q.get(key) and not action.startswith("Describe"):
            return [(verb, arn(q[key]))]
    return None


def _states(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    req = _json(body)
    arn = req.get("stateMachineArn") or req.get("executionArn") or req.get("resourceArn")
    return [(verb, arn)] if arn else None


def _scheduler(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    url = urlparse(path)
    query = parse_qs(url.query)
    group = str((query.get("groupName") or [""])[0] or _json(body).get("GroupName") or "default")
    if m := re.search(r"/schedules/([^/]+)$", url.path):
        return [(verb, f"arn:{p}:scheduler:{r}:{a}:schedule/{unquote(group)}/{unquote(m[1])}")]
    if m := re.search(r"/schedule-groups/([^/]+)$", url.path):
        return [(verb, f"arn:{p}:scheduler:{r}:{a}:schedule-group/{unquote(m[1])}")]
    return None


def _cloudwatch(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    params = {**_query(data), **_json(body)}
    if name := params.get("AlarmName"):
        return [(verb, f"arn:{p}:cloudwatch:{r}:{a}:alarm:{name}")]
    return None


def _kms(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    key = _json(body).get("KeyId")
    if not key:
        return None
    if key.startswith("arn:"):
        return [(verb, key)]
    # An alias or a bare key id: the shim resolves the alias to its key in the local AWS.
    return [(verb, f"kms-key:{r}:{a}:{key}")]


def _organization_of(account: str, partition: str) -> tuple[str, str] | None:
    """(management account, organisation id) of the organisation ``account`` manages or belongs to."""
    from moto.organizations.models import organizations_backends

    management = organizations_backends.master_accounts.get(account, (account, partition))[0]
    org = organizations_backends[management][partition].org
    return (management, org.id) if org is not None else None


def _organizations(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    req, org = _json(body), _organization_of(a, p)
    target = req.get("ParentId") or req.get("ChildId") or req.get("AccountId")
    if org is None or not isinstance(target, str):
        return None
    management, org_id = org
    kind = "root" if target.startswith("r-") else "ou" if target.startswith("ou-") else "account"
    return [(verb, f"arn:{p}:organizations::{management}:{kind}/{org_id}/{target}")]


def _account(verb: str, action: str, p: str, r: str, a: str, path: str, body: Any, data: Any) -> Pairs | None:
    member = _json(body).get("AccountId")
    if not member:
        return [(verb, f"arn:{p}:account::{a}:account")]
    org = _organization_of(member, p)
    if org is None:
        return None
    return [(verb, f"arn:{p}:account::{org[0]}:account/{org[1]}/{member}")]


_HANDLERS = {
    "dynamodb": _dynamodb,
    "sns": _sns,
    "lambda": _lambda,
    "events": _events,
    "ssm": _ssm,
    "secretsmanager": _secretsmanager,
    "ec2": _ec2,
    "states": _states,
    "scheduler": _scheduler,
    "cloudwatch": _cloudwatch,
    "kms": _kms,
    "organizations": _organizations,
    "account": _account,
}


# ---- trust policies (sts:AssumeRole): moto checks none across accounts ------------------------------
def _like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


_OPERATORS = {
    "StringEquals": lambda want, got: got == want,
    "StringNotEquals": lambda want, got: got != want,
    "StringEqualsIgnoreCase": lambda want, got: got.lower() == want.lower(),
    "StringLike": lambda want, got: _like(want, got),
    "StringNotLike": lambda want, got: not _like(want, got),
    "ArnEquals": lambda want, got: got == want,
    "ArnLike": lambda want, got: _like(want, got),
    "ArnNotEquals": lambda want, got: got != want,
    "ArnNotLike": lambda want, got: not _like(want, got),
    "Bool": lambda want, got: got.lower() == str(want).lower(),
}


def condition_holds(condition: dict[str, Any], context: dict[str, str]) -> bool:
    """IAM condition evaluation for the operators trust policies use. A key the request does not carry
    fails the condition (unless ...IfExists, or Null); an operator this does not know fails it too, so
    the local check is never looser than AWS because of a condition it cannot read."""
    for operator, entries in condition.items():
        if_exists = operator.endswith("IfExists")
        base = operator.removesuffix("IfExists")
        for key, wanted in entries.items():
            got = context.get(key)
            if base == "Null":
                if (got is None) != (str(wanted).lower() == "true"):
                    return False
                continue
            if got is None:
                if if_exists:
                    continue
                return False
            test = _OPERATORS.get(base)
            if test is None:
                return False
            values = _as_list(wanted)
            negated = "Not" in base
            matches = [test(str(w), got) for w in values]
            if not (all(matches) if negated else any(matches)):
                return False
    return True


def principal_matches(principal: Any, caller_arn: str, caller_account: str) -> bool:
    """A trust statement's Principal against the caller (an IAM user's or role's ARN). An account
    ("123456789012" or its root ARN) means any principal of that account; service principals never
    match a caller's credentials."""
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    for entry in _as_list(principal.get("AWS", [])):
        entry = str(entry)
        if entry == "*" or entry == caller_arn:
            return True
        if entry == caller_account or re.fullmatch(rf"arn:[\w-]+:iam::{caller_account}:root", entry):
            return True
    return False


def trust_allows(document: dict[str, Any], caller_arn: str, caller_account: str, context: dict[str, str]) -> bool:
    """Does this trust policy let the caller assume the role? An explicit Deny wins."""
    allowed = False
    for statement in _as_list(document.get("Statement", [])):
        actions = _as_list(statement.get("Action", []))
        if not any(_like(str(x), "sts:AssumeRole") for x in actions):
            continue
        if not principal_matches(statement.get("Principal"), caller_arn, caller_account):
            continue
        if not condition_holds(statement.get("Condition") or {}, context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = True
    return allowed
