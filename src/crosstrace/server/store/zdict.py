"""The zstd dictionary of the span chunks: trained once on the store's first
chunks, kept in ``zdicts``, and used to compress every chunk after it (chunks are
small, so a dictionary halves them)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import zstandard

from crosstrace.server.store.codec import MERGED_ZSTD_LEVEL, chunk_compressor
from crosstrace.server.store.prepare import Compression

__all__ = ["DICT_SAMPLES", "DICT_SAMPLE_BYTES", "DICT_SIZE", "ChunkDictionary"]

log = logging.getLogger(__name__)

#: The zstd dictionary is trained once this many chunks (or bytes) were written.
DICT_SAMPLES = 1_000
DICT_SAMPLE_BYTES = 8 * 2**20
DICT_SIZE = 64 * 1024
#: Failed trainings after which chunks stay plain zstd.
_MAX_TRAIN_FAILURES = 3


class ChunkDictionary:
    """The writer's side of the dictionary, mixed into the store's writer (whose
    ``_x`` and ``_q`` run SQL)."""

    if TYPE_CHECKING:

        def _x(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> int: ...

        def _q(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    def _init_dictionary(self) -> None:
        self._published: Compression = None
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._zdict: tuple[int, zstandard.ZstdCompressor] | None = None
        self._samples: list[bytes] = []
        self._sample_bytes = 0
        self._train_failures = 0
        self._txn_dict: int | None = None
        self._merged_zc: tuple[int, zstandard.ZstdCompressor] | None = None

    def _load_dictionary(self, conn: Any) -> None:
        """Compress new chunks with the newest dictionary in the database, if any."""
        rows = self._q(conn, "SELECT id, data FROM zdicts ORDER BY id DESC LIMIT 1")
        if rows:
            did, data = int(rows[0][0]), bytes(rows[0][1])
            d = zstandard.ZstdCompressionDict(data)
            self._dicts[did] = d
            self._zdict = (did, chunk_compressor(d))
            self._published = (did, data)

    def _dictionary(self, conn: Any, did: int) -> zstandard.ZstdCompressionDict:
        d = self._dicts.get(did)
        if d is None:
            rows = self._q(conn, "SELECT data FROM zdicts WHERE id = ?", (did,))
            if not rows:
                raise ValueError(f"span chunk needs zstd dictionary {did}, which is missing")
            d = self._dicts[did] = zstandard.ZstdCompressionDict(bytes(rows[0][0]))
        return d

    def _sample(self, conn: Any, raw: bytes) -> None:
        """Keep chunk payloads until there are enough to train the dictionary."""
        if self._train_failures >= _MAX_TRAIN_FAILURES:
            return
        self._samples.append(raw)
        self._sample_bytes += len(raw)
        if len(self._samples) < DICT_SAMPLES and self._sample_bytes < DICT_SAMPLE_BYTES:
            return
        samples, self._samples, self._sample_bytes = self._samples, [], 0
        try:
            d = zstandard.train_dictionary(DICT_SIZE, list[Any](samples))
        except zstandard.ZstdError as exc:
            self._train_failures += 1
            log.info("zstd dictionary training failed (%s); chunks stay plain zstd", exc)
            return
        data = d.as_bytes()
        self._x(
            conn,
            "INSERT INTO zdicts (data, created_ns) VALUES (?, ?)",
            (data, time.time_ns()),
        )
        did = int(self._q(conn, "SELECT max(id) FROM zdicts")[0][0])
        self._dicts[did] = d
        self._zdict = (did, chunk_compressor(d))
        self._txn_dict = did

    def compression(self) -> Compression:
        """The committed dictionary new chunks are compressed with, for batches
        prepared outside the writer (:mod:`crosstrace.server.store.prepare`)."""
        return self._published

    def _merge_compressor(self) -> tuple[int, zstandard.ZstdCompressor] | None:
        """The writer's compressor for the chunks it merges: the current
        dictionary at :data:`~crosstrace.server.store.codec.MERGED_ZSTD_LEVEL`."""
        if self._zdict is None:
            return None
        did = self._zdict[0]
        if self._merged_zc is None or self._merged_zc[0] != did:
            self._merged_zc = (did, chunk_compressor(self._dicts[did], MERGED_ZSTD_LEVEL))
        return self._merged_zc
