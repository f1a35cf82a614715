"""Cost model: what opsbot itself costs a month, from the calls each scheduled job really makes.

It starts the local AWS (moto server with opsbot/local/aws_shims.py), seeds the sample fleet of
`opsbot local seed` (a hub and 3 member accounts in 5 account-regions: instances, volumes, snapshots,
security groups, an account at 85% of its Lambda concurrency, a quota at 96%) plus the functions the
assumptions below name, and then, in a process of its own, runs every scheduled job the way AWS runs
it: the Plan, Unit and Close *handlers* named in template.yaml (found from each state machine's
DefinitionSubstitutions), with the inputs the ASL builds: Plan puts the run's units in S3, the
Distributed Map's ItemReader reads them back, its ItemSelector (and ItemBatcher, for the checks) makes
each child execution's input, one Unit invocation per child; its ResultWriter's files go to S3 and their
place to Close. And the sweeper. Every botocore client of that process is instrumented with event hooks
(``before-parameter-build``, ``request-created``, ``after-call``) that count, per invocation and per
(account, region) unit:

  - API calls by service and operation, and an assumed latency per call (-> Lambda GB-s);
  - GetMetricData metrics (MetricStat queries: what CloudWatch bills, to the member account);
  - DynamoDB write and read request units from the item sizes on the wire (DynamoDB's size rules;
    an UpdateItem is sized by reading the item back with an uncounted client; transactions x2);
  - SNS publishes; log bytes and EMF metrics from what the handlers print (Powertools Logger/Metrics);
  - S3 requests: the handlers' (Plan's PUT of the manifest, Close's GETs) and the Map's own (ItemReader,
    ResultWriter), made here as Step Functions makes them.

Step Functions are costed from the ASL of the state machine in template.yaml: the Standard parent by
its state transitions (a Distributed Map state is one, whatever the fleet's size), each child execution
of the Map as its own type: Standard by the transitions of its ItemProcessor, Express by a request and
its duration (the unit invocation of its batch).
Quiet and "hot" (near or over a threshold) units are costed apart and mixed by the assumed alert rate.
The result is multiplied by the schedules and by us-east-1 list prices (free tiers ignored).

    python bench/cost_model.py [--json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import math
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ---- list prices, us-east-1 (checked 2026-11; free tiers ignored) -----------------------------------
PRICES = {
    "lambda_request": 0.20 / 1e6,  # per request
    "lambda_gb_s_arm": 0.0000133334,  # per GB-second, arm64 (template Globals: arm64)
    "sfn_standard_transition": 0.025 / 1000,
    "sfn_express_request": 1.00 / 1e6,
    "sfn_express_gb_s": 0.00001667,  # per GB-second, billed in 64 MB and 100 ms steps
    "s3_put": 0.005 / 1000,  # PUT, COPY, POST, LIST requests (S3 Standard)
    "s3_get": 0.0004 / 1000,  # GET and all other requests
    "ddb_wru": 0.625 / 1e6,  # on-demand write request unit
    "ddb_rru": 0.125 / 1e6,  # on-demand read request unit
    "ddb_storage_gb_month": 0.25,
    "gmd_metric": 0.01 / 1000,  # GetMetricData, per metric requested
    "logs_ingest_gb": 0.50,
    "logs_storage_gb_month": 0.03,
    "custom_metric_month": 0.30,  # EMF metric (name + dimension set), first 10,000
    "sns_publish": 0.50 / 1e6,
    "eventbridge_cross_account_event": 1.00 / 1e6,  # events a member rule forwards to the hub bus
    "scheduler_invocation": 1.00 / 1e6,
    "xray_trace": 5.00 / 1e6,
    "alarm_month": 0.10,
    "secret_month": 0.40,
    "kms_key_month": 1.00,
}

# ---- assumptions -------------------------------------------------------------------------------------
SCALES = {"10 accounts x 8 regions": 80, "1,000 accounts x 17 regions": 17_000}
FUNCTIONS_PER_ACCOUNT_REGION = 20  # Lambda functions in each member account-region
RESERVED_PER_ACCOUNT_REGION = 2  # of them with reserved concurrency
HOT_SHARE = {  # share of account-regions near or over a threshold at any time (a unit that reads more)
    "lambda-concurrency": 0.02,
    "service-quotas": 0.05,
}
ALARM_CHANGES_PER_ACCOUNT_REGION = 1_000  # CloudWatch alarm state changes a month (all alarms)
POLICY_ALARM_SHARE = 0.02  # of them, alarms a kill-switch policy names
SG_EVENTS_PER_ACCOUNT_REGION = 30  # security-group CloudTrail events a month (event-driven path)
MEMORY_GB = 256 / 1024  # template Globals MemorySize
INVOKE_OVERHEAD_MS = 20.0  # handler entry/exit per invocation
COLD_START_SHARE = 0.05  # of invocations; init of ~1.2 s is billed (Lambda bills INIT since 2025-08)
COLD_START_MS = 1200.0
PLATFORM_LOG_BYTES = 300  # START/END/REPORT lines per invocation
LOG_RETENTION_MONTHS = 1.0  # Lambda log groups: assumed 30 days retention
LEDGER_MONTHS = 3.0  # ledger TTL (template LedgerTtlDays 90)
MONTH_HOURS = 730.0
# Assumed in-region latency per API call (ms), p50: what makes a unit's Lambda duration.
LATENCY_MS = {
    "dynamodb": 8,
    "sts": 120,
    "monitoring": 150,  # CloudWatch GetMetricData
    "lambda": 60,
    "servicequotas": 180,
    "ec2": 140,
    "sns": 40,
    "ssm": 25,
    "secretsmanager": 30,
    "kms": 30,
    "events": 60,
    "s3": 30,  # the run's manifest (Plan puts it, Close reads it back) and the Map's results (Close)
}
DEFAULT_LATENCY_MS = 60


def runs_per_month(expression: str) -> float:
    """Executions a month of an EventBridge rate/cron expression (the cron forms opsbot uses)."""
    expr = expression.strip()
    if expr.startswith("rate("):
        n, unit = expr[5:-1].split()
        minutes = float(n) * {"minute": 1, "minutes": 1, "hour": 60, "hours": 60, "day": 1440, "days": 1440}[unit]
        return MONTH_HOURS * 60 / minutes
    fields = expr[5:-1].split()
    minute, hour, dom, _month, dow = fields[:5]
    per_day = (1 if minute.isdigit() else 60 / _step(minute)) * (1 if hour.isdigit() else 24 / _step(hour))
    if dow not in ("?", "*"):
        return per_day * 52.14 / 12 * len(dow.split(","))
    if dom not in ("?", "*"):
        return per_day * len(dom.split(","))
    return per_day * MONTH_HOURS / 24


def _step(field_: str) -> float:
    return float(field_.split("/")[1]) if "/" in field_ else 1.0


# ---- DynamoDB item sizes (Developer Guide, "Item sizes and formats") ---------------------------------
def _value_size(value: dict[str, Any]) -> int:
    ((kind, v),) = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        digits = v.lstrip("-").replace(".", "").lstrip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(base64.b64decode(v))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in v)
    if kind == "NS":
        return sum(_value_size({"N": n}) for n in v)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in v)
    if kind == "L":
        return 3 + sum(1 + _value_size(x) for x in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(x) for k, x in v.items())
    return 0


def item_size(item: dict[str, Any]) -> int:
    return sum(len(k.encode()) + _value_size(v) for k, v in item.items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def read_units(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / 4096))
    return float(units) if consistent else units / 2


# ---- counting ----------------------------------------------------------------------------------------
@dataclass
class Usage:
    calls: Counter[str] = field(default_factory=Counter)
    latency_ms: float = 0.0
    gmd_metrics: int = 0
    member_calls: int = 0
    wru: float = 0.0
    rru: float = 0.0
    sns: int = 0
    s3_put: int = 0
    s3_get: int = 0
    stored: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (table, pk, sk) -> byte-months

    def add(self, other: Usage) -> None:
        self.calls.update(other.calls)
        self.latency_ms += other.latency_ms
        self.gmd_metrics += other.gmd_metrics
        self.member_calls += other.member_calls
        self.wru += other.wru
        self.rru += other.rru
        self.sns += other.sns
        self.s3_put += other.s3_put
        self.s3_get += other.s3_get
        self.stored.update(other.stored)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "latency_ms": self.latency_ms,
            "gmd_metrics": self.gmd_metrics,
            "wru": self.wru,
            "rru": self.rru,
            "sns": self.sns,
            "s3_put": self.s3_put,
            "s3_get": self.s3_get,
            "stored_byte_months": sum(self.stored.values()),
        }


class Meter:
    """botocore event hooks on every client this process makes; usage goes to the current unit (a
    thread-local label set around each unit's work) or else to the current invocation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.invocation = Usage()
        self.units: dict[str, Usage] = {}
        self.raw: Any = None  # an uncounted DynamoDB client, to size items after an update

    def current(self) -> Usage:
        label = getattr(self.local, "unit", None)
        if label is None:
            return self.invocation
        return self.units.setdefault(label, Usage())

    @contextlib.contextmanager
    def unit(self, label: str) -> Iterator[None]:
        previous = getattr(self.local, "unit", None)
        self.local.unit = label
        try:
            yield
        finally:
            self.local.unit = previous

    def start_invocation(self) -> None:
        self.invocation, self.units = Usage(), {}

    def install(self) -> None:
        import botocore.session

        meter = self
        original = botocore.session.Session.create_client

        def create_client(self_: Any, *args: Any, **kwargs: Any) -> Any:
            client = original(self_, *args, **kwargs)
            if not getattr(meter, "_raw_making", False):
                meter.hook(client)
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign,assignment]

    def hook(self, client: Any) -> None:
        service = client.meta.service_model.endpoint_prefix
        events = client.meta.events
        creds = client._request_signer._credentials  # assumed-role keys: a member call
        member = bool(creds and getattr(creds, "token", None))

        def before(params: dict[str, Any], model: Any, **_: Any) -> None:
            with self.lock:
                usage = self.current()
                usage.calls[f"{service}:{model.name}"] += 1
                usage.latency_ms += LATENCY_MS.get(service, DEFAULT_LATENCY_MS)
                usage.member_calls += int(member)
                if model.name == "GetMetricData":
                    usage.gmd_metrics += sum(1 for q in params.get("MetricDataQueries", []) if "MetricStat" in q)
                if service == "sns" and model.name in ("Publish", "PublishBatch"):
                    usage.sns += len(params.get("PublishBatchRequestEntries", [])) or 1
                if service == "s3":
                    write = model.name.startswith(("Put", "Copy", "Post", "List", "Create", "Complete", "Upload"))
                    usage.s3_put += int(write)
                    usage.s3_get += int(not write)

        events.register("before-parameter-build", before)
        if service == "dynamodb":
            events.register("request-created.dynamodb", self._ddb_request)
            events.register("after-call.dynamodb", self._ddb_response)

    # DynamoDB: request units from the wire format.
    def _ddb_request(self, request: Any, operation_name: str, **_: Any) -> None:
        body = json.loads(request.body or b"{}")
        self.local.ddb = (operation_name, body)
        wru = 0.0
        table = body.get("TableName", "")
        stored: dict[tuple[str, str, str], float] = {}
        if operation_name == "PutItem":
            size = item_size(body["Item"])
            wru = write_units(size)
            stored[(table, *_key(body["Item"]))] = size * _months_kept(body["Item"])
        elif operation_name == "DeleteItem":
            wru = 1
        elif operation_name == "BatchWriteItem":
            for tname, requests in body.get("RequestItems", {}).items():
                for r in requests:
                    if "PutRequest" in r:
                        size = item_size(r["PutRequest"]["Item"])
                        wru += write_units(size)
                        stored[(tname, *_key(r["PutRequest"]["Item"]))] = size * _months_kept(r["PutRequest"]["Item"])
                    else:
                        wru += 1
        elif operation_name == "TransactWriteItems":
            for op in body.get("TransactItems", []):
                if "Put" in op:
                    size = item_size(op["Put"]["Item"])
                    wru += 2 * write_units(size)
                    item = op["Put"]["Item"]
                    stored[(op["Put"].get("TableName", ""), *_key(item))] = size * _months_kept(item)
                elif "Update" in op:
                    wru += 2 * write_units(self._size_after(op["Update"]["TableName"], op["Update"]["Key"]))
                else:
                    wru += 2
        with self.lock:
            usage = self.current()
            usage.wru += wru
            usage.stored.update(stored)

    def _ddb_response(self, http_response: Any, model: Any, **_: Any) -> None:
        empty: dict[str, Any] = {}
        operation, body = getattr(self.local, "ddb", (str(model.name), empty))
        try:
            parsed = json.loads(http_response.content or b"{}")
        except ValueError:
            parsed = {}
        rru, wru = 0.0, 0.0
        consistent = bool(body.get("ConsistentRead"))
        if operation == "GetItem":
            rru = read_units(item_size(parsed.get("Item", {})), consistent)
        elif operation == "Query":
            size = sum(item_size(i) for i in parsed.get("Items", []))
            rru = read_units(size, consistent and "IndexName" not in body)
        elif operation == "BatchGetItem":
            for items in parsed.get("Responses", {}).values():
                rru += sum(read_units(item_size(i), False) for i in items)
        elif operation == "TransactGetItems":
            rru = sum(2 * read_units(item_size(r.get("Item", {})), True) for r in parsed.get("Responses", []))
        elif operation == "UpdateItem":
            wru = write_units(self._size_after(body["TableName"], body["Key"]))
        with self.lock:
            usage = self.current()
            usage.rru += rru
            usage.wru += wru

    def _size_after(self, table: str, key: dict[str, Any]) -> int:
        if self.raw is None:
            import boto3

            self._raw_making = True
            self.raw = boto3.client("dynamodb", region_name="us-east-1")
            self._raw_making = False
        item = self.raw.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item") or {}
        return item_size(item) or 1


