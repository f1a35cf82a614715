"""LOCAL ONLY - a small shim for what moto lacks, answering with the real APIs' shapes.

Used by the local AWS (``python -m opsbot.local.aws_shims``, which `opsbot local up`, the demo and the
benchmark start instead of ``moto.server``) and by tests in-process (``with shims(): ...`` inside
``mock_aws``). Nothing in automations/ or handlers/ imports it: the deployed code talks to real AWS.

What moto (5.2) lacks, and what this adds to it:
  1. lambda:GetAccountSettings (GET /2016-08-19/account-settings/) - not implemented at all.
     Answered from moto's own Lambda state: FunctionCount and TotalCodeSize from the functions,
     AccountLimit.ConcurrentExecutions from the account's Lambda quota L-B99A9384 (below; 1,000 by
     default, as on AWS), AccountLimit.UnreservedConcurrentExecutions = that minus every reservation
     made with PutFunctionConcurrency. Shape: Lambda API reference, GetAccountSettings, and the AWS CLI
     reference example `aws lambda get-account-settings`.
  2. servicequotas:ListServiceQuotas - not implemented; servicequotas:ListAWSDefaultServiceQuotas -
     only 'vpc', without pagination; servicequotas:RequestServiceQuotaIncrease - not implemented.
     Answered from ``service_quotas.json`` (real entries, sources named in its ``_source``) plus
     moto's own VPC defaults, paginated (MaxResults 1-100, NextToken) as the API is. An increase
     request is approved at once (Status APPROVED) and becomes the quota's applied value in that
     account and region. Shapes: Service Quotas API reference (ServiceQuota, MetricInfo,
     RequestedServiceQuotaChange). ``OPSBOT_LOCAL_QUOTA_CATALOG`` names another catalog file (the
     benchmark's 1,000 quotas).
  3. IAM enforcement (`opsbot local seed` switches it on; tests use enable_iam_authentication):
     a. moto names an action after the request's SigV4 signing name, and CloudWatch signs as
        "monitoring", so moto checks "monitoring:GetMetricData" where AWS checks
        "cloudwatch:GetMetricData". The shim maps the prefix back, so the member role's real grant works.
     b. moto verifies the signature of a body-less GET over its parsed request data instead of the
        empty payload that was signed, so every Lambda read (ListFunctions, GetFunctionConcurrency,
        GetAccountSettings) fails SignatureDoesNotMatch. The shim verifies it over the empty payload.

  4. ec2:CopySnapshot of a snapshot another account shared with the caller (createVolumePermission):
     moto looks for the source only in the caller's own account, so a DR account cannot copy what a
     member shared with it. The shim looks in the account that shared it, as EC2 does (Amazon EBS
     User Guide, "Share an Amazon EBS snapshot" and "Copy an Amazon EBS snapshot"); a snapshot that
     was not shared with the caller still fails InvalidSnapshot.NotFound.
  5. dynamodb:TransactWriteItems: moto deep-copies every table a transaction touches before it starts
     and, when any condition fails, puts the whole copy back. That costs O(table) per transaction (the
     ledger holds every action of every run), rolls back what other requests wrote meanwhile, and
     races them ("dictionary changed size during iteration"). DynamoDB isolates a transaction to its
     own items. The shim checks every condition first, answers TransactionCanceledException with one
     CancellationReason per item (``{"Code": "None"}`` for those that passed), and only then writes,
     under a lock shared by transactions, keeping a copy of just the items it writes in case a write
     fails validation (DynamoDB API reference, TransactWriteItems).

  6. IAM: what a request acts on, and trust policies (opsbot/local/iam_resources.py has the details).
     a. moto evaluates identity policies against the resource "*" except for SQS queues, IAM roles and
        sts:AssumeRole, so a policy naming a table, topic, secret, parameter, rule, function, security
        group or snapshot never matches. The shim checks each request against the ARN(s) it touches,
        for dynamodb (tables, indexes; BatchWriteItem per table, TransactWriteItems per item under the
        item's own action, as DynamoDB authorizes them), sns, lambda, events, ssm, secretsmanager,
        ec2 (CreateSnapshot: the volume and the new snapshot, plus ec2:CreateTags when tags come with
        it; CopySnapshot: source and copy; Revoke*/Authorize*: the group; DeleteSnapshot, CreateTags),
        states, scheduler, cloudwatch alarms, kms keys, organizations (the root, OU or account a request
        names) and account:ListRegions (the member account). Calls that take no resource stay "*".
     b. moto checks a role's trust policy only when the role is in the caller's own account, and there
        only the Principal and StringEquals on sts:ExternalId. The shim checks every sts:AssumeRole
        against the trust policy of the role in its own account: Principal (an account or root ARN
        admits that account's principals, a service principal no caller), and conditions with the
        String*/Arn*/Bool/Null operators on sts:ExternalId, aws:PrincipalArn (a role session's is the
        role's ARN, path included) and aws:PrincipalAccount. A condition key the request does not
        carry, or an operator the shim does not know, fails the statement: never looser than AWS.
     c. Not evaluated (moto, and so locally): conditions of identity policies. opsbot/local/iam_roles.py
        drops an Allow's Condition (moto ignores it) and a conditional Deny whole (moto would apply it
        to every request); tests check those conditions from the template text.

  7. account:ListRegions, account:EnableRegion, account:DisableRegion - not implemented. Each account's
     Regions are the partition's (botocore's endpoint data); the 17 enabled in every account are
     ENABLED_BY_DEFAULT, the opt-in ones DISABLED until EnableRegion makes them ENABLED (at once: AWS passes
     through ENABLING, and DISABLING). ListRegions pages (MaxResults 1-50, NextToken) and filters on
     RegionOptStatusContains. With AccountId, as on AWS: only the management account of the organisation
     that account is a member of may ask (AccessDeniedException otherwise; delegated administrators are not
     modelled), and never for its own id (ValidationException). Shapes: Account Management API reference,
     ListRegions, EnableRegion, DisableRegion.
  8. organizations:CreateAccount and CreateOrganizationalUnit pick random ids in moto; the local seed
     names the ids it wants with the tag ``opsbot-local:id`` (which is not kept), so the demo's accounts
     and OUs have the same ids on every seed (README, runbooks and the demo's rules name them). An id
     already taken is refused (DuplicateAccountException / DuplicateOrganizationalUnitException).
  9. Speed, not an API (server only): moto routes each request by listing its own package directory
     twice (``backends.list_of_moto_modules``, ~2 ms of a ~4.5 ms request); the list is read once.

CloudWatch metrics that AWS publishes itself (AWS/Lambda, AWS/Usage) are put locally with
PutMetricData (opsbot/local/seed.py); moto accepts those namespaces, AWS would not.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

CATALOG_FILE = Path(__file__).with_name("service_quotas.json")
CATALOG_ENV = "OPSBOT_LOCAL_QUOTA_CATALOG"
LAMBDA_SERVICE = "lambda"
LAMBDA_CONCURRENCY_QUOTA = "L-B99A9384"
LAMBDA_DEFAULT_CONCURRENCY = 1000
ACCOUNT_SETTINGS_PATH = r"{0}/(?P<api_version>[^/]+)/account-settings/?$"
# Lambda's fixed code-storage limits, as GetAccountSettings reports them (AWS CLI reference example).
CODE_SIZE_UNZIPPED = 262_144_000
CODE_SIZE_ZIPPED = 52_428_800
TOTAL_CODE_SIZE = 80_530_636_800
MAX_RESULTS = 100


@cache
def _catalog(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))["services"]
    return data


def catalog() -> dict[str, Any]:
    return _catalog(os.environ.get(CATALOG_ENV) or str(CATALOG_FILE))


def _service_quotas(service: str) -> tuple[str, list[dict[str, Any]]] | None:
    """(ServiceName, default quotas) for a service code, or None if the local AWS does not know it."""
    known = catalog().get(service)
    if known is not None:
        return known["ServiceName"], known["Quotas"]
    if service == "vpc":
        from moto.servicequotas.resources.default_quotas.vpc import VPC_DEFAULT_QUOTAS

        quotas: list[dict[str, Any]] = [
            {k: v for k, v in q.items() if k not in ("ServiceCode", "ServiceName", "QuotaArn")}
            for q in VPC_DEFAULT_QUOTAS
        ]
        return str(VPC_DEFAULT_QUOTAS[0]["ServiceName"]), quotas
    return None


def _applied(backend: Any) -> dict[tuple[str, str], float]:
    """Applied values of one account/region, kept on moto's backend (so moto's reset clears them)."""
    store: dict[tuple[str, str], float] | None = getattr(backend, "opsbot_applied", None)
    if store is None:
        store = {}
        backend.opsbot_applied = store
    return store


def applied_value(account: str, region: str, service: str, code: str) -> float | None:
    from moto.servicequotas.models import servicequotas_backends

    return _applied(servicequotas_backends[account][region]).get((service, code))


def _page(items: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    size = max(1, min(int(params.get("MaxResults") or MAX_RESULTS), MAX_RESULTS))
    start = int(base64.b64decode(params["NextToken"]).decode()) if params.get("NextToken") else 0
    out: dict[str, Any] = {"Quotas": items[start : start + size]}
    if start + size < len(items):
        out["NextToken"] = base64.b64encode(str(start + size).encode()).decode()
    return out


def _quota(entry: dict[str, Any], service: str, service_name: str, arn: str, value: float) -> dict[str, Any]:
    q = {k: v for k, v in entry.items() if not k.startswith("_")}
    return {"ServiceCode": service, "ServiceName": service_name, "QuotaArn": arn, **q, "Value": value}


# ---- servicequotas ------------------------------------------------------------------------------
def _request_for_service(self: Any) -> tuple[dict[str, Any], str, str, list[dict[str, Any]]]:
    """The request's parameters, its ServiceCode, and that service's name and quotas (or NoSuchResource)."""
    params = json.loads(self.body or "{}")
    service = str(params.get("ServiceCode"))
    known = _service_quotas(service)
    if known is None:
        from moto.servicequotas.exceptions import NoSuchResource

        raise NoSuchResource()
    name, quotas = known
    return params, service, name, quotas


def _list_aws_default_service_quotas(self: Any) -> str:
    params, service, name, quotas = _request_for_service(self)
    items = [
        # Default values have no account in their ARN (AWS CLI reference example).
        _quota(q, service, name, f"arn:aws:servicequotas:{self.region}::{service}/{q['QuotaCode']}", float(q["Value"]))
        for q in quotas
    ]
    return json.dumps(_page(items, params))


def _list_service_quotas(self: Any) -> str:
    params, service, name, quotas = _request_for_service(self)
    applied = _applied(self.backend)
    items = [
        _quota(
            q,
            service,
            name,
            f"arn:aws:servicequotas:{self.region}:{self.current_account}:{service}/{q['QuotaCode']}",
            applied.get((service, q["QuotaCode"]), float(q["Value"])),
        )
        for q in quotas
        if q.get("_applied_value_available", True) or (service, q["QuotaCode"]) in applied
        if not params.get("QuotaCode") or params["QuotaCode"] == q["QuotaCode"]
    ]
    return json.dumps(_page(items, params))


def _request_service_quota_increase(self: Any) -> str:
    params = json.loads(self.body or "{}")
    service, code = str(params.get("ServiceCode")), str(params.get("QuotaCode"))
    known = _service_quotas(service)
    entry = next((q for q in (known or ("", []))[1] if q["QuotaCode"] == code), None)
    if known is None or entry is None:
        from moto.servicequotas.exceptions import NoSuchResource

        raise NoSuchResource()
    desired = float(params["DesiredValue"])
    _applied(self.backend)[(service, code)] = desired  # locally, approved at once
    now = time.time()
    return json.dumps(
        {
            "RequestedQuota": {
                "Id": os.urandom(16).hex(),
                "ServiceCode": service,
                "ServiceName": known[0],
                "QuotaCode": code,
                "QuotaName": entry["QuotaName"],
                "DesiredValue": desired,
                "Status": "APPROVED",
                "Created": now,
                "LastUpdated": now,
                "Requester": f"arn:aws:iam::{self.current_account}:root",
                "QuotaArn": f"arn:aws:servicequotas:{self.region}:{self.current_account}:{service}/{code}",
                "GlobalQuota": bool(entry.get("GlobalQuota")),
                "Unit": entry.get("Unit", "None"),
                "QuotaRequestedAtLevel": "ACCOUNT",
            }
        }
    )


# ---- lambda -------------------------------------------------------------------------------------
def account_settings(account: str, region: str) -> dict[str, Any]:
    from moto.awslambda.models import lambda_backends

    functions = list(lambda_backends[account][region].list_functions())
    limit = applied_value(account, region, LAMBDA_SERVICE, LAMBDA_CONCURRENCY_QUOTA) or LAMBDA_DEFAULT_CONCURRENCY
    reserved = sum(int(f.reserved_concurrency) for f in functions if f.reserved_concurrency)
    return {
        "AccountLimit": {
            "TotalCodeSize": TOTAL_CODE_SIZE,
            "CodeSizeUnzipped": CODE_SIZE_UNZIPPED,
            "CodeSizeZipped": CODE_SIZE_ZIPPED,
            "ConcurrentExecutions": int(limit),
            "UnreservedConcurrentExecutions": int(limit) - reserved,
        },
        "AccountUsage": {
            "TotalCodeSize": sum(int(f.code_size or 0) for f in functions),
            "FunctionCount": len(functions),
        },
    }


def _get_account_settings(self: Any) -> tuple[int, dict[str, str], str]:
    return 200, {}, json.dumps(account_settings(self.current_account, self.region))


# ---- IAM action names ----------------------------------------------------------------------------
_SIGNING_NAME_TO_IAM_PREFIX = {"monitoring": "cloudwatch"}


def _patched_iam_init(original: Any) -> Any:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        prefix, _, action = self._action.partition(":")
        if prefix in _SIGNING_NAME_TO_IAM_PREFIX:
            self._action = f"{_SIGNING_NAME_TO_IAM_PREFIX[prefix]}:{action}"
        # A body-less GET (lambda:ListFunctions, GetAccountSettings, GetFunctionConcurrency) was signed
        # over an empty payload, but moto re-signs it over its parsed request data (the headers, when
        # there is no query string), so every such call fails SignatureDoesNotMatch under enforcement.
        if self._method in ("GET", "HEAD", "DELETE") and not self._body:
            self._data = b""

    init.opsbot_original = original  # type: ignore[attr-defined]
    return init


# ---- EC2: copy a snapshot another account shared ------------------------------------------------
def _patched_copy_snapshot(original: Any) -> Any:
    def copy_snapshot(
        self: Any, source_snapshot_id: str, source_region: str, description: str, kms_key_id: str | None
    ) -> Any:
        from moto.ec2.exceptions import InvalidSnapshotIdError
        from moto.ec2.models import ec2_backends
        from moto.ec2.models.elastic_block_store import Snapshot
        from moto.ec2.utils import random_snapshot_id

        try:
            return original(self, source_snapshot_id, source_region, description, kms_key_id)
        except InvalidSnapshotIdError:
            for owner in list(ec2_backends):
                regions = ec2_backends[owner]
                # keys(): only backends that exist (``in`` would count any known region, and [] would create one).
                if owner == self.account_id or source_region not in regions.keys():  # noqa: SIM118
                    continue
                source = regions[source_region].snapshots.get(source_snapshot_id)
                if source is not None and (
                    self.account_id in source.create_volume_permission_userids
                    or "all" in source.create_volume_permission_groups
                ):
                    copy = Snapshot(
                        self,
                        random_snapshot_id(),
                        volume=source.volume,
                        description=description,
                        encrypted=source.encrypted,
                        kms_key_id=kms_key_id,
                    )
                    self.snapshots[copy.id] = copy
                    return copy
            raise

    copy_snapshot.opsbot_original = original  # type: ignore[attr-defined]
    return copy_snapshot


# ---- DynamoDB: TransactWriteItems isolated to its items -------------------------------------------
_TRANSACTIONS = threading.Lock()


def _transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    with _TRANSACTIONS:
        steps: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        reasons: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
        seen: set[tuple[str, str]] = set()
        for entry in transact_items:
            if len(entry) > 1:
                raise TransactWriteSingleOpException
            op_type, op = next(iter(entry.items()))
            table = self.get_table(op["TableName"])
            if op_type == "Put":
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            marker = (op["TableName"], json.dumps(key, sort_keys=True))
            if marker in seen:
                raise MultipleTransactionsException()
            seen.add(marker)
            current = self.get_item(op["TableName"], key)
            condition = op.get("ConditionExpression")
            if condition is not None and not get_filter_expression(
                condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            ).expr(current):
                old = (
                    current.to_json()["Attributes"]
                    if current and op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
                    else None
                )
                reasons.append(("ConditionalCheckFailed", "The conditional request failed", old))
            else:
                reasons.append((None, None, None))
            steps.append((op_type, op, key))
        if any(code for code, _, _ in reasons):
            raise TransactionCanceledException(reasons)
        kept = []  # the items about to be written, as they were: put back if a write fails validation
        for _, op, key in steps:
            current = self.get_item(op["TableName"], key)
            kept.append((op["TableName"], key, current.to_json()["Attributes"] if current else None))
        try:
            for op_type, op, key in steps:
                names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                if op_type == "Put":
                    self.put_item(op["TableName"], op["Item"])
                elif op_type == "Delete":
                    self.delete_item(op["TableName"], key)
                elif op_type == "Update":
                    self.update_item(op["TableName"], key, op["UpdateExpression"], names, values)
        except Exception:
            for table_name, key, attrs in kept:
                if attrs is None:
                    self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, attrs)
            raise


# ---- IAM: the resource ARNs a request acts on, and trust policies across accounts ------------------
def _caller_principal_arn(request: Any) -> str:
    """The caller as aws:PrincipalArn names it: an IAM user's ARN, or for role sessions the role's ARN
    (with its path), not the assumed-role session ARN."""
    from moto.iam.access_control import AssumedRoleAccessKey
    from moto.sts.models import sts_backends

    key = request._access_key
    if isinstance(key, AssumedRoleAccessKey):
        for assumed in sts_backends[key.account_id][key.partition].assumed_roles:
            if assumed.access_key_id == key._access_key_id:
                return str(assumed.role_arn)
    return str(key.arn)


def _concrete(arn: str) -> str:
    """Placeholders iam_resources.py leaves for what only the local AWS knows: a secret's ARN (with its
    random suffix) from its name, a KMS key's ARN from an alias or id."""
    if arn.startswith("secret-name:"):
        from moto.secretsmanager.models import secretsmanager_backends

        _, region, account, name = arn.split(":", 3)
        try:
            return str(secretsmanager_backends[account][region].describe_secret(name).arn)
        except Exception:  # no such secret: the call fails on its own after the check
            return f"arn:aws:secretsmanager:{region}:{account}:secret:{name}"
    if arn.startswith("kms-key:"):
        from moto.kms.models import kms_backends

        _, region, account, key = arn.split(":", 3)
        try:
            key_id = kms_backends[account][region].get_key_id_from_alias(key) if key.startswith("alias/") else key
            return f"arn:aws:kms:{region}:{account}:key/{key_id or key}"
        except Exception:
            return f"arn:aws:kms:{region}:{account}:key/{key}"
    return arn


