"""Security groups: the policy (``rules/security_groups.yaml``), remediation of CloudTrail events, and the
``security-group-sweep`` task kind.

``KINDS`` and ``CAPABILITY`` are loaded on first use (``automations.catalog`` reads them, which registers
the sweep in ``automations.core.kinds.TASK_KINDS``): the event handler imports only the remediation path,
not the run engine the sweep is built on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from automations.core.iam import Capability
    from automations.security_groups.sweep import SecurityGroupSweep

    KINDS: tuple[type[SecurityGroupSweep], ...]
    CAPABILITY: Capability


def __getattr__(name: str) -> Any:
    if name not in ("KINDS", "CAPABILITY"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from automations.core.iam import Capability, member_actions_of
    from automations.security_groups.remediation import MEMBER_ACTIONS as REMEDIATION_ACTIONS
    from automations.security_groups.sweep import SecurityGroupSweep

    kinds = (SecurityGroupSweep,)
    capability = Capability("security-groups", "opsbot-security-groups", member_actions_of(kinds, REMEDIATION_ACTIONS))
    globals().update(KINDS=kinds, CAPABILITY=capability)
    return globals()[name]
