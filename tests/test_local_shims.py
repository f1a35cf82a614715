"""The local shims (opsbot/local/aws_shims.py) behave as AWS does. TransactWriteItems (item 5): all or
nothing for its own items, one cancellation reason per item, and no effect on anything else. IAM
(item 6): a request is checked against the ARN it touches, an AssumeRole against the role's trust."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core.authorization import enable_iam_authentication

from automations.core.ledger import transact
from opsbot.local.aws_shims import shims
from opsbot.local.iam_resources import condition_holds, request_resources


@pytest.fixture
def table():
    with mock_aws(), shims():
        dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
        yield dynamodb.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )


def put_new(pk: str, **attrs: object) -> dict[str, object]:
    return {"Put": {"Item": {"pk": pk, "sk": "X", **attrs}, "ConditionExpression": "attribute_not_exists(pk)"}}


def test_a_cancelled_transaction_writes_nothing_and_names_the_failed_item(table):
    table.put_item(Item={"pk": "b", "sk": "X", "v": 1})
    with pytest.raises(ClientError) as caught:
        transact(table, put_new("a", v=1), put_new("b", v=2))
    error = caught.value.response
    assert error["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in error["CancellationReasons"]] == ["None", "ConditionalCheckFailed"]
    assert "Item" not in table.get_item(Key={"pk": "a", "sk": "X"})
    assert table.get_item(Key={"pk": "b", "sk": "X"})["Item"]["v"] == 1


def test_a_passing_transaction_writes_every_item(table):
    transact(
        table,
        put_new("a", v=1),
        {
            "Update": {
                "Key": {"pk": "c", "sk": "X"},
                "UpdateExpression": "SET v = :v",
                "ExpressionAttributeValues": {":v": 3},
            }
        },
    )
    assert table.get_item(Key={"pk": "a", "sk": "X"})["Item"]["v"] == 1
    assert table.get_item(Key={"pk": "c", "sk": "X"})["Item"]["v"] == 3


def test_failed_transactions_never_roll_back_what_others_wrote_meanwhile(table):
    """moto alone restores a whole-table copy when a transaction fails, erasing concurrent writes."""
    table.put_item(Item={"pk": "taken", "sk": "X"})

    def write(n: int) -> None:
        if n % 2:
            with pytest.raises(ClientError):
                transact(table, put_new(f"t{n}"), put_new("taken"))
        else:
            table.put_item(Item={"pk": f"p{n}", "sk": "X"})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(400)))
    written = {i["pk"] for i in table.scan()["Items"]}
    assert {f"p{n}" for n in range(0, 400, 2)} <= written
    assert not {f"t{n}" for n in range(1, 400, 2)} & written


# ---- item 6: IAM checked against the ARN a request touches, and trust policies across accounts --------
MEMBER = "210987654321"


def _role_session(base: boto3.Session, name: str, statements: list[dict], *, path: str = "/", trust=None):
    """A role in ``base``'s account with these statements, and a session of it (made before enforcement)."""
    account = base.client("sts").get_caller_identity()["Account"]
    iam = base.client("iam")
    trust = trust or {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "sts:AssumeRole"}
        ],
    }
    arn = iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=name, PolicyName="p", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements})
    )
    creds = base.client("sts").assume_role(RoleArn=arn, RoleSessionName=name)["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name="us-east-1",
    )


