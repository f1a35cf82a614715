"""EBS snapshots: the ``ebs-snapshot`` task kind and the ``ebs-snapshot-copy`` DR kind.

Importing the package registers both kinds in ``automations.core.kinds.TASK_KINDS``.
"""

from automations.core.iam import Capability, member_actions_of
from automations.snapshots.ebs_snapshot import EbsSnapshot
from automations.snapshots.snapshot_copy import EbsSnapshotCopy

KINDS = (EbsSnapshot, EbsSnapshotCopy)
CAPABILITY = Capability("snapshots", "opsbot-snapshots", member_actions_of(KINDS))
