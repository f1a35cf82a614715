"""What the Distributed Map hands each child: the plan's manifest items from S3 (ItemReader), with the
ItemSelector of statemachines/run.asl.yaml applied, and batched as check.asl.yaml's ItemBatcher does."""

from __future__ import annotations

import json
from typing import Any

import boto3
import yaml

from opsbot.cfn import PROJECT_ROOT


def _item_selector(machine: str) -> dict[str, str]:
    definition = yaml.safe_load((PROJECT_ROOT / "statemachines" / machine).read_text(encoding="utf-8"))
    selector: dict[str, str] = definition["States"]["RunUnits"]["ItemSelector"]
    return selector


def map_items(plan: dict[str, Any], machine: str = "run.asl.yaml") -> list[dict[str, Any]]:
    """Each child's unit, built the way the state machine builds it (the plan is the state's $.plan)."""
    ref = plan["manifest"]
    s3 = boto3.client("s3", region_name="us-east-1")
    items = json.loads(s3.get_object(Bucket=ref["bucket"], Key=ref["key"])["Body"].read())
    selected = []
    for item in items:
        unit = {}
        for key, path in _item_selector(machine).items():
            if path.startswith("$$.Map.Item.Value."):
                unit[key.removesuffix(".$")] = item[path.removeprefix("$$.Map.Item.Value.")]
            else:
                unit[key.removesuffix(".$")] = plan[path.removeprefix("$.plan.")]
        selected.append(unit)
    return selected


def map_batches(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The check Map's children: ``{"Items": [...]}`` of at most ``units_per_invocation`` units."""
    units, size = map_items(plan, "check.asl.yaml"), int(plan["units_per_invocation"])
    return [{"Items": units[i : i + size]} for i in range(0, len(units), size)]
