"""`opsbot killswitch flip|restore|status` and `opsbot pause|resume` through the CLI entry point, and the
one-line errors (no traceback, non-zero exit) for every user mistake the CLI can meet."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer

from opsbot.local import server
from opsbot.local.seed import _member_session, create_member_role, create_operator
from tests.conftest import ACCOUNT_A, ACCOUNT_B
from tests.test_kill_switches import _zip

TARGET = ["lambda:orders", "--account", ACCOUNT_A, "--region", "us-east-1"]


@pytest.fixture
def cli(hub_session, broker, tmp_path, monkeypatch) -> Any:
    """The CLI on moto, with a rules directory whose fleet is accounts A and B in us-east-1."""
    from opsbot.cli import main

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(
        f'external_id: opsbot-test\ndefault_regions: [us-east-1]\naccounts:\n  - {{id: "{ACCOUNT_A}"}}\n'
        f'  - {{id: "{ACCOUNT_B}"}}\n'
    )
    (rules / "tasks.yaml").write_text("tasks: []\n")
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    lam = broker.client(ACCOUNT_A, "us-east-1", "lambda")
    role = broker.client(ACCOUNT_A, "us-east-1", "iam").create_role(RoleName="fn", AssumeRolePolicyDocument="{}")[
        "Role"
    ]["Arn"]
    lam.create_function(FunctionName="orders", Runtime="python3.11", Role=role, Handler="a.h", Code={"ZipFile": _zip()})
    return main, lam


def one_line_error(capsys: Any) -> str:
    """What the CLI told the user: exactly one error line (besides its note of which local AWS it uses)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("(local AWS at ")]
    assert len(lines) == 1 and "Traceback" not in lines[0] and lines[0].startswith("error: "), lines
    return lines[0]


def test_cli_flip_status_restore_and_pause(cli, hub_session, capsys):
    main, lam = cli
    assert main(["killswitch", "flip", *TARGET, "--reason", "INC-1"]) == 0
    assert "stopped (was no reserved concurrency)" in capsys.readouterr().out
    assert lam.get_function_concurrency(FunctionName="orders")["ReservedConcurrentExecutions"] == 0
    assert main(["killswitch", "status"]) == 0
    out = capsys.readouterr().out
    assert "lambda:orders" in out and "no reserved concurrency" in out and "INC-1" in out
    assert main(["killswitch", "restore", *TARGET]) == 0
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName="orders")
    assert main(["killswitch", "restore", *TARGET]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    assert main(["killswitch", "flip", "lambda:orders"]) == 2  # no account/region: refused clearly
    assert "--account" in one_line_error(capsys)

    events = hub_session.client("events")
    events.put_rule(Name="opsbot-task-snapshot-daily", ScheduleExpression="cron(0 3 * * ? *)", State="ENABLED")
    events.put_rule(
        Name="opsbot-sg-remediation",
        EventPattern=json.dumps({"source": ["aws.ec2"]}),
        State="ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS",
    )
    assert main(["pause"]) == 0
    assert events.describe_rule(Name="opsbot-task-snapshot-daily")["State"] == "DISABLED"
    assert events.describe_rule(Name="opsbot-sg-remediation")["State"] == "DISABLED"
    assert main(["resume"]) == 0
    assert events.describe_rule(Name="opsbot-task-snapshot-daily")["State"] == "ENABLED"
    assert (
        events.describe_rule(Name="opsbot-sg-remediation")["State"] == "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"
    )


def test_restore_after_drift_refuses_and_force_overrides_with_the_audit_saying_so(cli, ledger, capsys):
    main, lam = cli
    lam.put_function_concurrency(FunctionName="orders", ReservedConcurrentExecutions=25)
    assert main(["killswitch", "flip", *TARGET]) == 0
    lam.put_function_concurrency(FunctionName="orders", ReservedConcurrentExecutions=40)  # a redeploy meanwhile
    capsys.readouterr()
    assert main(["killswitch", "restore", *TARGET]) == 1
    err = one_line_error(capsys)
    assert "now reserved concurrency 40; opsbot left reserved concurrency 0" in err and "--force" in err
    assert lam.get_function_concurrency(FunctionName="orders")["ReservedConcurrentExecutions"] == 40
    assert main(["killswitch", "restore", *TARGET, "--force"]) == 0
    assert "forced: it was reserved concurrency 40" in capsys.readouterr().out
    assert lam.get_function_concurrency(FunctionName="orders")["ReservedConcurrentExecutions"] == 25
    from automations.kill_switches.switchboard import Switchboard, Target

    trail = Switchboard(ledger.table, lambda *a: None, None).audit(Target("lambda", "orders", ACCOUNT_A, "us-east-1"))
    assert [(a["outcome"], a.get("forced")) for a in trail] == [
        ("flipped", None),
        ("drifted", None),
        ("restored", True),
    ]
    assert trail[-1]["actor"]["type"] == "cli"


def test_resume_refuses_a_rule_changed_while_paused_unless_forced(cli, hub_session, capsys):
    main, _ = cli
    events = hub_session.client("events")
    events.put_rule(Name="opsbot-task-sg-sweep", ScheduleExpression="rate(1 hour)", State="ENABLED")
    assert main(["pause"]) == 0
    events.enable_rule(Name="opsbot-task-sg-sweep")  # a redeploy while paused
    capsys.readouterr()
    assert main(["resume"]) == 1
    assert "no longer as opsbot left it (now state ENABLED; opsbot left state DISABLED)" in one_line_error(capsys)
    assert main(["resume", "--force"]) == 0


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (["--account", "999999999999", "--region", "us-east-1"], "account 999999999999 is not in the fleet"),
        (["--account", ACCOUNT_A, "--region", "eu-west-1"], "region eu-west-1 is not one of account"),
    ],
)
def test_a_target_outside_the_fleet_is_a_clear_error(cli, capsys, where, message):
    main, _ = cli
    for action in ("flip", "restore"):
        assert main(["killswitch", action, "lambda:orders", *where]) == 2
        assert message in one_line_error(capsys)


