"""The live state every probe reads, and the step boundary the probes share:
which loader pass trains, how many steps are done, when the cell stops.

Wrappers keep this object in a closure and read its attributes directly (one
lookup each): it is on the hot path of every step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from epochmagic.capture import recorder as r
from epochmagic.capture.cudaclock import DeviceClock
from epochmagic.capture.recorder import MemoryReader, Pass, Recorder

DEFAULT_NO_LOADER_SECONDS = 60.0
MEMORY_EVERY_S = 0.01
DEVICE_MEMORY_EVERY_S = 0.05  # memory_stats() builds a dict of every allocator counter


class StopCell(BaseException):
    """Ends the profiled cell at a step boundary.

    A BaseException so that the user's ``except Exception`` blocks (and
    libraries' error handling) let it through, like KeyboardInterrupt.
    """

    MESSAGES = {
        "epoch": "epochmagic: one epoch measured, stopping the cell",
        "steps": "epochmagic: --steps reached, stopping the cell",
        "seconds": "epochmagic: time limit reached, stopping the cell",
    }

    def __init__(self, reason: str) -> None:
        # Libraries that log the exception (Ignite does) print this, not a code.
        super().__init__(self.MESSAGES.get(reason, f"epochmagic: stopping the cell ({reason})"))
        self.reason = reason


class ProbeState:
    """Shared by the target probes of one run; owned by
    :class:`~epochmagic.capture.probes.core.Probes`."""

    def __init__(
        self,
        rec: Recorder,
        device: DeviceClock | None,
        *,
        max_steps: int | None,
        max_seconds: float | None,
        loader_name: str | None,
        on_step: Callable[[int], None] | None,
        idle: bool,
        begin_measuring: Callable[[], None],
    ) -> None:
        self.rec = rec
        self.device = device  # CUDA markers and sync detection, None on the CPU
        self.main = threading.get_ident()  # probes act on the thread that started the run
        # Wrappers someone captured during the run (a bound __call__ in a
        # torch.compile'd module, `from torch.autograd import backward`) pass
        # straight through once the run is over.
        self.active = False
        self.idle = idle  # --skip-epochs: epochs run unmeasured until measuring begins
        self.measured = not idle  # measuring began (at once, or after skipped epochs)
        self.begin_measuring = begin_measuring  # the coordinator starts measuring
        self.depth = 0  # root-module call depth
        # stopping
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.on_step = on_step  # a what-if's progress callback at step boundaries
        self.stopped: StopCell | None = None
        self.stop_time: float | None = None
        # the training loader's pass
        self.loader_name = loader_name
        self.current: Pass | None = None  # the pass that handed out the latest batch
        self.named_pass: Pass | None = None  # the --loader pass in progress
        self.trained_keys: set[tuple[str, int]] = set()
        # loops without a training loader count steps by optimizer or backward
        self.clock_opt: Any = None
        self.clock_steps = 0
        self.backward_steps = 0
        self.no_loader_to_skip = False  # --skip-epochs on a loop without a training loader
        self._mem = MemoryReader()
        self._last_memory = float("-inf")

    def close(self) -> None:
        self._mem.close()

    def mark_compiled(self, entering: bool) -> None:
        """Compiled code starts or stops running (the compile watch tells)."""
        if self.active:
            self.rec.mark(r.CMP_ENTER if entering else r.CMP_EXIT)

    # -- step boundaries -----------------------------------------------------------
    def before_backward(self) -> None:
        # Backward-clocked loops (no optimizer at all): backward N+1 starting
        # means N steps are done.
        if self.clock_opt is None and not self.loader_clock():
            self.check_limits(self.backward_steps, self.rec.clock(), DEFAULT_NO_LOADER_SECONDS)

    def after_backward(self) -> None:
        p = self.named_pass if self.loader_name is not None else self.current
        if p is not None:
            p.units += 1
        self.mark_trained()
        if self.clock_opt is None and not self.loader_clock():
            self.backward_steps += 1

    def after_step(self, opt: Any, now: float) -> None:
        """An optimizer stepped (at ``now``): without a training loader, the
        first optimizer to step counts the steps."""
        self.mark_trained()
        if self.loader_clock():
            return
        if self.clock_opt is None:
            self.clock_opt = opt
        if opt is self.clock_opt:
            self.clock_steps += 1
            if self.on_step is not None:
                self.on_step(self.clock_steps)
            self.sample_memory(now)  # at the step's end: no clock reading of its own
            self.check_limits(self.clock_steps, now, DEFAULT_NO_LOADER_SECONDS)

    def mark_trained(self) -> None:
        p = self.named_pass if self.loader_name is not None else self.current
        if p is None or p.trained:
            return
        p.trained = True
        self.trained_keys |= p.keys

    def loader_clock(self) -> bool:
        """The training loader's pass counts the steps."""
        p = self.named_pass if self.loader_name is not None else self.current
        return p is not None and p.trained

    def sample_memory(self, now: float) -> None:
        """Read memory at a step boundary (RSS, or the CUDA allocator's when
        the run has a device clock), at most every MEMORY_EVERY_S /
        DEVICE_MEMORY_EVERY_S: at hundreds of steps per second a read per step
        would cost more than the rest of the probes."""
        every = MEMORY_EVERY_S if self.device is None else DEVICE_MEMORY_EVERY_S
        if now - self._last_memory >= every:
            self._last_memory = now
            value = self._mem.rss() if self.device is None else self.device.memory()
            self.rec.events.append((now, r.MEM, None, value))

    # -- stopping -----------------------------------------------------------------
    def check_limits(self, steps: int, now: float, default_seconds: float | None) -> None:
        if self.max_steps is not None and steps >= self.max_steps:
            self.stop("steps")
        limit = self.max_seconds if self.max_seconds is not None else default_seconds
        if limit is not None and steps > 0 and now - self.rec.start >= limit:
            self.stop("seconds")

    def stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = StopCell(reason)
            self.stop_time = self.rec.clock()
        raise StopCell(self.stopped.reason)
