"""The write queue shared by both stores: one thread, group commit.

Callers hand jobs to :class:`GroupWriter` and get a future back. One thread takes
every job waiting in the queue (up to a span budget), runs them in ONE transaction
and completes their futures after COMMIT. The stores run each job under a
savepoint and report a job that failed as a :class:`JobFailed` result, so one bad
batch gets its error and the others commit. If the transaction itself fails, each
job is retried in a transaction of its own.

Between groups, when its queue is empty, the thread runs the store's background
work (*idle*), one bounded step at a time, so a write never waits for more than
one step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GroupWriter", "Job", "JobFailed"]

log = logging.getLogger(__name__)

#: Stop adding jobs to one transaction past this many records.
MAX_GROUP_RECORDS = 20_000
#: Seconds an idle writer waits for a job before asking for background work.
IDLE_POLL_S = 1.0


@dataclass(slots=True)
class Job:
    """One unit of work: ``kind`` is ``"spans"``, ``"logs"`` or ``"call"``."""

    kind: str
    payload: Any
    size: int
    future: Future[Any] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class JobFailed:
    """The result of a job that failed inside an otherwise committed group."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _settle(fut: Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:  # cancelled by the caller meanwhile
        pass


class GroupWriter:
    """A writer thread that commits queued jobs in groups.

    *run_group(jobs)* runs the jobs in one transaction and returns their results in
    order; it must roll back and raise on failure. *idle()*, when given, runs one
    step of background work whenever no job waits, and says whether more is
    left (if not, it is asked again after :data:`IDLE_POLL_S` without jobs).
    """

    def __init__(
        self,
        name: str,
        run_group: Callable[[list[Job]], list[Any]],
        idle: Callable[[], bool] | None = None,
    ) -> None:
        self._run_group = run_group
        self._idle = idle
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._pending = 0  # records queued, not yet committed
        self._lock = threading.Lock()  # guards the counters below
        self._closed = False
        self.committed_groups = 0
        self.failed_jobs = 0
        self.last_latency_s = 0.0
        self.last_commit_s = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records submitted and not yet committed."""
        return self._pending

    def submit(self, kind: str, payload: Any, size: int) -> Future[Any]:
        """Queue a job; the future completes after its transaction commits."""
        job = Job(kind, payload, size)
        with self._lock:
            if self._closed:
                _settle(job.future, exc=RuntimeError("store is closed"))
                return job.future
            self._pending += size
            self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Commit everything queued so far, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get() if self._idle is None else self._queue.get_nowait()
            except queue.Empty:
                if self._background():
                    continue
                try:
                    first = self._queue.get(timeout=IDLE_POLL_S)
                except queue.Empty:
                    continue
            if first is None:
                break
            jobs = [first]
            records = first.size
            while records < MAX_GROUP_RECORDS:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                records += nxt.size
            self._commit(jobs)

    def _background(self) -> bool:
        assert self._idle is not None
        try:
            return self._idle()
        except Exception:
            log.exception("store background work failed; retrying later")
            return False

    def _commit(self, jobs: list[Job]) -> None:
        t0 = time.monotonic()
        try:
            results = self._run_group(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                log.exception("store write failed")
                self._finish(jobs, t0, error=exc)
                return
            log.warning("group of %d writes failed; retrying them one by one", len(jobs))
            for job in jobs:
                self._commit([job])
            return
        self._finish(jobs, t0, results=results)

    def _finish(
        self,
        jobs: list[Job],
        t0: float,
        results: list[Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        now = time.monotonic()
        failed = len(jobs) if error is not None else 0
        if results is not None:
            failed += sum(isinstance(r, JobFailed) for r in results)
        with self._lock:
            self._pending -= sum(j.size for j in jobs)
            self.failed_jobs += failed
            if error is None:
                self.committed_groups += 1
                self.last_commit_s = now - t0
                self.last_latency_s = now - min(j.queued_at for j in jobs)
        if error is not None or results is None:
            for job in jobs:
                _settle(job.future, exc=error or RuntimeError("store write failed"))
            return
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, JobFailed):
                _settle(job.future, exc=result.error)
            else:
                _settle(job.future, result)