def test_a_protected_target_is_a_clear_error(cli, broker, capsys):
    main, _ = cli
    events = broker.client(ACCOUNT_A, "us-east-1", "events")
    events.put_rule(Name="opsbot-forward-alarm-state-changes", EventPattern=json.dumps({"source": ["aws.cloudwatch"]}))
    target = ["rule:opsbot-forward-alarm-state-changes", "--account", ACCOUNT_A, "--region", "us-east-1"]
    assert main(["killswitch", "flip", *target]) == 1
    assert "flip refused: protected: rule:opsbot-forward-alarm-state-changes is one of opsbot's own" in one_line_error(
        capsys
    )
    assert events.describe_rule(Name="opsbot-forward-alarm-state-changes")["State"] == "ENABLED"


def test_a_member_role_the_hub_cannot_assume_is_a_clear_error(cli, hub_session, fleet, monkeypatch, capsys):
    """moto enforces IAM here: the operator may assume the member role in account A only."""
    main, _ = cli
    hub_account = hub_session.client("sts").get_caller_identity()["Account"]
    for account in (ACCOUNT_A, ACCOUNT_B):
        create_member_role(_member_session(hub_session, fleet, account), fleet, hub_account)
    keys = create_operator(hub_session, fleet, allowed_accounts=[ACCOUNT_A])
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    with enable_iam_authentication():
        code = main(["killswitch", "flip", "lambda:orders", "--account", ACCOUNT_B, "--region", "us-east-1"])
    assert code == 1
    err = one_line_error(capsys)
    assert f"the hub cannot reach {ACCOUNT_B}/us-east-1: AccessDenied" in err


@pytest.mark.parametrize(
    ("slot", "message"),
    [("yesterday", "is not a time"), ("2026-13-40T03:00Z", "is not a time"), ("2999-01-01T03:00Z", "in the future")],
)
def test_a_bad_slot_is_a_clear_error(slot, message, capsys):
    from opsbot.cli import main

    assert main(["run", "snapshot-daily", "--slot", slot]) == 2
    assert message in one_line_error(capsys)


@pytest.fixture
def local_state(tmp_path, monkeypatch) -> Any:
    """The CLI as a user runs it: no OPSBOT_USE_AWS, the local AWS state file of this test's own. The CLI
    points the process environment at the local AWS; it is put back afterwards."""
    saved = dict(os.environ)
    for name in ("OPSBOT_USE_AWS", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(server, "STATE_FILE", tmp_path / "local.json")

    def write(state: dict[str, Any]) -> None:
        (tmp_path / "local.json").write_text(json.dumps(state))

    yield write
    os.environ.clear()
    os.environ.update(saved)


def test_the_local_aws_not_running_is_a_clear_error(local_state, capsys):
    from opsbot.cli import main

    local_state({"endpoint": server.endpoint(server.free_port())})  # `opsbot local up` ran; it is down now
    assert main(["killswitch", "status"]) == 1
    assert "is not running: run `opsbot local up`" in one_line_error(capsys)


def test_the_local_aws_not_seeded_is_a_clear_error(local_state, capsys):
    from opsbot.cli import main

    port = server.free_port()
    moto = ThreadedMotoServer(ip_address=server.HOST, port=port, verbose=False)  # a real moto server, empty
    moto.start()
    try:
        endpoint = server.endpoint(port)
        local_state({"endpoint": endpoint})  # up, never seeded
        assert main(["killswitch", "status"]) == 1
        assert "up but not seeded: run `opsbot local seed`" in one_line_error(capsys)
        # Seeded once, but the server was restarted since: the tables are gone.
        local_state({"endpoint": endpoint, "hub_env": {"OPSBOT_LEDGER_TABLE": "opsbot-ledger"}})
        assert main(["killswitch", "status"]) == 1
        assert "ResourceNotFoundException" in (err := one_line_error(capsys)) and "opsbot local seed" in err
    finally:
        moto.stop()
