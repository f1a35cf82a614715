"""A boto3 session as an assumed role in the local AWS (seeding, the StackSet mirror, the benchmarks)."""

from __future__ import annotations

from typing import Any

import boto3


def assumed_session(
    base: boto3.Session, role_arn: str, session_name: str, *, external_id: str | None = None, region: str | None = None
) -> boto3.Session:
    params: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": session_name}
    if external_id is not None:
        params["ExternalId"] = external_id
    creds = base.client("sts").assume_role(**params)["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=region or base.region_name,
    )