def _months_kept(item: dict[str, Any]) -> float:
    """How long DynamoDB keeps an item: its TTL (``expires_at``), at most the ledger's; else the ledger's."""
    expires = item.get("expires_at", {}).get("N")
    if expires is None:
        return LEDGER_MONTHS
    days = (float(expires) - time.time()) / 86400
    return max(0.0, min(LEDGER_MONTHS, days / 30.4))


def _key(item: dict[str, Any]) -> tuple[str, str]:
    return (json.dumps(item.get("pk")), json.dumps(item.get("sk", item.get("id"))))


class LogTap(io.TextIOBase):
    """Stands in for stdout: counts the bytes the handlers log and the EMF metrics they emit."""

    def __init__(self) -> None:
        self.bytes = 0
        self.emf: set[str] = set()

    def write(self, s: str) -> int:
        self.bytes += len(s.encode())
        for line in s.splitlines():
            if '"_aws"' in line:
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    doc = json.loads(line)
                    for directive in doc["_aws"]["CloudWatchMetrics"]:
                        for dims in directive["Dimensions"] or [[]]:
                            for metric in directive["Metrics"]:
                                values = ",".join(f"{d}={doc.get(d)}" for d in sorted(dims))
                                self.emf.add(f"{directive['Namespace']}/{metric['Name']}[{values}]")
        return len(s)


