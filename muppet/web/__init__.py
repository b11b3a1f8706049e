"""The daemon's web server: the operator's console (a page that talks to the
websocket API), ``/metrics`` and ``/healthz`` (docs/console.md,
docs/operations.md). ``task.py`` is the task in the daemon's nursery,
``app.py`` the ASGI app it serves, ``health.py`` the health judgement,
``static/`` the page's files."""