def _check_action_permitted(original: Any) -> Any:
    def check(self: Any, resource: str) -> None:
        from moto.core.exceptions import AccessDeniedError
        from moto.utilities.utils import get_partition

        from opsbot.local.iam_resources import request_resources, trust_allows

        if self._action == "sts:GetCallerIdentity":  # always allowed, as on AWS
            return
        service, _, action = self._action.partition(":")
        partition = get_partition(self._region)
        pairs = request_resources(
            service=service,
            action=action,
            partition=partition,
            region=self._region,
            account=self.account_id,
            path=self._path,
            body=self._body,
            data=self._data,
        ) or [(self._action, resource)]
        for needed, arn in pairs:
            self._action = needed
            arn = _concrete(arn)
            try:
                original(self, arn)  # moto's identity-policy evaluation, on the real ARN
            except AccessDeniedError:
                _deny(self, needed, arn)
        if self._action == "sts:AssumeRole" and not _check_trust(self, resource, partition, trust_allows):
            _deny(self, self._action, resource)

    check.opsbot_original = original  # type: ignore[attr-defined]
    return check


# Services whose errors are JSON (awsJson / restJson): AWS answers them AccessDeniedException, and
# moto's XML AccessDenied would reach botocore as an unparsed "403".
_JSON_ERROR_SERVICES = frozenset(
    {"dynamodb", "lambda", "events", "ssm", "secretsmanager", "states", "kms", "scheduler", "servicequotas"}
)


