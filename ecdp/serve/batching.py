"""Dynamic batching: requests that can share a solve wait together, briefly, and run as one batch.

A ``Batcher`` holds a bounded queue of jobs on one asyncio event loop. Each job has a key (jobs of
equal keys can be run together) and a payload. One batch runs at a time, in an executor: the
batch is the oldest waiting job and the next waiting jobs of its key, up to the key's capacity,
started when it is full or when its oldest job has waited ``max_wait_s``, whichever comes first.
A job whose future is cancelled (its client left, or it timed out) leaves the queue at once and
never holds up a batch; one cancelled while its batch runs just has its result dropped.
"""
import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence


class QueueFull(Exception):
    """The queue holds as many waiting jobs as it may; the caller should retry later."""


@dataclass(eq=False)
class Job:
    key: Hashable
    payload: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Runs ``run_batch(payloads) -> results`` (one result or exception per payload, in order) on batches of jobs.

    max_batch: the most jobs in a batch; capacity(key), when given, lowers it per key (at least 1).
    max_wait_s: how long the oldest job of a batch that is not full may wait for more. queue_size:
    the most jobs waiting (not counting the batch that runs); submit raises QueueFull beyond it.
    on_batch(size), when given, is called as each batch starts. Every method is called on the
    event loop that runs ``serve()``.
    """

    def __init__(self, run_batch: Callable[[list], Sequence], *, max_batch: int, max_wait_s: float, queue_size: int,
                 executor, capacity: Callable[[Hashable], int] | None = None,
                 on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch and queue_size must be at least 1 and max_wait_s at least 0")
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_s, queue_size
        self.capacity = capacity or (lambda key: max_batch)
        self.on_batch = on_batch
        self.waiting: collections.OrderedDict[Job, None] = collections.OrderedDict()   # FIFO of live jobs
        self._wake = asyncio.Event()
        self._closing = False

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch."""
        return len(self.waiting)

    def submit(self, key: Hashable, payload: Any) -> asyncio.Future:
        """Queue a job; returns the future of its result. Raises QueueFull when the queue is full,
        and RuntimeError once close() was called."""
        if self._closing:
            raise RuntimeError("the batcher is closing")
        if len(self.waiting) >= self.queue_size:
            raise QueueFull()
        job = Job(key, payload, asyncio.get_running_loop().create_future())
        self.waiting[job] = None
        job.future.add_done_callback(lambda _: self._leave(job))
        self._wake.set()
        return job.future

    def close(self) -> None:
        """Accept no more jobs; serve() returns once every queued job is done."""
        self._closing = True
        self._wake.set()

    async def serve(self) -> None:
        """Form and run batches until close() was called and the queue is empty."""
        loop = asyncio.get_running_loop()
        while self.waiting or not self._closing:
            batch, wait = self._next_batch()
            if not batch:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            for job in batch:
                del self.waiting[job]
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [job.payload for job in batch])
            except Exception as e:   # the whole batch failed: every job gets the error
                results = [e] * len(batch)
            for job, result in zip(batch, results):
                if job.future.done():   # cancelled while it ran
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _next_batch(self) -> tuple[list[Job], float | None]:
        """(the batch to run now, []) or ([], how long to wait at most before looking again; None: until woken)."""
        if not self.waiting:
            return [], None
        head = next(iter(self.waiting))
        size = max(1, min(self.max_batch, self.capacity(head.key)))
        batch = [job for job in self.waiting if job.key == head.key][:size]
        remaining = head.arrived + self.max_wait_s - time.monotonic()
        if len(batch) < size and remaining > 0 and not self._closing:
            return [], remaining
        return batch, None

    def _leave(self, job: Job) -> None:
        """A job's future is done: it no longer waits (a cancelled one frees its place at once)."""
        if self.waiting.pop(job, False) is None:
            self._wake.set()
