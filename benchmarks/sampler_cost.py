"""The stack sampler's own cost and bias, and the mechanisms it was chosen from,
measured in one process so that this machine's noise cancels out.

    python benchmarks/sampler_cost.py [--quick] [--threads N]

Three mechanisms, each keeping the same stacks (``sampler._stack``) with waits
drawn from 0.5-1.5 intervals:

  timer   ``capture.sampler.Sampler``: a POSIX timer sends a real-time signal
          to the main thread; the Python handler takes the stack;
  alarm   ``signal.setitimer(ITIMER_REAL)`` + a SIGALRM handler (here only);
  thread  a thread reading ``sys._current_frames()`` (here only).

(a) Cost, on two loops: a pure-Python busy loop and an MLP training loop (3
    Linear layers of width 512, batch 64), in chunks of ~0.2 s. In each round
    every condition runs one chunk, in alternated order: plain; a control (a
    ``Sampler`` armed but never firing: what starting and stopping one around a
    chunk costs by itself); the three mechanisms at 0.5 ms, where the cost per
    sample stands well above the noise; ``Sampler`` at its default interval.
    Cost per sample = (chunk time - the round's plain chunk - the control's
    extra) / samples in the chunk; medians over the rounds. Verdict, as
    ``probe_cost.py`` judges the probes: ``Sampler``'s cost per sample x the
    samples per second it takes at the default interval <= 1 % of the epoch,
    on both loops. (The default interval's own extra time is printed too; at
    ~40 samples a chunk it is within this machine's noise.)
(b) Bias. A loop alternates 4 ms of work (pure Python, or small torch ops that
    let go of the GIL for microseconds at a time) with a 4 ms sleep, timing
    both itself; each mechanism samples it at the default interval. Verdict:
    ``Sampler``'s share of the work within 3 points of the timed share.
"""

from __future__ import annotations

import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import _common as c
import torch
from torch import nn

from epochmagic.capture import sampler as sm

FAST_S = 0.0005
TARGET = 0.01  # of the epoch
NAMES = {"timer": "Sampler (POSIX timer)", "alarm": "SIGALRM (setitimer)", "thread": "thread"}


class AlarmSampler:
    """SIGALRM from ``setitimer(ITIMER_REAL)``; the handler runs in the main
    thread between bytecodes and keeps the interrupted stack."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s, self.samples = interval_s, []
        self._jitter = random.Random(0).uniform
        self._old: Any = None
        self._last, self._on = 0.0, False

    def start(self) -> bool:
        self._last, self._on = time.perf_counter(), True
        self._old = signal.signal(signal.SIGALRM, self._handler)
        signal.setitimer(signal.ITIMER_REAL, self.interval_s * self._jitter(0.5, 1.5))
        return True

    def stop(self) -> None:
        self._on = False
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, self._old)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        now = time.perf_counter()
        self.samples.append(sm.Sample(now, now - self._last, sm._stack(frame)))
        self._last = now
        if self._on:
            signal.setitimer(signal.ITIMER_REAL, self.interval_s * self._jitter(0.5, 1.5))


class ThreadSampler:
    """A thread that wakes, takes the GIL and reads the main thread's frame."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s, self.samples = interval_s, []
        self._main = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> bool:
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        jitter, last = random.Random(0).uniform, time.perf_counter()
        while not self._stop.wait(self.interval_s * jitter(0.5, 1.5)):
            frame = sys._current_frames().get(self._main)
            now = time.perf_counter()
            self.samples.append(sm.Sample(now, now - last, sm._stack(frame)))
            last = now


def make(kind: str, interval_s: float) -> Any:
    if kind == "timer":
        return sm.Sampler(interval_s)
    return AlarmSampler(interval_s) if kind == "alarm" else ThreadSampler(interval_s)


# -- (a) cost ---------------------------------------------------------------------------
def busy_chunk(n: int) -> Callable[[], None]:
    def run() -> None:
        s = 0
        for i in range(n):
            s += i * i % 7

    return run


def mlp_chunk(steps: int, width: int = 512) -> Callable[[], None]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    xb, yb = torch.randn(64, width), torch.randint(0, 10, (64,))

    def run() -> None:
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()

    return run


def calibrate(make_chunk: Callable[[int], Callable[[], None]], target_s: float = 0.1) -> int:
    """The size of a chunk that takes about ``target_s``."""
    n = 1
    while True:
        fn = make_chunk(n)
        fn()
        t = time.perf_counter()
        fn()
        took = time.perf_counter() - t
        if took >= target_s / 4:
            return max(1, round(n * target_s / took))
        n *= 4


