"""Compile the rules the security-group event handler reads at cold start: ``fleet.yaml`` and
``security_groups.yaml``, validated now and written as ``<rules dir>/_compiled/*.json`` (``core/compiled.py``).

    python -m automations.security_groups.compiled <rules dir>

``make package`` runs it on the packaged rules. A file that does not exist is skipped; a file with
problems fails the build, with every problem as ``file:line: message``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from automations.core import compiled
from automations.core.fleet import FLEET_COMPILED_FROM, fleet_from_document, fleet_to_dict
from automations.core.rulebook import load_document
from automations.security_groups.policy import POLICY_COMPILED_FROM, policy_from_document, policy_to_dict


def compile_rules(rules_dir: Path) -> list[Path]:
    """Validate and compile; returns the files written."""
    written = []
    fleet_file, policy_file = rules_dir / "fleet.yaml", rules_dir / "security_groups.yaml"
    if fleet_file.exists():
        text = fleet_file.read_text(encoding="utf-8")
        fleet = fleet_from_document(load_document(fleet_file, text))
        written.append(compiled.write(fleet_file, text, fleet_to_dict(fleet), *FLEET_COMPILED_FROM))
    if policy_file.exists():
        text = policy_file.read_text(encoding="utf-8")
        policy = policy_from_document(load_document(policy_file, text), text)
        written.append(compiled.write(policy_file, text, policy_to_dict(policy), *POLICY_COMPILED_FROM))
    return written


def main(argv: list[str]) -> int:
    return compiled.command(argv, "automations.security_groups.compiled", compile_rules)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
