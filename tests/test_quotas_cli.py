"""`opsbot quotas check | runs` and `opsbot alerts` against moto, as an operator runs them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from opsbot.cli import main
from tests.breach_support import minutes_ago, put_metric
from tests.conftest import ACCOUNT_A, ACCOUNT_B

FLEET = f"""
role_prefix: opsbot
external_id: opsbot-test
default_regions: [us-east-1]
accounts:
  - {{id: "{ACCOUNT_A}", name: payments-prod}}
  - {{id: "{ACCOUNT_B}", name: analytics-prod}}
"""


@pytest.fixture
def operator_env(shimmed, hub_session, inbox, tmp_path, monkeypatch):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(FLEET)
    (rules / "tasks.yaml").write_text("tasks: []\n")
    (rules / "quotas.yaml").write_text("thresholds: {}\nservice_quotas: {services: [ec2]}\n")
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    monkeypatch.setenv("OPSBOT_LEDGER_TABLE", "opsbot-ledger")
    monkeypatch.setenv("OPSBOT_ALERT_TOPIC_ARN", inbox.notifier.topic_arn)
    monkeypatch.delenv("OPSBOT_SLACK_SECRET_NAME", raising=False)
    return inbox


def test_quotas_check_runs_and_alerts(operator_env, broker, capsys):
    now = datetime.now(UTC)
    cw = broker.client(ACCOUNT_B, "us-east-1", "cloudwatch")
    sq = broker.client(ACCOUNT_B, "us-east-1", "service-quotas")
    sq.request_service_quota_increase(ServiceCode="ec2", QuotaCode="L-1216C47A", DesiredValue=100)
    dims = {"Class": "Standard/OnDemand", "Resource": "vCPU", "Service": "EC2", "Type": "Resource"}
    put_metric(cw, "AWS/Usage", "ResourceCount", 97, minutes_ago(now, 3), dims)

    assert main(["quotas", "check", "--check", "service-quotas", "--account", ACCOUNT_B]) == 0
    out = capsys.readouterr().out
    assert "service-quotas-" in out and "SUCCEEDED" in out
    assert "analytics-prod (345678901234)" in out and "97 / 100" in out and "97.0%" in out
    (alert,) = operator_env.alerts()
    alert_id = alert["data"]["alert_id"]
    assert alert["severity"] == "critical"

    assert main(["alerts", alert_id]) == 0
    shown = capsys.readouterr().out
    assert alert_id in shown and "Limit 100 (applied)" in shown
    assert main(["alerts", "brk-20000101000000-000000"]) == 2
    assert "no current alert" in capsys.readouterr().out

    assert main(["quotas", "check"]) == 0  # both checks, the whole fleet: nothing new to say
    capsys.readouterr()
    assert operator_env.alerts() == []
    assert main(["quotas", "runs", "--limit", "5"]) == 0
    runs = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("service-quotas-", "lambda-"))]
    assert len(runs) == 3
    assert main(["runs"]) == 0
    assert "service-quotas-" not in capsys.readouterr().out  # check runs are listed apart from task runs
