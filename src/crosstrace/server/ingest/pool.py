"""Decode workers: processes that decode OTLP trace bodies and prepare their
batches for the store (:func:`~crosstrace.server.store.prepare.prepare_batch`), so
that decoding and the store's one writer use different cores."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from crosstrace.server.ingest.decode import decode
from crosstrace.server.store.prepare import Compression, prepare_batch

__all__ = ["DecodePool"]

log = logging.getLogger(__name__)

_PARENT_POLL_S = 0.5


def _decode_in_worker(body: bytes, as_json: bool, comp: Compression) -> Any:
    """Worker-process side of :meth:`DecodePool.submit_traces`."""
    result = decode("traces", body, as_json=as_json)
    try:
        prepared = prepare_batch(result.span_batch(), comp)
    except Exception:  # left to the store, which reports it as a failed write
        log.exception("preparing a batch failed")
        return result
    result.use_prepared(prepared)
    return result


def _run_into(out: Future[Any], fn: Any, *args: Any) -> None:
    """Run *fn(*args)* and settle *out* with its result or error."""
    try:
        result = fn(*args)
    except BaseException as exc:
        out.set_exception(exc)
    else:
        out.set_result(result)


def _warm() -> int:
    """Run once per worker at start, so the decoder is imported before traffic."""
    return 0


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit as soon as the server process is gone (even when it
    was killed and could not stop its pool)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="crosstrace-parent-watch", daemon=True).start()


class DecodePool:
    """Worker processes that decode OTLP trace bodies and prepare their batches.

    If a worker dies, the pool is started again and the request that saw it is
    decoded in this process instead."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a decode pool needs at least one worker")
        self.workers = workers
        #: Bodies decoded by the workers, and times the pool was started again.
        self.decoded = 0
        self.restarts = 0
        self._lock = threading.Lock()
        self._pool = self._start()
        for f in [self._pool.submit(_warm) for _ in range(workers)]:
            f.result()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_watch_parent,
            initargs=(os.getpid(),),
        )

    def submit_traces(self, body: bytes, as_json: bool, comp: Compression) -> Future[Any]:
        """Decode and prepare *body* in a worker; the future's result is a
        ``DecodeResult`` whose ``prepared`` batch is ready for the store (or the
        decoder's ``OtlpDecodeError``)."""
        out: Future[Any] = Future()
        pool = self._pool

        def done(f: Future[Any]) -> None:
            if f.cancelled():  # the pool was closed first
                out.set_exception(RuntimeError("the decode pool is closed"))
                return
            exc = f.exception()
            if isinstance(exc, BrokenProcessPool):
                self._restart(pool)
                # Decoded in this process instead, off the executor's own thread.
                threading.Thread(
                    target=_run_into,
                    args=(out, _decode_in_worker, body, as_json, comp),
                    name="crosstrace-decode-fallback",
                    daemon=True,
                ).start()
                return
            if exc is not None:
                out.set_exception(exc)
                return
            with self._lock:
                self.decoded += 1
            out.set_result(f.result())

        try:
            pool.submit(_decode_in_worker, body, as_json, comp).add_done_callback(done)
        except BrokenProcessPool:  # broken before this submit: restart, decode here
            self._restart(pool)
            _run_into(out, _decode_in_worker, body, as_json, comp)
        return out

    async def decode_traces(self, body: bytes, as_json: bool, comp: Compression) -> Any:
        """:meth:`submit_traces` for the event loop."""
        return await asyncio.wrap_future(self.submit_traces(body, as_json, comp))

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                log.warning("a decode worker died; starting the decode pool again")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                self.restarts += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
