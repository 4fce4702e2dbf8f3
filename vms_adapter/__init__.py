"""Everything that speaks to the OpenVMS job journal: wire protocol, client and reference service.

The server side of this package (``protocol`` and ``server``) runs on VSI Python 3.10 for OpenVMS,
so it imports only the standard library; ``python -m vms_adapter.server`` loads this module too,
which holds it to the same rule.
"""

from vms_adapter.client import AckResult, CommitResult, JobPage, JournalClient, SweepResult
from vms_adapter.errors import (
    AuthenticationFailed,
    Conflict,
    JournalError,
    JournalUnavailable,
    ProtocolError,
    Rejected,
)

__all__ = [
    "AckResult",
    "AuthenticationFailed",
    "CommitResult",
    "Conflict",
    "JobPage",
    "JournalClient",
    "JournalError",
    "JournalUnavailable",
    "ProtocolError",
    "Rejected",
    "SweepResult",
]
