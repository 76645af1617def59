"""Tracking off the critical path: MLflow work of a sweep done on one thread while training goes on.

A trial's dataset input, its epoch metrics and, once it is trained, its tables, checkpoint, model
and Optuna verdict (lease.settle) are queued here in order and done by one worker thread, so the
trainer never waits on MLflow (its figures are made for the sweep's best run only, by the
report). One thread keeps each run's writes in order; the queue is bounded (`max_pending` jobs),
so a store slower than training holds the trainer back instead of growing memory.

Nothing is lost on the way out: `drain` waits for every queued job (the runner calls it
before it looks for more work, before the report, and on Ctrl-C/SIGTERM, after re-queueing
the trials still in training). A job that fails re-queues its trial (run FAILED, see lease.py)
and the failure is raised in the main thread by the next `drain` or `submit`, as it would
have been without the thread. A worker killed outright leaves its trials RUNNING with their
heartbeats stopping: other workers re-queue them (lease.recover).

Cores: the thread runs its torch operations (the test set's per-class table, the model export) on one
intra-op thread (`one_torch_thread`); training keeps all of them. With the default count it kept an
OpenMP worker of its own, and with more OpenMP workers than cores libgomp has every worker sleep
between parallel regions instead of spinning: each of the ~25 operations of a training step then
waited for its worker to wake. On 2 cores, every epoch after a sweep's first trial took twice as long
(1.7 against 0.8 s; about 28 voluntary context switches a step against none).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

DEFAULT_MAX_PENDING = 64  # jobs: epoch logs are small; a population's finished trials are a few each


class Background:
    """One ordered worker thread for MLflow writes, with a bound on the jobs waiting."""

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-background",
                                        initializer=one_torch_thread)
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pending: list[Future] = []
        self._failure: BaseException | None = None

    def submit(self, job: Callable[..., object], *args,
               on_error: Callable[[BaseException], None] | None = None, **kwargs) -> None:
        """Queue `job(*args, **kwargs)`; `on_error(error)` runs on the thread if it raises (e.g. re-queue
        a trial)."""
        self._raise_failure()
        self._slots.acquire()

        def run() -> None:
            try:
                job(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - reported in the main thread by drain/submit
                if on_error is not None:
                    on_error(error)
                self._failure = self._failure or error
            finally:
                self._slots.release()

        self._pending = [future for future in self._pending if not future.done()]
        self._pending.append(self._pool.submit(run))

    def drain(self) -> None:
        """Wait until every queued job is done; raise the first failure of a job, if any."""
        while self._pending:
            self._pending.pop(0).result()
        self._raise_failure()

    def abort(self) -> None:
        """Drop the jobs not started (their leases are re-queued by the caller); the running one ends."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pending = []

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure


def one_torch_thread() -> None:
    """The calling thread's torch operations run on that thread alone (see the module's "Cores").
    The count is read first: torch gives a thread its count at its first use, from the last count set
    in any thread, which would undo one set before. Threads that start later (a library's, inside a job)
    take 1 too, unless a count is set again; threads that already ran torch (training's) keep theirs."""
    torch.get_num_threads()
    torch.set_num_threads(1)