def _deny(request: Any, action: str, resource: str) -> None:
    """AccessDenied as AWS words it (naming the resource), in the protocol of the service."""
    from moto.core.exceptions import AccessDeniedError, JsonRESTError

    caller = request._access_key.arn
    if action.partition(":")[0] in _JSON_ERROR_SERVICES:
        error = JsonRESTError(
            "AccessDeniedException", f"User: {caller} is not authorized to perform: {action} on resource: {resource}"
        )
        error.code = 403
        raise error
    raise AccessDeniedError(caller, f"{action} on resource: {resource}")


def _check_trust(request: Any, role_arn: str, partition: str, trust_allows: Any) -> bool:
    """sts:AssumeRole: the role's trust policy, in the role's own account (moto checks it only for a
    role in the caller's account, and only Principal and StringEquals on sts:ExternalId there)."""
    from moto.iam.exceptions import NotFoundException
    from moto.iam.models import iam_backends

    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    try:
        role = iam_backends[account][partition].get_role_by_arn(role_arn)
    except (NotFoundException, KeyError):
        return False
    external = request._data.get("ExternalId") if isinstance(request._data, dict) else None
    context = {
        "aws:PrincipalArn": _caller_principal_arn(request),
        "aws:PrincipalAccount": request.account_id,
    }
    if external:
        context["sts:ExternalId"] = external[0] if isinstance(external, list) else str(external)
    document = json.loads(role.assume_role_policy_document)
    return bool(trust_allows(document, context["aws:PrincipalArn"], request.account_id, context))


