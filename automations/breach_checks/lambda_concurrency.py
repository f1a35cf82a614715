"""Lambda concurrency in one account/region: the account pool, the unreserved pool, each reservation.

Sources (AWS Lambda Developer Guide, "Monitoring concurrency"; API reference, GetAccountSettings):
  - limits: GetAccountSettings -> AccountLimit.ConcurrentExecutions (the account's "Concurrent
    executions" quota, L-B99A9384) and AccountLimit.UnreservedConcurrentExecutions (what is left
    after reservations);
  - usage, AWS/Lambda, 1-minute datapoints, viewed with MAX:
      ConcurrentExecutions (no dimension: the whole account; FunctionName: one function),
      UnreservedConcurrentExecutions (functions without a reservation),
      ClaimedAccountConcurrency (unreserved usage plus all reserved and provisioned allocations;
      published since 2024, so it may be missing in some partitions/regions);
  - a function's reservation: GetFunctionConcurrency (ListFunctions does not return it).

One alert per account/region covers the account pool: its percent is the highest of the account,
unreserved and claimed readings (whichever limit binds first), and every pool is listed in it with
the functions using the most concurrency. A function with reserved concurrency gets its own alert
against its reservation; it names the function (ARN) so a kill switch can act on exactly that one.

Lambda emits these metrics only while something runs, so no datapoints means no concurrency (0).
Every metric is read with GetMetricData in as few calls as the API allows (metric_queries.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from automations.breach_checks.kinds import CHECK_KINDS, CheckKind, Measurement, MeasureResult
from automations.breach_checks.metric_queries import MetricPeaks, MetricQuery, fetch_peaks
from automations.core.errors import error_code
from automations.core.runs import Unit

CHECK = "lambda-concurrency"
ACCOUNT_KEY = "lambda/concurrency"
FUNCTION_KEY_PREFIX = "lambda/function/"
NAMESPACE = "AWS/Lambda"
# The Lambda account concurrency quota in Service Quotas ("Concurrent executions"). This check measures
# it (and the unreserved pool) itself, so a per-quota override with this code applies here.
LAMBDA_CONCURRENCY_QUOTA = "L-B99A9384"


@dataclass(frozen=True)
class LambdaConcurrencySettings:
    enabled: bool = True
    lookback_minutes: int = 10
    statistic: str = "Maximum"
    per_function: bool = True
    top_functions: int = 5


def function_key(name: str) -> str:
    return f"{FUNCTION_KEY_PREFIX}{name}"


def _pct(usage: float, limit: float) -> float:
    return 100.0 * usage / limit if limit else 0.0


def _reservations(
    lam: Any,
    functions: Mapping[str, Any],
    fn_peak: Mapping[str, float | None],
    open_keys: frozenset[str],
    counts: Counter[str],
) -> dict[str, int]:
    """Reserved concurrency only where it can matter: functions that ran, and functions with an open alert."""
    reserved: dict[str, int] = {}
    for name in functions:
        if not fn_peak[name] and function_key(name) not in open_keys:
            continue
        counts["reservations_read"] += 1
        try:
            value = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                continue  # deleted since the listing
            raise
        if value is not None:
            reserved[name] = int(value)
    counts["reserved_functions"] = len(reserved)
    return reserved


def _account_measurement(
    peaks: MetricPeaks,
    limits: Mapping[str, Any],
    fn_peak: Mapping[str, float | None],
    reserved: Mapping[str, int],
    rules: LambdaConcurrencySettings,
    counts: Counter[str],
) -> Measurement:
    """One alert per account/region: the pool that binds first, with every pool and the busiest functions."""
    account_limit = float(limits["ConcurrentExecutions"])
    pools = [
        ("account pool", peaks.get("account") or 0.0, account_limit),
        ("unreserved pool", peaks.get("unreserved") or 0.0, float(limits["UnreservedConcurrentExecutions"])),
    ]
    unknown = [name for name in ("account", "unreserved") if peaks.failed(name)]
    claimed_peak = peaks.get("claimed")
    if claimed_peak is not None:
        counts["claimed_published"] = 1
        pools.append(("claimed concurrency", claimed_peak, account_limit))
    label, usage, limit = max(pools, key=lambda p: _pct(p[1], p[2]))
    busiest = sorted((n for n in fn_peak if fn_peak[n]), key=lambda n: (-(fn_peak[n] or 0.0), n))
    return Measurement(
        check=CHECK,
        key=ACCOUNT_KEY,
        name="Lambda concurrency",
        service="lambda",
        quota_code=LAMBDA_CONCURRENCY_QUOTA,
        # A pool CloudWatch could not read makes the whole reading unknown: it must not lower or resolve.
        usage=None if unknown else usage,
        limit=limit,
        unit="concurrent executions",
        window=f"over the last {rules.lookback_minutes} min, {label}",
        note=f"CloudWatch could not read {', '.join(unknown)}" if unknown else None,
        breakdown=tuple(
            f"{name.capitalize()}: {peak:,.0f} / {lim:,.0f} ({_pct(peak, lim):.1f}%)"
            + (" <- binding" if name == label else "")
            for name, peak, lim in pools
        ),
        top=tuple(
            f"{n}: {fn_peak[n] or 0:,.0f}" + (f" (reserved {reserved[n]})" if n in reserved else "")
            for n in busiest[: rules.top_functions]
        ),
    )


def _function_measurement(
    function: Mapping[str, Any], peak: float | None, reservation: int, lookback: int
) -> Measurement:
    """A function against its own reservation; it names the function (ARN) so a kill switch acts on it alone."""
    name, arn = function["FunctionName"], function["FunctionArn"]
    return Measurement(
        check=CHECK,
        key=function_key(name),
        name=f"Lambda function {name} concurrency",
        service="lambda",
        usage=peak,
        limit=float(reservation),
        unit="concurrent executions",
        window=f"over the last {lookback} min, against its reserved concurrency",
        target={
            "function_name": name,
            "function_arn": arn,
            "account": arn.split(":")[4],
            "region": arn.split(":")[3],
            "reserved_concurrency": reservation,
        },
    )


def measure_lambda_concurrency(
    lam: Any,
    cloudwatch: Any,
    rules: LambdaConcurrencySettings,
    now: datetime,
    open_keys: frozenset[str] = frozenset(),
) -> MeasureResult:
    """``open_keys``: this account/region's open alert keys, so an idle function's alert can resolve."""
    limits = lam.get_account_settings()["AccountLimit"]
    functions = {
        f["FunctionName"]: f for page in lam.get_paginator("list_functions").paginate() for f in page["Functions"]
    }
    stat = rules.statistic
    queries = [
        MetricQuery("account", NAMESPACE, "ConcurrentExecutions", (), stat),
        MetricQuery("unreserved", NAMESPACE, "UnreservedConcurrentExecutions", (), stat),
        MetricQuery("claimed", NAMESPACE, "ClaimedAccountConcurrency", (), stat),
    ]
    queries += [
        MetricQuery(f"fn:{name}", NAMESPACE, "ConcurrentExecutions", (("FunctionName", name),), stat)
        for name in functions
    ]
    peaks = fetch_peaks(cloudwatch, queries, now, rules.lookback_minutes)
    # Lambda publishes concurrency only while something runs: no datapoints is 0. An error is unknown (None).
    fn_peak = {name: None if peaks.failed(f"fn:{name}") else peaks.get(f"fn:{name}") or 0.0 for name in functions}
    counts: Counter[str] = Counter(functions=len(functions))
    reserved = _reservations(lam, functions, fn_peak, open_keys, counts)
    measurements = [_account_measurement(peaks, limits, fn_peak, reserved, rules, counts)]
    if rules.per_function:
        for name, value in sorted(reserved.items()):
            if value <= 0:
                counts["throttled_functions"] += 1  # reserved 0: the function is switched off
                continue
            measurements.append(_function_measurement(functions[name], fn_peak[name], value, rules.lookback_minutes))
    return MeasureResult(measurements, counts, metric_calls=peaks.calls)


@CHECK_KINDS.register
class LambdaConcurrency(CheckKind[LambdaConcurrencySettings]):
    name = CHECK
    section = "lambda_concurrency"
    summary = "Lambda concurrency: the account and unreserved pools, and each function against its reservation."
    runbook = "docs/runbooks/lambda-concurrency-breach.md"
    alert_kind = "lambda-concurrency"
    services = ("lambda", "cloudwatch")
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": {"type": "boolean"},
            "lookback_minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
            "statistic": {"enum": ["Maximum", "Average"]},
            "per_function": {
                "type": "boolean",
                "description": "Each function with reserved concurrency against its reservation.",
            },
            "top_functions": {"type": "integer", "minimum": 0, "maximum": 20},
        },
    }
    # GetAccountSettings, ListFunctions and GetMetricData take no resource ARN; GetFunctionConcurrency does.
    member_actions = frozenset(
        {
            "lambda:GetAccountSettings",
            "lambda:ListFunctions",
            "lambda:GetFunctionConcurrency",
            "cloudwatch:GetMetricData",
        }
    )

    def settings(self, raw: Mapping[str, Any]) -> LambdaConcurrencySettings:
        return LambdaConcurrencySettings(**raw)

    def measure(
        self,
        clients: Mapping[str, Any],
        settings: LambdaConcurrencySettings,
        now: datetime,
        unit: Unit,
        open_keys: frozenset[str],
    ) -> MeasureResult:
        return measure_lambda_concurrency(clients["lambda"], clients["cloudwatch"], settings, now, open_keys)