def measure(
    chunk: Callable[[], None], conds: dict[str, tuple[str, float]], rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Per condition (``conds``: name -> (mechanism, interval); "plain" runs
    bare): chunk seconds, extra seconds over the round's plain chunk, samples."""
    names = ["plain", *conds]
    out: dict[str, dict[str, list[float]]] = {k: {"s": [], "extra": [], "n": []} for k in names}
    chunk()  # warm-up
    for _, order in c.alternated(names, rounds):
        took: dict[str, tuple[float, int]] = {}
        for cond in order:
            smp = make(*conds[cond]) if cond != "plain" else None
            if smp is not None:
                smp.start()
            try:
                t0 = time.perf_counter()
                chunk()
                t1 = time.perf_counter()
            finally:
                if smp is not None:
                    smp.stop()
            n = sum(1 for s in smp.samples if t0 <= s.t <= t1) if smp is not None else 0
            took[cond] = (t1 - t0, n)
        for cond, (secs, n) in took.items():
            out[cond]["s"].append(secs)
            out[cond]["extra"].append(secs - took["plain"][0])
            out[cond]["n"].append(n)
    return out


def quartiles(values: list[float], scale: float, fmt: str) -> str:
    """``median (lower..upper quartile)``, each times ``scale``."""
    if len(values) < 2:
        return "n/a"
    q = statistics.quantiles(values, n=4)
    mid, lo, hi = (fmt.format(v * scale) for v in (statistics.median(values), q[0], q[2]))
    return f"{mid} ({lo}..{hi})"


CONTROL_S = 1e3  # a Sampler armed for this long never fires inside a chunk


def table(m: dict[str, dict[str, list[float]]], conds: dict[str, tuple[str, float]]) -> str:
    """One row per condition: samples/s, extra time, and the cost per sample
    net of the control (armed, never firing: what starting and stopping a
    sampler around a chunk costs by itself)."""
    rows = []
    control = m["control"]["extra"]
    for cond, (kind, interval) in conds.items():
        d = m[cond]
        per = [(e - z) / n for e, z, n in zip(d["extra"], control, d["n"]) if n > 0]
        extra = [e / s for e, s in zip(d["extra"], m["plain"]["s"])]
        rate = statistics.median(d["n"]) / statistics.median(d["s"])
        label = "armed, never fires" if cond == "control" else f"{interval * 1e3:.1f} ms"
        rows.append(
            [
                f"{NAMES[kind]}, {label}",
                f"{rate:.0f}",
                quartiles(extra, 100, "{:+.2f} %"),
                quartiles(per, 1e6, "{:.1f}"),
            ]
        )
    head = ["sampler", "samples/s", "extra time (quartiles)", "us per sample (quartiles)"]
    return c.table(head, rows)


def cost(rounds: int) -> dict[str, float]:
    """(a) on both loops; returns ``Sampler``'s cost per sample x the samples
    per second it takes at its default interval, per loop."""
    conds = {
        "control": ("timer", CONTROL_S),
        **{k: (k, FAST_S) for k in NAMES},
        "default": ("timer", sm.INTERVAL_S),
    }
    shares = {}
    for name, make_chunk in (("busy loop", busy_chunk), ("MLP loop", mlp_chunk)):
        m = measure(make_chunk(calibrate(make_chunk, 0.2)), conds, rounds)
        print(f"\n== (a) {name}: {rounds} rounds of ~0.2 s chunks ==")
        print(table(m, conds))
        d, z = m["timer"], m["control"]["extra"]
        per = statistics.median([(e - c0) / n for e, c0, n in zip(d["extra"], z, d["n"]) if n])
        rate = statistics.median(m["default"]["n"]) / statistics.median(m["default"]["s"])
        shares[name] = per * rate
        print(
            f"Sampler: {per * 1e6:.1f} us per sample x {rate:.0f} samples/s at the default "
            f"interval = {per * rate * 100:.2f} % of the epoch"
        )
    return shares


# -- (b) bias ---------------------------------------------------------------------------
def python_work(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def torch_work(seconds: float) -> None:
    model, x = torch.nn.Linear(16, 4), torch.randn(8, 16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        model(x).sum().backward()


def rest(seconds: float) -> None:
    time.sleep(seconds)


def bias(kind: str, work: Callable[[float], None], rounds: int) -> tuple[float, float]:
    """(timed share, sampled share) of ``work`` in a work / sleep loop."""
    smp = make(kind, sm.INTERVAL_S)
    busy = idle = 0.0
    smp.start()
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            work(0.004)
            t1 = time.perf_counter()
            rest(0.004)
            busy, idle = busy + t1 - t0, idle + time.perf_counter() - t1
    finally:
        smp.stop()
    code = work.__code__
    total = sum(s.dt for s in smp.samples)
    hit = sum(s.dt for s in smp.samples if any(f is code for f, _ in s.stack))
    return busy / (busy + idle), (hit / total if total else float("nan"))


def report_bias(rounds: int) -> float:
    """Print the bias table; returns ``Sampler``'s worst error in points."""
    rows, worst = [], 0.0
    for work in (python_work, torch_work):
        for kind in NAMES:
            true, got = bias(kind, work, rounds)
            rows.append([work.__name__, NAMES[kind], f"{true * 100:.1f} %", f"{got * 100:.1f} %"])
            if kind == "timer":
                worst = max(worst, abs(got - true) * 100)
    print(f"\n== (b) 4 ms of work, then a 4 ms sleep, {rounds} times; default interval ==")
    print(c.table(["work", "sampler", "timed share", "sampled share"], rows))
    return worst


def main() -> None:
    p = c.parser(__doc__ or "")
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    c.header(
        "stack sampler: cost and bias",
        args,
        f"default interval {sm.INTERVAL_S * 1e3:.1f} ms, fast {FAST_S * 1e3:.1f} ms",
    )
    probe = sm.Sampler()
    if not probe.start():
        print(f"the sampler cannot start here: {probe.why_not}")
        return
    probe.stop()
    shares = cost(4 if args.quick else 40)
    worst = report_bias(100 if args.quick else 1000)
    c.verdict(
        "Sampler cost x rate at the default interval",
        max(shares.values()) <= TARGET,
        ", ".join(f"{k} {v * 100:.2f} %" for k, v in shares.items()) + ", target <= 1 %",
    )
    c.verdict(
        "Sampler bias on work before a sleep",
        worst <= 3.0,
        f"worst {worst:.1f} points off the timed share, target <= 3",
    )
    c.footer_load()


if __name__ == "__main__":
    c.main_guard(main)