def _no_same_account_trust_check(self: Any, resource_arn: str) -> bool:
    """moto's own trust check (same account only) is replaced by _check_trust, for every account."""
    return False


# ---- account: Regions and their opt-in status ------------------------------------------------------
LIST_REGIONS_PATH = "{0}/listRegions$"
ENABLE_REGION_PATH = "{0}/enableRegion$"
DISABLE_REGION_PATH = "{0}/disableRegion$"
# Enabled in every account (AWS General Reference, "Regions enabled by default"); the rest are opt-in.
DEFAULT_ENABLED_REGIONS = frozenset(
    {
        "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1",
        "eu-central-1", "eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1",
        "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
    }
)  # fmt: skip


@cache
def _partition_regions(partition: str) -> tuple[str, ...]:
    import boto3

    return tuple(boto3.session.Session().get_available_regions("ec2", partition_name=partition))


def _region_status(backend: Any, partition: str) -> dict[str, str]:
    """One account's Regions and their opt-in status (kept on moto's account backend: reset with it)."""
    if not hasattr(backend, "opsbot_regions"):
        backend.opsbot_regions = {
            r: "ENABLED_BY_DEFAULT" if r in DEFAULT_ENABLED_REGIONS else "DISABLED"
            for r in _partition_regions(partition)
        }
    status: dict[str, str] = backend.opsbot_regions
    return status


