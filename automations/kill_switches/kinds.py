"""Kill-switch kinds: what can be stopped, how it is read, stopped and put back exactly.

Each kind is one class registered with ``@SWITCH_KINDS.register``: its name (the ``kind:`` prefix of a
target), the AWS service it needs, the IAM it needs (in member accounts; in the hub for pausing opsbot
itself), and ``read`` / ``stop`` / ``restore``. ``restore`` puts back exactly the recorded state: a
function with no reservation gets none (DeleteFunctionConcurrency), a rule or mapping that was already
off stays off, a rule that also matched CloudTrail management events matches them again.

``identity`` says what protection judges a target by (the names it goes by and its tags), and
``settled`` reads a state the way ``stopped_state`` and ``expected`` are written, so the switchboard can
tell "still as opsbot left it" from "changed meanwhile" (drift) and a lost reply from a failed call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from automations.core.iam import Grant, grants
from automations.core.registry import Registry

OPSBOT_RULES, OPSBOT_SCHEDULES = "rule/opsbot-*", "schedule/opsbot-*"


class SwitchStateError(Exception):
    """A target whose state cannot be acted on safely right now (e.g. a mapping still Updating)."""


@dataclass(frozen=True)
class Identity:
    """What protection judges a target by: every ``kind:id`` it goes by, and its tags."""

    names: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)


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

    def identity(self, client: Any, ident: str, account: str, region: str) -> Identity:
        return Identity((f"{self.name}:{ident}",))

    def stopped_state(self) -> dict[str, Any]:
        return {"state": "DISABLED"}

    def settled(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The state as it will be once AWS has finished applying it (for comparing states)."""
        return {"state": state.get("state")}

    def expected(self, previous: Mapping[str, Any]) -> dict[str, Any]:
        """What ``restore(previous)`` leaves, in ``settled`` terms."""
        return self.settled(previous)

    def from_arn(self, service: str, resource: list[str]) -> str | None:
        """The id in an ARN's resource part, if the ARN names one of this kind."""
        return None


SWITCH_KINDS: Registry[SwitchKind] = Registry("kill-switch kind")


def _lambda_tags(client: Any, arn: str) -> dict[str, str]:
    return dict(client.list_tags(Resource=arn).get("Tags") or {})


