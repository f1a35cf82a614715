"""Scheduled task definitions (``rules/tasks.yaml``): parsing, validation and opt-in tag parsing."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from automations import schedules
from automations.rulebook import LoadedDocument, Problem, load_document, validate_document

DEFAULT_SELECTION_TAG = "OpsTaskList"
DEFAULT_SNAPSHOT_DESCRIPTION = "opsbot {task} {volume_id} slot {slot}"
# Placeholders a snapshot description may use; anything else is a typo caught by `opsbot validate`.
DESCRIPTION_FIELDS = frozenset({"task", "volume_id", "instance_id", "slot", "account", "region", "run_id"})
TASK_KINDS = ("ebs-snapshot", "security-group-sweep")
# Keys that only mean something for snapshot tasks.
SNAPSHOT_ONLY_KEYS = (
    "retention",
    "copy_tags",
    "exclude_boot_volume",
    "snapshot_description",
    "selection_tag",
)


@dataclass(frozen=True)
class Retention:
    keep_last: int | None = None
    max_age_days: int | None = None


@dataclass(frozen=True)
class TaskDefinition:
    name: str
    kind: str
    schedule: str
    selection_tag: str = DEFAULT_SELECTION_TAG
    retention: Retention | None = None
    copy_tags: tuple[str, ...] = ()
    exclude_boot_volume: bool = False
    snapshot_description: str = DEFAULT_SNAPSHOT_DESCRIPTION
    scope_accounts: tuple[str, ...] | None = None
    scope_regions: tuple[str, ...] | None = None
    dry_run: bool = False
    description: str = ""


def parse_task_list(value: str) -> list[str]:
    """``"Snapshot-Daily, snapshot-weekly"`` -> ``["snapshot-daily", "snapshot-weekly"]`` (order kept)."""
    names = [n.lower() for n in re.split(r"[\s,]+", value.strip()) if n]
    return list(dict.fromkeys(names))


def _semantic_checks(doc: LoadedDocument) -> list[Problem]:
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    for i, task in enumerate(doc.data["tasks"]):
        name = task["name"]
        if name in first_seen:
            line = doc.line_of(("tasks", first_seen[name], "name"))
            problems.append(doc.problem(("tasks", i, "name"), f"duplicate task name {name!r} (first at line {line})"))
        else:
            first_seen[name] = i
        if task["kind"] != "ebs-snapshot":
            for key in SNAPSHOT_ONLY_KEYS:
                if key in task:
                    problems.append(doc.problem(("tasks", i, key), f"{key!r} applies to ebs-snapshot tasks only"))
        try:
            schedules.validate(task["schedule"])
        except schedules.ScheduleError as exc:
            problems.append(doc.problem(("tasks", i, "schedule"), f"invalid schedule: {exc}"))
        template = task.get("snapshot_description")
        if template is not None:
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as exc:
                problems.append(doc.problem(("tasks", i, "snapshot_description"), f"bad template: {exc}"))
            else:
                unknown = sorted(fields - DESCRIPTION_FIELDS)
                if unknown:
                    problems.append(
                        doc.problem(
                            ("tasks", i, "snapshot_description"),
                            f"unknown placeholder(s) {unknown}; allowed: {sorted(DESCRIPTION_FIELDS)}",
                        )
                    )
    return problems


def tasks_from_document(doc: LoadedDocument) -> dict[str, TaskDefinition]:
    validate_document(doc, "tasks.schema.json", [_semantic_checks])
    out: dict[str, TaskDefinition] = {}
    for t in doc.data["tasks"]:
        retention = t.get("retention")
        scope = t.get("scope", {})
        out[t["name"]] = TaskDefinition(
            name=t["name"],
            kind=t["kind"],
            schedule=t["schedule"],
            selection_tag=t.get("selection_tag", DEFAULT_SELECTION_TAG),
            retention=Retention(retention.get("keep_last"), retention.get("max_age_days")) if retention else None,
            copy_tags=tuple(t.get("copy_tags", ())),
            exclude_boot_volume=t.get("exclude_boot_volume", False),
            snapshot_description=t.get("snapshot_description", DEFAULT_SNAPSHOT_DESCRIPTION),
            scope_accounts=tuple(scope["accounts"]) if "accounts" in scope else None,
            scope_regions=tuple(scope["regions"]) if "regions" in scope else None,
            dry_run=t.get("dry_run", False),
            description=t.get("description", ""),
        )
    return out


def load_tasks(path: str | Path, text: str | None = None) -> dict[str, TaskDefinition]:
    return tasks_from_document(load_document(path, text))
