"""Security groups: the policy (``rules/security_groups.yaml``), remediation of CloudTrail events, and the
``security-group-sweep`` task kind.

Importing the package registers the sweep in ``automations.core.kinds.TASK_KINDS``.
"""

from automations.core.iam import Capability, member_actions_of
from automations.security_groups.remediation import MEMBER_ACTIONS as REMEDIATION_ACTIONS
from automations.security_groups.sweep import SecurityGroupSweep

KINDS = (SecurityGroupSweep,)
CAPABILITY = Capability("security-groups", "opsbot-security-groups", member_actions_of(KINDS, REMEDIATION_ACTIONS))
