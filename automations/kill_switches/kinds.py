"""Kill-switch kinds: what can be stopped, how it is read, stopped and put back exactly.

Each kind is one class registered with ``@SWITCH_KINDS.register``: its name (the ``kind:`` prefix of a
target), the AWS service it needs, the IAM it needs (in member accounts; in the hub for pausing opsbot
itself), and ``read`` / ``stop`` / ``restore``. ``restore`` puts back exactly the recorded state: a
function with no reservation gets none (DeleteFunctionConcurrency), a rule or mapping that was already
off stays off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from automations.core.iam import Grant, grants
from automations.core.registry import Registry

OPSBOT_RULES, OPSBOT_SCHEDULES = "rule/opsbot-*", "schedule/opsbot-*"


class SwitchKind:
    """Base of every kill-switch kind. ``ident`` is the target's id as the kind names it."""

    name: ClassVar[str]
    service: ClassVar[str]  # the boto3 client it needs
    summary: ClassVar[str]
    member_actions: ClassVar[frozenset[str]] = frozenset()
    hub_grants: ClassVar[frozenset[Grant]] = frozenset()  # for pausing opsbot's own (OperatorRole)
    in_members: ClassVar[bool] = True  # may a policy, a button or the CLI flip it in a member account?

    def read(self, client: Any, ident: str) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self, client: Any, ident: str) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, client: Any, ident: str, previous: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def stopped_state(self) -> dict[str, Any]:
        return {"state": "DISABLED"}

    def from_arn(self, service: str, resource: list[str]) -> str | None:
        """The id in an ARN's resource part, if the ARN names one of this kind."""
        return None


SWITCH_KINDS: Registry[SwitchKind] = Registry("kill-switch kind")


@SWITCH_KINDS.register
class LambdaFunction(SwitchKind):
    name = "lambda"
    service = "lambda"
    summary = "A Lambda function: reserved concurrency 0 stops every invocation."
    member_actions = frozenset(
        {"lambda:GetFunctionConcurrency", "lambda:PutFunctionConcurrency", "lambda:DeleteFunctionConcurrency"}
    )

    def read(self, client: Any, ident: str) -> dict[str, Any]:
        return {
            "reserved_concurrency": client.get_function_concurrency(FunctionName=ident).get(
                "ReservedConcurrentExecutions"
            )
        }

    def stop(self, client: Any, ident: str) -> dict[str, Any]:
        client.put_function_concurrency(FunctionName=ident, ReservedConcurrentExecutions=0)
        return self.stopped_state()

    def restore(self, client: Any, ident: str, previous: Mapping[str, Any]) -> dict[str, Any]:
        value = previous.get("reserved_concurrency")
        if value is None:
            client.delete_function_concurrency(FunctionName=ident)
        else:
            client.put_function_concurrency(FunctionName=ident, ReservedConcurrentExecutions=int(value))
        return {"reserved_concurrency": value}

    def stopped_state(self) -> dict[str, Any]:
        return {"reserved_concurrency": 0}

    def from_arn(self, service: str, resource: list[str]) -> str | None:
        return resource[1].split(":")[0] if service == "lambda" and resource[0] == "function" else None


def _rule_args(ident: str) -> dict[str, str]:
    bus, _, name = ident.rpartition("/")
    return {"Name": name, **({"EventBusName": bus} if bus else {})}


@SWITCH_KINDS.register
class EventBridgeRule(SwitchKind):
    name = "rule"
    service = "events"
    summary = "An EventBridge rule (NAME, or BUS/NAME on a custom bus): disabled."
    member_actions = frozenset({"events:DescribeRule", "events:DisableRule", "events:EnableRule"})
    hub_grants = grants(OPSBOT_RULES, "events:DescribeRule", "events:DisableRule", "events:EnableRule")

    def read(self, client: Any, ident: str) -> dict[str, Any]:
        return {"state": client.describe_rule(**_rule_args(ident))["State"]}

    def stop(self, client: Any, ident: str) -> dict[str, Any]:
        client.disable_rule(**_rule_args(ident))
        return self.stopped_state()

    def restore(self, client: Any, ident: str, previous: Mapping[str, Any]) -> dict[str, Any]:
        state = str(previous.get("state", ""))
        if state == "ENABLED":
            client.enable_rule(**_rule_args(ident))
        return {"state": state}

    def from_arn(self, service: str, resource: list[str]) -> str | None:
        return resource[0].removeprefix("rule/") if service == "events" and resource[0].startswith("rule/") else None


