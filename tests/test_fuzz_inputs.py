"""Property-based tests over the real recorded inputs, one per handler (issue: every input through one
typed boundary). Each example is a real fixture with one to three mutations (tests/mutations.py).

Properties:
  - no exception escapes a handler other than the designed ones (``InputError`` and, where the
    contract says so, ``RunError`` for an unknown task or run);
  - the Slack endpoint never answers 5xx, and answers within Slack's 3 s;
  - a forbidden rule in a group the mutated record still names is judged (revoked here), unless the
    record is, by its own fields, not a rule change that happened in the fleet.

`make fuzz` runs 2,000 examples per handler (HYPOTHESIS_PROFILE=fuzz) and prints the counts; `make test`
runs the small "ci" profile.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from automations.core.boundary import InputError
from automations.core.runs import RunError
from automations.security_groups.events import CLOSING_EVENTS, HANDLED_EVENTS
from tests.conftest import ACCOUNT_A, FIXTURES, FakeLambdaContext
from tests.mutations import mutated
from tests.sg_events import REGION, readdress, record
from tests.slack_support import press_body, signed

pytestmark = pytest.mark.fuzz
SG_RECORDS = [
    "authorize_sg_ingress_modern",
    "authorize_sg_ingress_legacy",
    "authorize_sg_ingress_ipv6",
    "authorize_sg_ingress_group_name",
    "authorize_sg_ingress_modern_port25_eventbridge",
    "authorize_sg_egress",
    "authorize_sg_ingress_error",
    "modify_sg_rules",
]


def fixture(path: str) -> Any:
    return json.loads((FIXTURES / path).read_text())["payload"]


def report(name: str, counts: Counter[str]) -> None:
    """What `make fuzz` prints per handler (run with -s)."""
    print(
        f"\nfuzz {name}: {sum(counts.values())} examples: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )


def rules_dir(tmp_path: Any, **files: str) -> Any:
    rules = tmp_path / "rules"
    rules.mkdir()
    fleet = f'external_id: opsbot-test\naccounts:\n  - {{id: "{ACCOUNT_A}", regions: [{REGION}]}}\n'
    shipped = FIXTURES.parent.parent / "rules"
    (rules / "fleet.yaml").write_text(files.pop("fleet", fleet))
    (rules / "tasks.yaml").write_text(files.pop("tasks", (shipped / "tasks.yaml").read_text()))
    for name in ("security_groups.yaml", "quotas.yaml"):
        (rules / name).write_text((shipped / name).read_text())
    for name, text in files.items():
        (rules / f"{name}.yaml").write_text(text)
    return rules


@pytest.fixture
def wired(hub_session, tmp_path, monkeypatch):
    """The handlers' wiring pointed at moto and a rules directory of the test's own."""
    from handlers import _wiring

    def use(**files: str) -> None:
        monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules_dir(tmp_path, **files)))
        _wiring.reset()

    yield use
    _wiring.reset()


# ---- security-group events ------------------------------------------------------------------------
def still_names(event: Any, group: str) -> bool:
    return group in json.dumps(event, default=str) if _serialisable(event) else False


def _serialisable(value: Any) -> bool:
    try:
        json.dumps(value, default=str)
    except (ValueError, RecursionError):
        return False
    return True


def acts_by_its_own_fields(event: Any) -> bool:
    """Whether the record, read independently of opsbot's parser, is a rule change in the fleet."""
    if not isinstance(event, dict) or not isinstance(event.get("detail"), dict):
        return False
    detail = event["detail"]
    return (
        detail.get("eventName") in HANDLED_EVENTS
        and detail.get("eventName") not in CLOSING_EVENTS
        and detail.get("errorCode") in (None, "")
        and (event.get("account") or detail.get("recipientAccountId")) == ACCOUNT_A
        and (event.get("region") or detail.get("awsRegion")) == REGION
    )


