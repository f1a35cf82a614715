"""rules/tasks.yaml validation: every problem as file:line, and the shipped rules are valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from automations.core.rulebook import RulebookError
from automations.core.tasks import load_tasks, parse_task_list
from opsbot.cli import main

GOOD = """\
tasks:
  - name: snapshot-daily
    kind: ebs-snapshot
    schedule: cron(0 3 * * ? *)
    retention:
      keep_last: 7
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RulebookError) as err:
        load_tasks("rules/tasks.yaml", text)
    return [str(p) for p in err.value.problems]


def test_shipped_rules_are_valid():
    tasks = load_tasks(Path(__file__).parent.parent / "rules" / "tasks.yaml")
    assert "snapshot-daily" in tasks


def test_wrong_type():
    text = GOOD.replace("keep_last: 7", "keep_last: seven")
    assert problems(text) == ["rules/tasks.yaml:6: tasks[0].retention.keep_last: 'seven' is not of type 'integer'"]


def test_unknown_key():
    text = GOOD + "    retain_days: 3\n"
    assert problems(text) == ["rules/tasks.yaml:7: tasks[0].retain_days: unknown key(s) ('retain_days' was unexpected)"]


def test_bad_cron():
    text = GOOD.replace("cron(0 3 * * ? *)", "cron(0 3 * * *)")
    (problem,) = problems(text)
    assert problem.startswith("rules/tasks.yaml:4: tasks[0].schedule: invalid schedule: 'cron(0 3 * * *)'")
    assert "6 required" in problem


def test_bad_cron_day_fields():
    (problem,) = problems(GOOD.replace("cron(0 3 * * ? *)", "cron(0 3 * * * *)"))
    assert problem.startswith("rules/tasks.yaml:4:") and "question mark" in problem


def test_bad_rate():
    (problem,) = problems(GOOD.replace("cron(0 3 * * ? *)", "rate(1 days)"))
    assert problem.startswith("rules/tasks.yaml:4: tasks[0].schedule: invalid schedule: 'rate(1 days)'")


def test_duplicate_task_name():
    text = GOOD + "  - name: snapshot-daily\n    kind: ebs-snapshot\n    schedule: rate(1 hour)\n"
    assert problems(text) == [
        "rules/tasks.yaml:7: tasks[1].name: duplicate task name 'snapshot-daily' (first at line 2)"
    ]


def test_unknown_kind_and_missing_schedule():
    text = "tasks:\n  - name: cleanup\n    kind: ami-cleanup\n"
    found = problems(text)
    assert "rules/tasks.yaml:2: tasks[0]: 'schedule' is a required property" in found
    assert (
        "rules/tasks.yaml:3: tasks[0].kind: 'ami-cleanup' is not one of ['ebs-snapshot', 'ebs-snapshot-copy', 'security-group-sweep']"
        in found
    )


def test_every_problem_reported_not_only_the_first():
    text = GOOD.replace("keep_last: 7", "keep_last: 0") + "    colour: blue\n"
    assert len(problems(text)) == 2


def test_bad_description_placeholder():
    text = GOOD + "    snapshot_description: '{task} of {volume}'\n"
    (problem,) = problems(text)
    assert problem.startswith("rules/tasks.yaml:7: tasks[0].snapshot_description: unknown placeholder(s) ['volume']")


def test_yaml_duplicate_key_and_syntax_error():
    assert problems(GOOD + "    kind: ebs-snapshot\n") == ["rules/tasks.yaml:7: tasks[0]: duplicate key 'kind'"]
    (problem,) = problems("tasks:\n  - name: [unclosed\n")
    assert problem.startswith("rules/tasks.yaml:3: YAML syntax error")


def test_task_list_tag_parsing():
    assert parse_task_list("Snapshot-Daily,snapshot-weekly") == ["snapshot-daily", "snapshot-weekly"]
    assert parse_task_list(" snapshot-daily  snapshot-weekly, snapshot-daily ") == [
        "snapshot-daily",
        "snapshot-weekly",
    ]
    assert parse_task_list("") == []


def test_cli_validate_prints_file_line_and_fails(tmp_path, capsys):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text('accounts:\n  - id: "12345"\n    regions: [us-east-1]\n')
    (rules / "tasks.yaml").write_text(GOOD.replace("cron(0 3 * * ? *)", "cron(0 3 * *)"))
    assert main(["validate", "--rules", str(rules)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{rules}/fleet.yaml:2: accounts[0].id: '12345' does not match") for line in out)
    assert any(line.startswith(f"{rules}/tasks.yaml:4: tasks[0].schedule: invalid schedule") for line in out)


def test_cli_validate_ok_on_shipped_rules(capsys):
    assert main(["validate"]) == 0
    assert "ok: 4 task(s)" in capsys.readouterr().out
