"""The kinds of incident, and whose they are (docs/alerts.md, "Kinds").

A stakeholder's ``notify`` names some of these; every other part of
``muppet/alerts/`` uses the constants.
"""

from __future__ import annotations

#: a job failed after its last try (a retry with tries left is no incident)
JOB_FAILED = "job_failed"
#: a run ended failed
RUN_FAILED = "run_failed"
#: a run ended expired (a job of it not started by its expire_after)
RUN_EXPIRED = "run_expired"
#: a step's jobs or a run not succeeded by their late_after
LATE = "late"
#: a product's instance not complete expected_after its reference time
PRODUCT_LATE = "product_late"
#: the database did not answer for longer than DATABASE_GRACE seconds
DATABASE_DOWN = "database_down"
#: an executor cannot start jobs (its batch system out of reach, the state
#: directory full): the executor's "cannot start jobs"
EXECUTOR_DOWN = "executor_down"
#: a standby daemon took over the database's lease (docs/alerts.md, "Kinds")
TAKEOVER = "takeover"

KINDS = (JOB_FAILED, RUN_FAILED, RUN_EXPIRED, LATE, PRODUCT_LATE, DATABASE_DOWN, EXECUTOR_DOWN, TAKEOVER)

#: the daemon's own troubles: no pipeline's, so they go to [alerts] default_to
DAEMON_KINDS = frozenset({DATABASE_DOWN, EXECUTOR_DOWN, TAKEOVER})

#: an outage of the database shorter than this is no incident (the issue
#: from the operations desk: "unreachable for more than a minute")
DATABASE_GRACE = 60.0

#: PagerDuty's severities (Events API v2, payload.severity) by kind
SEVERITY = {
    JOB_FAILED: "error",
    RUN_FAILED: "error",
    RUN_EXPIRED: "error",
    LATE: "warning",
    PRODUCT_LATE: "warning",
    DATABASE_DOWN: "critical",
    EXECUTOR_DOWN: "critical",
    TAKEOVER: "warning",
}
