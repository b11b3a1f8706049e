"""MUPPET's API: JSON-RPC 2.0 over websocket.

- ``protocol``: the sans-I/O JSON-RPC layer and the method table (params schemas).
- ``server``: the API task of the daemon (``server.run``).
- ``client``: ``connect(url)`` and ``Client.call`` for the CLI and other programs.

docs/api.md describes every method.
"""
