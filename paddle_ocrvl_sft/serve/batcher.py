"""Micro-batching: requests that arrive together share one model call.

Model calls are not thread-safe, so ONE worker thread owns the backend. It takes the first waiting
job and gathers more while they keep coming: it stops when ``max_batch`` are there, when none has
arrived for ``max_wait`` seconds, or ``GATHER_LIMIT`` waits after the first (a burst of clients
becomes one batch, a lone request waits only ``max_wait``). It runs them with
``backend.batch(jobs)`` (one by one for a backend without it). Callers get a
:class:`concurrent.futures.Future`; one cancelled before its batch starts (its request timed out)
is skipped. A failed batch is retried in halves, so an error lands on the job that caused it.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from paddle_ocrvl_sft.predict import Job

GATHER_LIMIT = 20  # a batch is gathered for at most this many max_wait periods


@dataclass
class _Pending:
    job: Job
    future: Future = field(default_factory=Future)


class MicroBatcher:
    def __init__(self, backend, *, max_batch: int = 16, max_wait: float = 0.005,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None):
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch  # called with (jobs in the model call, seconds it took)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="model-worker", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: Job) -> Future:
        if not self.alive:
            raise RuntimeError("the model worker has stopped")
        pending = _Pending(job)
        self._queue.put(pending)
        return pending.future

    def close(self, timeout: float | None = None) -> None:
        """Finish the batch in progress, fail what still waits, stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)
            if stop:
                break
        while True:  # what arrived after close(): nobody will run it
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return
            if pending is not None and pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch = [first]
        limit = time.monotonic() + self.max_wait * GATHER_LIMIT
        while len(batch) < self.max_batch:
            try:
                pending = self._queue.get(timeout=max(0.0, min(self.max_wait, limit - time.monotonic())))
            except queue.Empty:
                break
            if pending is None:
                return batch, True
            batch.append(pending)
        return batch, False

    def _run(self, batch: list[_Pending]) -> None:
        start = time.perf_counter()
        jobs = [p.job for p in batch]
        try:
            texts = self.backend.batch(jobs) if hasattr(self.backend, "batch") else [self.backend(j) for j in jobs]
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        self.on_batch(len(batch), time.perf_counter() - start)
        for pending, text in zip(batch, texts):
            pending.future.set_result(text)
