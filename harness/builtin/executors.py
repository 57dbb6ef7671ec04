"""The ``local`` executor: runs in this process, or in a pool of worker processes with ``--jobs N``."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from kalm_bench import hookimpl
from kalm_bench.api import Executor
from kalm_bench.compat import quiet_gym_banner


def _init_worker(threads: int) -> None:
    # Each worker gets its share of the cores; otherwise N workers × all cores thrash.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["KALM_BENCH_WORKER"] = "1"
    quiet_gym_banner()


class LocalExecutor(Executor):
    name = "local"
    version = "1"
    description = "this machine: serial, or N worker processes (spawned) with --jobs N"

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], jobs: int) -> Iterator[Any]:
        items = list(items)
        if jobs <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
            return
        threads = max(1, (os.cpu_count() or 1) // jobs)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            pending = {pool.submit(fn, item) for item in items}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()


@hookimpl
def register_executors(register):
    register(LocalExecutor)