def _denied(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    code = caught.value.response["Error"]["Code"]
    assert code in ("AccessDenied", "AccessDeniedException"), caught.value.response  # query / JSON APIs
    return str(caught.value)


@pytest.fixture
def hub():
    with mock_aws(), shims():
        session = boto3.Session(region_name="us-east-1")
        ddb = session.client("dynamodb")
        for name in ("allowed", "other"):
            ddb.create_table(
                TableName=name,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        yield session


def test_a_grant_on_one_table_allows_that_table_and_no_other(hub):
    """moto alone checks every DynamoDB call against "*": this grant would allow nothing."""
    table = "arn:aws:dynamodb:us-east-1:123456789012:table/allowed"
    writer = _role_session(hub, "writer", [{"Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": table}])
    ddb = writer.client("dynamodb")
    with enable_iam_authentication():
        ddb.put_item(TableName="allowed", Item={"pk": {"S": "a"}})
        message = _denied(ddb.put_item, TableName="other", Item={"pk": {"S": "a"}})
        _denied(ddb.get_item, TableName="allowed", Key={"pk": {"S": "a"}})
    assert "dynamodb:PutItem" in message
    assert hub.client("dynamodb").get_item(TableName="allowed", Key={"pk": {"S": "a"}})["Item"]


def test_a_transaction_needs_each_items_own_action_not_transact_write_items(hub):
    table = "arn:aws:dynamodb:us-east-1:123456789012:table/allowed"
    writer = _role_session(
        hub,
        "writer",
        [{"Effect": "Allow", "Action": ["dynamodb:PutItem", "dynamodb:TransactWriteItems"], "Resource": table}],
    )
    ddb = writer.client("dynamodb")
    put = {"Put": {"TableName": "allowed", "Item": {"pk": {"S": "p"}}}}
    update = {"Update": {"TableName": "allowed", "Key": {"pk": {"S": "u"}}, "UpdateExpression": "SET v = :v"}}
    update["Update"]["ExpressionAttributeValues"] = {":v": {"N": "1"}}
    with enable_iam_authentication():
        ddb.transact_write_items(TransactItems=[put])
        assert "dynamodb:UpdateItem" in _denied(ddb.transact_write_items, TransactItems=[put, update])


def test_assume_role_across_accounts_is_checked_against_the_roles_trust_policy(hub):
    """moto checks no trust policy of a role in another account; the shim checks ExternalId and the
    caller's aws:PrincipalArn (its role's ARN, path included) as AWS does."""
    member = boto3.Session(
        **{
            k.replace("AccessKeyId", "aws_access_key_id")
            .replace("SecretAccessKey", "aws_secret_access_key")
            .replace("SessionToken", "aws_session_token"): v
            for k, v in hub.client("sts")
            .assume_role(RoleArn=f"arn:aws:iam::{MEMBER}:role/seeder", RoleSessionName="seed")["Credentials"]
            .items()
            if k != "Expiration"
        },
        region_name="us-east-1",
    )
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"sts:ExternalId": "the-id"},
                    "ArnLike": {"aws:PrincipalArn": "arn:aws:iam::123456789012:role/opsbot/tasks/*"},
                },
            }
        ],
    }
    member.client("iam").create_role(RoleName="opsbot-snapshots", AssumeRolePolicyDocument=json.dumps(trust))
    target = f"arn:aws:iam::{MEMBER}:role/opsbot-snapshots"
    may_assume = [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "arn:aws:iam::*:role/opsbot-*"}]
    tasks = _role_session(hub, "unit", may_assume, path="/opsbot/tasks/").client("sts")
    checks = _role_session(hub, "check", may_assume, path="/opsbot/checks/").client("sts")
    with enable_iam_authentication():
        assumed = tasks.assume_role(RoleArn=target, RoleSessionName="run", ExternalId="the-id")
        _denied(tasks.assume_role, RoleArn=target, RoleSessionName="run", ExternalId="another-id")
        _denied(tasks.assume_role, RoleArn=target, RoleSessionName="run")
        _denied(checks.assume_role, RoleArn=target, RoleSessionName="run", ExternalId="the-id")
        _denied(tasks.assume_role, RoleArn=f"arn:aws:iam::{MEMBER}:role/opsbot-missing", RoleSessionName="run")
    assert assumed["AssumedRoleUser"]["Arn"].startswith(f"arn:aws:sts::{MEMBER}:assumed-role/opsbot-snapshots/")


