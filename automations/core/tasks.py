"""Scheduled task definitions (``rules/tasks.yaml``), validated by a schema assembled from the task kinds.

Every task has the common keys below; the rest of its keys belong to its kind, whose ``schema``
fragment and ``check`` validate them and whose ``options`` turn them into typed values. A key that
belongs to another kind is reported as such ("'retention' applies to ebs-snapshot tasks only").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from automations.core import schedules
from automations.core.kinds import TASK_KINDS, TaskDefinition
from automations.core.rulebook import LoadedDocument, Problem, RuleFile, load_document, validate_document

ACCOUNT_ID = {"type": "string", "pattern": "^[0-9]{12}$"}
REGION = {"type": "string", "pattern": "^[a-z]{2}(-gov)?-[a-z]+-[0-9]$"}
COMMON_PROPERTIES: dict[str, Any] = {
    "name": {
        "type": "string",
        "pattern": "^[a-z0-9][a-z0-9-]{0,62}$",
        "description": "Lower-case; tag values are matched case-insensitively.",
    },
    "description": {"type": "string"},
    "schedule": {"type": "string", "description": "EventBridge cron(...) or rate(...) expression, UTC."},
    "scope": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "accounts": {"type": "array", "minItems": 1, "items": ACCOUNT_ID},
            "regions": {"type": "array", "minItems": 1, "items": REGION},
        },
    },
    "dry_run": {"type": "boolean"},
}


def tasks_schema() -> dict[str, Any]:
    """The schema of rules/tasks.yaml: the common keys, and each kind's keys when ``kind`` names it."""
    kinds = list(TASK_KINDS)
    own_keys = {key for kind in kinds for key in kind.schema}
    task: dict[str, Any] = {
        "type": "object",
        "required": ["name", "kind", "schedule"],
        # Every known key is allowed here; which kind it belongs to is a semantic check (clearer message).
        "properties": {
            **{key: True for key in sorted(own_keys)},
            **COMMON_PROPERTIES,
            "kind": {"enum": [kind.name for kind in kinds]},
        },
        "additionalProperties": False,
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind.name}}, "required": ["kind"]},
                "then": {"properties": kind.schema, "required": list(kind.required)},
            }
            for kind in kinds
            if kind.schema
        ],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "opsbot scheduled tasks",
        "type": "object",
        "additionalProperties": False,
        "required": ["tasks"],
        "properties": {"tasks": {"type": "array", "items": task}},
    }


def parse_task_list(value: str) -> list[str]:
    """``"Snapshot-Daily, snapshot-weekly"`` -> ``["snapshot-daily", "snapshot-weekly"]`` (order kept)."""
    names = [n.lower() for n in re.split(r"[\s,]+", value.strip()) if n]
    return list(dict.fromkeys(names))


def _semantic_checks(doc: LoadedDocument) -> list[Problem]:
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    owners: dict[str, list[str]] = {}
    for kind in TASK_KINDS:
        for key in kind.schema:
            owners.setdefault(key, []).append(kind.name)
    for i, task in enumerate(doc.data["tasks"]):
        name = task["name"]
        if name in first_seen:
            line = doc.line_of(("tasks", first_seen[name], "name"))
            problems.append(doc.problem(("tasks", i, "name"), f"duplicate task name {name!r} (first at line {line})"))
        else:
            first_seen[name] = i
        kind = TASK_KINDS.get(task["kind"])
        for key in task:
            if key in owners and kind.name not in owners[key]:
                problems.append(
                    doc.problem(("tasks", i, key), f"{key!r} applies to {' and '.join(owners[key])} tasks only")
                )
        try:
            schedules.validate(task["schedule"])
        except schedules.ScheduleError as exc:
            problems.append(doc.problem(("tasks", i, "schedule"), f"invalid schedule: {exc}"))
        problems.extend(kind.check(doc, i))
    return problems


def tasks_from_document(doc: LoadedDocument) -> dict[str, TaskDefinition]:
    if not len(TASK_KINDS):  # an entry point forgot to import the capabilities: say so, not "unknown kind"
        raise RuntimeError("no task kinds are registered: import automations.catalog first")
    validate_document(doc, tasks_schema(), [_semantic_checks])
    out: dict[str, TaskDefinition] = {}
    for t in doc.data["tasks"]:
        scope = t.get("scope", {})
        out[t["name"]] = TaskDefinition(
            name=t["name"],
            kind=t["kind"],
            schedule=t["schedule"],
            options=TASK_KINDS.get(t["kind"]).options(t),
            scope_accounts=tuple(scope["accounts"]) if "accounts" in scope else None,
            scope_regions=tuple(scope["regions"]) if "regions" in scope else None,
            dry_run=t.get("dry_run", False),
            description=t.get("description", ""),
        )
    return out


def load_tasks(path: str | Path, text: str | None = None) -> dict[str, TaskDefinition]:
    return tasks_from_document(load_document(path, text))


TASKS_FILE = RuleFile("tasks.yaml", load_tasks)