def _regions_backend(self: Any, params: dict[str, Any]) -> Any:
    """The backend of the account a request names, after the checks AWS makes on AccountId."""
    from moto.account.models import account_backends
    from moto.core.exceptions import JsonRESTError
    from moto.organizations.models import organizations_backends

    caller, target = self.current_account, params.get("AccountId")
    if target:
        own_org = organizations_backends[caller][self.partition].org
        if target == caller and own_org is not None:
            raise JsonRESTError(
                "ValidationException", "The management account can't specify its own AccountId.", code=400
            )
        management = organizations_backends.master_accounts.get(target, (None, None))[0]
        if management != caller:
            error = JsonRESTError(
                "AccessDeniedException",
                f"User: {caller} is not authorized to use AccountId {target}: only the management account "
                "of its organization may (delegated administrators are not modelled locally)",
            )
            error.code = 403
            raise error
    return account_backends[target or caller][self.partition]


def _list_regions(self: Any) -> str:
    params = json.loads(self.body or "{}")
    status = _region_status(_regions_backend(self, params), self.partition)
    wanted = set(params.get("RegionOptStatusContains") or ())
    items = [{"RegionName": r, "RegionOptStatus": s} for r, s in sorted(status.items()) if not wanted or s in wanted]
    limit = max(1, min(50, int(params.get("MaxResults") or 50)))
    start = int(params.get("NextToken") or 0)
    page: dict[str, Any] = {"Regions": items[start : start + limit]}
    if start + limit < len(items):
        page["NextToken"] = str(start + limit)
    return json.dumps(page)


