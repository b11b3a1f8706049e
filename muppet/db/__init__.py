"""MUPPET's database: the SQL dialects (``dialect``), the schema and its
migrations (``migrations``), one connection and its transactions (``store``),
rows of the engine's tables (``rows``), the batches the daemon writes
(``writes``) and what it reads back (``reads``), and the Trio task that is the
daemon's only writer (``task``)."""

from .dialect import StoreError
from .reads import Snapshot
from .store import DatabaseUnavailable, Store, open_store

__all__ = ["DatabaseUnavailable", "Snapshot", "Store", "StoreError", "open_store"]
