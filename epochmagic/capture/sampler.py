"""A statistical sampler of the main thread's Python stack during the
measured epoch (docs/design.md §4.6).

A daemon thread wakes every ``interval_s``, reads the main thread's frame with
``sys._current_frames()`` and keeps the stack as ``(code, line)`` pairs, with
the time since its previous sample as the sample's weight. A thread, not a
timer signal, so a cell's own ``signal.setitimer`` / SIGALRM handlers and
``faulthandler`` keep working and no system call of the user's is interrupted.
The thread needs the GIL to read the frame: when the main thread holds it in a
long C call the sample comes later and weighs more, so time stays whole.

Fork-safe: threads do not survive ``fork``; ``os.register_at_fork`` also
marks the child so a Sampler started there (a DataLoader worker, a forked
rank) stays inert.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import NamedTuple

THREAD_NAME = "epochmagic-sampler"
INTERVAL_S = 0.005  # 200 samples/s at most (docs/design.md §4.6: cost x rate)
MAX_DEPTH = 256  # frames kept per sample, innermost first

_in_forked_child = False


def _forked() -> None:
    global _in_forked_child
    _in_forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class Sample(NamedTuple):
    """One look at the main thread: when (``t``, on the recorder's clock),
    the seconds since the previous look (``dt``), and the stack innermost
    first as (code, line) pairs."""

    t: float
    dt: float
    stack: tuple[tuple[CodeType, int], ...]


class Sampler:
    """Samples the thread ``thread_id`` (default: the calling thread) from
    ``start()`` to ``stop()``; ``samples`` holds what it saw."""

    def __init__(
        self,
        interval_s: float = INTERVAL_S,
        thread_id: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.interval_s = interval_s
        self.thread_id = thread_id if thread_id is not None else threading.get_ident()
        self.clock = clock
        self.samples: list[Sample] = []
        self.why_not: str | None = None  # why it could not start, if it could not
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start sampling; False (with ``why_not``) where it cannot."""
        if _in_forked_child:
            self.why_not = "in a forked process (a DataLoader worker or a forked rank)"
            return False
        if not hasattr(sys, "_current_frames"):
            self.why_not = "this Python has no sys._current_frames()"
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        try:
            self._thread.start()
        except RuntimeError as e:  # no more threads (an interpreter shutting down)
            self._thread = None
            self.why_not = f"its thread did not start ({e})"
            return False
        return True

    def stop(self) -> None:
        """Stop and wait for the thread; idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        frames = sys._current_frames
        target, clock, wait = self.thread_id, self.clock, self._stop.wait
        append = self.samples.append
        last = clock()
        while not wait(self.interval_s):
            frame: FrameType | None = frames().get(target)
            now = clock()
            if frame is None:  # the thread ended
                return
            append(Sample(now, now - last, _stack(frame)))
            last = now
            del frame


def _stack(frame: FrameType | None) -> tuple[tuple[CodeType, int], ...]:
    out: list[tuple[CodeType, int]] = []
    while frame is not None and len(out) < MAX_DEPTH:
        out.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(out)
