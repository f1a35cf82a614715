"""Peaks of many CloudWatch metrics with as few GetMetricData calls as the API allows.

GetMetricData takes at most 500 MetricDataQueries per call and returns at most 100,800 datapoints
per call (more come back page by page with NextToken); see the CloudWatch API reference,
GetMetricData, "MetricDataQueries" and "MaxDatapoints". Queries are packed into as few calls as
fit both limits: 250 usage metrics over an hour of 1-minute datapoints is one call, not 250.

A query whose metric has no datapoints in the window has no peak (``None``): the caller decides
whether that means zero (Lambda emits concurrency metrics only while something runs) or unknown.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

MAX_QUERIES_PER_CALL = 500
MAX_DATAPOINTS_PER_CALL = 100_800
PERIOD_SECONDS = 60


@dataclass(frozen=True)
class MetricQuery:
    """One metric and statistic. ``key`` is the caller's name for it (any string)."""

    key: str
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...] = ()
    stat: str = "Maximum"


@dataclass
class MetricPeaks:
    peaks: dict[str, float | None] = field(default_factory=dict)
    calls: int = 0  # GetMetricData requests made (pages included)
    metrics: int = 0  # metrics requested over those calls: what CloudWatch bills ($0.01 per 1,000)
    partial: list[str] = field(default_factory=list)  # keys CloudWatch answered with an error status

    def failed(self, key: str) -> bool:
        """CloudWatch answered this query with an error (InternalError, Forbidden): an unknown, not a 0."""
        return key in self.partial

    def get(self, key: str) -> float | None:
        return self.peaks.get(key)

    def merge(self, other: MetricPeaks) -> MetricPeaks:
        """Both readings together (a later read of the same key wins)."""
        partial = [k for k in self.partial if k not in other.peaks] + other.partial
        return MetricPeaks(
            {**self.peaks, **other.peaks}, self.calls + other.calls, self.metrics + other.metrics, partial
        )


def batches(queries: Sequence[MetricQuery], minutes: int, period: int = PERIOD_SECONDS) -> Iterator[list[MetricQuery]]:
    """Split into calls that respect both the query and the datapoint limit."""
    points_per_query = max(1, (minutes * 60) // period + 1)
    size = max(1, min(MAX_QUERIES_PER_CALL, MAX_DATAPOINTS_PER_CALL // points_per_query))
    for start in range(0, len(queries), size):
        yield list(queries[start : start + size])


def _request(query: MetricQuery, query_id: str, period: int) -> dict[str, Any]:
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {
                "Namespace": query.namespace,
                "MetricName": query.name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in query.dimensions],
            },
            "Period": period,
            "Stat": query.stat,
        },
        "ReturnData": True,
    }


def fetch_peaks(
    cloudwatch: Any,
    queries: Sequence[MetricQuery],
    end: datetime,
    minutes: int,
    period: int = PERIOD_SECONDS,
) -> MetricPeaks:
    """The highest value of each query's statistic over ``minutes`` before ``end``."""
    result = MetricPeaks({q.key: None for q in queries})
    if not queries:
        return result
    # Whole minutes: CloudWatch aggregates per period from StartTime, and aligned times are cheaper.
    end = end.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes)
    for batch in batches(queries, minutes, period):
        # Ids must match ^[a-z][a-zA-Z0-9_]*$ and be unique within a call: index them.
        by_id = {f"q{i}": q for i, q in enumerate(batch)}
        kwargs: dict[str, Any] = {
            "MetricDataQueries": [_request(q, qid, period) for qid, q in by_id.items()],
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampDescending",
        }
        while True:
            resp = cloudwatch.get_metric_data(**kwargs)
            result.calls += 1
            result.metrics += len(batch)
            for r in resp.get("MetricDataResults", []):
                query = by_id.get(r["Id"])
                if query is None:
                    continue
                values = [float(v) for v in r.get("Values", [])]
                if values:
                    best = max(values)
                    current = result.peaks[query.key]
                    result.peaks[query.key] = best if current is None else max(current, best)
                if r.get("StatusCode") in ("InternalError", "Forbidden"):
                    result.partial.append(query.key)
            token = resp.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    return result
