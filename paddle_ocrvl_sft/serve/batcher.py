"""Batching that keeps the model busy under concurrency: one worker, adaptive gathering, rows that end alone.

Model calls are not thread-safe, so ONE worker thread owns the backend. A request's job goes in
with :meth:`MicroBatcher.submit` and comes back as a :class:`concurrent.futures.Future`:

* **prepared first, on CPU threads**: a backend with ``prepare(job)`` (the transformers backend:
  image processor, tokenizer, rotary positions) gets each job prepared on a small thread pool as
  soon as it arrives, so a batch is ready to go when the model is free;
* **gathered while requests are on their way**: the app counts requests whose bodies are still
  being read or decoded (:meth:`arriving`), and the batcher those being prepared. The worker takes
  the first ready job and keeps gathering while requests that were already on their way when it
  started are being prepared (CPU work that will end), while any others are on their way (bodies
  being read, jobs being prepared: for at most ``gather_limit`` seconds, so neither a slow upload
  nor a steady stream holds a batch back for long), or while the next one comes within
  ``max_wait``; it stops at ``max_batch``. So a burst, or clients sending their next request as
  their answers come, become one batch. Requests that arrive while a batch decodes wait and form
  the next batch;
* **answered as rows end**: a backend with ``run_prepared(items, on_done)`` answers each job when
  its row ends (its own end of sequence or token cap), while the rest of the batch goes on, so a
  short request is not held back by a long one in the same batch. A backend with ``imap(jobs)``
  (genai-server) answers each job from its own outcome; other backends get ``backend.batch(jobs)``
  (or one call per job).

A job cancelled before its batch starts (its request timed out, its client left) is skipped. A
failed batch is retried in halves for the jobs still unanswered, so an error lands on the job
that caused it. ``status`` is ``warming`` while the backend's ``warmup()`` runs (the worker starts
with it: the static cache's decoding graphs), then ``ok``; ``down`` if the worker stopped.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from paddle_ocrvl_sft.predict import Job

log = logging.getLogger("paddle_ocrvl_sft.serve")


class Unavailable(RuntimeError):
    """The worker has stopped (a failed warm-up, or the server shutting down): a 503, not the job's fault."""


@dataclass(eq=False)
class _Pending:
    job: Job
    item: Any = None  # what the backend runs: the prepared row, or the job itself
    since: float = field(default_factory=time.monotonic)  # when its request began to arrive
    future: Future = field(default_factory=Future)


class Arrival:
    """One request on its way to the batcher; :meth:`done` once it is queued or has failed (idempotent)."""

    def __init__(self, batcher: "MicroBatcher"):
        self._batcher = batcher
        self.since = time.monotonic()

    def done(self) -> None:
        with self._batcher._lock:
            self._batcher._reading.discard(self)


