"""Breach flags at 80%: Lambda concurrency and service quotas, with an alert lifecycle in the ledger.

Importing the package registers both checks in ``automations.breach_checks.kinds.CHECK_KINDS``.
"""

from automations.breach_checks import lambda_concurrency, service_quotas
from automations.breach_checks.kinds import CHECK_KINDS
from automations.core.iam import Capability, member_actions_of

__all__ = ["lambda_concurrency", "service_quotas"]
CAPABILITY = Capability("breach-checks", "opsbot-breach-checks", member_actions_of(CHECK_KINDS))
