"""Service quotas in one account/region: each quota's value against its usage metric.

Sources (Service Quotas API reference: ListServiceQuotas, ListAWSDefaultServiceQuotas, MetricInfo):
  - ListServiceQuotas lists *applied* values; "if the applied quota value is not available for a
    quota, the quota is not retrieved", so ListAWSDefaultServiceQuotas fills in the AWS default for
    every quota with no applied value. Both are paginated (MaxResults 1-100, NextToken).
  - A quota's ``UsageMetric`` (MetricNamespace, MetricName, MetricDimensions,
    MetricStatisticRecommendation "Sum" or "Maximum") names the CloudWatch metric of its usage, e.g.
    AWS/Usage ResourceCount {Service: EC2, Type: Resource, Resource: vCPU, Class: Standard/OnDemand}
    for L-1216C47A. Quotas without one are counted as unmonitored in the run record, never dropped.
  - Rate quotas carry ``Period`` (e.g. 1 SECOND): a per-minute Sum is scaled to that period.
  - ``GlobalQuota`` quotas are the same in every region: checked once per account (its first region).

All usage metrics of a unit are read with GetMetricData in as few calls as the API allows.

Adaptive cadence (GetMetricData bills per metric; docs/cost.md): a quota whose last reading was below
``relaxed_below_percent`` (and below ``near``, from which a reading can change an alert), or had no
datapoints (nothing in use), is read again only after ``relaxed_every_hours``; every other quota (new,
near, over, with an open alert, or whose last read failed) on every check. When a relaxed quota is
read, the window reaches back to its last reading, so a peak in between is still seen (Maximum over
the whole gap): a breach is found at most ``relaxed_every_hours`` late, never missed. The last reading
of each quota is the check's memo in the ledger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from math import ceil
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from automations.breach_checks.kinds import CHECK_KINDS, CheckKind, MeasureContext, Measurement, MeasureResult
from automations.breach_checks.metric_queries import PERIOD_SECONDS, MetricQuery, fetch_peaks
from automations.core.clock import iso, parse_time
from automations.core.rulebook import LoadedDocument, Problem
from automations.core.runs import Unit

CHECK = "service-quotas"
PAGE_SIZE = 100  # the APIs' maximum MaxResults
_PERIOD_SECONDS = {
    "MICROSECOND": 1e-6,
    "MILLISECOND": 1e-3,
    "SECOND": 1,
    "MINUTE": 60,
    "HOUR": 3600,
    "DAY": 86400,
    "WEEK": 604800,
}


@dataclass(frozen=True)
class ServiceQuotaSettings:
    enabled: bool = True
    services: tuple[str, ...] = ("ec2", "vpc")
    lookback_minutes: int = 60
    statistic: str = "recommended"
    relaxed_below_percent: float = 50.0
    relaxed_every_hours: float = 6.0


def quota_key(service: str, code: str) -> str:
    return f"servicequotas/{service}/{code}"


def _list(client: Any, operation: str, service: str) -> list[dict[str, Any]]:
    pages = client.get_paginator(operation).paginate(ServiceCode=service, PaginationConfig={"PageSize": PAGE_SIZE})
    return [q for page in pages for q in page.get("Quotas", [])]


def quotas_of(client: Any, service: str) -> list[tuple[dict[str, Any], str]]:
    """Every quota of ``service`` with its value: the applied one, else the AWS default."""
    merged = {
        q["QuotaCode"]: (q, "AWS default, none applied")
        for q in _list(client, "list_aws_default_service_quotas", service)
    }
    merged.update({q["QuotaCode"]: (q, "applied") for q in _list(client, "list_service_quotas", service)})
    return [merged[code] for code in sorted(merged)]


def _scale(quota: dict[str, Any], stat: str) -> float:
    """Sum over one datapoint period, expressed per the quota's own period (rate quotas)."""
    period = quota.get("Period") or {}
    if stat != "Sum" or "PeriodValue" not in period:
        return 1.0
    seconds = float(period["PeriodValue"]) * _PERIOD_SECONDS.get(str(period.get("PeriodUnit")), 1)
    return seconds / PERIOD_SECONDS