def _set_region(self: Any, enable: bool) -> str:
    from moto.core.exceptions import JsonRESTError

    params = json.loads(self.body or "{}")
    status = _region_status(_regions_backend(self, params), self.partition)
    region = params.get("RegionName")
    if region not in status:
        raise JsonRESTError("ValidationException", f"{region!r} is not a Region of this partition", code=400)
    if status[region] == "ENABLED_BY_DEFAULT":
        raise JsonRESTError("ValidationException", f"{region} is enabled by default and cannot change", code=400)
    status[region] = "ENABLED" if enable else "DISABLED"
    return "{}"


def _enable_region(self: Any) -> str:
    return _set_region(self, True)


def _disable_region(self: Any) -> str:
    return _set_region(self, False)


# ---- organizations: ids the local seed chooses -----------------------------------------------------
LOCAL_ID_TAG = "opsbot-local:id"
_ID_LOCK = threading.Lock()


def _with_chosen_id(original: Any, maker: str, taken: Any, duplicate: str) -> Any:
    """Call moto's create with its random id maker answering the id named by LOCAL_ID_TAG, if any."""
    import re

    from moto.core.exceptions import JsonRESTError
    from moto.organizations import utils

    pattern = {"make_random_account_id": utils.ACCOUNT_ID_REGEX, "make_random_ou_id": utils.OU_ID_REGEX}[maker]

    def create(self: Any, **kwargs: Any) -> Any:
        tags = kwargs.get("Tags") or []
        chosen = next((t["Value"] for t in tags if t.get("Key") == LOCAL_ID_TAG), None)
        if chosen is None:
            return original(self, **kwargs)
        if not re.fullmatch(pattern, chosen):
            raise JsonRESTError("InvalidInputException", f"{LOCAL_ID_TAG} {chosen!r} is not a valid id", code=400)
        if taken(self, chosen):
            raise JsonRESTError(duplicate, f"{chosen} already exists", code=400)
        kwargs["Tags"] = [t for t in tags if t.get("Key") != LOCAL_ID_TAG]
        with _ID_LOCK:
            random_id = getattr(utils, maker)
            setattr(utils, maker, lambda *_: chosen)
            try:
                return original(self, **kwargs)
            finally:
                setattr(utils, maker, random_id)

    create.opsbot_original = original  # type: ignore[attr-defined]
    return create