@pytest.mark.parametrize(
    ("service", "action", "path", "body", "data", "expected"),
    [
        (
            "ssm",
            "GetParameter",
            "/",
            b'{"Name": "/opsbot/fleet"}',
            {},
            [("ssm:GetParameter", "arn:aws:ssm:us-east-1:111122223333:parameter/opsbot/fleet")],
        ),
        (
            "dynamodb",
            "Query",
            "/",
            b'{"TableName": "t", "IndexName": "by-time"}',
            {},
            [("dynamodb:Query", "arn:aws:dynamodb:us-east-1:111122223333:table/t/index/by-time")],
        ),
        (
            "dynamodb",
            "BatchWriteItem",
            "/",
            b'{"RequestItems": {"a": [], "b": []}}',
            {},
            [
                ("dynamodb:BatchWriteItem", "arn:aws:dynamodb:us-east-1:111122223333:table/a"),
                ("dynamodb:BatchWriteItem", "arn:aws:dynamodb:us-east-1:111122223333:table/b"),
            ],
        ),
        (
            "lambda",
            "PutFunctionConcurrency",
            "/2017-10-31/functions/orders/concurrency",
            b"{}",
            {},
            [("lambda:PutFunctionConcurrency", "arn:aws:lambda:us-east-1:111122223333:function:orders")],
        ),
        (
            "lambda",
            "GetEventSourceMapping",
            "/2015-03-31/event-source-mappings/abc-123",
            b"",
            {},
            [("lambda:GetEventSourceMapping", "arn:aws:lambda:us-east-1:111122223333:event-source-mapping:abc-123")],
        ),
        ("lambda", "ListFunctions", "/2015-03-31/functions/", b"", {}, None),
        (
            "events",
            "DisableRule",
            "/",
            b'{"Name": "opsbot-task-x"}',
            {},
            [("events:DisableRule", "arn:aws:events:us-east-1:111122223333:rule/opsbot-task-x")],
        ),
        (
            "events",
            "PutEvents",
            "/",
            b'{"Entries": [{"Source": "x"}]}',
            {},
            [("events:PutEvents", "arn:aws:events:us-east-1:111122223333:event-bus/default")],
        ),
        (
            "scheduler",
            "GetSchedule",
            "/schedules/Check?groupName=opsbot-breach-checks",
            b"",
            {},
            [("scheduler:GetSchedule", "arn:aws:scheduler:us-east-1:111122223333:schedule/opsbot-breach-checks/Check")],
        ),
        (
            "sns",
            "Publish",
            "/",
            b"",
            {"TopicArn": ["arn:aws:sns:us-east-1:111122223333:t"]},
            [("sns:Publish", "arn:aws:sns:us-east-1:111122223333:t")],
        ),
        (
            "ec2",
            "RevokeSecurityGroupIngress",
            "/",
            b"",
            {"GroupId": ["sg-1"]},
            [("ec2:RevokeSecurityGroupIngress", "arn:aws:ec2:us-east-1:111122223333:security-group/sg-1")],
        ),
        (
            "ec2",
            "DeleteSnapshot",
            "/",
            b"",
            {"SnapshotId": ["snap-1"]},
            [("ec2:DeleteSnapshot", "arn:aws:ec2:us-east-1::snapshot/snap-1")],
        ),
        (
            "ec2",
            "CreateSnapshot",
            "/",
            b"",
            {"VolumeId": ["vol-1"], "TagSpecification.1.ResourceType": ["snapshot"]},
            [
                ("ec2:CreateSnapshot", "arn:aws:ec2:us-east-1:111122223333:volume/vol-1"),
                ("ec2:CreateSnapshot", "arn:aws:ec2:us-east-1::snapshot/*"),
                ("ec2:CreateTags", "arn:aws:ec2:us-east-1::snapshot/*"),
            ],
        ),
        ("ec2", "DescribeSnapshots", "/", b"", {"SnapshotId.1": ["snap-1"]}, None),
        ("servicequotas", "ListServiceQuotas", "/", b"{}", {}, None),
    ],
)
def test_the_arns_requests_are_checked_against(service, action, path, body, data, expected):
    found = request_resources(
        service=service,
        action=action,
        partition="aws",
        region="us-east-1",
        account="111122223333",
        path=path,
        body=body,
        data=data,
    )
    assert found == expected


@pytest.mark.parametrize(
    ("condition", "context", "holds"),
    [
        ({"StringEquals": {"sts:ExternalId": "x"}}, {"sts:ExternalId": "x"}, True),
        ({"StringEquals": {"sts:ExternalId": "x"}}, {}, False),  # a key the request lacks fails it
        ({"StringEqualsIfExists": {"sts:ExternalId": "x"}}, {}, True),
        (
            {"ArnLike": {"aws:PrincipalArn": ["arn:aws:iam::1:role/a/*", "arn:aws:iam::1:role/b/*"]}},
            {"aws:PrincipalArn": "arn:aws:iam::1:role/b/r"},
            True,
        ),
        (
            {"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::1:role/a/*"}},
            {"aws:PrincipalArn": "arn:aws:iam::1:role/a/r"},
            False,
        ),
        ({"Null": {"sts:ExternalId": "false"}}, {}, False),
        ({"Bool": {"aws:MultiFactorAuthPresent": "true"}}, {}, False),
        (
            {"NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}},
            {"aws:MultiFactorAuthAge": "10"},
            False,
        ),  # unknown: fails
    ],
)
def test_trust_conditions_are_never_looser_than_aws(condition, context, holds):
    assert condition_holds(condition, context) is holds
