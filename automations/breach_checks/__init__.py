"""Breach flags at 80%: Lambda concurrency and service quotas, with an alert lifecycle in the ledger.

Importing ``lambda_concurrency`` and ``service_quotas`` registers the checks in
``automations.breach_checks.kinds.CHECK_KINDS``; ``automations.catalog`` does, and so does reading
``CAPABILITY``. The package itself imports neither, so a path that only looks alerts up (the Slack
endpoint, whose cold start is inside Slack's 3-second budget) loads no check and no run machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from automations.core.iam import Capability

__all__ = ["CAPABILITY", "lambda_concurrency", "service_quotas"]


def __getattr__(name: str) -> Any:
    if name in ("lambda_concurrency", "service_quotas"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "CAPABILITY":
        return _capability()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _capability() -> Capability:
    from automations.breach_checks import lambda_concurrency, service_quotas  # noqa: F401 - registers both
    from automations.breach_checks.kinds import CHECK_KINDS
    from automations.core.iam import Capability, member_actions_of

    return Capability("breach-checks", "opsbot-breach-checks", member_actions_of(CHECK_KINDS))