def test_security_group_events_never_crash_and_never_leave_a_named_rule_open(wired, sg):
    from handlers import sg_events

    wired()
    group = sg.group()
    counts: Counter[str] = Counter()

    def world_ssh_record(name: str) -> dict[str, Any]:
        rules = sg.rules(group)
        if not any(r.get("CidrIpv4") == "0.0.0.0/0" and r.get("FromPort") == 22 for r in rules):
            sg.ec2.authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[
                    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
                ],
            )
            rules = sg.rules(group)
        world = [r for r in rules if r.get("CidrIpv4") == "0.0.0.0/0" and r.get("FromPort") == 22]
        base = readdress(record(name), ACCOUNT_A, REGION, group, world, event_id=str(uuid.uuid4()))
        if name == "modify_sg_rules":
            base["detail"]["requestParameters"]["ModifySecurityGroupRulesRequest"]["SecurityGroupRule"][
                "SecurityGroupRuleId"
            ] = world[0]["SecurityGroupRuleId"]
        return base

    @given(name=st.sampled_from(SG_RECORDS), data=st.data())
    def check(name: str, data: st.DataObject) -> None:
        base = world_ssh_record(name)
        event, done = data.draw(mutated(base))
        try:
            result = sg_events.handler(event, FakeLambdaContext())
        except InputError:
            counts["designed error (dead-letter queue)"] += 1
            return
        counts["ignored" if result.get("ignored") else "handled"] += 1
        if acts_by_its_own_fields(event) and still_names(event, group) and not name.startswith("authorize_sg_egress"):
            open_world = [r for r in sg.rules(group) if r.get("CidrIpv4") == "0.0.0.0/0" and r.get("FromPort") == 22]
            judged = result["counts"].get("rules_checked", 0) > 0
            assert not open_world or judged, f"{name}: {done}: the world-open rule was neither revoked nor judged"

    check()
    report("sg_events.handler", counts)


# ---- the Slack interactivity endpoint -------------------------------------------------------------
def test_the_slack_endpoint_never_answers_5xx_to_a_signed_request(endpoint):

    counts: Counter[str] = Counter()
    base = json.loads(dict(_form(press_body(endpoint, "killswitch_flip", "U0ONCALLDANA")))["payload"])
    transports = st.sampled_from(["form", "base64", "not-base64", "not-utf8", "deep", "no-payload", "many-fields"])

    @given(data=st.data(), transport=transports)
    def check(data: st.DataObject, transport: str) -> None:
        payload, _ = data.draw(mutated(base))
        try:
            text = json.dumps(payload)
        except (ValueError, RecursionError):
            assume(False)
            return
        body = urlencode({"payload": text})
        encoded, b64 = body, False
        if transport == "base64":
            encoded, b64 = base64.b64encode(body.encode()).decode(), True
        elif transport == "not-base64":
            encoded, b64 = body + "!!", True
        elif transport == "not-utf8":
            encoded, b64 = base64.b64encode(b"\xff\xfe" + body.encode()).decode(), True
        elif transport == "deep":
            body = encoded = urlencode({"payload": "[" * 50_000 + "]" * 50_000})
        elif transport == "no-payload":
            body = encoded = urlencode({"pay": text})
        elif transport == "many-fields":
            body = encoded = "&".join(f"f{i}=1" for i in range(5000)) + "&" + body
        response = _post(endpoint, encoded, signed(body), b64)
        counts[str(response["statusCode"])] += 1
        assert response["statusCode"] < 500, (transport, response)

    check()
    unsigned = _post(endpoint, urlencode({"payload": json.dumps(base)}), {}, False)
    assert unsigned["statusCode"] == 401
    report("slack_actions.handler", counts)


