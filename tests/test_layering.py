"""Who may import whom (docs/architecture.md): the plumbing imports no capability, a capability imports
no other, nothing in automations/ imports a handler or the operator tooling, and handlers make no AWS
calls of their own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPABILITIES = ("snapshots", "security_groups", "breach_checks", "kill_switches")


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def test_the_plumbing_imports_no_capability() -> None:
    for path in modules("automations.core"):
        bad = {m for m in imports_of(path) for c in (*CAPABILITIES, "catalog") if m.startswith(f"automations.{c}")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_a_capability_imports_no_other_capability() -> None:
    for own in CAPABILITIES:
        others = [c for c in CAPABILITIES if c != own]
        for path in modules(f"automations.{own}"):
            bad = {m for m in imports_of(path) for c in (*others, "catalog") if m.startswith(f"automations.{c}")}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_automations_imports_no_handler_and_no_operator_tooling() -> None:
    for path in modules("automations"):
        bad = {m for m in imports_of(path) if m.startswith(("handlers", "opsbot"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_automations_reads_no_environment_variable() -> None:
    for path in modules("automations"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
                assert node.attr not in ("environ", "getenv"), f"{path.relative_to(ROOT)}:{node.lineno}"


def test_handlers_make_no_aws_calls_of_their_own() -> None:
    """boto3 clients and sessions are made in the wiring (once per container) and passed to automations."""
    for path in modules("handlers"):
        if path.name == "_wiring.py":
            continue
        assert "boto3" not in imports_of(path), f"{path.relative_to(ROOT)} makes its own boto3 clients"
