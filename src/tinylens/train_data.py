"""Each training step's batch, drawn from the run's data generator, optionally built ahead of time.

On a CPU the model's step uses every core and batches are drawn in place. On a GPU the CPU would
otherwise sit idle while the sampler (for mazes ≈ 7,000 per second per core) caps the step rate, so
for tasks whose batches are functions of one seed (:attr:`~tinylens.tasks.base.Task.seeded_batches`)
the next batches are built in worker processes. The seeds come, in order, from a copy of the run's
generator, and the run's own generator still makes its one draw per step, so the batches and the
saved generator state are exactly those of drawing in place: worker count never changes a number.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

import torch

from tinylens.errors import ConfigError
from tinylens.tasks import make_task
from tinylens.tasks.base import Task, Tokens, draw_batch_seed

MAX_DATA_WORKERS = 8
"""Most worker processes a GPU run builds batches in by default."""
WORKERS_VARIABLE = "TINYLENS_DATA_WORKERS"
"""Environment variable that sets the number of data worker processes of every run (0: none)."""


def default_data_workers(device: torch.device) -> int:
    """Worker processes for a run on ``device``: :data:`WORKERS_VARIABLE` if set, else none on a
    CPU (the model's step uses every core), else every core but one, at most
    :data:`MAX_DATA_WORKERS`.

    Raises:
        ConfigError: the variable is set to something other than a count 0–64.
    """
    value = os.environ.get(WORKERS_VARIABLE)
    if value is not None:
        if not value.strip().isdigit() or int(value) > 64:
            raise ConfigError(f"{WORKERS_VARIABLE}={value!r} must be a number of processes, 0–64")
        return int(value)
    if device.type == "cpu":
        return 0
    return max(0, min(MAX_DATA_WORKERS, (os.cpu_count() or 1) - 1))


class TrainBatches:
    """The training batches of one run: ``next()`` is step after step's batch.

    ``batch_size`` questions per batch, ``k`` per shared prefix (``k > 1`` draws with
    :meth:`~tinylens.tasks.base.Task.sample_grouped`). ``generator`` is the run's data generator: it
    advances exactly as drawing in place would, so saving its state after any batch and resuming
    gives the same batches. Call :meth:`close` to stop the workers.
    """

    def __init__(
        self, task: Task, batch_size: int, k: int, generator: torch.Generator, *, workers: int = 0
    ) -> None:
        self.task = task
        self.batch_size = batch_size
        self.k = k
        self.generator = generator
        self.workers = workers if task.seeded_batches else 0
        self._pool: ProcessPoolExecutor | None = None
        self._ahead: torch.Generator | None = None
        self._queue: deque[tuple[int, Future[Tokens]]] = deque()

    def next(self) -> Tokens:
        """The next batch, ``[batch_size, seq_len]`` token ids on the CPU."""
        if self.workers == 0:
            return self._draw_in_place()
        try:
            self._top_up()
        except BrokenProcessPool:  # a worker died between steps: the pool takes no more work
            self._lose_workers()
            return self._draw_in_place()
        seed = draw_batch_seed(self.generator)
        queued_seed, batch = self._queue.popleft()
        if seed != queued_seed:  # only if something else drew from the run's generator
            raise RuntimeError("the data generator was used outside TrainBatches; batches diverged")
        try:
            return batch.result()
        except BrokenProcessPool:  # a worker died (killed, out of memory): carry on without them
            self._lose_workers()
            return self.task.batch_from_seed(seed, self.batch_size, k=self.k, train=True)

    def _lose_workers(self) -> None:
        print(
            "tinylens: a data worker process died; drawing the batches in place from now on "
            "(the same batches, more slowly)",
            file=sys.stderr,
            flush=True,
        )
        self.close()
        self.workers = 0

    def close(self) -> None:
        """Stop the worker processes (batches built ahead are dropped; nothing is lost)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._queue.clear()
        self._ahead = None

    def _draw_in_place(self) -> Tokens:
        if self.k > 1:
            return self.task.sample_grouped(
                self.batch_size // self.k, self.k, self.generator, train=True
            )
        return self.task.sample(self.batch_size, self.generator, train=True)

    def _top_up(self) -> None:
        if self._pool is None:
            # forkserver, not fork: the trainer's process may hold CUDA state and threads that a
            # forked child must not inherit.
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_start_worker,
                initargs=(self.task.name, self.task.options()),
            )
            self._ahead = torch.Generator()
            self._ahead.set_state(self.generator.get_state())
        assert self._ahead is not None
        # The first submission starts the fork server, and every worker inherits its signal mask:
        # with SIGINT blocked there, Ctrl-C (sent to the whole process group by a terminal) reaches
        # the trainer alone, which finishes its step and stops the workers itself. A worker that
        # took it would die, mid-start even, and print a traceback.
        with _sigint_blocked():
            while len(self._queue) < 2 * self.workers:
                seed = draw_batch_seed(self._ahead)
                job = self._pool.submit(_build_batch, seed, self.batch_size, self.k)
                self._queue.append((seed, job))


_worker: dict[str, Task] = {}
"""In a worker process: its task, made once by :func:`_start_worker`."""


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back from this thread, and from processes started meanwhile, until the end."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _start_worker(task_name: str, options: dict[str, Any]) -> None:
    torch.set_num_threads(1)  # one core per worker; the sampler is plain Python anyway
    _worker["task"] = make_task(task_name, options)


def _build_batch(seed: int, n: int, k: int) -> Tokens:
    return _worker["task"].batch_from_seed(seed, n, k=k, train=True)
