"""The local demo's rules: the deployer's ``rules/`` with the demo's own files laid over it.

``rules/`` is what ships (`make package`): the deployer's fleet, on-call list and policies. The demo needs
its own fleet (accounts that exist only in the local AWS), on-call user and kill-switch policy; those live
in ``opsbot/local/rules/`` and never reach ``rules/``. `opsbot local seed` assembles the two into the
local state directory and points ``OPSBOT_RULES_DIR`` at the result.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from automations.core.rulebook import DEFAULT_RULES_DIR

DEMO_RULES_DIR = Path(__file__).with_name("rules")


APPEND = ".append.yaml"


def assemble(target: Path, shipped: Path = DEFAULT_RULES_DIR, demo: Path = DEMO_RULES_DIR) -> Path:
    """``target`` holds every shipped rules file, the demo's ``NAME.yaml`` replacing the shipped one, and
    the demo's ``NAME.append.yaml`` appended to it (more items of the list that ends the shipped file:
    the demo's quota overrides, without a second copy of the shipped thresholds)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for source in (shipped, demo):
        for file in sorted(source.glob("*.yaml")):
            if not file.name.endswith(APPEND):
                shutil.copyfile(file, target / file.name)
    for extra in sorted(demo.glob(f"*{APPEND}")):
        base = target / extra.name.replace(APPEND, ".yaml")
        base.write_text(base.read_text().rstrip("\n") + "\n" + extra.read_text())
    return target


def demo_ids(demo: Path = DEMO_RULES_DIR) -> dict[str, str]:
    """What identifies the demo's configuration, read from its own files: value -> where it comes from.
    None of these may appear in a package (`opsbot check-package`)."""
    found: dict[str, str] = {}
    fleet = yaml.safe_load((demo / "fleet.yaml").read_text())
    for account in fleet.get("accounts") or []:
        found[account["id"]] = f"demo account {account.get('name', account['id'])}"
    from opsbot.local.organization import ACCOUNTS, OUS  # the local organisation the demo's fleet names

    for member in ACCOUNTS:
        found.setdefault(member.id, f"demo account {member.name}")
    for ou in OUS:
        found[ou.id] = f"the demo's OU {ou.name}"
    found[fleet["external_id"]] = "the demo's external_id"
    oncall = yaml.safe_load((demo / "oncall.yaml").read_text())
    for user in (oncall.get("users") or []) + (oncall.get("user_groups") or []):
        found[user] = "the demo's on-call"
    for policy in yaml.safe_load((demo / "kill_switches.yaml").read_text()).get("policies") or []:
        found[policy["name"]] = "the demo's kill-switch policy"
        found[policy["alarm"]] = "the demo's kill-switch alarm"
    return found


def demo_ids_in(rules: Path, demo: Path = DEMO_RULES_DIR) -> list[str]:
    """Each demo id found in a rules directory about to ship, as ``file:line: what`` (empty: none)."""
    ids = demo_ids(demo)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(ids, key=len, reverse=True))) + r")(?![\w-])")
    problems = []
    for file in sorted(rules.rglob("*")):
        if not file.is_file():
            continue
        for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for match in pattern.finditer(line):
                problems.append(f"{file}:{number}: {match[1]!r} is {ids[match[1]]} (opsbot/local/rules/)")
    return problems
