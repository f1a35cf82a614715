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

Read in two steps, so a quiet account costs one metric a check instead of 3 + one per function
(GetMetricData bills per metric; docs/cost.md). The first step reads ``ClaimedAccountConcurrency``,
which bounds the account pools: claimed >= account usage (claimed is the unreserved usage plus every
reserved and provisioned allocation, and a reserved function runs within its reservation), and
claimed/limit >= unreserved usage/unreserved limit (the unreserved usage fits in what reservations
leave). Where claimed is not published (or cannot be read), ``ConcurrentExecutions`` instead: it is the
account pool, it bounds the unreserved usage, and no function runs more than the whole account, so a
reserved function whose reservation the account's peak stays below ``near`` of cannot be near it.
The second step reads exactly what may matter: the unreserved pool and every function (to name the
busiest) when the bound reaches ``near`` (``warn - hysteresis``, from which a reading can open or keep
an alert) or the account alert is open; otherwise reserved functions (those the account's peak cannot
clear) and functions with an open alert. Which functions are reserved is kept between checks (the
check's memo) and read again when the account's reserved total changes or
``reservations_refresh_minutes`` pass.

Adaptive cadence for reserved functions the account's peak cannot clear: one whose last reading was
below ``relaxed_below_percent`` of its reservation (and below ``near``) is read every
``relaxed_every_minutes`` instead of every check, over the whole gap since that reading (the Maximum of
every datapoint in between), so a peak in between is still seen, at most that much later; while it
waits it is not measured (nothing about it changes; one with an open alert is read every check).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from math import ceil
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from automations.breach_checks.kinds import CHECK_KINDS, CheckKind, MeasureContext, Measurement, MeasureResult
from automations.breach_checks.metric_queries import MetricQuery, fetch_peaks
from automations.core.clock import iso, parse_time
from automations.core.errors import error_code
from automations.core.runs import Unit

CHECK = "lambda-concurrency"
ACCOUNT_KEY = "lambda/concurrency"
FUNCTION_KEY_PREFIX = "lambda/function/"
NAMESPACE = "AWS/Lambda"
# The Lambda account concurrency quota in Service Quotas ("Concurrent executions"). This check measures
# it (and the unreserved pool) itself, so a per-quota override with this code applies here.
LAMBDA_CONCURRENCY_QUOTA = "L-B99A9384"
MAX_WINDOW_MINUTES = 1440


@dataclass(frozen=True)
class LambdaConcurrencySettings:
    enabled: bool = True
    lookback_minutes: int = 10
    statistic: str = "Maximum"
    per_function: bool = True
    top_functions: int = 5
    staged: bool = True  # account-level metrics first; functions only where they may matter
    reservations_refresh_minutes: int = 60
    relaxed_below_percent: float = 50.0  # a reserved function below this share of its reservation...
    relaxed_every_minutes: int = 15  # ...is read this often (over the whole gap)


def function_key(name: str) -> str:
    return f"{FUNCTION_KEY_PREFIX}{name}"


def _pct(usage: float, limit: float) -> float:
    return 100.0 * usage / limit if limit else 0.0


def _list_functions(lam: Any) -> dict[str, Any]:
    return {f["FunctionName"]: f for page in lam.get_paginator("list_functions").paginate() for f in page["Functions"]}


def _read_reservations(lam: Any, functions: Mapping[str, Any], counts: Counter[str]) -> dict[str, tuple[int, str]]:
    """Reserved concurrency of every function (ListFunctions does not return it): name -> (value, ARN)."""
    reserved: dict[str, tuple[int, str]] = {}
    for name, function in functions.items():
        counts["reservations_read"] += 1
        try:
            value = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                continue  # deleted since the listing
            raise
        if value is not None:
            reserved[name] = (int(value), str(function["FunctionArn"]))
    return reserved


def _reservations(
    lam: Any,
    reserved_total: int,
    memo: Mapping[str, Any],
    now: datetime,
    rules: LambdaConcurrencySettings,
    counts: Counter[str],
    functions: Mapping[str, Any] | None,
) -> tuple[dict[str, tuple[int, str]], dict[str, Any]]:
    """Which functions have reserved concurrency: none when GetAccountSettings leaves the whole limit
    unreserved; the memo's functions while it is younger than the refresh interval and their reservations,
    read again now, still add up to the account's reserved total (then no other function holds any: a
    reservation moved to another function, or changed, is never measured against a stale list); else
    read (every function: GetFunctionConcurrency)."""
    if reserved_total <= 0:
        return {}, {"reserved_total": 0}
    kept = memo.get("reservations")
    read_at = memo.get("reservations_read_at")
    if (
        isinstance(kept, Mapping)
        and memo.get("reserved_total") == reserved_total
        and read_at
        and now - parse_time(str(read_at)) < timedelta(minutes=rules.reservations_refresh_minutes)
    ):
        current = _read_reservations(lam, {str(k): {"FunctionArn": v[1]} for k, v in kept.items()}, counts)
        if sum(value for value, _ in current.values()) == reserved_total:
            return current, dict(memo)
    reserved = _read_reservations(lam, functions if functions is not None else _list_functions(lam), counts)
    fresh = {
        "reserved_total": reserved_total,
        "reservations": {k: [v, arn] for k, (v, arn) in sorted(reserved.items())},
        "reservations_read_at": iso(now),
    }
    return reserved, fresh


def _account_measurement(
    pools: list[tuple[str, float, float]],
    unknown: list[str],
    not_read: tuple[str, ...],
    fn_peak: Mapping[str, float | None],
    reserved: Mapping[str, int],
    rules: LambdaConcurrencySettings,
) -> Measurement:
    """One alert per account/region: the pool that binds first, with every pool and the busiest functions.

    ``pools``: (name, peak, limit) of each pool read; ``not_read``: what was not read, with its bound
    (below ``near``, so it cannot bind); ``unknown``: pools CloudWatch could not read."""
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
        )
        + not_read,
        top=tuple(
            f"{n}: {fn_peak[n] or 0:,.0f}" + (f" (reserved {reserved[n]})" if n in reserved else "")
            for n in busiest[: rules.top_functions]
        ),
    )


