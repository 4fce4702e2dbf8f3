"""The job state machine of the XPipe journal: pipelines, directives, leases and health (see JOBS.md).

``JobStateMachine`` implements the ``JobModel`` seam of ``vms_adapter/server/model.py``. Standard
library only: it runs inside the journal service on VSI Python 3.10 for OpenVMS.
"""

from .machine import JobStateMachine

__all__ = ["JobStateMachine"]
