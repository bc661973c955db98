"""Worker processes for the store producers (prepare --basenji, prepare --targets): results as they
come, and a worker that dies (the kernel's OOM killer sends SIGKILL) ends the run at once with one
line naming its task, instead of a pool that waits for it forever.

concurrent.futures' ProcessPoolExecutor reports a dead worker as BrokenProcessPool; each worker
says which task it starts on a queue, so the task of the dead process can be named.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator

from ...errors import UserError

_started = None  # in a worker: the queue on which it says (pid, task index) when it starts a task


def _init(started, initializer: Callable, initargs: tuple) -> None:
    global _started
    _started = started
    initializer(*initargs)


def _call(function: Callable, index: int, task):
    _started.put((os.getpid(), index))
    return function(task)


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stop the workers now (the results are no longer wanted), then release the executor."""
    for process in list(getattr(executor, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()
    executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def pool_results(function: Callable, tasks: list, initializer: Callable, initargs: tuple, workers: int,
                 describe: Callable[[object], str], finish: Callable[[], None] | None = None) -> Iterator[Iterator]:
    """The results of function(task) over `tasks`, as they come: from `workers` processes (each
    started with initializer(*initargs)), or in this process when workers is 0 or there is one
    task. A worker that dies is a UserError naming describe(task) of its task and the likely cause.
    `finish` runs on the way out, whatever happened (a producer closes its writer there)."""
    try:
        if workers <= 0 or len(tasks) <= 1:
            initializer(*initargs)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            yield map(function, tasks)
            return
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        started = context.SimpleQueue()
        executor = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_init,
                                       initargs=(started, initializer, initargs))
        try:
            yield _results(executor, function, tasks, started, describe)
        finally:
            _terminate(executor)
            started.close()
    finally:
        if finish is not None:
            finish()


# What a store producer's tasks share (the genome, the writer, ...): set once per worker process by
# _init_producer (in this process when there are no workers), so tasks carry only their own part.
worker_inputs: dict = {}


def _init_producer(inputs: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    worker_inputs.clear()
    worker_inputs.update(inputs)


def producer_results(function: Callable, tasks: list, inputs: dict, workers: int, describe: Callable[[object], str]):
    """pool_results for a store producer: `inputs` become each worker's `worker_inputs`, and on the
    way out the writer (inputs['writer']) is closed and `worker_inputs` dropped."""
    def finish() -> None:
        inputs["writer"].close()
        worker_inputs.clear()

    return pool_results(function, tasks, _init_producer, (inputs,), workers, describe, finish)


def _results(executor: ProcessPoolExecutor, function: Callable, tasks: list, started, describe) -> Iterator:
    futures = {executor.submit(_call, function, i, task): i for i, task in enumerate(tasks)}
    processes: dict = {}
    done_tasks: set[int] = set()
    pending = set(futures)
    while pending:
        processes.update(getattr(executor, "_processes", None) or {})
        finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
        for future in finished:
            try:
                result = future.result()
            except BrokenProcessPool:
                processes.update(getattr(executor, "_processes", None) or {})
                raise _died(processes, started, done_tasks, tasks, describe) from None
            done_tasks.add(futures[future])
            yield result


def _died(processes: dict, started, done_tasks: set[int], tasks: list, describe) -> UserError:
    """The error for a dead worker: its task (from the starts the workers reported) and its signal."""
    running: dict[int, int] = {}  # pid -> the task it started last
    while not started.empty():
        pid, index = started.get()
        running[pid] = index
    # the pool may see the pipe break before the dead process is reaped: give its exit code a moment
    deadline = time.monotonic() + 2.0
    while True:
        dead = {pid: p.exitcode for pid, p in processes.items()
                if p.exitcode is not None and p.exitcode != 0 and p.exitcode != -signal.SIGTERM}
        if dead or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    culprits = [running[pid] for pid in dead if pid in running and running[pid] not in done_tasks]
    if not culprits:  # not told which: every task in flight
        culprits = sorted(i for i in set(running.values()) if i not in done_tasks)
    codes = sorted(set(dead.values()))
    how = ", ".join(f"killed by {signal.Signals(-c).name}" if c < 0 else f"exit status {c}" for c in codes) or "died"
    likely = ("likely out of memory (the kernel's OOM killer sends SIGKILL)"
              if not codes or -signal.SIGKILL in codes else "see the system log for why")
    what = " or ".join(describe(tasks[i]) for i in culprits) or "a task"
    return UserError(f"a worker process {how} while converting {what}; {likely}: rerun the same command with fewer "
                     f"--workers (or more memory), it resumes from the work already done")
