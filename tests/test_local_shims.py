"""The local shim for TransactWriteItems (opsbot/local/aws_shims.py, item 5) behaves as DynamoDB does:
all or nothing for its own items, one cancellation reason per item, and no effect on anything else."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from automations.core.ledger import transact
from opsbot.local.aws_shims import shims


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
