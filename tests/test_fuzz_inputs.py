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
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from moto.core.model_instances import reset_model_data

from automations.core.boundary import InputError
from automations.core.runs import RunError
from automations.security_groups.events import CLOSING_EVENTS, HANDLED_EVENTS
from opsbot.local.hub import IDEMPOTENCY_TABLE, LEDGER_TABLE
from tests.conftest import ACCOUNT_A, FIXTURES, FakeLambdaContext
from tests.map_support import map_items
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


class Examples:
    """Each example starts from the world the test arranged: call it at the start of every example.

    - The ledger table is put back as it was when this was made (items an example wrote are deleted,
      items it changed are written back). Examples stay independent of each other (hypothesis replays
      and shrinks them one by one), and the table stays small: moto's TransactWriteItems deep-copies
      the whole table first (its rollback copy), so on a table that grew with every example each
      transaction took longer (about a second after a few hundred examples).
    - The idempotency table is emptied: an odd event id ("odd at id" mutations repeat a few values) must
      not replay an earlier example's result for a different record. (On AWS an id is one event's.)
    - moto keeps every model object it ever made (``BaseModel.instances_tracked``, for moto server's
      dashboard) until ``mock_aws`` stops, those rollback copies included: over 2,000 examples that
      was gigabytes (``make fuzz`` was OOM-killed). The backends hold their own state; forgetting the
      tracking list frees only what nothing else holds.
    """

    def __init__(self) -> None:
        self.table = boto3.resource("dynamodb", region_name="us-east-1").Table(LEDGER_TABLE)
        self.baseline = self._items()

    def _items(self) -> dict[tuple[str, str], dict[str, Any]]:
        items: dict[tuple[str, str], dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"ConsistentRead": True}
        while True:
            page = self.table.scan(**kwargs)
            items.update({(i["pk"], i["sk"]): i for i in page["Items"]})
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def __call__(self) -> None:
        reset_model_data()
        idempotency = boto3.resource("dynamodb", region_name="us-east-1").Table(IDEMPOTENCY_TABLE)
        keys = [k["AttributeName"] for k in idempotency.key_schema]
        with idempotency.batch_writer() as batch:
            for item in idempotency.scan(ConsistentRead=True)["Items"]:
                batch.delete_item(Key={k: item[k] for k in keys})
        current = self._items()
        with self.table.batch_writer() as batch:
            for pk, sk in current.keys() - self.baseline.keys():
                batch.delete_item(Key={"pk": pk, "sk": sk})
            for key, item in self.baseline.items():
                if current.get(key) != item:
                    batch.put_item(Item=item)


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
    from opsbot.local.hub import create_manifest_bucket

    monkeypatch.setenv("OPSBOT_MANIFEST_BUCKET", create_manifest_bucket(hub_session))

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

    new_example = Examples()

    @given(name=st.sampled_from(SG_RECORDS), data=st.data())
    def check(name: str, data: st.DataObject) -> None:
        new_example()
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
SLACK_BUDGET_S = 3.0  # Slack gives an interactive endpoint 3 seconds to answer


def test_the_slack_endpoint_never_answers_5xx_to_a_signed_request(endpoint):

    counts: Counter[str] = Counter()
    base = json.loads(dict(_form(press_body(endpoint, "killswitch_flip", "U0ONCALLDANA")))["payload"])
    transports = st.sampled_from(["form", "base64", "not-base64", "not-utf8", "deep", "no-payload", "many-fields"])

    new_example = Examples()

    @given(data=st.data(), transport=transports)
    def check(data: st.DataObject, transport: str) -> None:
        new_example()
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
        started = time.perf_counter()
        response = _post(endpoint, encoded, signed(body), b64)
        elapsed = time.perf_counter() - started
        slowest[0] = max(slowest[0], elapsed)
        counts[str(response["statusCode"])] += 1
        assert response["statusCode"] < 500, (transport, response)
        assert elapsed < SLACK_BUDGET_S, (transport, elapsed)  # Slack's 3 seconds, in-process

    slowest = [0.0]
    check()
    counts[f"slowest answer {slowest[0] * 1000:.0f} ms"] = 1
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

    new_example = Examples()

    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        new_example()
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

    new_example = Examples()

    @given(data=st.data(), which=st.sampled_from(sorted(bases)))
    def check(data: st.DataObject, which: str) -> None:
        new_example()
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

    new_example = Examples()

    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        new_example()
        event, _ = data.draw(mutated(base))
        if isinstance(event, dict):
            event["id"] = str(uuid.uuid4())
        try:
            plan = handlers.plan(event, FakeLambdaContext())
        except (InputError, RunError):
            counts["designed error (execution fails, alarmed)"] += 1
            return
        counts["planned"] += 1
        # The units are in S3: the plan hands the Distributed Map only where they are.
        assert plan["run_id"] and plan["manifest"]["key"] and "units" not in plan

    check()
    report(f"{module}.plan", counts)