def _account_taken(backend: Any, account_id: str) -> bool:
    return any(a.id == account_id for a in backend.accounts)


def _ou_taken(backend: Any, ou_id: str) -> bool:
    return any(ou.id == ou_id for ou in backend.ou)


# ---- install ----------------------------------------------------------------------------------
_ORIGINAL_DEFAULTS: Any = None  # moto's own ListAWSDefaultServiceQuotas, put back by uninstall()


def install() -> None:
    """Add the shim to moto (idempotent). Before the server's first request, or inside mock_aws."""
    from moto.awslambda import urls as lambda_urls
    from moto.awslambda.responses import LambdaResponse
    from moto.dynamodb.models import DynamoDBBackend
    from moto.ec2.models.elastic_block_store import EBSBackend
    from moto.iam.access_control import IAMRequestBase
    from moto.servicequotas.responses import ServiceQuotasResponse

    global _ORIGINAL_DEFAULTS
    current = vars(ServiceQuotasResponse)["list_aws_default_service_quotas"]
    if current is not _list_aws_default_service_quotas:
        _ORIGINAL_DEFAULTS = current
    lambda_urls.url_paths.setdefault(ACCOUNT_SETTINGS_PATH, LambdaResponse.dispatch)
    LambdaResponse.get_account_settings = _get_account_settings  # type: ignore[attr-defined]
    ServiceQuotasResponse.list_service_quotas = _list_service_quotas  # type: ignore[attr-defined]
    ServiceQuotasResponse.list_aws_default_service_quotas = _list_aws_default_service_quotas  # type: ignore[method-assign]
    ServiceQuotasResponse.request_service_quota_increase = _request_service_quota_increase  # type: ignore[attr-defined]
    if not hasattr(IAMRequestBase.__init__, "opsbot_original"):
        IAMRequestBase.__init__ = _patched_iam_init(IAMRequestBase.__init__)  # type: ignore[method-assign]
    if not hasattr(IAMRequestBase.check_action_permitted, "opsbot_original"):
        IAMRequestBase.check_action_permitted = _check_action_permitted(IAMRequestBase.check_action_permitted)  # type: ignore[method-assign]
        _no_same_account_trust_check.opsbot_original = vars(IAMRequestBase)["_is_assuming_role_operation"]  # type: ignore[attr-defined]
        IAMRequestBase._is_assuming_role_operation = _no_same_account_trust_check  # type: ignore[method-assign]
    if not hasattr(EBSBackend.copy_snapshot, "opsbot_original"):
        EBSBackend.copy_snapshot = _patched_copy_snapshot(EBSBackend.copy_snapshot)  # type: ignore[method-assign]
    if vars(DynamoDBBackend)["transact_write_items"] is not _transact_write_items:
        _transact_write_items.opsbot_original = vars(DynamoDBBackend)["transact_write_items"]  # type: ignore[attr-defined]
        DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
    from moto.account import urls as account_urls
    from moto.account.responses import AccountResponse
    from moto.organizations.models import OrganizationsBackend

    for path in (LIST_REGIONS_PATH, ENABLE_REGION_PATH, DISABLE_REGION_PATH):
        account_urls.url_paths.setdefault(path, AccountResponse.dispatch)
    AccountResponse.list_regions = _list_regions  # type: ignore[attr-defined]
    AccountResponse.enable_region = _enable_region  # type: ignore[attr-defined]
    AccountResponse.disable_region = _disable_region  # type: ignore[attr-defined]
    if not hasattr(OrganizationsBackend.create_account, "opsbot_original"):
        OrganizationsBackend.create_account = _with_chosen_id(  # type: ignore[method-assign]
            OrganizationsBackend.create_account, "make_random_account_id", _account_taken, "DuplicateAccountException"
        )
    if not hasattr(OrganizationsBackend.create_organizational_unit, "opsbot_original"):
        OrganizationsBackend.create_organizational_unit = _with_chosen_id(  # type: ignore[method-assign]
            OrganizationsBackend.create_organizational_unit,
            "make_random_ou_id",
            _ou_taken,
            "DuplicateOrganizationalUnitException",
        )


