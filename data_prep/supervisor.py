"""Supervised worker processes: run tasks in fresh (forkserver/spawn) processes, kill and replace a worker that hangs or dies.

Used by render (PyMuPDF is not thread-safe and a page can hang inside MuPDF, where no Python signal or thread can
interrupt it: only killing the process works) and by split_pdfs. A *task* is a list of *items* (e.g. consecutive
pages of one PDF). The worker builds a handler once (``factory(*args)``, a picklable top-level function), says
``("ready",)``, then for each task sends one ``("item", result)`` per item, in order, and ``("done",)``.

The parent waits on all pipes at once. A worker that sends nothing for ``timeout`` seconds while on a task is
killed (SIGKILL); the item it was on is failed with a ``timeout`` reason, the rest of its task is re-queued at the
front and a fresh worker is started. A worker that dies (segfault, out of memory) is handled the same way.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable

Handler = Callable[[list[Any]], Iterable[Any]]
TIMEOUT = "timeout"  # how the reason of an item failed for taking longer than ``timeout`` starts


def is_timeout(reason: str) -> bool:
    """Whether an item failed for taking too long (not because its worker died)."""
    return reason.startswith(f"{TIMEOUT}:")


def _worker_main(conn, factory: Callable[..., Handler], args: tuple) -> None:
    handle = factory(*args)
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            break
        if task is None:
            break
        for result in handle(task):
            conn.send(("item", result))
        conn.send(("done",))


class _Worker:
    """One worker process, its pipe, and the task it is on (``pos`` = index of the item it is working on)."""

    def __init__(self, ctx, factory: Callable[..., Handler], args: tuple):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, factory, args), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.task: list[Any] | None = None
        self.pos = 0
        self.since = time.monotonic()

    def assign(self, task: list[Any]) -> None:
        self.task, self.pos, self.since = task, 0, time.monotonic()
        self.conn.send(task)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()


def _context(factory: Callable) -> mp.context.BaseContext:
    """``forkserver`` with the worker module preloaded where available (a replacement worker starts in
    milliseconds instead of re-importing PyMuPDF), else ``spawn``. Never plain ``fork`` of this process."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([factory.__module__])
        return ctx
    return mp.get_context("spawn")


class Supervisor:
    """Runs ``tasks`` on ``workers`` processes; calls ``on_result(item, result)`` / ``on_fail(item, reason)``."""

    def __init__(self, factory: Callable[..., Handler], args: tuple, workers: int, timeout: float,
                 on_result: Callable[[Any, Any], None], on_fail: Callable[[Any, str], None]):
        if workers < 1 or not timeout > 0:
            raise ValueError(f"need workers >= 1 and timeout > 0, got {workers} and {timeout}")
        self.ctx = _context(factory)
        self.factory, self.args, self.timeout = factory, args, timeout
        self.on_result, self.on_fail = on_result, on_fail
        self.workers = [self._start() for _ in range(workers)]

    def _start(self) -> _Worker:
        return _Worker(self.ctx, self.factory, self.args)

    def _replace(self, w: _Worker, reason: str, tasks: deque) -> None:
        """Kill ``w``, fail the item it was on, re-queue the rest of its task and start a fresh worker."""
        task, pos = w.task, w.pos
        w.kill()
        if not w.ready:
            raise RuntimeError(f"a worker process failed to start ({reason}); its traceback is above")
        if task is not None and pos < len(task):
            self.on_fail(task[pos], reason)
            if pos + 1 < len(task):
                tasks.appendleft(task[pos + 1:])
        self.workers[self.workers.index(w)] = self._start()

    def _handle(self, w: _Worker, msg: tuple) -> None:
        if msg[0] == "ready":
            w.ready = True
        elif msg[0] == "done":
            w.task = None
        else:
            assert w.task is not None and w.pos < len(w.task), "worker sent more results than its task has items"
            self.on_result(w.task[w.pos], msg[1])
            w.pos += 1
            w.since = time.monotonic()

    def run(self, tasks: deque) -> None:
        """Process all tasks (a deque of item lists); workers are always killed on exit."""
        try:
            while tasks or any(w.task is not None for w in self.workers):
                for w in self.workers:
                    if w.ready and w.task is None and tasks:
                        w.assign(tasks.popleft())
                by_conn = {w.conn: w for w in self.workers}
                for conn in wait(list(by_conn), timeout=min(1.0, self.timeout)):
                    w = by_conn[conn]
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        w.proc.join(timeout=5)  # so that its exit code is known
                        self._replace(w, f"worker process died (exit code {w.proc.exitcode})", tasks)
                        continue
                    self._handle(w, msg)
                now = time.monotonic()
                for w in list(self.workers):
                    if w.task is not None and now - w.since > self.timeout:
                        self._replace(w, f"{TIMEOUT}: no result within {self.timeout:g} s", tasks)
        finally:
            for w in self.workers:
                w.kill()
