"""The local event router: the EventBridge rules of template.yaml (and the member forwarding rule of
template-member.yaml) created in the local EventBridge with SQS queues as targets, and delivery of
what lands in those queues to the handler the template names. So the event patterns that will be
deployed are the ones tried locally and tested."""

from __future__ import annotations

import atexit
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from opsbot.cfn import PROJECT_ROOT, load_template, resources_of_type
from opsbot.environment import FUNCTION_KEYS_ENV


@dataclass(frozen=True)
class EventRoute:
    function: str  # logical id in template.yaml
    handler: str  # module.function
    event: str
    pattern: dict[str, Any]
    rule_name: str | None = None  # the event's RuleName in the template, if it sets one

    @property
    def local_name(self) -> str:
        """The rule's (and its queue's) name in the local AWS: the deployed name where the template sets one."""
        return self.rule_name or f"opsbot-local-{self.function}-{self.event}"[:64]


def routes(template_path: Path = PROJECT_ROOT / "template.yaml") -> list[EventRoute]:
    """Every EventBridgeRule event of every function in the hub template."""
    out = []
    for lid, fn in resources_of_type(load_template(template_path), "AWS::Serverless::Function").items():
        for name, event in (fn["Properties"].get("Events") or {}).items():
            if event["Type"] == "EventBridgeRule":
                props = event["Properties"]
                out.append(EventRoute(lid, fn["Properties"]["Handler"], name, props["Pattern"], props.get("RuleName")))
    return out


def member_forwarding_pattern(template_path: Path = PROJECT_ROOT / "template-member.yaml") -> dict[str, Any]:
    rule = load_template(template_path)["Resources"]["ForwardSecurityGroupEvents"]
    pattern: dict[str, Any] = rule["Properties"]["EventPattern"]
    return pattern


