"""`opsbot validate`: every rules file against its schema (assembled from the registries of kinds), and
rules/tasks.yaml against the schedules in template.yaml, in both directions. Each problem is file:line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from automations.core.rulebook import Problem, RulebookError
from opsbot.cfn import PROJECT_ROOT, load_template, resources_of_type

TEMPLATE = PROJECT_ROOT / "template.yaml"


def schedule_problems(tasks: dict[str, Any], template_path: Path = TEMPLATE) -> list[Problem]:
    """Each task needs exactly one schedule rule in template.yaml, with the same expression."""
    text = template_path.read_text(encoding="utf-8").splitlines()

    def line_of(logical_id: str) -> int:
        return next((i + 1 for i, line in enumerate(text) if line.strip() == f"{logical_id}:"), 1)

    rules = resources_of_type(load_template(template_path), "AWS::Events::Rule")
    by_task: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for logical_id, rule in rules.items():
        if task := (rule.get("Metadata") or {}).get("opsbot", {}).get("task"):
            by_task.setdefault(task, []).append((logical_id, rule))
    problems = []
    name = (
        str(template_path.relative_to(PROJECT_ROOT))
        if template_path.is_relative_to(PROJECT_ROOT)
        else str(template_path)
    )
    for task_name, task in tasks.items():
        found = by_task.pop(task_name, [])
        if len(found) != 1:
            problems.append(Problem(name, 1, f"task {task_name!r} needs exactly one schedule rule, found {len(found)}"))
            continue
        logical_id, rule = found[0]
        expression = rule["Properties"].get("ScheduleExpression")
        if expression != task.schedule:
            problems.append(
                Problem(
                    name,
                    line_of(logical_id),
                    f"{logical_id}: schedule {expression!r} != rules/tasks.yaml {task.schedule!r}",
                )
            )
    for task_name, found in by_task.items():
        for logical_id, _ in found:
            problems.append(Problem(name, line_of(logical_id), f"{logical_id}: schedules unknown task {task_name!r}"))
    return problems


def cmd_validate(args: argparse.Namespace) -> int:
    from automations.catalog import RULE_FILES
    from automations.core.tasks import TASKS_FILE

    rules_dir = Path(args.rules)
    problems: list[Problem] = []
    tasks: dict[str, Any] = {}
    for rule_file, required in RULE_FILES:
        path = rules_dir / rule_file.name
        if not path.exists():
            if required:
                problems.append(Problem(str(path), 1, "missing: no such file"))
            continue
        try:
            loaded = rule_file.load(path)
        except RulebookError as exc:
            problems.extend(exc.problems)
            continue
        if rule_file is TASKS_FILE:
            tasks = loaded
    if tasks and TEMPLATE.exists():
        problems.extend(schedule_problems(tasks))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(tasks)} task(s) in {rules_dir}")
    return 0


def cmd_check_package(args: argparse.Namespace) -> int:
    """`make package`'s last step: the staged rules are valid and hold none of the local demo's ids (its
    fleet, external id, on-call and kill-switch policy), so the demo's configuration never ships."""
    from opsbot.local.demo_rules import demo_ids_in

    rules_dir = Path(args.package) / "rules"
    if not rules_dir.is_dir():
        print(f"error: {rules_dir}: no rules directory in the package", file=sys.stderr)
        return 1
    found = demo_ids_in(rules_dir)
    for line in found:
        print(line)
    if found:
        print(
            f"{len(found)} demo id(s) in the package: put your own in rules/ (the demo's stay in opsbot/local/rules/)",
            file=sys.stderr,
        )
        return 1
    return cmd_validate(argparse.Namespace(rules=str(rules_dir)))
