"""A statistical sampler of the main thread's Python stack during the
measured epoch (docs/design.md §4.6).

A POSIX timer (``timer_create`` on the monotonic clock) sends a real-time
signal to the main thread, on average every ``interval_s``; CPython runs the
Python handler in the main thread between two bytecodes, and the handler
keeps the interrupted stack as ``(code, line)`` pairs, with the time since the
previous sample as the sample's weight. Each wait is drawn from 0.5-1.5
intervals (the first from 0-0.5: a run that short still gets a look), so the
samples do not lock onto a loop's period (with a fixed 5 ms wait, a 10 ms step
put 47 % of the time on a line that took 28 %).

Why this mechanism (``benchmarks/sampler_cost.py``, measured on this 2-vCPU
nested VM):

- not a thread reading ``sys._current_frames()``: it needs the GIL to look,
  and a main thread that keeps it (pure Python, or small torch ops that let it
  go for microseconds at a time) starves it until the next blocking call,
  which then gets the time: 4 ms of Python before a 4 ms sleep was sampled as
  0 % Python (small torch ops: 42 % of 50 %); with this timer, 49-51 %;
- not ``signal.setitimer``: ITIMER_REAL and SIGALRM belong to the user (a
  cell's own timer would replace ours; our ticks would call its handler). A
  real-time signal nothing handles is taken instead, and restored at ``stop``.

Cost: 27 us per sample in a pure-Python loop, 52 us in an MLP training loop
(the interrupt itself costs most of it here); at 100 samples/s that is 0.3 and
0.5 % of the epoch, hence ``INTERVAL_S`` (200/s put the MLP at 1 %).

The handler is installed with SA_RESTART (``signal.siginterrupt(sig, False)``)
so the system calls it interrupts resume; Python retries its own anyway.
Where it cannot start (not the main thread, no POSIX timers: macOS, Windows;
a forked child), ``start`` returns False and says why (``why_not``).

Fork-safe: POSIX timers do not survive ``fork``; ``os.register_at_fork`` also
marks the child so a Sampler started there (a DataLoader worker, a forked
rank) stays inert.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, NamedTuple

INTERVAL_S = 0.01  # 100 samples/s on average: cost x rate <= 1 % (docs/design.md §4.6)
MAX_DEPTH = 256  # frames kept per sample, innermost first
CLOCK_MONOTONIC, SIGEV_THREAD_ID = 1, 4  # Linux's values

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
    """Samples the main thread from ``start()`` to ``stop()`` (both called
    from it); ``samples`` holds what it saw."""

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
        self._timer: _Timer | None = None
        self._signal = 0
        self._old_handler: Any = None
        self._last = 0.0
        self._random = random.Random().random  # a private one: the user's stream is untouched

    def start(self) -> bool:
        """Start sampling; False (with ``why_not``) where it cannot."""
        self.why_not = _cannot_start(self.thread_id)
        sig = _free_signal() if self.why_not is None else None
        if self.why_not is None and sig is None:
            self.why_not = "every real-time signal already has a handler"
        if self.why_not is not None or sig is None:
            return False
        self._signal, self._old_handler = sig, signal.signal(sig, self._on_signal)
        signal.siginterrupt(sig, False)
        try:
            self._timer = _Timer(sig, threading.get_native_id())
        except OSError as e:
            signal.signal(sig, self._old_handler)
            self.why_not = f"no timer ({e})"
            return False
        self._last = self.clock()
        self._timer.arm(self.interval_s * 0.5 * self._random())
        return True

    def stop(self) -> None:
        """Stop sampling and put the signal's handler back; idempotent."""
        timer, self._timer = self._timer, None
        if timer is None:
            return
        timer.delete()  # a tick already sent runs its handler at the next bytecode: here
        try:
            signal.signal(self._signal, self._old_handler)
        except ValueError:  # not the main thread: the handler stays, idle (no timer)
            pass

    @property
    def running(self) -> bool:
        return self._timer is not None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Runs in the main thread, maybe inside code dynamo compiles: it calls
        only builtins and epochmagic's own functions (which dynamo skips), so
        nothing of it is ever traced."""
        now = self.clock()
        timer = self._timer
        if timer is None:  # a tick sent before stop()
            return
        self.samples.append(_new_tuple(Sample, (now, now - self._last, _stack(frame))))
        self._last = now
        timer.arm(self.interval_s * (0.5 + self._random()))


def _cannot_start(thread_id: int) -> str | None:
    if _in_forked_child:
        return "in a forked process (a DataLoader worker or a forked rank)"
    main = threading.main_thread().ident
    if threading.get_ident() != main or thread_id != main:
        return "signals reach Python only in the main thread"
    if _timer_api() is None:
        return f"no POSIX timers on this platform ({sys.platform})"
    return None


def _free_signal() -> int | None:
    """A real-time signal nothing handles, neither Python nor a C library (its
    disposition read with ``sigaction``), from the top down: libraries that
    take one usually take the lowest."""
    lib = _timer_api()
    for sig in range(signal.SIGRTMAX, signal.SIGRTMIN, -1):
        old = (ctypes.c_void_p * 64)()  # room for any struct sigaction; its handler first
        if signal.getsignal(sig) == signal.SIG_DFL and lib.sigaction(sig, None, old) == 0:
            if not old[0]:  # SIG_DFL
                return sig
    return None


class _SigEvent(ctypes.Structure):
    _fields_ = [
        ("value", ctypes.c_void_p),
        ("signo", ctypes.c_int),
        ("notify", ctypes.c_int),
        ("tid", ctypes.c_int),
        ("pad", ctypes.c_int * ((64 - ctypes.sizeof(ctypes.c_void_p) - 12) // 4)),
    ]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


_API: list[Any] = []


def _timer_api() -> Any:
    """libc's (or librt's) timer_create / timer_settime / timer_delete, or None."""
    if not _API:
        api = None
        if sys.platform.startswith("linux"):
            for name in (None, ctypes.util.find_library("rt")):
                try:
                    lib = ctypes.CDLL(name, use_errno=True)
                    lib.timer_create, lib.timer_settime, lib.timer_delete, lib.sigaction  # noqa: B018
                except (OSError, AttributeError):
                    continue
                lib.timer_create.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
                ptr = ctypes.c_void_p
                lib.timer_settime.argtypes = [ptr, ctypes.c_int, ptr, ptr]
                lib.timer_delete.argtypes = [ptr]
                lib.sigaction.argtypes = [ctypes.c_int, ptr, ptr]
                api = lib
                break
        _API.append(api)
    return _API[0]


class _Timer:
    """A one-shot POSIX timer that sends ``sig`` to the thread ``tid``."""

    def __init__(self, sig: int, tid: int) -> None:
        self.lib = _timer_api()
        self.id = ctypes.c_void_p()
        ev = _SigEvent(None, sig, SIGEV_THREAD_ID, tid)
        if self.lib.timer_create(CLOCK_MONOTONIC, ctypes.byref(ev), ctypes.byref(self.id)) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        self.spec = _ITimerSpec()

    def arm(self, seconds: float) -> None:
        self.spec.value.sec = int(seconds)
        self.spec.value.nsec = max(1, int((seconds - int(seconds)) * 1e9))
        self.lib.timer_settime(self.id, 0, ctypes.byref(self.spec), None)

    def delete(self) -> None:
        self.lib.timer_delete(self.id)


_new_tuple = tuple.__new__  # a Sample without its Python-level __new__ (see _on_signal)


def _stack(frame: FrameType | None) -> tuple[tuple[CodeType, int], ...]:
    out: list[tuple[CodeType, int]] = []
    while frame is not None and len(out) < MAX_DEPTH:
        out.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return tuple(out)