def _form(body: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(body)


def _post(env: dict[str, Any], body: str, headers: dict[str, str], b64: bool) -> dict[str, Any]:
    event = copy.deepcopy(fixture("lambda/api_gateway_proxy_event.json"))
    event.update(httpMethod="POST", path="/slack/actions", resource="/slack/actions", headers=headers, body=body)
    event["isBase64Encoded"] = b64
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    event["requestContext"].update(httpMethod="POST", path="/slack/actions", resourcePath="/slack/actions")
    event["queryStringParameters"] = event["multiValueQueryStringParameters"] = None
    result: dict[str, Any] = env["api"].handler(event, FakeLambdaContext())
    return result


# ---- the kill-switch worker (SQS job messages) ------------------------------------------------------
def test_the_kill_switch_worker_fails_only_unreadable_jobs_and_never_the_batch(endpoint):

    body = press_body(endpoint, "killswitch_flip", "U0ONCALLDANA")
    assert _post(endpoint, body, signed(body), False)["statusCode"] == 200
    (message,) = endpoint["sqs"].receive_message(QueueUrl=endpoint["queue"])["Messages"]
    good = json.loads(message["Body"])
    template = fixture("lambda/sqs_event.json")["Records"][0]
    counts: Counter[str] = Counter()

    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        job, _ = data.draw(mutated(good))
        try:
            text = json.dumps(job)
        except (ValueError, RecursionError):
            text = "[" * 5000
        records = [
            {**template, "messageId": "good", "body": json.dumps(good)},
            {**template, "messageId": "fuzzed", "body": text},
        ]
        answer = endpoint["worker"].handler({"Records": records}, FakeLambdaContext())
        failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
        assert "good" not in failed
        counts["failed (redelivered, then dead-lettered)" if failed else "done"] += 1

    check()
    report("kill_switch_worker.handler", counts)


# ---- CloudWatch alarm state changes -----------------------------------------------------------------
def test_alarm_events_never_crash(wired, broker):
    from handlers import alarm_policies

    account = fixture("eventbridge/cloudwatch_alarm_state_change.json")["account"]
    wired(
        fleet=f'external_id: opsbot-test\naccounts:\n  - {{id: "{account}", regions: [us-east-1]}}\n',
        kill_switches="policies:\n  - {name: cpu, alarm: ServerCpuTooHigh, targets: ['lambda:worker'], restore_on_ok: true}\n"
        "  - {name: aggregated, alarm: ServiceAggregatedAlarm, targets: ['lambda:worker']}\n",
    )
    bases = {  # the recorded shapes: a state change, a suppressed composite, a configuration change, and
        # CloudWatch's payload when a Lambda function is itself the alarm action (refused)
        "state-change": fixture("eventbridge/cloudwatch_alarm_state_change.json"),
        "suppressed": fixture("eventbridge/cloudwatch_composite_alarm_actions_suppressed.json"),
        "configuration": fixture("eventbridge/cloudwatch_alarm_configuration_change.json"),
        "direct": fixture("lambda/cloudwatch_alarm_action_payload.json"),
    }
    counts: Counter[str] = Counter()

    @given(data=st.data(), which=st.sampled_from(sorted(bases)))
    def check(data: st.DataObject, which: str) -> None:
        event, _ = data.draw(mutated(copy.deepcopy(bases[which])))
        if isinstance(event, dict):
            event["id"] = str(uuid.uuid4())
        try:
            result = alarm_policies.handler(event, FakeLambdaContext())
        except InputError:
            counts["designed error (dead-letter queue)"] += 1
            return
        counts["acted" if result["results"] else "nothing to do"] += 1

    check()
    report("alarm_policies.handler", counts)


# ---- schedules: plan, unit and close of a run --------------------------------------------------------
@pytest.mark.parametrize(
    "module, key, job", [("scheduled_task", "task", "snapshot-daily"), ("check_quotas", "check", "lambda-concurrency")]
)
def test_schedule_events_never_crash(wired, module, key, job):
    import importlib

    handlers = importlib.import_module(f"handlers.{module}")
    wired()
    scheduled = fixture("eventbridge/scheduled_event.json")
    base = {key: job, "id": scheduled["id"], "time": scheduled["time"]}  # what the schedule target sends
    counts: Counter[str] = Counter()

    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        event, _ = data.draw(mutated(base))
        if isinstance(event, dict):
            event["id"] = str(uuid.uuid4())
        try:
            plan = handlers.plan(event, FakeLambdaContext())
        except (InputError, RunError):
            counts["designed error (execution fails, alarmed)"] += 1
            return
        counts["planned"] += 1
        # Task runs hand the Map their units; checks, batches of them ({"units": [...]} each).
        assert plan["run_id"] and isinstance(plan["units"] if "units" in plan else plan["batches"], list)

    check()
    report(f"{module}.plan", counts)


def test_unit_and_close_steps_never_crash(wired):
    from handlers import scheduled_task

    wired()
    plan = scheduled_task.plan(
        {"task": "snapshot-daily", "id": "e-1", "time": "2026-11-25T03:00:00Z"}, FakeLambdaContext()
    )
    (unit,) = plan["units"]
    counts: Counter[str] = Counter()

    @given(data=st.data(), step=st.sampled_from(["unit", "close"]))
    def check(data: st.DataObject, step: str) -> None:
        base = unit if step == "unit" else {"run_id": plan["run_id"], "error": {}}
        event, _ = data.draw(mutated(base))
        try:
            getattr(scheduled_task, step)(event, FakeLambdaContext())
        except (InputError, RunError):
            counts[f"{step}: designed error"] += 1
            return
        counts[f"{step}: done"] += 1

    check()
    report("scheduled_task.unit/close", counts)