class MicroBatcher:
    def __init__(self, backend, *, max_batch: int = 64, max_wait: float = 0.02, gather_limit: float = 0.5,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None, prepare_threads: int | None = None):
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.gather_limit = gather_limit
        self.on_batch = on_batch  # called with (jobs in the model call, seconds it took)
        self.rows = callable(getattr(backend, "prepare", None)) and callable(getattr(backend, "run_prepared", None))
        self.status = "warming"
        self.error: str | None = None
        self._stopped = False  # set (under _lock) when the worker stops taking jobs
        self._reading: set[Arrival] = set()  # requests whose bodies are being read (the app's count)
        self._preparing: set[_Pending] = set()  # jobs on the prepare threads
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._prepare = ThreadPoolExecutor(max_workers=prepare_threads or min(8, os.cpu_count() or 1),
                                           thread_name_prefix="serve-prepare") if self.rows else None
        self._thread = threading.Thread(target=self._work, name="model-worker", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the app's side ------------------------------------------------------------------------------

    def arriving(self) -> Arrival:
        """Count a request on its way (its body being read); the worker waits for it when it gathers."""
        arrival = Arrival(self)
        with self._lock:
            self._reading.add(arrival)
        return arrival

    def on_the_way(self, since: float) -> tuple[bool, bool]:
        """(a job that began to arrive before ``since`` is being prepared, any request is on its way)."""
        with self._lock:
            return (any(p.since <= since for p in self._preparing),
                    bool(self._reading or self._preparing))

    def submit(self, job: Job, arrival: Arrival | None = None) -> Future:
        """Queue ``job`` (prepared on a CPU thread first where the backend prepares); its Future.

        Raises :class:`Unavailable` once the worker has stopped (or :meth:`close` was called).
        """
        pending = _Pending(job, job) if arrival is None else _Pending(job, job, since=arrival.since)
        try:
            # Under the lock the worker stops with (_stop): a job is queued before the worker empties
            # the queue, and so failed there, or refused here; none is left behind in between.
            with self._lock:
                if self._stopped or not self.alive:
                    raise Unavailable(self.error or "the model worker has stopped")
                if self._prepare is None:
                    self._queue.put(pending)
                else:
                    self._preparing.add(pending)  # counted before the arrival ends: the worker never sees a gap
            if self._prepare is not None:
                try:
                    self._prepare.submit(self._prepare_one, pending)
                except RuntimeError:  # close() shut the prepare threads down: nothing will prepare it
                    with self._lock:
                        self._preparing.discard(pending)
                    raise Unavailable("the server is shutting down") from None
        finally:
            if arrival is not None:
                arrival.done()
        return pending.future

    def _prepare_one(self, pending: _Pending) -> None:
        try:
            if not self._stopped and not pending.future.cancelled():
                pending.item = self.backend.prepare(pending.job)
            with self._lock:  # the worker may have stopped meanwhile: queued only while it will still run
                queued = not self._stopped and not pending.future.cancelled()
                if queued:
                    self._queue.put(pending)
            if not queued and pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(Unavailable(self.error or "the server is shutting down"))
        except Exception as exc:  # an image the processor cannot take: this request's error only
            if pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(exc)
        finally:
            with self._lock:
                self._preparing.discard(pending)

    def close(self, timeout: float | None = None) -> None:
        """Finish the batch in progress, fail what still waits, stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._prepare is not None:
            # Not cancelled: a cancelled prepare would never answer its request; each one left fails
            # its job at once once the worker has stopped (_prepare_one), or is queued behind the end.
            self._prepare.shutdown(wait=False)

    # --- the worker ----------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            warmup = getattr(self.backend, "warmup", None)
            if callable(warmup):
                warmup()
        except Exception as exc:  # a model that cannot run: say so on /health, answer 503
            log.exception("warm-up failed")
            self.error = f"warm-up failed: {type(exc).__name__}: {exc}"
            self._stop(self.error)
            return
        self.status = "ok"
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if batch:
                start = time.perf_counter()
                self._execute(batch)
                self.on_batch(len(batch), time.perf_counter() - start)
            if stop:
                break
        self._stop("the server is shutting down")

    def _stop(self, why: str) -> None:
        """No job runs from now on: refuse new ones (submit, _prepare_one) and fail those queued."""
        with self._lock:
            self._stopped = True
        self.status = "down"
        while True:  # what arrived after close(), or during a failed warm-up: nobody will run it
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return
            if pending is not None and pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(Unavailable(why))

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch = [first]
        start = time.monotonic()
        deadline = start + self.gather_limit
        while len(batch) < self.max_batch:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                preparing, coming = self.on_the_way(start)
                waiting = preparing or (coming and time.monotonic() < deadline)
                try:  # requests on their way: wait for them; none: a short wait for a straggler
                    pending = self._queue.get(timeout=0.05 if waiting else self.max_wait)
                except queue.Empty:
                    if waiting:
                        continue
                    break
            if pending is None:
                return batch, True
            batch.append(pending)
        return batch, False

    def _execute(self, batch: list[_Pending]) -> None:
        """Run ``batch`` (futures already running); answer each; retry the unanswered in halves on failure."""
        try:
            if self.rows:
                def done(i: int, text: str) -> None:
                    if not batch[i].future.done():
                        batch[i].future.set_result(text)

                self.backend.run_prepared([p.item for p in batch], done)
            elif hasattr(self.backend, "imap"):
                # Each request answered from its own outcome (genai-server, as predict.run does): batch()
                # raises on the first failure, and retrying in halves would ask the upstream again for
                # answers it already gave.
                for pending, outcome in zip(batch, self.backend.imap([p.job for p in batch])):
                    if isinstance(outcome, Exception):
                        pending.future.set_exception(outcome)
                    else:
                        pending.future.set_result(outcome)
            else:
                jobs = [p.job for p in batch]
                texts = self.backend.batch(jobs) if hasattr(self.backend, "batch") else [self.backend(j) for j in jobs]
                for pending, text in zip(batch, texts):
                    pending.future.set_result(text)
        except Exception as exc:
            open_ = [p for p in batch if not p.future.done()]
            if len(open_) == 1:
                open_[0].future.set_exception(exc)
            elif open_:
                half = len(open_) // 2
                self._execute(open_[:half])
                self._execute(open_[half:])
            return
        for pending in batch:  # a backend that skipped a job must not leave its request hanging
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the model returned no answer for this request"))