@SWITCH_KINDS.register
class LambdaFunction(SwitchKind):
    name = "lambda"
    service = "lambda"
    summary = "A Lambda function: reserved concurrency 0 stops every invocation."
    member_actions = frozenset(
        {
            "lambda:GetFunctionConcurrency",
            "lambda:PutFunctionConcurrency",
            "lambda:DeleteFunctionConcurrency",
            "lambda:ListTags",  # protection: the opsbot:protected tag
        }
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

    def identity(self, client: Any, ident: str, account: str, region: str) -> Identity:
        arn = f"arn:{client.meta.partition}:lambda:{region}:{account}:function:{ident}"
        return Identity((f"lambda:{ident}",), _lambda_tags(client, arn))

    def stopped_state(self) -> dict[str, Any]:
        return {"reserved_concurrency": 0}

    def settled(self, state: Mapping[str, Any]) -> dict[str, Any]:
        value = state.get("reserved_concurrency")
        return {"reserved_concurrency": None if value is None else int(value)}

    def from_arn(self, service: str, resource: list[str]) -> str | None:
        return resource[1].split(":")[0] if service == "lambda" and resource[0] == "function" else None


def _rule_args(ident: str) -> dict[str, str]:
    bus, _, name = ident.rpartition("/")
    return {"Name": name, **({"EventBusName": bus} if bus else {})}


# What PutRule takes back from DescribeRule: PutRule replaces the whole rule ("If you omit arguments in
# PutRule, the old values for those arguments are not kept"), so everything it had is sent again.
_RULE_FIELDS = ("Name", "EventBusName", "ScheduleExpression", "EventPattern", "Description", "RoleArn")
ALL_MANAGEMENT_EVENTS = "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"


@SWITCH_KINDS.register
class EventBridgeRule(SwitchKind):
    """``ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS`` cannot come back through EnableRule (which gives
    ENABLED); it comes back through PutRule with the rule's own settings and that State."""

    name = "rule"
    service = "events"
    summary = "An EventBridge rule (NAME, or BUS/NAME on a custom bus): disabled."
    member_actions = frozenset(
        {
            "events:DescribeRule",
            "events:DisableRule",
            "events:EnableRule",
            "events:PutRule",  # restore ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS
            "events:ListTagsForResource",  # protection: the opsbot:protected tag
        }
    )
    hub_grants = grants(
        OPSBOT_RULES, "events:DescribeRule", "events:DisableRule", "events:EnableRule", "events:PutRule"
    )

    def read(self, client: Any, ident: str) -> dict[str, Any]:
        return {"state": client.describe_rule(**_rule_args(ident))["State"]}

    def stop(self, client: Any, ident: str) -> dict[str, Any]:
        client.disable_rule(**_rule_args(ident))
        return self.stopped_state()

    def restore(self, client: Any, ident: str, previous: Mapping[str, Any]) -> dict[str, Any]:
        state = str(previous.get("state", ""))
        if state == "ENABLED":
            client.enable_rule(**_rule_args(ident))
        elif state == ALL_MANAGEMENT_EVENTS:
            rule = client.describe_rule(**_rule_args(ident))
            client.put_rule(**{k: rule[k] for k in _RULE_FIELDS if rule.get(k)}, State=state)
        return {"state": state}

    def identity(self, client: Any, ident: str, account: str, region: str) -> Identity:
        rule = client.describe_rule(**_rule_args(ident))
        tags = client.list_tags_for_resource(ResourceARN=rule["Arn"]).get("Tags") or []
        names = tuple(dict.fromkeys((f"rule:{ident}", f"rule:{rule['Name']}")))
        return Identity(names, {t["Key"]: t.get("Value", "") for t in tags})

    def from_arn(self, service: str, resource: list[str]) -> str | None:
        return resource[0].removeprefix("rule/") if service == "events" and resource[0].startswith("rule/") else None


# Where a mapping in a transitional state is going (Lambda Developer Guide, event source mapping states).
# "Updating" is missing on purpose: an update keeps Enabled or Disabled, and the state does not say which.
ESM_SETTLES_TO = {"Creating": "Enabled", "Enabling": "Enabled", "Disabling": "Disabled"}
ESM_SETTLED = ("Enabled", "Disabled")


@SWITCH_KINDS.register
class EventSourceMapping(SwitchKind):
    """A mapping caught mid-transition is read again until it settles (at most ``settle_seconds``). If it
    has not settled by then, Creating/Enabling is recorded as Enabled and Disabling as Disabled (what it
    was going to be); Updating says nothing about where it is going, so the flip is refused."""

    name = "esm"
    service = "lambda"
    summary = "A Lambda event source mapping (UUID): disabled, so nothing is read from its queue or stream."
    member_actions = frozenset({"lambda:GetEventSourceMapping", "lambda:UpdateEventSourceMapping", "lambda:ListTags"})
    settle_seconds: ClassVar[float] = 20.0  # well inside the worker's and the policy function's 60 s
    poll_seconds: ClassVar[float] = 2.0

    def _settling(self, client: Any, ident: str) -> str:
        deadline = time.monotonic() + self.settle_seconds
        state = str(client.get_event_source_mapping(UUID=ident)["State"])
        while state not in ESM_SETTLED and time.monotonic() < deadline:
            time.sleep(self.poll_seconds)
            state = str(client.get_event_source_mapping(UUID=ident)["State"])
        return state

    def read(self, client: Any, ident: str) -> dict[str, Any]:
        state = self._settling(client, ident)
        if state in ESM_SETTLED:
            return {"state": state}
        if state in ESM_SETTLES_TO:
            return {"state": ESM_SETTLES_TO[state], "observed": state}
        raise SwitchStateError(
            f"mapping {ident} is still {state} after {self.settle_seconds:.0f} s: where it is going is unknown, "
            "so it was not flipped (its restore could not be exact); try again when it has settled"
        )

    def stop(self, client: Any, ident: str) -> dict[str, Any]:
        client.update_event_source_mapping(UUID=ident, Enabled=False)
        return {"state": "Disabled"}

    def restore(self, client: Any, ident: str, previous: Mapping[str, Any]) -> dict[str, Any]:
        state = self.expected(previous)["state"]
        if state == "Enabled":
            client.update_event_source_mapping(UUID=ident, Enabled=True)
        elif state != "Disabled":  # a record from before transitional states were settled on read
            raise SwitchStateError(f"the recorded state {state!r} does not say whether mapping {ident} was on")
        return {"state": state}

    def identity(self, client: Any, ident: str, account: str, region: str) -> Identity:
        """A mapping goes by its function too: one that feeds a protected function is protected."""
        mapping = client.get_event_source_mapping(UUID=ident)
        function_arn = str(mapping["FunctionArn"])
        arn = mapping.get("EventSourceMappingArn") or (
            f"arn:{client.meta.partition}:lambda:{region}:{account}:event-source-mapping:{ident}"
        )
        function = function_arn.split(":function:", 1)[-1].split(":")[0]
        tags = {**_lambda_tags(client, function_arn), **_lambda_tags(client, arn)}
        return Identity((f"esm:{ident}", f"lambda:{function}"), tags)

    def stopped_state(self) -> dict[str, Any]:
        return {"state": "Disabled"}

    def settled(self, state: Mapping[str, Any]) -> dict[str, Any]:
        value = str(state.get("state"))
        return {"state": ESM_SETTLES_TO.get(value, value)}

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
    observed = f" (read while {state['observed']})" if state.get("observed") else ""
    return f"state {state.get('state')}{observed}"
