"""`make package`'s compile step: every rules file a latency-bound handler reads at cold start, validated
now and written as ``<rules dir>/_compiled/*.json`` (``core/compiled.py``): the security-group event
handler's ``fleet.yaml`` and ``security_groups.yaml``, and the Slack endpoint's ``oncall.yaml`` and
``kill_switches.yaml`` (the protected targets its switchboard is built with).

    python -m automations.compiled_rules <rules dir>

A file that does not exist is skipped; a file with problems fails the build, each as ``file:line: message``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from automations.core import compiled
from automations.kill_switches.policies import POLICIES_COMPILED_FROM, validated_policies
from automations.kill_switches.slack_buttons import ONCALL_COMPILED_FROM, validated_oncall
from automations.security_groups import compiled as security_groups


def compile_rules(rules_dir: Path) -> list[Path]:
    """Validate and compile; returns the files written."""
    written = security_groups.compile_rules(rules_dir)
    policies = rules_dir / "kill_switches.yaml"
    if policies.exists():
        text = policies.read_text(encoding="utf-8")
        written.append(compiled.write(policies, text, validated_policies(policies, text), *POLICIES_COMPILED_FROM))
    oncall = rules_dir / "oncall.yaml"
    if oncall.exists():
        text = oncall.read_text(encoding="utf-8")
        written.append(compiled.write(oncall, text, validated_oncall(oncall, text), *ONCALL_COMPILED_FROM))
    return written


def main(argv: list[str]) -> int:
    return compiled.command(argv, "automations.compiled_rules", compile_rules)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
