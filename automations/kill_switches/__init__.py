"""Kill switches: stop a function, rule or event source mapping and restore it exactly; alarm policies,
Slack buttons, and pausing opsbot itself.

Importing the package registers the kinds in ``automations.kill_switches.kinds.SWITCH_KINDS``.
"""

from automations.core.iam import Capability, member_actions_of
from automations.kill_switches.kinds import SWITCH_KINDS

CAPABILITY = Capability(
    "kill-switches", "opsbot-kill-switches", member_actions_of(k for k in SWITCH_KINDS if k.in_members)
)