MAX_WINDOW_MINUTES = 1440


def _due(key: str, since: Any, rules: ServiceQuotaSettings, now: datetime, open_keys: frozenset[str]) -> int:
    """Minutes its window must reach back if this quota is read now; 0: not now (relaxed).
    ``since``: the end of its last reading, when that reading was far below (absent: read every check)."""
    if key in open_keys or not isinstance(since, str):
        return rules.lookback_minutes
    gap = ceil((now - parse_time(since)).total_seconds() / 60)
    if gap >= rules.relaxed_every_hours * 60 - rules.lookback_minutes / 2:
        return min(MAX_WINDOW_MINUTES, max(rules.lookback_minutes, gap))
    return 0


def measure_service_quotas(
    sq: Any,
    cloudwatch: Any,
    rules: ServiceQuotaSettings,
    now: datetime,
    include_global: bool = True,
    open_keys: frozenset[str] = frozenset(),
    context: MeasureContext | None = None,
) -> MeasureResult:
    region = sq.meta.region_name
    context = context or MeasureContext()
    relaxed: dict[str, Any] = dict(context.memo.get("relaxed") or {})
    window = rules.lookback_minutes
    counts: Counter[str] = Counter()
    unmonitored: list[str] = []
    errors: list[str] = []
    skipped: list[str] = []
    watched: list[tuple[dict[str, Any], str, str, MetricQuery]] = []
    far: dict[str, float] = {}  # quota key -> the percent under which it is relaxed
    for service in rules.services:
        try:
            quotas = quotas_of(sq, service)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            if err.get("Code") in ("AccessDeniedException", "AccessDenied"):
                raise  # the role is missing permissions: the whole unit fails, loudly
            errors.append(f"{service}: {err.get('Code')}: {err.get('Message', '')}")
            skipped.append(quota_key(service, ""))  # its open alerts are not "no longer measured": unknown
            continue
        for quota, source in quotas:
            code = quota["QuotaCode"]
            counts["quotas"] += 1
            if quota.get("GlobalQuota") and not include_global:
                counts["global_checked_elsewhere"] += 1
                continue
            if quota.get("Value") is None or quota.get("ErrorReason"):
                counts["value_unavailable"] += 1
                continue
            metric = quota.get("UsageMetric") or {}
            if not (metric.get("MetricNamespace") and metric.get("MetricName")):
                counts["unmonitored"] += 1
                unmonitored.append(f"{service}/{code}")
                continue
            if float(quota["Value"]) <= 0:
                counts["zero_limit"] += 1  # nothing can be used; nothing to compare against
                continue
            stat = (
                rules.statistic
                if rules.statistic != "recommended"
                else metric.get("MetricStatisticRecommendation") or "Maximum"
            )
            dims = tuple(sorted((metric.get("MetricDimensions") or {}).items()))
            key = quota_key(service, code)
            far[key] = min(rules.relaxed_below_percent, context.near(service, code))
            reach = _due(key, relaxed.get(key), rules, now, open_keys)
            if not reach:
                counts["relaxed"] += 1  # far below its threshold at its last reading: read later
                continue
            window = max(window, reach)
            query = MetricQuery(key, metric["MetricNamespace"], metric["MetricName"], dims, stat)
            watched.append((quota, service, source, query))
    peaks = fetch_peaks(cloudwatch, [w[3] for w in watched], now, window)
    counts["monitored"] = len(watched) + counts["relaxed"]
    counts["read"] = len(watched)
    measurements = []
    for quota, service, source, query in watched:
        code = quota["QuotaCode"]
        # None: no datapoints, or an error status: unknown either way (no_data), never a 0 that resolves.
        peak = None if peaks.failed(query.key) else peaks.get(query.key)
        usage = None if peak is None else peak * _scale(quota, query.stat)
        percent = None if usage is None else 100.0 * usage / float(quota["Value"])
        if not peaks.failed(query.key):  # an error is not a reading: a relaxed quota keeps its gap
            # No datapoints: nothing in use (AWS/Usage publishes while something is): far below.
            if (percent or 0.0) < far[query.key] and query.key not in open_keys:
                relaxed[query.key] = iso(now)
            else:
                relaxed.pop(query.key, None)
        measurements.append(
            Measurement(
                check=CHECK,
                key=query.key,
                name=quota["QuotaName"],
                service=service,
                quota_code=code,
                usage=usage,
                limit=float(quota["Value"]),
                unit=str(quota.get("Unit", "None")),
                window=f"over the last {window} min",
                breakdown=(
                    f"Limit {float(quota['Value']):,.0f} ({source}); adjustable: "
                    + ("yes, request an increase" if quota.get("Adjustable") else "no"),
                    f"Usage: {query.namespace} {query.name} "
                    + " ".join(f"{k}={v}" for k, v in query.dimensions)
                    + f" ({query.stat})",
                ),
                link=f"https://{region}.console.aws.amazon.com/servicequotas/home/services/{service}/quotas/{code}",
            )
        )
    # Quotas gone from the listing are forgotten; a service that errored keeps its quotas' gaps.
    kept = {k: v for k, v in relaxed.items() if k in far or (skipped and k.startswith(tuple(skipped)))}
    memo = {"relaxed": dict(sorted(kept.items()))}
    return MeasureResult(
        measurements,
        counts,
        peaks.calls,
        unmonitored,
        errors,
        tuple(skipped),
        metrics=peaks.metrics,
        memo=memo if memo != dict(context.memo) else None,
    )