# ---- the measured process ----------------------------------------------------------------------------
@dataclass
class LambdaContextStandIn:
    """The Lambda runtime's context object (not an AWS API): the attributes Powertools reads."""

    function_name: str = "opsbot-cost-model"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:opsbot-cost-model"
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def _handler(template: dict[str, Any], ref: Any) -> Any:
    """The Python function behind a template function reference (!GetAtt X.Arn or X)."""
    import importlib

    logical = ref["Fn::GetAtt"][0] if isinstance(ref, dict) else ref
    module, name = template["Resources"][logical]["Properties"]["Handler"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _machine(template: dict[str, Any], logical: str) -> dict[str, Any]:
    from opsbot.cfn import load_template

    props = template["Resources"][logical]["Properties"]
    subs = props["DefinitionSubstitutions"]
    asl = load_template(ROOT / props["DefinitionUri"])
    map_name, run_units = next((k, s) for k, s in asl["States"].items() if s["Type"] == "Map")
    plan_name = next(k for k, s in asl["States"].items() if s.get("Next") == map_name and "ResultSelector" in s)
    config = (run_units.get("ItemProcessor") or {}).get("ProcessorConfig", {})
    return {
        "type": props.get("Type", "STANDARD"),
        # A Distributed Map's children are executions of their own type, billed apart; an inline Map's
        # iterations are states of the parent.
        "child_type": config.get("ExecutionType", "STANDARD") if config.get("Mode") == "DISTRIBUTED" else None,
        "asl": asl,
        "plan_state": asl["States"][plan_name],
        "map_state": run_units,
        "close_state": asl["States"][run_units["Next"]],
        "plan": _handler(template, subs["PlanFunctionArn"]),
        "unit": _handler(template, subs["UnitFunctionArn"]),
        "close": _handler(template, subs["CloseFunctionArn"]),
        "memory": {
            k: template["Resources"][subs[f"{k.title()}FunctionArn"]["Fn::GetAtt"][0]]["Properties"].get(
                "MemorySize", 256
            )
            for k in ("plan", "unit", "close")
        },
    }


# ---- the ASL's data flow, as far as the machines use it (JSONPath, no intrinsics) ---------------------
def _path(document: Any, path: str, context: Any = None) -> Any:
    """``$.a.b`` in ``document``, ``$$.a.b`` in ``context`` (the Map's ``$$.Map.Item.Value``)."""
    value = context if path.startswith("$$") else document
    for part in path.lstrip("$").split("."):
        if part:
            value = value[part]
    return value


def _parameters(template: Any, document: Any, context: Any = None) -> Any:
    """A Parameters / ItemSelector / ResultSelector block applied to ``document``. Intrinsic functions
    (``States.…``, whose substitutions are deployment parameters) are left out."""
    if not isinstance(template, dict):
        return template
    out: dict[str, Any] = {}
    for key, value in template.items():
        if key.endswith(".$"):
            if isinstance(value, str) and value.startswith("$"):
                out[key[:-2]] = _path(document, value, context)
        else:
            out[key] = _parameters(value, document, context)
    return out


def map_children(machine: dict[str, Any], state: dict[str, Any], manifest: list[Any]) -> list[Any]:
    """Each child execution's input: the manifest's items (what ItemReader read) through the Map's
    ItemSelector, then in batches ``{"Items": [...]}`` if it has an ItemBatcher."""
    spec = machine["map_state"]
    items = [
        _parameters(spec["ItemSelector"], state, {"Map": {"Item": {"Index": i, "Value": item}}})
        if "ItemSelector" in spec
        else item
        for i, item in enumerate(manifest)
    ]
    if "ItemBatcher" not in spec:
        return items
    size = units_per_child(machine, state)
    return [{"Items": items[i : i + size]} for i in range(0, len(items), size)]


def units_per_child(machine: dict[str, Any], state: dict[str, Any]) -> int:
    """How many units a child gets at most (its batch size), 1 without an ItemBatcher."""
    batcher = machine["map_state"].get("ItemBatcher")
    if batcher is None:
        return 1
    return int(batcher.get("MaxItemsPerBatch") or _path(state, batcher["MaxItemsPerBatchPath"]))


def transitions(asl: dict[str, Any], items: int) -> int:
    """State transitions of one execution that goes the success path, with ``items`` Map items. A
    Distributed Map's children are executions of their own (``child_transitions``): the Map state is
    one transition of the parent whatever the fleet's size."""

    def walk(states: dict[str, Any], start: str) -> int:
        count, name = 0, start
        while name:
            state = states[name]
            count += 1
            if state["Type"] == "Map":
                proc = state.get("ItemProcessor") or state["Iterator"]
                if proc.get("ProcessorConfig", {}).get("Mode") != "DISTRIBUTED":
                    count += items * walk(proc["States"], proc["StartAt"])
            if state.get("End") or state["Type"] in ("Succeed", "Fail"):
                break
            name = state.get("Next", "")
        return count

    return walk(asl["States"], asl["StartAt"])


def child_transitions(asl: dict[str, Any]) -> int:
    """State transitions of one (Standard) child execution of the Map: its ItemProcessor, walked."""
    run_units = next(s for s in asl["States"].values() if s["Type"] == "Map")
    proc = run_units["ItemProcessor"]
    return transitions({"StartAt": proc["StartAt"], "States": proc["States"]}, 0)


def _passes_before(machine: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The execution's input after the Pass states that run before Plan (each puts its Result at its
    ResultPath: the empty $.error and $.map.results Close reads)."""
    state = json.loads(json.dumps(event))
    states, name = machine["asl"]["States"], machine["asl"]["StartAt"]
    while states[name] is not machine["plan_state"]:
        spec = states[name]
        if spec["Type"] == "Pass" and "Result" in spec and spec.get("ResultPath", "$") not in ("$", None):
            *parents, last = spec["ResultPath"].removeprefix("$.").split(".")
            target = state
            for part in parents:
                target = target.setdefault(part, {})
            target[last] = json.loads(json.dumps(spec["Result"]))
        name = spec["Next"]
    return state


def measure(rules_dir: str) -> None:
    """Runs every scheduled job as AWS would; prints what was counted as one JSON line."""
    import builtins

    meter = Meter()
    meter.install()
    real_stdout = sys.stdout
    tap = LogTap()
    sys.stdout = tap  # the handlers' Logger and Metrics print here (Powertools binds stdout on import)
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Opsbot")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "opsbot")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    from automations import catalog  # noqa: F401 - registers every kind
    from automations.core import runs
    from opsbot.cfn import load_template

    template = load_template(ROOT / "template.yaml")
    original_execute = runs.execute_unit

    def execute_unit(unit: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with meter.unit(f"{unit.account}/{unit.region}"):
            return original_execute(unit, *args, **kwargs)

    import automations.breach_checks.checks as checks_module

    runs.execute_unit = execute_unit
    checks_module.execute_unit = execute_unit

    def invoke(fn: Any, event: Any) -> tuple[Any, dict[str, Any]]:
        meter.start_invocation()
        before = tap.bytes
        emf_before = set(tap.emf)
        result = fn(event, LambdaContextStandIn())
        units = {k: v.as_dict() for k, v in meter.units.items()}
        return result, {
            "overhead": meter.invocation.as_dict(),
            "units": units,
            "log_bytes": tap.bytes - before,
            "emf_new": sorted(tap.emf - emf_before),
        }

    import boto3

    from automations.core.manifest import ManifestStore

    s3 = boto3.client("s3", region_name="us-east-1")  # Step Functions' own S3 calls: ItemReader, ResultWriter

    def by_step_functions(action: Any, *args: Any) -> tuple[Any, Usage]:
        meter.start_invocation()
        result = action(*args)
        return result, meter.invocation

    def item_reader(machine: dict[str, Any], state: dict[str, Any]) -> list[Any]:
        where = _parameters(machine["map_state"]["ItemReader"]["Parameters"], state)
        items: list[Any] = json.loads(s3.get_object(Bucket=where["Bucket"], Key=where["Key"])["Body"].read())
        return items

    def result_writer(state: dict[str, Any], children: list[Any], statuses: list[str]) -> dict[str, Any]:
        """What the Map's ResultWriter puts: a file per status its children ended in, and manifest.json."""
        bucket, run_id = state["plan"]["manifest"]["bucket"], state["plan"]["run_id"]
        base = f"{ManifestStore(s3, bucket).results_prefix(run_id)}/cost-model"
        files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        for status in sorted(set(statuses)):
            results = [
                {"Input": json.dumps(child), "Output": json.dumps({"invoked": True}), "Status": status}
                for child, st in zip(children, statuses, strict=True)
                if st == status
            ]
            body = json.dumps(results).encode()
            key = f"{base}/{status}_0.json"
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            files[status].append({"Key": key, "Size": len(body)})
        manifest = {"DestinationBucket": bucket, "MapRunArn": f"cost-model:{run_id}", "ResultFiles": files}
        key = f"{base}/manifest.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
        return {"MapRunArn": manifest["MapRunArn"], "ResultWriterDetails": {"Bucket": bucket, "Key": key}}

    def hot_units(result: Any) -> list[str]:
        found = []
        summaries = result.get("units") if isinstance(result, dict) and "units" in result else [result]
        for s in summaries or []:
            counts = (s or {}).get("counts", {})
            if any(counts.get(k) for k in ("warning", "critical", "hold", "opened", "escalated")):
                found.append(f"{s.get('account')}/{s.get('region')}")
        return found

    jobs: dict[str, Any] = {}
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    checks = {
        r["Metadata"]["opsbot"]["check"]: r["Properties"]
        for r in template["Resources"].values()
        if r.get("Type") == "AWS::Scheduler::Schedule" and "check" in r.get("Metadata", {}).get("opsbot", {})
    }
    params = template["Parameters"]
    tasks = {
        r["Metadata"]["opsbot"]["task"]: r["Properties"]["ScheduleExpression"]
        for r in template["Resources"].values()
        if r.get("Type") == "AWS::Events::Rule" and "task" in r.get("Metadata", {}).get("opsbot", {})
    }
    check_machine = _machine(template, "BreachCheckStateMachine")
    task_machine = _machine(template, "SnapshotRunStateMachine")
    plan_of = []
    for job, props in checks.items():
        expr = props["ScheduleExpression"]
        expression = params[expr["Ref"]]["Default"] if isinstance(expr, dict) else expr
        plan_of.append((job, "check", expression, check_machine))
    order = ["sg-sweep", "snapshot-daily", "snapshot-weekly", "snapshot-dr-copy"]
    for job in sorted(tasks, key=lambda t: order.index(t) if t in order else 99):
        plan_of.append((job, "task", tasks[job], task_machine))
    for job, kind, expression, machine in plan_of:
        record: dict[str, Any] = {
            "kind": kind,
            "expression": expression,
            "machine": machine["type"],
            "child_machine": machine["child_type"],
            "asl": machine["asl"],
            "runs": [],
        }
        # Checks twice (the second run is the steady state: alerts open, nothing new to say); the
        # sweep too (its first run revokes what the seed left); snapshot tasks once (a new slot's work).
        reps = 2 if kind == "check" or job == "sg-sweep" else 1
        for rep in range(reps):
            when = now + timedelta(minutes=5 * rep) if kind == "check" else now + timedelta(hours=rep)
            event = {kind: job, "id": f"cost-model-{job}-{rep}", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
            if kind == "task" and job.startswith("snapshot"):
                event["time"] = (now.replace(hour=5, minute=31) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            # The execution's state as the ASL builds it: the Pass states before Plan, then Plan's result
            # through its ResultSelector at $.plan.
            state = _passes_before(machine, event)
            plan, plan_usage = invoke(machine["plan"], state)
            state["plan"] = _parameters(machine["plan_state"]["ResultSelector"], {"Payload": plan})
            # The Distributed Map: ItemReader gets the manifest Plan put, ItemSelector (and ItemBatcher)
            # make each child's input; each child invokes the unit function once.
            manifest, reader_usage = by_step_functions(item_reader, machine, state)
            children = map_children(machine, state, manifest)
            unit_invocations = []
            hot: list[str] = []
            for child in children:
                result, usage = invoke(machine["unit"], child)
                usage["hot"] = hot_units(result)
                hot += usage["hot"]
                unit_invocations.append(usage)
            written, map_usage = by_step_functions(result_writer, state, children, ["SUCCEEDED"] * len(children))
            map_usage.add(reader_usage)
            state["map"] = _parameters(machine["map_state"]["ResultSelector"], written)
            close_event = _parameters(machine["close_state"]["Parameters"]["Payload"], state)
            closed, close_usage = invoke(machine["close"], close_event)
            record["runs"].append(
                {
                    "status": closed.get("status"),
                    "units_planned": len(manifest),
                    "map_items": len(children),
                    "units_per_child": units_per_child(machine, state),
                    "transitions": transitions(machine["asl"], len(children)),
                    "child_transitions": child_transitions(machine["asl"]) if machine["child_type"] else 0,
                    "plan": plan_usage,
                    "map": {"overhead": map_usage.as_dict()},
                    "unit_invocations": unit_invocations,
                    "close": close_usage,
                    "hot": hot,
                }
            )
        jobs[job] = record
    from handlers import sweeper

    _, sweep_usage = invoke(sweeper.handler, {})
    sweeper_props = template["Resources"]["SweeperFunction"]["Properties"]
    sweep_expr = next(iter(sweeper_props["Events"].values()))["Properties"]["ScheduleExpression"]
    jobs["sweeper"] = {"kind": "function", "expression": sweep_expr, "runs": [{"invocation": sweep_usage}]}
    alarms = sum(1 for r in template["Resources"].values() if r.get("Type") == "AWS::CloudWatch::Alarm")
    secrets = sum(1 for r in template["Resources"].values() if r.get("Type") == "AWS::SecretsManager::Secret")
    keys = sum(1 for r in template["Resources"].values() if r.get("Type") == "AWS::KMS::Key")
    member = load_template(ROOT / "template-member.yaml")
    forward = member["Resources"].get("ForwardAlarmStateChanges", {}).get("Properties", {}).get("EventPattern", {})
    sys.stdout = real_stdout
    builtins.print(
        json.dumps(
            {
                "jobs": jobs,
                "fixed": {"alarms": alarms, "secrets": secrets, "kms_keys": keys},
                "alarm_forwarding_filtered": "alarmName" in json.dumps(forward.get("detail", {})),
                "emf_metrics": sorted(tap.emf),
            },
            default=str,
        )
    )


# ---- the model ---------------------------------------------------------------------------------------
@dataclass
class Bill:
    hub: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    member: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def total(self) -> float:
        return sum(self.hub.values()) + sum(self.member.values())


def _lambda_cost(invocations: float, ms: float, memory_gb: float, bill: Bill) -> None:
    billed_ms = ms + COLD_START_SHARE * COLD_START_MS
    bill.hub["Lambda"] += invocations * (
        PRICES["lambda_request"] + billed_ms / 1000 * memory_gb * PRICES["lambda_gb_s_arm"]
    )


def _usage_cost(u: dict[str, Any], times: float, bill: Bill) -> None:
    bill.member["GetMetricData (member accounts)"] += times * u["gmd_metrics"] * PRICES["gmd_metric"]
    bill.hub["DynamoDB"] += times * (u["wru"] * PRICES["ddb_wru"] + u["rru"] * PRICES["ddb_rru"])
    bill.hub["DynamoDB"] += times * u["stored_byte_months"] / 1e9 * PRICES["ddb_storage_gb_month"]
    bill.hub["SNS"] += times * u["sns"] * PRICES["sns_publish"]
    bill.hub["S3 (run manifests and results)"] += times * (
        u["s3_put"] * PRICES["s3_put"] + u["s3_get"] * PRICES["s3_get"]
    )


def _express_cost(ms: float) -> float:
    """One Express execution of ``ms`` (a cold start's share added): a request, and its duration in
    100 ms steps at the 64 MB minimum (a child holds one small batch)."""

    def one(duration_ms: float) -> float:
        billed_s = math.ceil(duration_ms / 100) / 10
        return PRICES["sfn_express_request"] + billed_s * 0.0625 * PRICES["sfn_express_gb_s"]

    return (1 - COLD_START_SHARE) * one(ms) + COLD_START_SHARE * one(ms + COLD_START_MS)


def _avg(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("latency_ms", "gmd_metrics", "wru", "rru", "sns", "s3_put", "s3_get", "stored_byte_months")
    if not dicts:
        return dict.fromkeys(keys, 0.0)
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in keys}


def job_cost(job: str, record: dict[str, Any], n: int, bill: Bill, detail: dict[str, Any]) -> None:
    """Add one job's month at ``n`` account-regions to ``bill``."""
    runs = runs_per_month(record["expression"])
    if record["kind"] == "function":
        inv = record["runs"][0]["invocation"]
        _usage_cost(inv["overhead"], runs, bill)
        _lambda_cost(runs, INVOKE_OVERHEAD_MS + inv["overhead"]["latency_ms"], MEMORY_GB, bill)
        bill.hub["CloudWatch Logs"] += runs * (inv["log_bytes"] + PLATFORM_LOG_BYTES) / 1e9 * _log_gb_price()
        bill.hub["X-Ray"] += runs * PRICES["xray_trace"]
        return
    run = record["runs"][-1]
    sample_units = max(1, run["units_planned"])
    # The Map's children (one unit invocation each) at this fleet's size: one per unit, or batches of
    # the ItemBatcher's size; per_item is the units of the average child.
    items = math.ceil(n / max(1, run.get("units_per_child", 1)))
    per_item = n / items
    unit_usages = [(label, u) for inv in run["unit_invocations"] for label, u in inv["units"].items()]
    hot_labels = set(run["hot"])
    hot = [u for label, u in unit_usages if label in hot_labels]
    quiet = [u for label, u in unit_usages if label not in hot_labels]
    share = HOT_SHARE.get(job, 0.0) if hot else 0.0
    per_unit = {k: (1 - share) * _avg(quiet)[k] + share * _avg(hot or quiet)[k] for k in _avg(quiet)}
    cadence = _relaxed_cadence(job, record["expression"])
    if cadence > 1 and len(record["runs"]) > 1:
        # What is far below is read every `cadence`-th run: the steady (second) run, plus that share of
        # what a quiet unit's first run (everything read) read more. Its memo write too.
        first = [
            u
            for inv in record["runs"][0]["unit_invocations"]
            for label, u in inv["units"].items()
            if label not in hot_labels
        ]
        for k in ("gmd_metrics", "latency_ms", "wru"):
            per_unit[k] += (1 - share) * max(0.0, _avg(first)[k] - _avg(quiet)[k]) / cadence
    inv_overhead = _avg([inv["overhead"] for inv in run["unit_invocations"]])
    # What an invocation writes for all its units at once (a batch's unit records, through one batch
    # writer) grows with its units: its request units and stored bytes are scaled from the sample's
    # children to this fleet's (the calls, 25 records a BatchWriteItem, are not).
    sample_per_child = sum(len(inv["units"]) for inv in run["unit_invocations"]) / max(1, len(run["unit_invocations"]))
    for k in ("wru", "rru", "stored_byte_months"):
        inv_overhead[k] *= per_item / max(1.0, sample_per_child)
    inv_logs = sum(inv["log_bytes"] for inv in run["unit_invocations"]) / max(1, len(run["unit_invocations"]))
    threads = max(1, min(per_item, _threads()))
    # Per run: plan + close. The units are in the run's S3 manifest (the run item keeps their count), so
    # only Close grows with them: it reads every unit record (eventually consistent). Its GETs of the
    # manifest and the Map's results are counted, one each whatever their size.
    extra_units = max(0, n - sample_units)
    unit_record = 450.0  # bytes of a unit record, as counted on the wire (check units ~440, tasks more)
    growth = {
        "plan": {"wru": 0.0, "rru": 0.0},
        "close": {"wru": 0.0, "rru": extra_units * (unit_record + 48) / 4096 / 2},
    }
    for step in ("plan", "close"):
        u = run[step]["overhead"]
        grown = {**u, "wru": u["wru"] + growth[step]["wru"], "rru": u["rru"] + growth[step]["rru"]}
        _usage_cost(grown, runs, bill)
        _lambda_cost(runs, INVOKE_OVERHEAD_MS + u["latency_ms"], MEMORY_GB, bill)
    # The Map's own S3 calls (ItemReader's GET of the manifest, ResultWriter's PUTs): one each a run.
    if "map" in run:
        _usage_cost(run["map"]["overhead"], runs, bill)
    _usage_cost(per_unit, runs * n, bill)
    _usage_cost(inv_overhead, runs * items, bill)
    unit_ms = INVOKE_OVERHEAD_MS + inv_overhead["latency_ms"] + per_item * per_unit["latency_ms"] / threads
    _lambda_cost(runs * items, unit_ms, MEMORY_GB, bill)
    log_bytes = run["plan"]["log_bytes"] + run["close"]["log_bytes"] + items * inv_logs
    log_bytes += (2 + items) * PLATFORM_LOG_BYTES
    bill.hub["CloudWatch Logs"] += runs * log_bytes / 1e9 * _log_gb_price()
    if record["machine"] == "EXPRESS":  # an Express parent (an inline Map: no Distributed Map in Express)
        waves = math.ceil(items / _max_concurrency())
        seconds = (
            2 * INVOKE_OVERHEAD_MS
            + run["plan"]["overhead"]["latency_ms"]
            + run["close"]["overhead"]["latency_ms"]
            + waves * unit_ms
        ) / 1000
        billed = math.ceil(seconds * 10) / 10 * 0.0625
        bill.hub["Step Functions"] += runs * (PRICES["sfn_express_request"] + billed * PRICES["sfn_express_gb_s"])
    else:
        # A Standard parent bills its own transitions; a Distributed Map is one of them whatever the
        # fleet's size, and each of its child executions is billed as its own type.
        bill.hub["Step Functions"] += runs * transitions(record["asl"], items) * PRICES["sfn_standard_transition"]
    child = record.get("child_machine")
    if child == "EXPRESS":  # a request and its duration: the unit invocation of its batch
        bill.hub["Step Functions"] += runs * items * _express_cost(unit_ms)
    elif child == "STANDARD":  # its own transitions (the ItemProcessor, walked)
        bill.hub["Step Functions"] += runs * items * run["child_transitions"] * PRICES["sfn_standard_transition"]
    bill.hub["X-Ray"] += runs * PRICES["xray_trace"]
    bill.hub["EventBridge Scheduler"] += runs * PRICES["scheduler_invocation"]
    detail[job] = {
        "runs_a_month": round(runs, 1),
        "unit_invocations_a_run": items,
        "units_per_invocation": round(per_item, 1),
        "child_executions": f"{items:,} {child}" if child else "inline",
        "gmd_metrics_per_account_region": round(per_unit["gmd_metrics"], 2),
        "wru_per_account_region": round(per_unit["wru"] + inv_overhead["wru"] / per_item, 2),
    }


def _relaxed_cadence(job: str, expression: str) -> float:
    """Runs between two readings of what is far below its threshold (the checks' adaptive cadence):
    a reserved function (lambda-concurrency) or a quota (service-quotas)."""
    minutes_between_runs = MONTH_HOURS * 60 / runs_per_month(expression)
    try:
        if job == "service-quotas":
            from automations.breach_checks.service_quotas import ServiceQuotaSettings

            every = float(getattr(ServiceQuotaSettings(), "relaxed_every_hours", 0) or 0) * 60
        elif job == "lambda-concurrency":
            from automations.breach_checks.lambda_concurrency import LambdaConcurrencySettings

            every = float(getattr(LambdaConcurrencySettings(), "relaxed_every_minutes", 0) or 0)
        else:
            return 1.0
    except ImportError:
        return 1.0
    return max(1.0, every / minutes_between_runs)


def _threads() -> int:
    try:
        from automations.breach_checks.checks import BATCH_THREADS

        return int(BATCH_THREADS)
    except ImportError:
        return 1


def _max_concurrency() -> int:
    from opsbot.cfn import load_template

    return int(load_template(ROOT / "template.yaml")["Parameters"]["UnitMaxConcurrency"]["Default"])


def _log_gb_price() -> float:
    return PRICES["logs_ingest_gb"] + LOG_RETENTION_MONTHS * PRICES["logs_storage_gb_month"]


def monthly(measured: dict[str, Any], n: int) -> tuple[Bill, dict[str, Any]]:
    bill, detail = Bill(), dict[str, Any]()
    for job, record in measured["jobs"].items():
        job_cost(job, record, n, bill, detail)
    fixed = measured["fixed"]
    bill.hub["fixed (EMF metrics, alarms, secrets, KMS)"] += (
        len(measured["emf_metrics"]) * PRICES["custom_metric_month"]
        + fixed["alarms"] * PRICES["alarm_month"]
        + fixed["secrets"] * PRICES["secret_month"]
        + fixed["kms_keys"] * PRICES["kms_key_month"]
    )
    share = POLICY_ALARM_SHARE if measured["alarm_forwarding_filtered"] else 1.0
    events = n * (ALARM_CHANGES_PER_ACCOUNT_REGION * share + SG_EVENTS_PER_ACCOUNT_REGION)
    bill.member["EventBridge forwarding (member accounts)"] += events * PRICES["eventbridge_cross_account_event"]
    return bill, detail


def render(measured: dict[str, Any]) -> str:
    bills = {label: monthly(measured, n) for label, n in SCALES.items()}
    rows = sorted(
        {k for b, _ in bills.values() for k in (*b.hub, *b.member)},
        key=lambda k: -max(b.hub.get(k, 0) + b.member.get(k, 0) for b, _ in bills.values()),
    )
    labels = list(SCALES)
    out = ["| component | bill | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for row in rows:
        side = "member" if any(row in b.member for b, _ in bills.values()) else "hub"
        cells = [f"${(b.hub.get(row, 0) + b.member.get(row, 0)):,.2f}" for b, _ in bills.values()]
        out.append(f"| {row} | {side} | " + " | ".join(cells) + " |")
    out.append("| **hub bill** | | " + " | ".join(f"**${sum(b.hub.values()):,.2f}**" for b, _ in bills.values()) + " |")
    out.append(
        "| **member bills (all accounts)** | | "
        + " | ".join(f"**${sum(b.member.values()):,.2f}**" for b, _ in bills.values())
        + " |"
    )
    out.append("| **total** | | " + " | ".join(f"**${b.total:,.2f}**" for b, _ in bills.values()) + " |")
    targets = {labels[0]: 35.0, labels[1]: 5000.0}
    out.append("")
    for label, (b, _) in bills.items():
        verdict = "within" if b.total <= targets[label] else "OVER"
        out.append(f"{label}: ${b.total:,.2f} a month, {verdict} the target of ${targets[label]:,.0f}")
    out.append("")
    out.append("Per job (from the counted calls of the sample fleet):")
    _, detail = bills[labels[0]]
    for job, d in detail.items():
        out.append(
            f"  {job:<20} {d['runs_a_month']:>8,.0f} runs/month; GetMetricData metrics per account-region-run "
            f"{d['gmd_metrics_per_account_region']:>6}; DynamoDB WRU per account-region-run "
            f"{d['wru_per_account_region']}"
        )
    out.append(f"  EMF metrics (name + dimensions): {len(measured['emf_metrics'])}")
    out.append(
        "  member alarm forwarding: "
        + ("only alarms named by kill-switch policies" if measured["alarm_forwarding_filtered"] else "every alarm")
    )
    out.append("Child executions of a run's Distributed Map (units per child):")
    for label, (_, detail) in bills.items():
        out.append(
            f"  {label}: "
            + "; ".join(f"{job} {d['child_executions']} ({d['units_per_invocation']:g})" for job, d in detail.items())
        )
    return "\n".join(out)


def assumptions() -> str:
    return "\n".join(
        [
            "List prices, us-east-1, free tiers ignored: " + ", ".join(f"{k} ${v:.10g}" for k, v in PRICES.items()),
            f"Fleet: {FUNCTIONS_PER_ACCOUNT_REGION} Lambda functions per account-region, "
            f"{RESERVED_PER_ACCOUNT_REGION} of them reserved; quotas: every quota of rules/quotas.yaml's services "
            "that the local Service Quotas catalog lists with a usage metric (ec2, vpc).",
            "Alert rates: account-regions near/over a threshold at any time: "
            + ", ".join(f"{k} {v:.0%}" for k, v in HOT_SHARE.items())
            + "; units measured in their steady state (second run: open alerts stay open).",
            f"Events: {ALARM_CHANGES_PER_ACCOUNT_REGION} alarm state changes and {SG_EVENTS_PER_ACCOUNT_REGION} "
            f"security-group events per account-region a month; {POLICY_ALARM_SHARE:.0%} of alarm changes are "
            "of alarms a kill-switch policy names.",
            f"Lambda: {MEMORY_GB * 1024:.0f} MB arm64, duration = {INVOKE_OVERHEAD_MS:.0f} ms + the assumed "
            f"latency of each counted call ({', '.join(f'{k} {v} ms' for k, v in LATENCY_MS.items())}); "
            f"{COLD_START_SHARE:.0%} cold starts of {COLD_START_MS:.0f} ms; "
            f"{PLATFORM_LOG_BYTES} platform log bytes per invocation.",
            f"DynamoDB storage: items written, kept {LEDGER_MONTHS:.0f} months (ledger TTL); "
            f"logs kept {LOG_RETENTION_MONTHS:.0f} month.",
            "Step Functions: the Standard parent bills its transitions (the Distributed Map state once); each "
            "child execution is billed as its type: Standard its ItemProcessor's transitions, Express a request "
            "and the unit invocation's duration (100 ms steps, 64 MB). S3: the requests counted (Plan's PUT of "
            "the manifest, ItemReader's GET, ResultWriter's PUTs of a file per child status and manifest.json, "
            "Close's GETs); storage ignored (7-day lifecycle); retries and X-Ray traces of children not modelled.",
        ]
    )


def _member(base: Any, account: str) -> Any:
    """A session in a member account of the local AWS (IAM enforcement is off while seeding)."""
    from opsbot.local.sessions import assumed_session

    return assumed_session(base, f"arn:aws:iam::{account}:role/cost-model-seed", "cost-model-seed", region="us-east-1")


def seed_sample(url: str, rules_dir: Path) -> dict[str, str]:
    """`opsbot local seed`'s fleet (the demo's rules), plus functions up to the assumed count per
    account-region. Returns the hub functions' environment."""
    import shutil

    import boto3

    from automations.core.fleet import load_fleet
    from automations.core.rulebook import DEFAULT_RULES_DIR
    from opsbot.local import hub, server
    from opsbot.local import seed as seeding
    from opsbot.local.lambda_functions import create_functions

    try:
        from opsbot.local.demo_rules import assemble

        assemble(rules_dir)
    except ImportError:  # before the demo's rules had their own directory
        shutil.copytree(DEFAULT_RULES_DIR, rules_dir)
    os.environ["AWS_ENDPOINT_URL"] = url
    server.set_enforce_iam(url, False)  # and it stays off: the measured process uses the hub's keys
    base = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    fleet_file = rules_dir / "fleet.yaml"
    resources = hub.create_hub(base, slack_token="not-a-slack-token", fleet_text=fleet_file.read_text())
    fleet = load_fleet(fleet_file)
    report = seeding.seed_fleet(base, fleet)
    if fleet.organization is not None:  # the accounts are the organisation's, as the hub discovers them
        fleet = fleet.discovering_with(base)
    hot_lambda = report.breaches["breaches"]["lambda"]
    at = datetime.now(UTC) - timedelta(minutes=2)
    for account in fleet.accounts:
        member = _member(base, account.id)
        for i, region in enumerate(account.regions):
            lam = member.client("lambda", region_name=region)
            have = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
            reserved = sum(
                1 for f in have if lam.get_function_concurrency(FunctionName=f).get("ReservedConcurrentExecutions")
            )
            names = {
                f"svc-{account.name}-{j:02d}": (50 if j < RESERVED_PER_ACCOUNT_REGION - reserved else None)
                for j in range(max(0, FUNCTIONS_PER_ACCOUNT_REGION - len(have)))
            }
            create_functions(member, region, f"cost-model-fns-{i}", names)
            cw = member.client("cloudwatch", region_name=region)
            # A quiet, realistic load: each function a few concurrent executions.
            data = [
                {
                    "MetricName": "ConcurrentExecutions",
                    "Value": float(1 + j % 7),
                    "Timestamp": at,
                    "Dimensions": [{"Name": "FunctionName", "Value": name}],
                }
                for j, name in enumerate(names)
            ]
            if not (account.id == hot_lambda["account"] and region == hot_lambda["region"]):
                total = float(sum(1 + j % 7 for j in range(len(names))))
                limits = lam.get_account_settings()["AccountLimit"]
                allocated = limits["ConcurrentExecutions"] - limits["UnreservedConcurrentExecutions"]
                for name, value in (
                    ("ConcurrentExecutions", total),
                    ("UnreservedConcurrentExecutions", total),
                    ("ClaimedAccountConcurrency", total + allocated),
                ):
                    data.append({"MetricName": name, "Value": value, "Timestamp": at, "Dimensions": []})
            for start in range(0, len(data), 500):
                cw.put_metric_data(Namespace="AWS/Lambda", MetricData=data[start : start + 500])
    env = hub.hub_environment(resources, OPSBOT_RULES_DIR=str(rules_dir), OPSBOT_SLACK_CHANNEL="#ops-alerts")
    return env


def _override(path: Path, settings: list[str]) -> None:
    """Apply ``section.key=value`` (YAML values) to a copy of rules/quotas.yaml."""
    if not settings:
        return
    import yaml

    doc = yaml.safe_load(path.read_text())
    for setting in settings:
        name, value = setting.split("=", 1)
        section, key = name.split(".", 1)
        doc.setdefault(section, {})[key] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"rules/quotas.yaml overridden: {', '.join(settings)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true", help="print the counted figures as JSON too")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override rules/quotas.yaml for the run, e.g. lambda_concurrency.staged=false (what a change saves)",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the measured child process
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    import tempfile

    from opsbot.local import server

    work = Path(tempfile.mkdtemp(prefix="opsbot-cost-model-"))
    os.environ["OPSBOT_STATE_DIR"] = str(work)
    with server.running(work / "moto.log") as url:
        t0 = time.perf_counter()
        hub_env = seed_sample(url, work / "rules")
        _override(work / "rules" / "quotas.yaml", args.set)
        print(f"seeded the sample fleet in {time.perf_counter() - t0:.1f}s", flush=True)
        measured = server.run_measured(__file__, f"--measure={work}", url, PYTHONPATH=str(ROOT), **hub_env)
    if args.json:
        print(json.dumps(measured, indent=1, default=str))
    print()
    print(render(measured))
    print()
    print("Assumptions:")
    print(assumptions())


if __name__ == "__main__":
    main()
