"""Create the hub's own resources (ledger and idempotency tables, alert topic, Slack secret, fleet
parameter) in an AWS endpoint, from the definitions in template.yaml. Used by `opsbot local seed`
and by the tests, so both run against the table layout that is deployed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from opsbot.cfn import PROJECT_ROOT, create_table_args, load_template, resources_of_type, ttl_attribute

LEDGER_TABLE = "opsbot-ledger"
IDEMPOTENCY_TABLE = "opsbot-idempotency"
TOPIC_NAME = "opsbot-alerts"
SLACK_SECRET_NAME = "opsbot/slack-bot-token"
FLEET_PARAMETER = "/opsbot/fleet"
MANIFEST_BUCKET = "opsbot-manifests"  # template.yaml ManifestBucket
TABLES = {"LedgerTable": LEDGER_TABLE, "IdempotencyTable": IDEMPOTENCY_TABLE}


@dataclass(frozen=True)
class HubResources:
    ledger_table: str
    idempotency_table: str
    topic_arn: str
    slack_secret_name: str
    fleet_parameter: str
    manifest_bucket: str = MANIFEST_BUCKET


def create_tables(session: boto3.Session, template_path: Path = PROJECT_ROOT / "template.yaml") -> None:
    template = load_template(template_path)
    tables = resources_of_type(template, "AWS::DynamoDB::Table")
    ddb = session.client("dynamodb")
    existing = set(ddb.list_tables()["TableNames"])
    for logical_id, name in TABLES.items():
        if logical_id not in tables:
            raise KeyError(f"{template_path}: no AWS::DynamoDB::Table named {logical_id}")
        if name in existing:
            continue
        ddb.create_table(**create_table_args(tables[logical_id], name))
        if attr := ttl_attribute(tables[logical_id]):
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attr})


def create_manifest_bucket(session: boto3.Session, name: str = MANIFEST_BUCKET) -> str:
    """The bucket runs put their unit manifests in (and the Distributed Map its results)."""
    s3 = session.client("s3")
    region = session.region_name or "us-east-1"
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    return name


def create_hub(
    session: boto3.Session, *, slack_token: str | None = None, fleet_text: str | None = None
) -> HubResources:
    create_tables(session)
    create_manifest_bucket(session)
    topic_arn = session.client("sns").create_topic(Name=TOPIC_NAME)["TopicArn"]
    if slack_token:
        sm = session.client("secretsmanager")
        try:
            sm.create_secret(Name=SLACK_SECRET_NAME, SecretString=slack_token)
        except sm.exceptions.ResourceExistsException:
            sm.put_secret_value(SecretId=SLACK_SECRET_NAME, SecretString=slack_token)
    if fleet_text is not None:
        session.client("ssm").put_parameter(Name=FLEET_PARAMETER, Value=fleet_text, Type="String", Overwrite=True)
    return HubResources(LEDGER_TABLE, IDEMPOTENCY_TABLE, topic_arn, SLACK_SECRET_NAME, FLEET_PARAMETER)


def hub_environment(hub: HubResources, **extra: Any) -> dict[str, str]:
    """The environment the deployed functions get from template.yaml, pointed at these resources."""
    env = {
        "OPSBOT_LEDGER_TABLE": hub.ledger_table,
        "OPSBOT_IDEMPOTENCY_TABLE": hub.idempotency_table,
        "OPSBOT_ALERT_TOPIC_ARN": hub.topic_arn,
        "OPSBOT_SLACK_SECRET_NAME": hub.slack_secret_name,
        "OPSBOT_FLEET_PARAMETER": hub.fleet_parameter,
        "OPSBOT_MANIFEST_BUCKET": hub.manifest_bucket,
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env
