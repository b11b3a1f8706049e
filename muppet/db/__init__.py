"""MUPPET's database: the schema and its migrations (``migrations``), the
synchronous store over SQLite or PostgreSQL (``store``), and the Trio task that
is the daemon's only writer (``task``)."""

from .store import DatabaseUnavailable, Snapshot, Store, StoreError, open_store

__all__ = ["DatabaseUnavailable", "Snapshot", "Store", "StoreError", "open_store"]