def _function_measurement(
    name: str, arn: str, peak: float | None, reservation: int, lookback: int, bound_only: bool = False
) -> Measurement:
    """A function against its own reservation; it names the function (ARN) so a kill switch acts on it alone.

    ``bound_only``: ``peak`` is the account's peak, an upper bound (the function itself was not read)."""
    return Measurement(
        check=CHECK,
        key=function_key(name),
        name=f"Lambda function {name} concurrency",
        service="lambda",
        usage=peak,
        limit=float(reservation),
        unit="concurrent executions",
        window=f"over the last {lookback} min, against its reserved concurrency"
        + (" (at most: the account's own peak; not read)" if bound_only else ""),
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
    context: MeasureContext | None = None,
) -> MeasureResult:
    """``open_keys``: this account/region's open alert keys, so an idle function's alert can resolve."""
    context = context or MeasureContext()
    limits = lam.get_account_settings()["AccountLimit"]
    limit = float(limits["ConcurrentExecutions"])
    unreserved_limit = float(limits["UnreservedConcurrentExecutions"])
    stat, lookback = rules.statistic, rules.lookback_minutes
    counts: Counter[str] = Counter()
    # Step 1: claimed concurrency, which bounds every pool; without it (not published here, or an error)
    # the account's usage, which bounds the unreserved pool and what any one function runs.
    claimed_query = MetricQuery("claimed", NAMESPACE, "ClaimedAccountConcurrency", (), stat)
    account_query = MetricQuery("account", NAMESPACE, "ConcurrentExecutions", (), stat)
    peaks = fetch_peaks(cloudwatch, [claimed_query], now, lookback)
    claimed = None if peaks.failed("claimed") else peaks.get("claimed")
    if claimed is None:
        peaks = peaks.merge(fetch_peaks(cloudwatch, [account_query], now, lookback))
    account_read = "account" in peaks.peaks and not peaks.failed("account")
    account_peak = peaks.get("account") or 0.0
    bound = _pct(claimed, limit) if claimed is not None else _pct(account_peak, unreserved_limit)
    near_account = context.near("lambda", LAMBDA_CONCURRENCY_QUOTA)
    full = (
        not rules.staged or (claimed is None and not account_read) or bound >= near_account or ACCOUNT_KEY in open_keys
    )
    functions = _list_functions(lam) if full else None
    reservations, memo = _reservations(
        lam, round(limit - unreserved_limit), context.memo, now, rules, counts, functions
    )
    counts["reserved_functions"] = len(reservations)
    # Step 2: what may matter.
    near_function = context.near("lambda", None)
    far_below = min(rules.relaxed_below_percent, near_function)
    relaxed = {k: str(v) for k, v in dict(context.memo.get("relaxed") or {}).items() if k in reservations}
    windows: dict[str, int] = {}  # function -> how far back its reading reaches (minutes)
    deferred: set[str] = set()
    if full:
        assert functions is not None
        counts["functions"] = len(functions)
        first = [MetricQuery("unreserved", NAMESPACE, "UnreservedConcurrentExecutions", (), stat)]
        if not account_read:
            first.append(account_query)
        for name in functions:
            windows[name] = _reach(relaxed.get(name), now, rules, open_keys, function_key(name), always=True)
    else:
        first = []
        for name, (value, _) in reservations.items():
            if value <= 0:
                continue
            if account_read and function_key(name) not in open_keys and _pct(account_peak, value) < near_function:
                continue  # the account's peak clears it (measured below at that bound)
            reach = _reach(relaxed.get(name), now, rules, open_keys, function_key(name))
            # The account's peak does not clear it: it may be breaching now, whatever its last reading was.
            may_breach = account_read and _pct(account_peak, value) >= near_function
            if reach or may_breach:
                windows[name] = reach or lookback
            else:
                deferred.add(name)  # far below its reservation at its last reading: read later
    by_window: dict[int, list[MetricQuery]] = {lookback: first} if first else {}
    for name, window in sorted(windows.items()):
        query = MetricQuery(f"fn:{name}", NAMESPACE, "ConcurrentExecutions", (("FunctionName", name),), stat)
        by_window.setdefault(window, []).append(query)
    for window, queries in sorted(by_window.items()):
        peaks = peaks.merge(fetch_peaks(cloudwatch, queries, now, window))
    counts["functions_read"] = len(windows)
    if deferred:
        counts["relaxed"] = len(deferred)
    # Lambda publishes concurrency only while something runs: no datapoints is 0. An error is unknown (None).
    fn_peak = {n: None if peaks.failed(f"fn:{n}") else peaks.get(f"fn:{n}") or 0.0 for n in windows}
    if claimed is not None:
        counts["claimed_published"] = 1
    account_peak = peaks.get("account") or 0.0  # read again in step 2 when step 1 could not
    pools = []
    if "account" in peaks.peaks:
        pools.append(("account pool", account_peak, limit))
    if full:
        pools.append(("unreserved pool", peaks.get("unreserved") or 0.0, unreserved_limit))
    if claimed is not None:
        pools.append(("claimed concurrency", claimed, limit))
    not_read: tuple[str, ...] = ()
    if not full:
        skipped = ("unreserved pool",) if "account" in peaks.peaks else ("account and unreserved pools",)
        source = "claimed concurrency" if claimed is not None else "the account's usage"
        not_read = (f"{skipped[0].capitalize()}: not read, at most {bound:.1f}% (bounded by {source})",)
    unknown = [name for name in ("account", "unreserved") if peaks.failed(name)]
    measurements = [
        _account_measurement(
            pools,
            unknown,
            not_read,
            fn_peak if full else {},
            {n: v for n, (v, _) in reservations.items()},
            rules,
        )
    ]
    for name, (value, arn) in sorted(reservations.items()):
        if value <= 0:
            counts["throttled_functions"] += 1  # reserved 0: the function is switched off
            continue
        if name in deferred:
            continue  # not measured now: nothing about it changes (it has no open alert)
        read = name in fn_peak
        peak = fn_peak[name] if read else account_peak  # not read: cleared by the account's peak
        if peak is not None and _pct(peak, value) < far_below and function_key(name) not in open_keys:
            # Known up to now; a reading by the bound keeps an earlier start (its window is shorter).
            relaxed[name] = iso(now) if read or name not in relaxed else relaxed[name]
        elif peak is not None:
            relaxed.pop(name, None)
        if rules.per_function:
            window = windows.get(name, lookback)
            measurements.append(_function_measurement(name, arn, peak, value, window, bound_only=not read))
    memo = {
        **{k: v for k, v in memo.items() if k != "relaxed"},
        **({"relaxed": dict(sorted(relaxed.items()))} if relaxed else {}),
    }
    return MeasureResult(
        measurements,
        counts,
        metric_calls=peaks.calls,
        metrics=peaks.metrics,
        memo=memo if memo != dict(context.memo) else None,
    )


