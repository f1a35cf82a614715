"""GetMetricData batching: never one call per metric, never over the API's per-call limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3

from automations.breach_checks.metric_queries import (
    MAX_DATAPOINTS_PER_CALL,
    MAX_QUERIES_PER_CALL,
    MetricQuery,
    batches,
    fetch_peaks,
)


def query(i: int) -> MetricQuery:
    return MetricQuery(f"quota-{i}", "AWS/Usage", "ResourceCount", (("Resource", f"r{i}"), ("Service", "Bench")))


def test_1201_metrics_take_three_calls_and_each_gets_its_own_peak(aws):
    cw = boto3.client("cloudwatch", region_name="us-east-1")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    data = [
        {
            "MetricName": "ResourceCount",
            "Dimensions": [{"Name": "Resource", "Value": f"r{i}"}, {"Name": "Service", "Value": "Bench"}],
            "Timestamp": now - timedelta(minutes=m),
            "Value": float(i + m),
        }
        for i in range(0, 1201, 100)
        for m in (3, 7)
    ]
    cw.put_metric_data(Namespace="AWS/Usage", MetricData=data)
    sent = []
    cw.meta.events.register(
        "provide-client-params.cloudwatch.GetMetricData",
        lambda params, **_: sent.append(len(params["MetricDataQueries"])),
    )

    peaks = fetch_peaks(cw, [query(i) for i in range(1201)], end=now, minutes=60)

    assert peaks.calls == 3 and sent == [500, 500, 201]
    assert peaks.get("quota-0") == 7.0 and peaks.get("quota-1200") == 1207.0  # the highest in the window
    assert peaks.get("quota-1") is None  # no datapoints: no peak, not zero
    assert sum(v is not None for v in peaks.peaks.values()) == 13


def test_batches_respect_the_datapoint_limit_too():
    queries = [query(i) for i in range(1000)]
    hourly = [len(b) for b in batches(queries, minutes=60)]
    assert hourly == [500, 500]
    daily = [len(b) for b in batches(queries, minutes=1440)]  # 1,441 one-minute points per query
    assert max(daily) * 1441 <= MAX_DATAPOINTS_PER_CALL and max(daily) == MAX_DATAPOINTS_PER_CALL // 1441
    assert all(len(b) <= MAX_QUERIES_PER_CALL for b in batches(queries, minutes=1))
    assert list(batches([], minutes=60)) == []
