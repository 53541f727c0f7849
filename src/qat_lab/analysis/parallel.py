"""Independent pieces of the analysis (one annealing fit per cell, one figure per kind) in worker
processes.

The annealing fits and the figures are most of qatlab-analyze's time and each piece is
independent, so they are spread over `workers` processes. Workers are forked: they inherit the
loaded run set and the imported libraries, so nothing but the task index goes out and only the
results come back (pickled). Results come back in task order, so the report is the same for any
number of workers. Where fork is unavailable (Windows, macOS defaults aside) or one worker is
asked for, the tasks run in this process, one after the other.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any, Callable

Task = tuple[Callable[..., Any], tuple]

_TASKS: list[Task] = []
"""The tasks of the fork_map in progress; workers inherit them through fork."""


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Worker processes by default: the available cores, at most 8."""
    return max(1, min(8, available_cores()))


def _run(index: int) -> Any:
    fn, args = _TASKS[index]
    return fn(*args)


def fork_map(tasks: list[Task], workers: int) -> list[Any]:
    """[fn(*args) for fn, args in tasks], spread over up to `workers` forked processes."""
    global _TASKS
    workers = min(workers, len(tasks))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(*args) for fn, args in tasks]
    _TASKS = tasks
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            # chunksize 1: tasks differ a lot in cost (a figure of 6 panels vs one of 1), and there
            # are few of them, so handing them out one at a time balances the workers best.
            return pool.map(_run, range(len(tasks)), chunksize=1)
    finally:
        _TASKS = []
