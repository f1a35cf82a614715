"""`opsbot killswitch flip|restore|status` and `opsbot pause|resume` through the CLI entry point."""

from __future__ import annotations

from tests.conftest import ACCOUNT_A
from tests.test_kill_switches import _zip


def test_cli_flip_status_restore_and_pause(hub_session, broker, tmp_path, monkeypatch, capsys):
    from opsbot.cli import main

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(
        f'external_id: opsbot-test\ndefault_regions: [us-east-1]\naccounts:\n  - {{id: "{ACCOUNT_A}"}}\n'
    )
    (rules / "tasks.yaml").write_text("tasks: []\n")
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    lam = broker.client(ACCOUNT_A, "us-east-1", "lambda")
    role = broker.client(ACCOUNT_A, "us-east-1", "iam").create_role(RoleName="fn", AssumeRolePolicyDocument="{}")[
        "Role"
    ]["Arn"]
    lam.create_function(FunctionName="orders", Runtime="python3.11", Role=role, Handler="a.h", Code={"ZipFile": _zip()})

    target = ["lambda:orders", "--account", ACCOUNT_A, "--region", "us-east-1"]
    assert main(["killswitch", "flip", *target, "--reason", "INC-1"]) == 0
    assert "stopped (was no reserved concurrency)" in capsys.readouterr().out
    assert lam.get_function_concurrency(FunctionName="orders")["ReservedConcurrentExecutions"] == 0
    assert main(["killswitch", "status"]) == 0
    out = capsys.readouterr().out
    assert "lambda:orders" in out and "no reserved concurrency" in out and "INC-1" in out
    assert main(["killswitch", "restore", *target]) == 0
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName="orders")
    assert main(["killswitch", "restore", *target]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    assert main(["killswitch", "flip", "lambda:orders"]) == 2  # no account/region: refused clearly
    assert "--account" in capsys.readouterr().err

    events = hub_session.client("events")
    events.put_rule(Name="opsbot-task-snapshot-daily", ScheduleExpression="cron(0 3 * * ? *)", State="ENABLED")
    assert main(["pause"]) == 0
    assert events.describe_rule(Name="opsbot-task-snapshot-daily")["State"] == "DISABLED"
    assert main(["resume"]) == 0
    assert events.describe_rule(Name="opsbot-task-snapshot-daily")["State"] == "ENABLED"