def uninstall() -> None:
    from moto.awslambda import urls as lambda_urls
    from moto.awslambda.responses import LambdaResponse
    from moto.dynamodb.models import DynamoDBBackend
    from moto.ec2.models.elastic_block_store import EBSBackend
    from moto.iam.access_control import IAMRequestBase
    from moto.servicequotas.responses import ServiceQuotasResponse

    lambda_urls.url_paths.pop(ACCOUNT_SETTINGS_PATH, None)
    for cls, name in (
        (LambdaResponse, "get_account_settings"),
        (ServiceQuotasResponse, "list_service_quotas"),
        (ServiceQuotasResponse, "request_service_quota_increase"),
    ):
        if name in vars(cls):
            delattr(cls, name)
    if _ORIGINAL_DEFAULTS is not None:
        ServiceQuotasResponse.list_aws_default_service_quotas = _ORIGINAL_DEFAULTS  # type: ignore[method-assign]
    original = getattr(IAMRequestBase.__init__, "opsbot_original", None)
    if original is not None:
        IAMRequestBase.__init__ = original  # type: ignore[method-assign]
    check = getattr(IAMRequestBase.check_action_permitted, "opsbot_original", None)
    if check is not None:
        IAMRequestBase.check_action_permitted = check  # type: ignore[method-assign]
        IAMRequestBase._is_assuming_role_operation = _no_same_account_trust_check.opsbot_original  # type: ignore[attr-defined,method-assign]
    copy = getattr(EBSBackend.copy_snapshot, "opsbot_original", None)
    if copy is not None:
        EBSBackend.copy_snapshot = copy  # type: ignore[method-assign]
    transact = getattr(_transact_write_items, "opsbot_original", None)
    if transact is not None:
        DynamoDBBackend.transact_write_items = transact  # type: ignore[method-assign]
    from moto.account import urls as account_urls
    from moto.account.responses import AccountResponse
    from moto.organizations.models import OrganizationsBackend

    for path in (LIST_REGIONS_PATH, ENABLE_REGION_PATH, DISABLE_REGION_PATH):
        account_urls.url_paths.pop(path, None)
    for name in ("list_regions", "enable_region", "disable_region"):
        if name in vars(AccountResponse):
            delattr(AccountResponse, name)
    for name in ("create_account", "create_organizational_unit"):
        original = getattr(getattr(OrganizationsBackend, name), "opsbot_original", None)
        if original is not None:
            setattr(OrganizationsBackend, name, original)


@contextlib.contextmanager
def shims() -> Iterator[None]:
    """For tests: the shim inside ``mock_aws`` for the length of the block."""
    install()
    try:
        yield
    finally:
        uninstall()


def _cache_module_list() -> None:
    """9. Speed, not an API: moto's server lists its own package directory (a listdir and ~180 stats) twice
    per request to route it (``backends.list_of_moto_modules``), about 2.4 ms of a 4.4 ms request. The
    list never changes while the server runs, so it is read once."""
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules


def main(argv: list[str] | None = None) -> None:
    """``python -m opsbot.local.aws_shims -H 127.0.0.1 -p 4566``: moto's server, with the shim."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    install()
    _cache_module_list()
    from moto.server import main as moto_server

    moto_server(["-H", args.host, "-p", str(args.port)])


if __name__ == "__main__":
    main()
