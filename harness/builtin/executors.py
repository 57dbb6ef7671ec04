"""The ``local`` executor: runs items in worker processes (spawned), ``--jobs N`` of them at a time.

Each worker runs one item at a time and is reused for the next. A worker that dies (a segfault, an
``os._exit``, the out-of-memory killer) or an item that raises out of ``fn`` does not end the map: that item
comes back as an :class:`ItemLost` naming what happened, a fresh worker takes over, and the other items go
on. With ``KALM_BENCH_IN_PROCESS=1``, ``--jobs 1`` runs items in this process instead, one after the other
(for a debugger; a crash then ends everything).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from kalm_bench import hookimpl
from kalm_bench.api import Executor, ItemLost
from kalm_bench.compat import quiet_gym_banner

IN_PROCESS_ENV = "KALM_BENCH_IN_PROCESS"


# In a worker: sends an event to the parent's ``on_event`` (None elsewhere).
_emit: Callable[[Any], None] | None = None


def emit(event: Any) -> bool:
    """Send ``event`` to the ``on_event`` callback of the :meth:`LocalExecutor.map` running this item;
    False when there is none (another executor, or no callback)."""
    if _emit is None:
        return False
    _emit(event)
    return True


def _init_worker(threads: int) -> None:
    # Each worker gets its share of the cores; otherwise N workers × all cores thrash.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["KALM_BENCH_WORKER"] = "1"
    quiet_gym_banner()


def _exit_with_parent() -> None:
    """A worker whose parent is gone (killed) stops too, instead of finishing its item for nobody."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(conn: Connection, threads: int) -> None:
    global _emit
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    _init_worker(threads)
    _exit_with_parent()
    lock = threading.Lock()

    def send(msg: Any) -> None:
        with lock:
            conn.send(msg)

    _emit = lambda event: send(("event", event))  # noqa: E731
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, fn, item = msg
        try:
            result = fn(item)
        except BaseException as exc:  # reported as this item's loss; the worker goes on with the next
            send(("lost", index, f"{type(exc).__name__}: {exc}"))
            continue
        try:
            send(("result", index, result))
        except Exception as exc:  # an unpicklable result
            send(("lost", index, f"its result could not be sent back ({type(exc).__name__}: {exc})"))


def death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the worker process died ({name})"
    return f"the worker process exited with status {exitcode}"


class _Worker:
    def __init__(self, ctx: Any, threads: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, threads), name="kalm-bench-worker")
        self.process.start()
        child.close()
        self.index: int | None = None  # the item it runs

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        self.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()
    workers.clear()


class LocalExecutor(Executor):
    name = "local"
    version = "1"
    description = "this machine: N worker processes (spawned) with --jobs N (default 1)"

    def __init__(self, config: Any = None):
        super().__init__(config)
        # Kept from one ``map`` to the next (a worker's imports are paid once) until :meth:`close`.
        self._workers: list[_Worker] = []
        self._threads: int | None = None
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def close(self) -> None:
        """Stop the worker processes (a later ``map`` starts new ones)."""
        _stop_all(self._workers)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], jobs: int,
            on_event: Callable[[Any], None] | None = None) -> Iterator[Any]:
        """Results (or :class:`ItemLost`) as items finish; ``on_event`` gets what ``emit`` sends from them."""
        global _emit
        items = list(items)
        if not items:
            return
        if int(jobs) <= 1 and os.environ.get(IN_PROCESS_ENV, "").strip().lower() in ("1", "true", "yes"):
            previous, _emit = _emit, on_event
            try:
                for item in items:
                    yield fn(item)
            finally:
                _emit = previous
            return
        jobs = max(1, int(jobs))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        if threads != self._threads:
            self.close()
            self._threads = threads
        ctx = multiprocessing.get_context("spawn")
        todo = list(range(len(items)))[::-1]
        workers = self._workers
        try:
            while todo or any(w.index is not None for w in workers):
                for w in [w for w in workers if w.index is None and not w.process.is_alive()]:
                    w.conn.close()
                    workers.remove(w)
                while len(todo) > sum(w.index is None for w in workers) and len(workers) < jobs:
                    workers.append(_Worker(ctx, threads))
                for w in workers:
                    if w.index is None and todo:
                        w.index = todo.pop()
                        try:
                            w.conn.send((w.index, fn, items[w.index]))
                        except OSError:
                            pass  # it died: its sentinel says so below
                busy = [w for w in workers if w.index is not None]
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for w in busy:
                    if w.conn in ready or w.process.sentinel in ready:
                        done = self._drain(w, on_event)
                        if done is not None:
                            index, ok, value = done
                            yield value if ok else ItemLost(items[index], value)
        finally:
            for w in [w for w in workers if w.index is not None]:  # the map was abandoned: its items are off
                w.process.kill()
                w.stop()
                workers.remove(w)

    @staticmethod
    def _drain(w: _Worker, on_event: Callable[[Any], None] | None) -> tuple[int, bool, Any] | None:
        """Read what ``w`` sent: (item index, ok, result or reason) once its item is finished, else None."""
        while True:
            try:
                if not w.conn.poll():
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "event":
                if on_event is not None:
                    on_event(msg[1])
                continue
            index, w.index = w.index, None
            return index, msg[0] == "result", msg[2]
        if w.index is not None and not w.process.is_alive():
            w.process.join()
            index, w.index = w.index, None
            return index, False, death_reason(w.process.exitcode)
        return None


@hookimpl
def register_executors(register):
    register(LocalExecutor)