def _reach(
    since: str | None,
    now: datetime,
    rules: LambdaConcurrencySettings,
    open_keys: frozenset[str],
    key: str,
    always: bool = False,
) -> int:
    """How far back (minutes) a function's reading must reach if read now; 0: not now. ``since``: the
    end of its last reading when that was far below its reservation (None: it is read every check)."""
    lookback = rules.lookback_minutes
    if since is None or key in open_keys:
        return lookback
    gap = ceil((now - parse_time(since)).total_seconds() / 60)
    if always or gap >= rules.relaxed_every_minutes - min(lookback / 2, rules.relaxed_every_minutes / 4):
        return min(MAX_WINDOW_MINUTES, max(lookback, gap))
    return 0


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
            "staged": {
                "type": "boolean",
                "description": "Read the account-level metrics first and functions only where they may "
                "matter (default); false reads every function every check.",
            },
            "relaxed_below_percent": {
                "type": "number",
                "minimum": 0,
                "maximum": 100,
                "description": "A reserved function last seen below this share of its reservation (and below "
                "warn - hysteresis) is read only every relaxed_every_minutes, over the whole gap; 0: every check.",
            },
            "relaxed_every_minutes": {"type": "integer", "minimum": 5, "maximum": 60},
            "reservations_refresh_minutes": {
                "type": "integer",
                "minimum": 5,
                "maximum": 1440,
                "description": "Which functions are reserved is read again after this long (and at once "
                "when the account's reserved total changes).",
            },
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
        context: MeasureContext | None = None,
    ) -> MeasureResult:
        return measure_lambda_concurrency(clients["lambda"], clients["cloudwatch"], settings, now, open_keys, context)
