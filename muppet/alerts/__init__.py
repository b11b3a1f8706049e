"""Incidents and their delivery to stakeholders, by mail and webhook
(docs/alerts.md).

- ``kinds.py``: the kinds of incident;
- ``changes.py``: what is written (open, resolve, acknowledge, delivered),
  in the database task's batches;
- ``rules.py``: the sans-I/O rules the scheduler core applies to its own
  changes (a job failed for good, a run expired, lateness, an executor that
  cannot start jobs);
- ``records.py``: the incidents' rows, written in the transaction of their
  cause, and read back;
- ``routing.py``, ``digest.py``, ``render.py``: sans-I/O: who hears of an
  incident, when a message goes out (one per stakeholder and digest), what
  it says;
- ``send.py``: SMTP and HTTP, blocking, for worker threads;
- ``task.py``: the alerts task in the daemon's nursery.

Kept light: ``muppet/messages.py`` imports ``changes`` from here.
"""
