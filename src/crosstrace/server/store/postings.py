"""Taking chunks out of the SQLite search postings (``key_chunks``, ``attr_chunks``).

A posting is one row per key and commit: its first chunk id and a bitmap of the
ones after it (``codec.pack_posting``). The postings of a key cover ranges of
chunk ids that do not overlap, so the one that may hold a chunk is the last that
starts at or before it. Retention takes the chunks it deletes out of them, and
so does merging for the attribute entries of the chunks it replaces.
"""

from __future__ import annotations

import sqlite3

from crosstrace.server.store.codec import pack_posting, posting_ids, posting_last

__all__ = ["drop_postings"]


def drop_postings(
    conn: sqlite3.Connection, table: str, col: str, entries: list[tuple[int, int]]
) -> None:
    """Take the (key, chunk id) *entries* out of the postings of *table*: a
    posting left empty is deleted, one that lost its first chunk is written again
    under its next."""
    by_key: dict[int, set[int]] = {}
    for key, cid in entries:
        by_key.setdefault(key, set()).add(cid)
    find = (
        f"SELECT chunk_id, more FROM {table} WHERE {col} = ? AND chunk_id <= ?"
        " ORDER BY chunk_id DESC LIMIT 1"
    )
    deletes: list[tuple[int, int]] = []
    inserts: list[tuple[int, int, bytes | None]] = []
    for key, cids in by_key.items():
        left = sorted(cids)
        while left:
            row = conn.execute(find, (key, left[-1])).fetchone()
            if row is None:
                break
            first, more = row
            last = posting_last(first, more)
            mine = {c for c in left if first <= c <= last}
            left = [c for c in left if c < first]
            held = posting_ids(first, more)
            kept = [c for c in held if c not in mine]
            if len(kept) == len(held):
                continue
            deletes.append((key, first))
            if kept:
                inserts.append((key, *pack_posting(kept)))
    conn.executemany(f"DELETE FROM {table} WHERE {col} = ? AND chunk_id = ?", deletes)
    conn.executemany(f"INSERT INTO {table} ({col}, chunk_id, more) VALUES (?, ?, ?)", inserts)
