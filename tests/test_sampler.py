"""The stack sampler: it sees the main thread's code with weights that add up
to the time, also code that keeps the GIL; it leaves nothing running or
installed, stays inert in a forked child and off the main thread, and leaves a
cell's own timers, signal handlers and faulthandler alone."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import tempfile
import threading
import time

import pytest

from epochmagic.capture.devicetime import DeviceTime
from epochmagic.capture.retime import samples_to_device_time
from epochmagic.capture.sampler import Sample, Sampler


def _can_sample() -> str | None:
    probe = Sampler()
    started = probe.start()
    probe.stop()
    return None if started else probe.why_not


WHY_NOT = _can_sample()
needs_sampler = pytest.mark.skipif(WHY_NOT is not None, reason=f"no sampler here: {WHY_NOT}")


def rt_handlers() -> dict[int, object]:
    if not hasattr(signal, "SIGRTMIN"):
        return {}
    return {s: signal.getsignal(s) for s in range(signal.SIGRTMIN, signal.SIGRTMAX + 1)}


def busy(seconds: float) -> int:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


@needs_sampler
def test_start_stop_leave_nothing_running_or_installed():
    handlers, threads = rt_handlers(), threading.active_count()
    s = Sampler()
    assert s.start()
    assert s.running and s.why_not is None
    assert rt_handlers() != handlers  # one real-time signal is ours while it runs
    busy(0.05)
    s.stop()
    assert not s.running
    assert rt_handlers() == handlers
    assert threading.active_count() == threads  # no thread: a timer and a signal
    n = len(s.samples)
    busy(0.03)
    assert len(s.samples) == n  # no tick after stop


@needs_sampler
def test_stop_is_idempotent_and_safe_before_start():
    handlers = rt_handlers()
    s = Sampler()
    s.stop()  # never started
    assert s.start()
    s.stop()
    s.stop()
    assert not s.running and rt_handlers() == handlers


@needs_sampler
def test_samples_cover_a_busy_loop_and_weigh_its_time():
    s = Sampler(interval_s=0.002)
    t0 = time.perf_counter()
    assert s.start()
    try:
        busy(0.5)
    finally:
        s.stop()
    elapsed = time.perf_counter() - t0
    assert len(s.samples) >= 100  # ~250 expected
    weights = sum(x.dt for x in s.samples)
    # the weights tile the time from the start to the last look
    assert elapsed - 0.05 < weights <= elapsed
    for prev, cur in zip(s.samples, s.samples[1:]):
        assert cur.t - cur.dt == pytest.approx(prev.t, abs=1e-9)
    here = sys._getframe().f_code
    assert all(isinstance(x, Sample) for x in s.samples)
    assert all(any(code is here for code, _ in x.stack) for x in s.samples)
    in_busy = sum(1 for x in s.samples if x.stack[0][0] is busy.__code__)
    assert in_busy >= 0.9 * len(s.samples)


@needs_sampler
def test_python_that_keeps_the_gil_gets_its_time_before_a_sleep():
    # a thread reading sys._current_frames() sees none of `busy` here: it
    # gets the GIL only when the sleep lets go of it
    s = Sampler(interval_s=0.001)
    worked = slept = 0.0
    assert s.start()
    try:
        for _ in range(150):
            t0 = time.perf_counter()
            busy(0.002)
            t1 = time.perf_counter()
            time.sleep(0.002)
            worked, slept = worked + t1 - t0, slept + time.perf_counter() - t1
    finally:
        s.stop()
    total = sum(x.dt for x in s.samples)
    share = sum(x.dt for x in s.samples if x.stack[0][0] is busy.__code__) / total
    assert share == pytest.approx(worked / (worked + slept), abs=0.12)


@needs_sampler
def test_a_sleep_interrupted_by_ticks_still_sleeps_its_time():
    s = Sampler(interval_s=0.001)
    assert s.start()
    try:
        t0 = time.perf_counter()
        time.sleep(0.2)
        took = time.perf_counter() - t0
    finally:
        s.stop()
    assert took >= 0.2
    assert len(s.samples) >= 50  # it was interrupted, and sampled, while asleep


@needs_sampler
def test_a_signal_with_a_handler_is_not_taken():
    top = signal.SIGRTMAX
    old = signal.signal(top, lambda *_: None)
    try:
        s = Sampler()
        assert s.start()
        try:
            assert s._signal != top
        finally:
            s.stop()
    finally:
        signal.signal(top, old)


@needs_sampler
@pytest.mark.skipif(not hasattr(faulthandler, "register"), reason="needs faulthandler.register")
def test_a_signal_a_c_library_handles_is_not_taken():
    # faulthandler installs its handler with sigaction: Python's own table
    # still says SIG_DFL for it, the system does not
    top = signal.SIGRTMAX
    with tempfile.TemporaryFile() as log:
        faulthandler.register(top, file=log)
        try:
            assert signal.getsignal(top) == signal.SIG_DFL
            s = Sampler()
            assert s.start()
            try:
                assert s._signal != top
            finally:
                s.stop()
        finally:
            faulthandler.unregister(top)


def test_it_does_not_start_off_the_main_thread():
    out: list[tuple[bool, str | None]] = []

    def other() -> None:
        s = Sampler()
        out.append((s.start(), s.why_not))
        s.stop()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert out[0][0] is False and "main thread" in (out[0][1] or "")


@pytest.mark.fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_sample():
    parent = Sampler()
    parent.start()  # whether or not it can here: the child must not
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once, whatever happens
            try:
                child = Sampler()
                started = child.start()
                busy(0.05)  # a timer of the parent's would tick here
                os.write(write, f"{started}|{child.why_not}|{len(parent.samples)}".encode())
            finally:
                os._exit(0)
        os.close(write)
        before = len(parent.samples)
        with os.fdopen(read) as f:
            report = f.read()
        os.waitpid(pid, 0)
    finally:
        parent.stop()
    started, why_not, seen = report.split("|")
    assert started == "False"
    assert "forked" in why_not
    assert int(seen) <= before  # the parent's timer did not follow it into the child


@needs_sampler
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_a_cells_timer_signals_and_faulthandler_keep_working_while_sampling():
    handler_before = signal.getsignal(signal.SIGALRM)
    fault_before = faulthandler.is_enabled()
    s = Sampler(interval_s=0.002)
    assert s.start()
    assert signal.getsignal(signal.SIGALRM) is handler_before  # the sampler takes no SIGALRM
    fired: list[float] = []

    def cell() -> None:  # what a user's cell may do
        old = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.perf_counter()))
        with tempfile.TemporaryFile() as log:
            try:
                faulthandler.enable(file=log)
                signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
                end = time.perf_counter() + 2.0
                while len(fired) < 10 and time.perf_counter() < end:
                    busy(0.001)
                faulthandler.dump_traceback(file=log)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0.0)
                signal.signal(signal.SIGALRM, old)
                faulthandler.disable()
            log.seek(0)
            assert b"cell" in log.read()

    try:
        cell()
        during = len(s.samples)
    finally:
        s.stop()
        if fault_before:
            faulthandler.enable(file=sys.__stderr__)
    assert len(fired) >= 10
    gaps = [b - a for a, b in zip(fired, fired[1:])]
    assert min(gaps) > 0.005  # only the cell's 10 ms timer called its handler
    assert during > 10  # and the sampler kept sampling beside it
    assert any(code.co_name == "cell" for x in s.samples for code, _ in x.stack)
    assert signal.getsignal(signal.SIGALRM) is handler_before


def test_samples_move_to_device_time_with_consistent_weights():
    # markers at host 1, 2, 3; their work finished at 1.5, 2.5 and 3.0
    dt = DeviceTime(hosts=[1.0, 2.0, 3.0], done=[1.5, 2.5, 3.0])
    code = sys._getframe().f_code
    host = [Sample(t, 0.25, ((code, 1),)) for t in (1.25, 1.5, 1.75, 2.0, 2.25, 2.5)]
    moved = samples_to_device_time(host, dt)
    assert [m.t for m in moved] == [dt.at(h.t) for h in host]
    assert [m.t for m in moved] == [1.5, 1.5, 1.75, 2.5, 2.5, 2.5]
    for h, m in zip(host, moved):
        assert m.dt == pytest.approx(dt.at(h.t) - dt.at(h.t - h.dt))
        assert m.stack is h.stack
    # the weights still tile the moved span
    assert sum(m.dt for m in moved) == pytest.approx(dt.at(2.5) - dt.at(1.0))
