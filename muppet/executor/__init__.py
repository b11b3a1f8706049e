"""Running jobs: the executor task (``task.py``) and its backends.

``task.run`` is the long-lived task the daemon starts; ``backend.py`` holds the
interface each executor type implements (``local.py``, ``gridengine.py``,
``slurm.py``) and the registry of types; ``jobdir.py`` the job directory, the
wrapper script and its status file; ``outputs.py`` the atomic moves of declared
outputs. The two batch backends share ``batch.py`` (submitting, waiting,
re-attaching, killing), ``batch_results.py`` (the parsed output of the batch
commands) and ``batch_poller.py`` (running the commands, one queue listing for
all waiting jobs); the resources a job asks for are parsed by
``muppet/resources.py``. See docs/executor.md and docs/batch.md.
"""
