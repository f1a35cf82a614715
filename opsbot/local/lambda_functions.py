"""Lambda functions for the local fleet (moto keeps them; it does not run them without Docker)."""

from __future__ import annotations

import io
import json
import zipfile

import boto3

LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def _code() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return {'ok': True}\n")
    return buf.getvalue()


def create_functions(member: boto3.Session, region: str, role_name: str, functions: dict[str, int | None]) -> None:
    """One execution role, then each function with its reserved concurrency (None: unreserved)."""
    role = member.client("iam").create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST))
    lam = member.client("lambda", region_name=region)
    for name, reserved in functions.items():
        lam.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role["Role"]["Arn"],
            Handler="app.handler",
            Code={"ZipFile": _code()},
        )
        if reserved is not None:
            lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=reserved)
