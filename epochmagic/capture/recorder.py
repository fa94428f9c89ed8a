"""The event log the probes write while the cell runs.

Probes only append ``(time, kind, obj, info)`` tuples here (kinds and typed
records: :mod:`epochmagic.model.events`); everything else
(steps, phases, the training loader) is worked out afterwards by
:mod:`epochmagic.analysis.timeline`. Appending a tuple costs well under a microsecond,
which is what keeps the measured epoch undistorted.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# The event kinds and records live in the model layer; re-exported here
# because the probes write ``r.KIND`` (``from epochmagic.capture import recorder as r``).
from epochmagic.model.events import (
    BWD_ENTER,
    BWD_EXIT,
    CMP_ENTER,
    CMP_EXIT,
    ENTER_OF_EXIT,
    EXIT_OF_ENTER,
    FWD_ENTER,
    FWD_EXIT,
    ITER_ENTER,
    ITER_EXIT,
    MEM,
    NEXT_ENTER,
    NEXT_EXIT,
    NEXT_STOP,
    OPT_ENTER,
    OPT_EXIT,
    PHASE_OF_ENTER,
    SCALER_SKIP,
    SYNC,
    XFER_ENTER,
    XFER_EXIT,
    ZERO_ENTER,
    ZERO_EXIT,
    BatchInfo,
    Event,
    ForwardInfo,
    RawEvent,
    SyncInfo,
    as_events,
)

__all__ = [
    "BWD_ENTER",
    "BWD_EXIT",
    "CMP_ENTER",
    "CMP_EXIT",
    "ENTER_OF_EXIT",
    "EXIT_OF_ENTER",
    "FWD_ENTER",
    "FWD_EXIT",
    "ITER_ENTER",
    "ITER_EXIT",
    "MEM",
    "NEXT_ENTER",
    "NEXT_EXIT",
    "NEXT_STOP",
    "OPT_ENTER",
    "OPT_EXIT",
    "PHASE_OF_ENTER",
    "SCALER_SKIP",
    "SYNC",
    "XFER_ENTER",
    "XFER_EXIT",
    "ZERO_ENTER",
    "ZERO_EXIT",
    "BatchInfo",
    "Event",
    "ForwardInfo",
    "MemoryReader",
    "Pass",
    "RawEvent",
    "Recorder",
    "SyncInfo",
    "passes",
]


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


def passes(events: Iterable[RawEvent]) -> list[Pass]:
    """The loader passes in the log, in the order they started (raw or typed
    events: the probes ask while the log is still raw)."""
    seen: dict[int, Pass] = {}
    for _, kind, obj, _ in events:
        if kind in (ITER_ENTER, NEXT_ENTER) and id(obj) not in seen:
            seen[id(obj)] = obj
    return list(seen.values())


@dataclass
class Recorder:
    """Append-only event log plus the clock it is stamped with.

    ``events`` holds the probes' plain tuples while the cell runs;
    :meth:`typed_events` turns them into :class:`Event` records after it."""

    clock: Any = time.perf_counter
    events: list[RawEvent] = field(default_factory=list)
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

    def typed_events(self) -> list[Event]:
        """The log as typed records, converted in place once the run is over
        (converting again is a type check per event)."""
        typed = as_events(self.events)
        self.events[:] = typed
        return typed


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
