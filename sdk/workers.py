"""The server's inference workers: `size` daemon threads with a per-request time limit.

A request whose job runs past the limit is answered at once (TimeLimitExceeded) and the job is
stopped: TimeLimitExceeded is raised inside its thread (CPython's PyThreadState_SetAsyncExc), which
ends any Python-level loop at its next bytecode, and the worker is *recovered*. A thread stuck in
native code cannot be interrupted that way; if it has not come back after `grace` seconds it is
*replaced*: a fresh thread takes its place so capacity is restored, and the old one (a daemon) is
left to finish or to die with the process. Daemon threads never block exit, so SIGTERM always ends
the process even with a worker stuck. Counts of each outcome are in `stats()` (/health, /metrics).
"""
from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import time


class TimeLimitExceeded(Exception):
    """An inference ran past the server's per-request time limit."""


class _Job:
    __slots__ = ("fn", "future", "loop", "state", "thread", "lock")

    def __init__(self, fn, future, loop):
        self.fn, self.future, self.loop = fn, future, loop
        self.state, self.thread, self.lock = "queued", None, threading.Lock()   # queued -> running -> done | expired

    def _settle(self, ok: bool, value) -> None:
        def settle():
            if not self.future.done():
                (self.future.set_result if ok else self.future.set_exception)(value)
        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:   # the event loop is closed (shutting down): nobody is waiting
            pass

    def run(self) -> None:
        with self.lock:
            if self.state != "queued":       # expired while waiting: never started
                return
            self.state, self.thread = "running", threading.current_thread()
        try:
            ok, value = True, self.fn()
        except BaseException as exc:          # TimeLimitExceeded raised into this thread lands here too
            ok, value = False, exc
        with self.lock:
            expired = self.state == "expired"
            self.state = "done"
        if not expired:
            self._settle(ok, value)


class InferencePool:
    def __init__(self, size: int, time_limit: float, grace: float = 2.0, name: str = "edgesight-infer"):
        self.size, self.time_limit, self.grace, self.name = size, time_limit, grace, name
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.active: set[threading.Thread] = set()
        self.retired: set[threading.Thread] = set()
        self.counts = {"time_limit_exceeded": 0, "recovered": 0, "replaced": 0}
        self._lock = threading.Lock()
        self._serial = 0
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._serial += 1
            t = threading.Thread(target=self._loop, name=f"{self.name}-{self._serial}", daemon=True)
            self.active.add(t)
        t.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while me in self.active:
            job = None
            try:
                job = self.jobs.get()
                if job is None:
                    return
                job.run()
            except TimeLimitExceeded:   # delivered just after the job's own code had returned
                if job is not None:
                    with job.lock:
                        job.state = "done"
        with self._lock:
            self.retired.discard(me)    # a replaced worker that came back: it just leaves

    async def run(self, fn):
        """fn() on a worker; TimeLimitExceeded when it has not finished within the time limit
        (counted from submission, so time waiting in the queue counts too)."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop.create_future(), loop)
        self.jobs.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.time_limit)
        except asyncio.TimeoutError:
            self._expire(job, loop)
            raise TimeLimitExceeded(f"the inference ran past the server's {self.time_limit:g} s time limit "
                                    "and was stopped") from None

    def _expire(self, job: _Job, loop) -> None:
        with job.lock:   # held while raising: the job cannot finish in between and the exception hit the next one
            state, job.state = job.state, ("expired" if job.state in ("queued", "running") else job.state)
            if state != "running":
                return
            thread = job.thread
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(TimeLimitExceeded))
        with self._lock:
            self.counts["time_limit_exceeded"] += 1
        started = time.monotonic()

        def check():
            with job.lock:
                done = job.state == "done"
            if done:
                with self._lock:
                    self.counts["recovered"] += 1
            elif time.monotonic() - started >= self.grace:
                self._replace(thread)
            else:
                loop.call_later(0.05, check)
        loop.call_later(0.05, check)

    def _replace(self, thread: threading.Thread) -> None:
        with self._lock:
            if thread not in self.active:
                return
            self.active.discard(thread)
            self.retired.add(thread)
            self.counts["replaced"] += 1
        self._spawn()

    def stats(self) -> dict:
        with self._lock:
            stuck = sum(t.is_alive() for t in self.retired)
            return {"workers": len(self.active), "stuck": stuck, "time_limit_s": self.time_limit, **self.counts}

    def shutdown(self) -> None:
        for _ in range(len(self.active)):
            self.jobs.put(None)
