"""The event log the probes write while the cell runs.

Probes only append ``(time, kind, obj, info)`` tuples here; everything else
(steps, phases, the training loader) is worked out afterwards by
:mod:`epochmagic.analysis.timeline`. Appending a tuple costs well under a microsecond,
which is what keeps the measured epoch undistorted.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# Event kinds. Enter/exit pairs carry the phase they open; the rest are marks.
ITER_ENTER, ITER_EXIT = 1, 2  # DataLoader.__iter__ (worker start-up is here)
NEXT_ENTER, NEXT_EXIT, NEXT_STOP = 3, 4, 5  # _BaseDataLoaderIter.__next__
FWD_ENTER, FWD_EXIT = 6, 7  # a root module's forward
BWD_ENTER, BWD_EXIT = 8, 9  # Tensor.backward / autograd.backward / autograd.grad
OPT_ENTER, OPT_EXIT = 10, 11  # Optimizer.step (via the global step hooks)
ZERO_ENTER, ZERO_EXIT = 12, 13  # Optimizer.zero_grad
XFER_ENTER, XFER_EXIT = 14, 15  # a host-to-device Tensor.to / .cuda
MEM = 16  # a memory sample (bytes)
SCALER_SKIP = 17  # GradScaler.step skipped the optimizer (inf/nan gradients)
SYNC = 18  # a call that waited for the device returned: (filename, lineno, in a copy)
CMP_ENTER, CMP_EXIT = 19, 20  # compiled code (torch.compile) runs in between

PHASE_OF_ENTER = {
    ITER_ENTER: "data",
    NEXT_ENTER: "data",
    FWD_ENTER: "forward",
    BWD_ENTER: "backward",
    OPT_ENTER: "optimizer",
    ZERO_ENTER: "optimizer",
    XFER_ENTER: "transfer",
    CMP_ENTER: "forward",  # what the probes cannot see inside compiled code
}
EXIT_OF_ENTER = {
    ITER_ENTER: ITER_EXIT,
    NEXT_ENTER: NEXT_EXIT,
    FWD_ENTER: FWD_EXIT,
    BWD_ENTER: BWD_EXIT,
    OPT_ENTER: OPT_EXIT,
    ZERO_ENTER: ZERO_EXIT,
    XFER_ENTER: XFER_EXIT,
    CMP_ENTER: CMP_EXIT,
}
ENTER_OF_EXIT = {v: k for k, v in EXIT_OF_ENTER.items()}
ENTER_OF_EXIT[NEXT_STOP] = NEXT_ENTER

Event = tuple[float, int, Any, Any]


@dataclass(slots=True)
class Pass:
    """One pass over a DataLoader: from ``iter(loader)`` to StopIteration."""

    loader: Any
    keys: frozenset[tuple[str, int]]
    start: float
    yielded: int = 0
    units: int = 0  # outermost backward() calls that finished while this pass trained
    trained: bool = False
    exhausted: bool = False
    iterator: Any = None


def passes(events: list[Event]) -> list[Pass]:
    """The loader passes in the log, in the order they started."""
    seen: dict[int, Pass] = {}
    for e in events:
        if e[1] in (ITER_ENTER, NEXT_ENTER) and id(e[2]) not in seen:
            seen[id(e[2])] = e[2]
    return list(seen.values())


@dataclass
class Recorder:
    """Append-only event log plus the clock it is stamped with."""

    clock: Any = time.perf_counter
    events: list[Event] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    cpu_start: float = 0.0  # process CPU time (all threads of this process)
    cpu_end: float = 0.0

    def begin(self) -> None:
        self.events.clear()
        self.cpu_start = time.process_time()
        self.start = self.clock()

    def finish(self) -> None:
        self.end = self.clock()
        self.cpu_end = time.process_time()

    def mark(self, kind: int, obj: Any = None, info: Any = None) -> float:
        t = self.clock()
        self.events.append((t, kind, obj, info))
        return t


class MemoryReader:
    """Resident set size of this process, cheap enough to read every step.

    Reads ``/proc/self/statm`` through an open descriptor (a few microseconds);
    elsewhere falls back to the high-water mark from ``resource``, which cannot
    be reset per run.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        if sys.platform.startswith("linux"):
            try:
                self._fd = os.open("/proc/self/statm", os.O_RDONLY)
            except OSError:
                self._fd = None

    def rss(self) -> int:
        if self._fd is not None:
            fields = os.pread(self._fd, 64, 0).split()
            return int(fields[1]) * self._page
        try:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
        except (ImportError, OSError):
            return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
