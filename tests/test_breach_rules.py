"""rules/quotas.yaml: the shipped file is valid, every problem is reported as file:line, and overrides
resolve from the least to the most specific (service < quota code < account)."""

from __future__ import annotations

from pathlib import Path

import pytest

from automations.breach_checks.rules import Thresholds, load_breach_rules
from automations.core.rulebook import RulebookError
from opsbot.cli import main

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
thresholds:
  warn_percent: 80
  critical_percent: 95
service_quotas:
  services: [ec2, vpc]
overrides:
  - service: ec2
    warn_percent: 70
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RulebookError) as err:
        load_breach_rules("rules/quotas.yaml", text)
    return [str(p) for p in err.value.problems]


def test_shipped_rules_are_valid_and_default_to_80_and_95():
    rules = load_breach_rules(ROOT / "rules" / "quotas.yaml")
    default = rules.thresholds("210987654321", "vpc", "L-F678F1CE")
    assert (default.warn_percent, default.critical_percent) == (80, 95)
    assert rules.enabled("lambda-concurrency") and rules.enabled("service-quotas")
    assert load_breach_rules("q.yaml", "thresholds: {}\n").defaults == Thresholds()


def test_overrides_most_specific_wins_field_by_field():
    text = """
thresholds: {warn_percent: 80, critical_percent: 95, reminder_hours: 24}
overrides:
  - {account: "345678901234", warn_percent: 90, reminder_hours: 72}
  - {service: ec2, warn_percent: 70, critical_percent: 85}
  - {quota_code: L-1216C47A, warn_percent: 60}
  - {account: "345678901234", quota_code: L-1216C47A, critical_percent: 99}
"""
    rules = load_breach_rules("q.yaml", text)
    a, b = "210987654321", "345678901234"
    assert rules.thresholds(a, "vpc") == Thresholds(80, 95, 5, 24)
    assert rules.thresholds(a, "ec2", "L-0263D0A3") == Thresholds(70, 85, 5, 24)
    assert rules.thresholds(a, "ec2", "L-1216C47A") == Thresholds(60, 85, 5, 24)
    # The account's own settings beat fleet-wide ones; its quota-specific one beats its general one.
    assert rules.thresholds(b, "ec2", "L-1216C47A") == Thresholds(90, 99, 5, 72)
    assert rules.thresholds(b, "lambda", "L-B99A9384") == Thresholds(90, 95, 5, 72)


def test_wrong_type_and_unknown_key():
    assert problems(GOOD.replace("warn_percent: 70", "warn_percent: high")) == [
        "rules/quotas.yaml:8: overrides[0].warn_percent: 'high' is not of type 'number'"
    ]
    assert problems(GOOD + "    colour: red\n") == [
        "rules/quotas.yaml:9: overrides[0].colour: unknown key(s) ('colour' was unexpected)"
    ]
    assert problems(GOOD.replace("[ec2, vpc]", "[ec2, 'no such']")) == [
        "rules/quotas.yaml:5: service_quotas.services[1]: 'no such' does not match '^[a-zA-Z][a-zA-Z0-9-]{1,62}$'"
    ]


def test_thresholds_that_cannot_work():
    assert problems(GOOD.replace("critical_percent: 95", "critical_percent: 75")) == [
        "rules/quotas.yaml:2: thresholds: warn_percent (80) must be below critical_percent (75)"
    ]
    assert problems(GOOD + "  - {account: '210987654321', hysteresis_percent: 50, warn_percent: 40}\n") == [
        "rules/quotas.yaml:9: overrides[1]: hysteresis_percent (50) must be below warn_percent (40), "
        "or an alert could never resolve"
    ]
    assert problems(GOOD.replace("warn_percent: 70", "warn_percent: 96")) == [
        "rules/quotas.yaml:7: overrides[0]: warn_percent (96) must be below critical_percent (95)"
    ]


def test_overrides_that_match_nothing_set_nothing_or_repeat():
    assert problems(GOOD + "  - {warn_percent: 50}\n") == [
        "rules/quotas.yaml:9: overrides[1]: needs at least one of account, service, quota_code"
    ]
    assert problems(GOOD + "  - {service: vpc, note: why}\n") == [
        "rules/quotas.yaml:9: overrides[1]: sets nothing: give at least one of warn_percent, critical_percent, "
        "hysteresis_percent, reminder_hours"
    ]
    assert problems(GOOD + "  - {service: ec2, reminder_hours: 4}\n") == [
        "rules/quotas.yaml:9: overrides[1]: same match as the override at line 7"
    ]


def test_lambda_is_not_a_service_quota_service_when_the_concurrency_check_runs():
    assert problems(GOOD.replace("[ec2, vpc]", "[ec2, lambda]")) == [
        "rules/quotas.yaml:5: service_quotas.services[1]: 'lambda' is measured by lambda_concurrency "
        "(account, unreserved pool, functions); remove it here or it alerts twice"
    ]
    load_breach_rules("q.yaml", GOOD.replace("[ec2, vpc]", "[ec2, lambda]") + "lambda_concurrency: {enabled: false}\n")


def test_opsbot_validate_reports_quotas_yaml(tmp_path, capsys):
    rules = tmp_path / "rules"
    rules.mkdir()
    for name in ("fleet.yaml", "tasks.yaml"):
        (rules / name).write_text((ROOT / "rules" / name).read_text())
    (rules / "quotas.yaml").write_text(GOOD.replace("critical_percent: 95", "critical_percent: 75"))
    assert main(["validate", "--rules", str(rules)]) == 1
    out = capsys.readouterr().out
    assert f"{rules / 'quotas.yaml'}:2: thresholds: warn_percent (80) must be below critical_percent (75)" in out