def test_unit_and_close_steps_never_crash(wired):
    from handlers import scheduled_task

    wired()
    plan = scheduled_task.plan(
        {"task": "snapshot-daily", "id": "e-1", "time": "2026-11-25T03:00:00Z"}, FakeLambdaContext()
    )
    (unit,) = map_items(plan)
    counts: Counter[str] = Counter()

    new_example = Examples()

    @given(data=st.data(), step=st.sampled_from(["unit", "close"]))
    def check(data: st.DataObject, step: str) -> None:
        new_example()
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


# ---- what the fuzz run found: records that repeat a rule, events with more rules than one item holds ----
def test_a_rule_the_record_lists_thousands_of_times_is_judged_claimed_and_recorded_once(wired, sg):
    """The "huge" mutation of a securityGroupRuleSet: 5,000 copies of one rule were 5,000 verdicts, claims
    and ledger actions (over 10 minutes, then a record over DynamoDB's 400 KB and a StoryError)."""
    from handlers import sg_events

    wired()
    group = sg.group()
    sg.ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )
    world = [r for r in sg.rules(group) if r.get("CidrIpv4") == "0.0.0.0/0"]
    event = readdress(record("authorize_sg_ingress_modern"), ACCOUNT_A, REGION, group, world, event_id="e-huge")
    rule_set = event["detail"]["responseElements"]["securityGroupRuleSet"]
    rule_set["items"] = rule_set["items"] * 5000

    result = sg_events.handler(event, FakeLambdaContext())

    assert result["counts"] == {"revoked": 1, "rules_checked": 1}
    assert not [r for r in sg.rules(group) if r.get("CidrIpv4") == "0.0.0.0/0"]
    (action,) = sg.ledger.get_run(result["run_id"])["actions"]
    assert action["resource"] == world[0]["SecurityGroupRuleId"]


def test_a_record_that_lists_a_rule_again_differently_has_its_groups_rules_judged():
    from automations.security_groups.events import SgChange, parse_event

    event = record("authorize_sg_ingress_modern")
    items = event["detail"]["responseElements"]["securityGroupRuleSet"]["items"]
    items.append({**items[0], "fromPort": 3389, "toPort": 3389})

    change = parse_event(event)

    assert isinstance(change, SgChange) and len(change.rules) == 1
    assert [u for u in change.unclear if "listed again, differently" in u]  # fail closed: the group is read


def test_an_event_with_more_findings_than_one_item_holds_is_recorded_and_announced_in_bounds(ledger):
    """1,000 revoked rules (a group at EC2's highest rules quota): every one counted, the record and the
    announcement within DynamoDB's 400 KB, failures listed first, and what is left out said so."""
    from dataclasses import replace

    from automations.security_groups.enforcement import Outcome
    from automations.security_groups.events import Actor, Envelope
    from automations.security_groups.policy import SgRule
    from automations.security_groups.remediation import (
        MAX_ALERT_DETAILS,
        MAX_RECORDED_ACTIONS,
        Remediation,
        tell,
    )
    from tests.sg_events import NOW, POLICY

    world = SgRule(ACCOUNT_A, REGION, "sg-0123456789abcdef0", "sgr-0", False, "tcp", 22, 22, cidr_ipv4="0.0.0.0/0")
    verdict = POLICY.evaluate(world, NOW.date())
    assert verdict is not None and verdict.action == "revoke"
    outcomes = [Outcome(replace(verdict, rule=replace(world, rule_id=f"sgr-{i:017x}")), "revoked") for i in range(1000)]
    outcomes[-1].result, outcomes[-1].error = "failed", "UnauthorizedOperation: not allowed"
    actor = Actor("arn:aws:iam::210987654321:user/dana", "IAMUser", "198.51.100.7", "console")
    rem = Remediation(Envelope("e-many", "AuthorizeSecurityGroupIngress", ACCOUNT_A, REGION, actor, NOW), outcomes)

    result = tell(rem, ledger, None, NOW)

    assert result["counts"] == {"revoked": 999, "failed": 1, "rules_checked": 0}
    run = ledger.get_run(result["run_id"])
    assert len(run["actions"]) == MAX_RECORDED_ACTIONS and run["actions_omitted"] == 1000 - MAX_RECORDED_ACTIONS
    assert run["actions"][0]["outcome"] == "failed"  # what on-call must see is never the part left out
    assert len(json.dumps(run, default=str)) < 400_000
    announced = ledger.table.get_item(Key={"pk": "OUTBOX#sg#e-many", "sk": "OUTBOX"})["Item"]["alert"]
    assert len(announced["details"]) == MAX_ALERT_DETAILS and announced["details"][0].startswith("failed:")
    assert f"{1000 - MAX_ALERT_DETAILS} more finding(s) not listed" in announced["context"]
    assert len(json.dumps(announced, default=str)) < 20_000
