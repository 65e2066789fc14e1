"""The zstd dictionaries of the span chunks, kept in ``zdicts``: chunks are small,
so a dictionary trained on the store's own chunks halves them.

Two are trained (:data:`TRAININGS`). The first comes early, from the first
thousand chunks, so that a new store soon compresses well. The second is
trained once, on chunks taken from a longer stretch of the load that follows
(one in four), and compresses every chunk written after it: a sample that
covers more of the load makes a better dictionary. With both, and dictionaries
of up to 256 KiB rather than one of 64 KiB, the chunks of the benchmark loads
are 3-6 % smaller at a million spans (``BENCHMARKS.md``). A chunk names the
dictionary it was compressed with, so both stay readable. A store opened again
takes up where it stopped (the number of dictionaries in ``zdicts`` says which
training is next).

The first is trained in the writer as soon as its sample is complete (until
then chunks are compressed without a dictionary, about twice as large). The
second is trained in a thread of its own (zstd releases the GIL: the writer
goes on meanwhile with the first; 0.3-0.6 s of CPU); the writer stores it at
the start of its next transaction. Batches prepared elsewhere take a new
dictionary up from the commit after it is stored (:meth:`compression`: its
bytes go with the first batches handed out, then its token only).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import zstandard

from crosstrace.server.store.codec import MERGED_ZSTD_LEVEL, chunk_compressor, chunk_payload
from crosstrace.server.store.prepare import Compression
from crosstrace.server.store.sql import ChunkRow

__all__ = ["DICT_SIZE", "SHIP_BATCHES", "TRAININGS", "ChunkDictionary"]

log = logging.getLogger(__name__)

#: The dictionaries trained, in order: ``(chunks, bytes, one in)``: each is
#: trained once this many chunks (or bytes of them) were sampled, taking one
#: chunk in *one in* as they are written.
TRAININGS: tuple[tuple[int, int, int], ...] = ((1_000, 8 * 2**20, 1), (2_000, 16 * 2**20, 4))
#: The largest dictionary trained (smaller when the samples hold less).
DICT_SIZE = 256 * 1024
#: Failed trainings after which no more are tried.
_MAX_TRAIN_FAILURES = 3
#: Batches handed to other processes with the dictionary's bytes after it is
#: published, or after one came back uncompressed (its process lacked them).
SHIP_BATCHES = 16


class ChunkDictionary:
    """The writer's side of the dictionaries, mixed into the store's writer
    (whose ``_x`` and ``_q`` run SQL)."""

    if TYPE_CHECKING:

        def _x(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> int: ...

        def _q(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    def _init_dictionary(self) -> None:
        self._published: Compression = None
        self._ship_left = 0
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._zdict: tuple[int, zstandard.ZstdCompressor] | None = None
        #: Dictionaries in the database: the index of the next training.
        self._trained = 0
        self._samples: list[bytes] = []
        self._sample_bytes = 0
        self._offered = 0
        self._train_failures = 0
        #: A training running in its own thread (zstd releases the GIL: the
        #: writer goes on meanwhile), taken up by :meth:`_adopt_dictionary`.
        self._training: Future[zstandard.ZstdCompressionDict] | None = None
        #: Dictionaries this transaction took up, each with the compressor before it.
        self._txn_trained: list[tuple[int, tuple[int, zstandard.ZstdCompressor] | None]] = []
        self._merged_zc: tuple[int, zstandard.ZstdCompressor] | None = None

    def _load_dictionary(self, conn: Any) -> None:
        """Compress new chunks with the newest dictionary in the database, if any."""
        self._trained = int(self._q(conn, "SELECT count(*) FROM zdicts")[0][0])
        rows = self._q(conn, "SELECT id, data FROM zdicts ORDER BY id DESC LIMIT 1")
        if rows:
            did, data = int(rows[0][0]), bytes(rows[0][1])
            d = zstandard.ZstdCompressionDict(data)
            self._dicts[did] = d
            self._zdict = (did, chunk_compressor(d))
            self._publish(did, data)

    def _dictionary(self, conn: Any, did: int) -> zstandard.ZstdCompressionDict:
        d = self._dicts.get(did)
        if d is None:
            rows = self._q(conn, "SELECT data FROM zdicts WHERE id = ?", (did,))
            if not rows:
                raise ValueError(f"span chunk needs zstd dictionary {did}, which is missing")
            d = self._dicts[did] = zstandard.ZstdCompressionDict(bytes(rows[0][0]))
        return d

    def _sample_rows(self, conn: Any, rows: Iterable[ChunkRow]) -> None:
        """Offer the chunks about to be stored to the next training, if one is
        due (their payloads, decompressed: one chunk in the training's stride)."""
        if (
            self._trained >= len(TRAININGS)
            or self._training is not None
            or self._train_failures >= _MAX_TRAIN_FAILURES
        ):
            return
        stride = TRAININGS[self._trained][2]
        for r in rows:
            self._offered += 1
            if self._offered % stride:
                continue
            raw = chunk_payload(r.data, lambda did: self._dictionary(conn, did))
            if raw is not None and self._sample(conn, raw):
                return

    def _sample(self, conn: Any, raw: bytes) -> bool:
        """Keep a chunk payload; once there are enough, train the next
        dictionary (``True``): the first one here and now (until it is there,
        chunks are compressed without one, about twice as large), a later one
        in a thread of its own."""
        self._samples.append(raw)
        self._sample_bytes += len(raw)
        chunks, size, _ = TRAININGS[self._trained]
        if len(self._samples) < chunks and self._sample_bytes < size:
            return False
        samples, self._samples, self._sample_bytes = self._samples, [], 0
        training: Future[zstandard.ZstdCompressionDict] = Future()

        def train() -> None:
            try:
                training.set_result(zstandard.train_dictionary(DICT_SIZE, list[Any](samples)))
            except BaseException as exc:  # reported by _adopt_dictionary
                training.set_exception(exc)

        self._training = training
        if self._zdict is None:
            train()
            self._adopt_dictionary(conn)
        else:
            threading.Thread(target=train, name="crosstrace-zstd-training", daemon=True).start()
        return True

    def _adopt_dictionary(self, conn: Any) -> None:
        """Store a dictionary whose training has finished (a later one's: at the
        start of a transaction), and compress with it from now on."""
        training = self._training
        if training is None or not training.done():
            return
        self._training = None
        try:
            d = training.result()
        except Exception as exc:
            self._train_failures += 1
            log.info("zstd dictionary training failed (%s); chunks stay as they are", exc)
            return
        data = d.as_bytes()
        self._x(
            conn,
            "INSERT INTO zdicts (data, created_ns) VALUES (?, ?)",
            (data, time.time_ns()),
        )
        did = int(self._q(conn, "SELECT max(id) FROM zdicts")[0][0])
        self._dicts[did] = d
        self._txn_trained.append((did, self._zdict))
        self._zdict = (did, chunk_compressor(d))
        self._trained += 1

    def _forget_dictionaries(self, kept: int) -> None:
        """The dictionaries this transaction took up after its first *kept* were
        rolled back: compress with the one before them again."""
        while len(self._txn_trained) > kept:
            did, before = self._txn_trained.pop()
            self._dicts.pop(did, None)
            self._zdict = before
            self._trained -= 1

    def _publish_dictionary(self) -> None:
        """The transaction committed: the newest dictionary it took up is the one
        batches prepared elsewhere are compressed with from now on."""
        if self._txn_trained:
            did = self._txn_trained[-1][0]
            self._publish(did, self._dicts[did].as_bytes())
            self._txn_trained.clear()

    def _publish(self, did: int, data: bytes) -> None:
        self._published = (did, random.getrandbits(62), data)
        self._ship_left = SHIP_BATCHES

    def _lacked_dictionary(self) -> None:
        """A batch prepared elsewhere came back uncompressed although a
        dictionary is published: send its bytes with the next batches again."""
        if self._published is not None:
            self._ship_left = SHIP_BATCHES

    def compression(self) -> Compression:
        """The committed dictionary new chunks are compressed with, for one batch
        prepared outside the writer (:mod:`crosstrace.server.store.prepare`):
        with its bytes for the first :data:`SHIP_BATCHES` batches, then by
        token only (the preparing processes keep it)."""
        pub = self._published
        if pub is None:
            return None
        if self._ship_left <= 0:
            return (pub[0], pub[1], None)
        self._ship_left -= 1
        return pub

    def _merge_compressor(self) -> tuple[int, zstandard.ZstdCompressor] | None:
        """The writer's compressor for the chunks it merges: the current
        dictionary at :data:`~crosstrace.server.store.codec.MERGED_ZSTD_LEVEL`."""
        if self._zdict is None:
            return None
        did = self._zdict[0]
        if self._merged_zc is None or self._merged_zc[0] != did:
            self._merged_zc = (did, chunk_compressor(self._dicts[did], MERGED_ZSTD_LEVEL))
        return self._merged_zc