@SWITCH_KINDS.register
class EventSourceMapping(SwitchKind):
    name = "esm"
    service = "lambda"
    summary = "A Lambda event source mapping (UUID): disabled, so nothing is read from its queue or stream."
    member_actions = frozenset({"lambda:GetEventSourceMapping", "lambda:UpdateEventSourceMapping"})

    def read(self, client: Any, ident: str) -> dict[str, Any]:
        return {"state": client.get_event_source_mapping(UUID=ident)["State"]}

    def stop(self, client: Any, ident: str) -> dict[str, Any]:
        client.update_event_source_mapping(UUID=ident, Enabled=False)
        return {"state": "Disabled"}

    def restore(self, client: Any, ident: str, previous: Mapping[str, Any]) -> dict[str, Any]:
        state = str(previous.get("state", ""))
        if state in ("Enabled", "Enabling", "Updating"):
            client.update_event_source_mapping(UUID=ident, Enabled=True)
        return {"state": state}

    def from_arn(self, service: str, resource: list[str]) -> str | None:
        return resource[1] if service == "lambda" and resource[0] == "event-source-mapping" else None


# What UpdateSchedule takes back from GetSchedule: it replaces the whole schedule, so send all of it.
_SCHEDULE_FIELDS = (
    "Name",
    "GroupName",
    "ScheduleExpression",
    "FlexibleTimeWindow",
    "Target",
    "Description",
    "StartDate",
    "EndDate",
    "ScheduleExpressionTimezone",
    "KmsKeyArn",
    "ActionAfterCompletion",
)


def _schedule_args(ident: str) -> dict[str, str]:
    group, _, name = ident.rpartition("/")
    return {"Name": name, "GroupName": group or "default"}


@SWITCH_KINDS.register
class Schedule(SwitchKind):
    """opsbot's own EventBridge Scheduler schedules (GROUP/NAME), for ``opsbot pause``: hub only."""

    name = "schedule"
    service = "scheduler"
    summary = "An EventBridge Scheduler schedule (GROUP/NAME) of opsbot's own: disabled (opsbot pause)."
    in_members = False
    hub_grants = grants(OPSBOT_SCHEDULES, "scheduler:GetSchedule", "scheduler:UpdateSchedule")
    # UpdateSchedule passes the schedule's own role again.
    hub_grants |= grants("BreachCheckScheduleRole", "iam:PassRole")

    def read(self, client: Any, ident: str) -> dict[str, Any]:
        return {"state": client.get_schedule(**_schedule_args(ident))["State"]}

    def _set(self, client: Any, ident: str, state: str) -> None:
        current = client.get_schedule(**_schedule_args(ident))
        client.update_schedule(**{k: current[k] for k in _SCHEDULE_FIELDS if current.get(k) is not None}, State=state)

    def stop(self, client: Any, ident: str) -> dict[str, Any]:
        self._set(client, ident, "DISABLED")
        return self.stopped_state()

    def restore(self, client: Any, ident: str, previous: Mapping[str, Any]) -> dict[str, Any]:
        state = str(previous.get("state", ""))
        if state == "ENABLED":
            self._set(client, ident, "ENABLED")
        return {"state": state}


def describe(state: Mapping[str, Any] | None) -> str:
    if not state:
        return "?"
    if "reserved_concurrency" in state:
        value = state["reserved_concurrency"]
        return "no reserved concurrency" if value is None else f"reserved concurrency {value}"
    return f"state {state.get('state')}"
