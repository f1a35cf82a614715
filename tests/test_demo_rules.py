"""Production rules are the deployer's: the local demo's fleet, on-call user and kill-switch policy live in
opsbot/local/rules/, are laid over rules/ only for the local demo, and `make package` refuses them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from automations.core.fleet import load_fleet
from automations.core.rulebook import DEFAULT_RULES_DIR
from opsbot.cli import main
from opsbot.local.demo_rules import DEMO_RULES_DIR, assemble, demo_ids, demo_ids_in


def test_the_shipped_rules_hold_no_demo_id() -> None:
    assert demo_ids_in(DEFAULT_RULES_DIR) == []
    ids = demo_ids()
    assert "210987654321" in ids and "U0LOCALDANA" in ids and "orders-dlq-flood" in ids


def test_the_demo_rules_are_the_shipped_ones_with_the_demos_laid_over(tmp_path: Path, capsys) -> None:
    rules = assemble(tmp_path / "rules")
    assert sorted(p.name for p in rules.iterdir()) == sorted(p.name for p in DEFAULT_RULES_DIR.glob("*.yaml"))
    # The demo's fleet names OUs of the local organisation (tests/test_org_fleet.py discovers them).
    fleet = load_fleet(rules / "fleet.yaml")
    assert fleet.organization is not None and fleet.organization.include == ("ou-demo-workload", "ou-demo-sandboxs")
    assert [a.name for a in fleet.document.accounts] == ["legacy-sandbox"]
    assert (rules / "tasks.yaml").read_text() == (DEFAULT_RULES_DIR / "tasks.yaml").read_text()
    quotas = (rules / "quotas.yaml").read_text()
    assert quotas.startswith((DEFAULT_RULES_DIR / "quotas.yaml").read_text().rstrip("\n"))
    assert (DEMO_RULES_DIR / "quotas.append.yaml").read_text() in quotas
    assert main(["validate", "--rules", str(rules)]) == 0, capsys.readouterr()


def package(tmp_path: Path, rules: Path) -> Path:
    staged = tmp_path / "build" / "lambda"
    shutil.copytree(rules, staged / "rules")
    return staged


def test_check_package_passes_the_shipped_rules(tmp_path: Path, capsys) -> None:
    assert main(["check-package", str(package(tmp_path, DEFAULT_RULES_DIR))]) == 0
    assert "ok:" in capsys.readouterr().out


@pytest.mark.parametrize("demo_file", ["fleet.yaml", "oncall.yaml", "kill_switches.yaml"])
def test_check_package_refuses_a_demo_file_naming_file_and_line(tmp_path: Path, capsys, demo_file: str) -> None:
    staged = package(tmp_path, DEFAULT_RULES_DIR)
    shutil.copyfile(DEMO_RULES_DIR / demo_file, staged / "rules" / demo_file)
    assert main(["check-package", str(staged)]) == 1
    out, err = capsys.readouterr()
    assert f"{staged / 'rules' / demo_file}:" in out and "demo id(s) in the package" in err
    assert "Traceback" not in out + err


def test_check_package_finds_a_demo_id_anywhere_in_the_staged_rules(tmp_path: Path, capsys) -> None:
    staged = package(tmp_path, DEFAULT_RULES_DIR)
    (staged / "rules" / "quotas.yaml").write_text(
        (DEFAULT_RULES_DIR / "quotas.yaml").read_text() + '  - account: "456789012345"\n    warn_percent: 90\n'
    )
    assert main(["check-package", str(staged)]) == 1
    assert "'456789012345' is demo account legacy-sandbox" in capsys.readouterr().out


def test_check_package_without_rules_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["check-package", str(tmp_path)]) == 1
    assert "no rules directory in the package" in capsys.readouterr().err


def test_the_member_stacks_forward_exactly_the_alarms_the_policies_name(capsys) -> None:
    """template-member.yaml's KillSwitchAlarmNames, printed from the rules (members forward only these)."""
    assert main(["killswitch", "alarms", "--rules", str(DEMO_RULES_DIR)]) == 0
    assert capsys.readouterr().out.strip() == "orders-dlq-depth"
    assert main(["killswitch", "alarms", "--rules", str(DEFAULT_RULES_DIR)]) == 0
    assert capsys.readouterr().out.strip() == "-"  # no policy: the parameter's "forward none"
