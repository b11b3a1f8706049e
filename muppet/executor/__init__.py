"""Running jobs: the executor task (``task.py``) and its backends.

``task.run`` is the long-lived task the daemon starts; ``backend.py`` holds the
interface each executor type implements (``local.py``, ``gridengine.py``,
``slurm.py``) and the registry of types; ``jobdir.py`` the job directory, the
wrapper script and its status file; ``outputs.py`` the atomic moves of declared
outputs. See docs/executor.md.
"""