@dataclass
class EventRouter:
    hub: boto3.Session
    queues: dict[str, str] = field(default_factory=dict)  # route name -> queue url
    by_queue: dict[str, EventRoute] = field(default_factory=dict)

    def install(self) -> list[EventRoute]:
        """Rules and queues in the hub account, one per route."""
        events, sqs = self.hub.client("events"), self.hub.client("sqs")
        found = routes()
        for route in found:
            name = route.local_name
            url = sqs.create_queue(QueueName=name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            events.put_rule(Name=name, EventPattern=json.dumps(route.pattern), State="ENABLED")
            events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": arn}])
            self.queues[name] = url
            self.by_queue[url] = route
        return found

    def attach(self, queues: dict[str, str]) -> None:
        """Use routes installed earlier (``install``'s queues, e.g. kept in the local state file)."""
        by_name = {r.local_name: r for r in routes()}
        self.queues = dict(queues)
        self.by_queue = {url: by_name[name] for name, url in queues.items() if name in by_name}

    def install_member_forwarding(self, member: boto3.Session, hub_account: str, region: str) -> None:
        """template-member.yaml's forwarding rule in a member account, targeting the hub's default bus."""
        events = member.client("events", region_name=region)
        events.put_rule(
            Name="opsbot-forward-security-group-events", EventPattern=json.dumps(member_forwarding_pattern())
        )
        events.put_targets(
            Rule="opsbot-forward-security-group-events",
            Targets=[{"Id": "opsbot-hub-bus", "Arn": f"arn:aws:events:{region}:{hub_account}:event-bus/default"}],
        )

    def deliver(self, invoke: Callable[[str, dict[str, Any]], Any] | None = None) -> list[tuple[EventRoute, Any]]:
        """Hand every queued event to its handler; returns (route, result) per event."""
        invoke = invoke or call_handler
        sqs = self.hub.client("sqs")
        out = []
        for url, route in self.by_queue.items():
            while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                for message in messages:
                    out.append((route, invoke(route.handler, json.loads(message["Body"]))))
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return out


@dataclass(frozen=True)
class QueueRoute:
    function: str
    handler: str
    queue: str  # the queue's logical id in template.yaml

    @property
    def local_name(self) -> str:
        return f"opsbot-local-{self.queue}"[:80]


@dataclass(frozen=True)
class ApiRoute:
    function: str
    handler: str
    path: str
    method: str


def queue_routes(template_path: Path = PROJECT_ROOT / "template.yaml") -> list[QueueRoute]:
    out = []
    for lid, fn in resources_of_type(load_template(template_path), "AWS::Serverless::Function").items():
        for event in (fn["Properties"].get("Events") or {}).values():
            if event["Type"] == "SQS":
                queue = event["Properties"]["Queue"]["Fn::GetAtt"][0]
                out.append(QueueRoute(lid, fn["Properties"]["Handler"], queue))
    return out


def api_routes(template_path: Path = PROJECT_ROOT / "template.yaml") -> list[ApiRoute]:
    out = []
    for lid, fn in resources_of_type(load_template(template_path), "AWS::Serverless::Function").items():
        for event in (fn["Properties"].get("Events") or {}).values():
            if event["Type"] == "Api":
                props = event["Properties"]
                out.append(ApiRoute(lid, fn["Properties"]["Handler"], props["Path"], props["Method"].upper()))
    return out


def _record(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((Path(__file__).with_name("records") / name).read_text())["payload"]
    return payload


def api_request(path: str, method: str, headers: dict[str, str], body: str) -> Any:
    """What API Gateway would do with a request: the proxy event to the function the template routes it to."""
    route = next((r for r in api_routes() if r.path == path and r.method == method.upper()), None)
    if route is None:
        return {"statusCode": 404, "body": f"no Api event for {method} {path} in template.yaml"}
    event = _record("api_gateway_proxy_event.json")
    event.update(httpMethod=method.upper(), path=path, resource=path, headers=headers, body=body)
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    event["queryStringParameters"] = event["multiValueQueryStringParameters"] = None
    event["requestContext"].update(httpMethod=method.upper(), path=path, resourcePath=path)
    return call_handler(route.handler, event)


def install_schedules(hub: boto3.Session, template_path: Path = PROJECT_ROOT / "template.yaml") -> list[str]:
    """The template's named schedule rules (no targets: `opsbot run` runs tasks locally), so that
    `opsbot pause` / `resume` have opsbot's real rules to act on."""
    template = load_template(template_path)
    events = hub.client("events")
    names = []
    for rule in resources_of_type(template, "AWS::Events::Rule").values():
        props = rule["Properties"]
        if isinstance(props.get("Name"), str) and props.get("ScheduleExpression"):
            events.put_rule(Name=props["Name"], ScheduleExpression=props["ScheduleExpression"], State=props["State"])
            names.append(props["Name"])
    # EventBridge Scheduler schedules, in their named group; targets are placeholders (nothing fires locally).
    scheduler = hub.client("scheduler")
    groups = resources_of_type(template, "AWS::Scheduler::ScheduleGroup")
    account = hub.client("sts").get_caller_identity()["Account"]
    region = hub.region_name
    for lid, sched in resources_of_type(template, "AWS::Scheduler::Schedule").items():
        props = sched["Properties"]
        group = groups[props["GroupName"]["Ref"]]["Properties"]["Name"]
        expression = props["ScheduleExpression"]
        if isinstance(expression, dict):  # !Ref to a parameter: its default
            expression = template["Parameters"][expression["Ref"]]["Default"]
        existing = {g["Name"] for g in scheduler.list_schedule_groups()["ScheduleGroups"]}
        if group not in existing:  # once: moto's CreateScheduleGroup on an existing group empties it
            scheduler.create_schedule_group(Name=group)
        scheduler.create_schedule(
            Name=lid,
            GroupName=group,
            ScheduleExpression=expression,
            FlexibleTimeWindow=props["FlexibleTimeWindow"],
            State=props["State"],
            Target={
                "Arn": f"arn:aws:states:{region}:{account}:stateMachine:opsbot-local-{lid}",
                "RoleArn": f"arn:aws:iam::{account}:role/opsbot-local-scheduler",
            },
        )
        names.append(f"{group}/{lid}")
    return names


def create_queues(hub: boto3.Session) -> dict[str, str]:
    """The template's SQS-triggered functions' queues (logical id -> local queue url)."""
    sqs = hub.client("sqs")
    return {r.queue: sqs.create_queue(QueueName=r.local_name)["QueueUrl"] for r in queue_routes()}


def deliver_queues(hub: boto3.Session, queues: dict[str, str]) -> list[tuple[QueueRoute, Any]]:
    """What Lambda's SQS event source mapping does: batches of messages to the function."""
    sqs = hub.client("sqs")
    out = []
    for route in queue_routes():
        url = queues.get(route.queue)
        if not url:
            continue
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            event = _record("sqs_event.json")
            shape = event["Records"][0]
            event["Records"] = [
                {
                    **shape,
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "md5OfBody": m["MD5OfBody"],
                    "messageAttributes": {},
                }
                for m in messages
            ]
            result = call_handler(route.handler, event)
            out.append((route, result))
            failed = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
            for m in messages:
                if m["MessageId"] not in failed:  # a failed record stays for a retry, as on AWS
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


@dataclass
class LocalLambdaContext:
    """What the Lambda runtime passes as ``context`` (the attributes Powertools reads)."""

    function_name: str
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:opsbot-local"
    aws_request_id: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def call_handler_here(handler: str, event: dict[str, Any]) -> Any:
    """The handler in this process, with whatever credentials this process has."""
    module, _, name = handler.rpartition(".")
    function = getattr(importlib.import_module(module), name)
    return function(event, LocalLambdaContext(function_name=handler))


class FunctionError(RuntimeError):
    """A handler run in its function's process raised; the message carries its traceback."""


@dataclass
class FunctionWorkers:
    """One process per hub function, started on its first event and kept for the next ones (a warm
    Lambda container), with that function role's credentials and nothing else."""

    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def start(self, handler: str, credentials: dict[str, str]) -> subprocess.Popen[str]:
        proc = self.procs.get(handler)
        if proc is None or proc.poll() is not None:
            env = {k: v for k, v in os.environ.items() if k not in (FUNCTION_KEYS_ENV, "AWS_PROFILE")}
            env.update(credentials)
            proc = self.procs[handler] = subprocess.Popen(
                [sys.executable, "-m", "opsbot.local.function_worker", handler],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        return proc

    def prewarm(self, handlers: list[str]) -> None:
        """Start these functions' processes now (they import their handler in the background)."""
        for handler in handlers:
            if credentials := function_credentials(handler):
                self.start(handler, credentials)

    def invoke(self, handler: str, event: dict[str, Any], credentials: dict[str, str]) -> Any:
        proc = self.start(handler, credentials)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"handler": handler, "event": event}) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise FunctionError(f"{handler}: its process exited ({proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise FunctionError(f"{handler}: {answer['error']}\n{answer['traceback']}")
        return answer["result"]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


WORKERS = FunctionWorkers()
atexit.register(WORKERS.close)


def function_credentials(handler: str) -> dict[str, str] | None:
    """The function role's session `opsbot local seed` made for this handler, if the local AWS has one."""
    keys = json.loads(os.environ.get(FUNCTION_KEYS_ENV) or "{}")
    found: dict[str, str] | None = keys.get(handler)
    return found


def call_handler(handler: str, event: dict[str, Any]) -> Any:
    """Deliver an event to a handler as Lambda would: in the local AWS with per-function roles, in the
    function's own process under its role (``FunctionWorkers``); otherwise (moto in this process, the
    tests) right here."""
    credentials = function_credentials(handler)
    if credentials is None:
        return call_handler_here(handler, event)
    return WORKERS.invoke(handler, event, credentials)
