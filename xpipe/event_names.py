"""The names on xpipe's CloudEvents: event types and extension attributes.

Standard library only, so that what merely routes or tags events (configuration, the outbox, the step
host) does not load pydantic: importing it and building the payload models of ``xpipe.events`` costs
about 60 ms, a third of a function's cold start. ``xpipe.events`` re-exports every name here.
"""

from __future__ import annotations

# Event types (CloudEvents `type` attribute).
PIPELINE_SUBMIT = "com.xpipe.pipeline.submit"
JOB_REGISTERED = "com.xpipe.job.registered"
STEP_RUN = "com.xpipe.step.run"
STEP_HEARTBEAT = "com.xpipe.step.heartbeat"
STEP_FINISHED = "com.xpipe.step.finished"
STEP_CANCEL = "com.xpipe.step.cancel"
JOB_ROLLBACK_REQUESTED = "com.xpipe.job.rollback.requested"
JOB_DIAGNOSTIC_REQUESTED = "com.xpipe.job.diagnostic.requested"
JOB_FINISHED = "com.xpipe.job.finished"
PING = "dev.knative.sources.ping"
APISERVER_PREFIX = "dev.knative.apiserver.resource."

# Extension attributes carried by every xpipe event so that Triggers can route on them
# (Trigger filters cannot look into `data`).
EXT_JOB = "xpipejob"
EXT_STEP = "xpipestep"

# Extensions the Knative broker adds to a dead letter.
EXT_ERROR_DEST = "knativeerrordest"
EXT_ERROR_CODE = "knativeerrorcode"
EXT_ERROR_DATA = "knativeerrordata"
