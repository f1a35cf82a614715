"""Shared fixtures: moto (`mock_aws`) for every AWS call, the hub tables created from template.yaml,
and a two-member fleet in two regions. No hand-written AWS fakes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

# Before any boto3 client exists: never reach a real account from the tests.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SECURITY_TOKEN="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    POWERTOOLS_TRACE_DISABLED="true",
    POWERTOOLS_METRICS_NAMESPACE="OpsbotTest",
    POWERTOOLS_SERVICE_NAME="opsbot",
    POWERTOOLS_LOG_LEVEL="WARNING",
    POWERTOOLS_METRICS_DISABLED="true",  # handlers run in-process; their INFO lines would bury pytest's output
    OPSBOT_USE_AWS="1",  # never pick up a developer's `opsbot local up` state in tests
    # Two public AMIs instead of moto's thousands per region: describe_images answers in ms, not seconds.
    MOTO_AMIS_PATH=str(Path(__file__).parent.parent / "opsbot" / "local" / "amis.json"),
)
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)

from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

from automations import catalog  # noqa: F401  (registers every kind, as the handlers and the CLI do)
from automations.core.fleet import Fleet, MemberAccount, SessionBroker
from automations.core.ledger import Ledger
from automations.core.tasks import TaskDefinition, load_tasks
from opsbot.local.hub import LEDGER_TABLE, create_tables


def _flush_and_forget(self: AmazonCloudWatchEMFProvider, raise_on_empty_metrics: bool = False) -> None:
    """TEST-ONLY: with POWERTOOLS_METRICS_DISABLED, Powertools keeps every metric it does not flush and,
    at 100 values, prints them anyway (its auto-flush ignores the setting): thousands of in-process
    invocations (`make fuzz`) would bury the output. Forget them at each flush instead."""
    _powertools_flush(self, raise_on_empty_metrics)
    self.clear_metrics()


_powertools_flush = AmazonCloudWatchEMFProvider.flush_metrics
AmazonCloudWatchEMFProvider.flush_metrics = _flush_and_forget  # type: ignore[method-assign]

# Breach-flag fixtures (shimmed, inbox, book), registered here so pytest rewrites their asserts.
pytest_plugins = ["tests.breach_support", "tests.sg_events", "tests.slack_support"]
FIXTURES = Path(__file__).parent / "fixtures"
ROOT_RULES = Path(__file__).parent.parent / "rules"
ACCOUNT_A, ACCOUNT_B = "210987654321", "345678901234"
REGIONS = ("us-east-1", "eu-west-1")
EXTERNAL_ID = "opsbot-test"


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def hub_session(aws: None) -> boto3.Session:
    session = boto3.Session(region_name="us-east-1")
    create_tables(session)
    return session


@pytest.fixture
def ledger(hub_session: boto3.Session) -> Ledger:
    return Ledger(hub_session.resource("dynamodb").Table(LEDGER_TABLE))


@pytest.fixture
def fleet() -> Fleet:
    return Fleet(
        accounts=(
            MemberAccount(ACCOUNT_A, "payments-prod", REGIONS),
            MemberAccount(ACCOUNT_B, "analytics-prod", REGIONS),
        ),
        external_id=EXTERNAL_ID,
    )


@pytest.fixture
def broker(hub_session: boto3.Session, fleet: Fleet) -> SessionBroker:
    # Tests look into member accounts as one capability; the code under test picks its own
    # (``for_capability``), and tests/test_fleet.py checks which role each path assumes.
    return SessionBroker(hub_session, fleet, capability="snapshots")


def make_tasks(yaml_text: str) -> dict[str, TaskDefinition]:
    return load_tasks("tasks.yaml", yaml_text)


@dataclass
class MemberRegion:
    """Direct EC2 access to one member account/region, for arranging and asserting."""

    ec2: Any
    zone: str
    image_id: str

    def instance(self, tags: dict[str, str], data_volumes: int = 0) -> tuple[str, list[str]]:
        inst = self.ec2.run_instances(
            ImageId=self.image_id,
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": self.zone},
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["Instances"][0]
        volumes = [m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]]
        for i in range(data_volumes):
            vid = self.volume({})
            self.ec2.attach_volume(VolumeId=vid, InstanceId=inst["InstanceId"], Device=f"/dev/sd{'fghij'[i]}")
            volumes.append(vid)
        return inst["InstanceId"], volumes

    def volume(self, tags: dict[str, str]) -> str:
        kwargs: dict[str, Any] = {"AvailabilityZone": self.zone, "Size": 10}
        if tags:
            kwargs["TagSpecifications"] = [
                {"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            ]
        return str(self.ec2.create_volume(**kwargs)["VolumeId"])

    def snapshots(self, task: str | None = None) -> list[dict[str, Any]]:
        """This account's snapshots; only those opsbot made for ``task`` when given."""
        filters = [{"Name": "tag:opsbot:task", "Values": [task]}] if task else []
        return list(self.ec2.describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"])


@pytest.fixture
def member(broker: SessionBroker) -> Any:
    def get(account: str = ACCOUNT_A, region: str = "us-east-1") -> MemberRegion:
        ec2 = broker.client(account, region, "ec2")
        image = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
        return MemberRegion(ec2, zone, image)

    return get


@dataclass
class FakeLambdaContext:
    """The Lambda runtime's context object (not an AWS API): the attributes Powertools reads."""

    function_name: str = "opsbot-unit"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:opsbot-unit"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"
    remaining_ms: int = 600_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