@CHECK_KINDS.register
class ServiceQuotas(CheckKind[ServiceQuotaSettings]):
    name = CHECK
    section = "service_quotas"
    summary = "Every quota of the listed services against its usage metric (applied value, else the AWS default)."
    runbook = "docs/runbooks/quota-breach.md"
    alert_kind = "service-quota"
    services = ("service-quotas", "cloudwatch")
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": {"type": "boolean"},
            "services": {"type": "array", "uniqueItems": True, "items": {"$ref": "#/$defs/service_code"}},
            "lookback_minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
            "statistic": {
                "enum": ["recommended", "Maximum", "Average", "Sum"],
                "description": "'recommended': each quota's UsageMetric.MetricStatisticRecommendation "
                "(Maximum when it names none).",
            },
            "relaxed_below_percent": {
                "type": "number",
                "minimum": 0,
                "maximum": 100,
                "description": "A quota last read below this percent (and below warn - hysteresis) is read "
                "only every relaxed_every_hours, over the whole gap; 0 reads every quota every check.",
            },
            "relaxed_every_hours": {"type": "number", "minimum": 1, "maximum": 24},
        },
    }
    # None of these take a resource ARN (Service Authorization Reference).
    member_actions = frozenset(
        {"servicequotas:ListServiceQuotas", "servicequotas:ListAWSDefaultServiceQuotas", "cloudwatch:GetMetricData"}
    )

    def settings(self, raw: Mapping[str, Any]) -> ServiceQuotaSettings:
        return ServiceQuotaSettings(**{**raw, "services": tuple(raw.get("services", ServiceQuotaSettings.services))})

    def check(self, doc: LoadedDocument) -> list[Problem]:
        services = (doc.data.get(self.section) or {}).get("services", [])
        if "lambda" in services and (doc.data.get("lambda_concurrency") or {}).get("enabled", True):
            return [
                doc.problem(
                    (self.section, "services", services.index("lambda")),
                    "'lambda' is measured by lambda_concurrency (account, unreserved pool, functions); "
                    "remove it here or it alerts twice",
                )
            ]
        return []

    def measure(
        self,
        clients: Mapping[str, Any],
        settings: ServiceQuotaSettings,
        now: datetime,
        unit: Unit,
        open_keys: frozenset[str],
        context: MeasureContext | None = None,
    ) -> MeasureResult:
        # Global quotas are the same in every region: checked once per account, in its first region.
        return measure_service_quotas(
            clients["service-quotas"], clients["cloudwatch"], settings, now, unit.primary, open_keys, context
        )
