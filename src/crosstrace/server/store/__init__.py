"""The store: spans and logs on SQLite or PostgreSQL, behind one interface.

- :mod:`~crosstrace.server.store.base`: the :class:`Store` interface;
- :mod:`~crosstrace.server.store.prepare`: the pure half of a write (summaries,
  index keys, the compressed chunk), which decode workers can run;
- :mod:`~crosstrace.server.store.codec`: how chunks, ids and cursors are encoded;
- :mod:`~crosstrace.server.store.sql`, :mod:`~crosstrace.server.store.write`,
  :mod:`~crosstrace.server.store.read`: the SQL both databases share, the write
  path and the queries;
- :mod:`~crosstrace.server.store.sqlite`, :mod:`~crosstrace.server.store.postgres`:
  the two databases, and :mod:`~crosstrace.server.store.migrations` their schemas;
- :mod:`~crosstrace.server.store.writer`: the one writer thread;
  :mod:`~crosstrace.server.store.retention`: the retention thread.

The store imports neither ingest nor the query API.
"""

from __future__ import annotations

from crosstrace.server.store.base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str) -> Store:
    """Open ``sqlite:///path`` or ``postgresql://...``."""
    if url.startswith("sqlite:"):
        from crosstrace.server.store.sqlite import SQLiteStore

        store: Store = SQLiteStore.from_url(url)
        return store
    if url.startswith(("postgresql:", "postgres:")):
        from crosstrace.server.store.postgres import PostgresStore

        store = PostgresStore.from_url(url)
        return store
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")
