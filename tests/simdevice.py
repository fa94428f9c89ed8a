"""A simulated GPU stream for testing device-time attribution without a GPU.

``SimStream`` models one in-order CUDA stream: ``launch(seconds)`` queues work
that runs after everything queued before it; a marker completes when the
stream reaches it; ``wait()`` blocks the host until the stream is drained (what
``.item()`` does). Time is virtual (tests of the pure algorithm) or real
(``clock=time.perf_counter``: a cell run through the magic).

``SimClock`` is a :class:`epochmagic.capture.cudaclock.DeviceClock` over a stream, so
the session, probes, timeline and report run their real code on it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from epochmagic.capture.devicetime import DeviceTime


class SimStream:
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._t = 0.0
        self.real = clock is not None
        self.clock = clock if clock is not None else (lambda: self._t)
        self.busy_until = 0.0

    def host(self, seconds: float) -> None:
        """The host computes for ``seconds``."""
        if self.real:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        else:
            self._t += seconds

    def launch(self, seconds: float, host_cost: float = 0.0) -> None:
        """Queue ``seconds`` of device work; launching costs the host ``host_cost``."""
        self.busy_until = max(self.clock(), self.busy_until) + seconds
        if host_cost:
            self.host(host_cost)

    def completes(self, recorded_at: float) -> float:
        return max(recorded_at, self.busy_until)

    def wait(self) -> None:
        """Block the host until the stream has run everything queued."""
        if self.real:
            delay = self.busy_until - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        else:
            self._t = max(self._t, self.busy_until)


class SimClock:
    """The probes' clock over a simulated stream (what ``CudaClock`` does with events)."""

    name = "sim"

    def __init__(self, stream: SimStream) -> None:
        self.stream = stream
        self.hosts: list[float] = []
        self.done: list[float] = []
        self.error: str | None = None
        self.on_sync: Callable[[str, int], None] | None = None
        self.allocated = 0
        self.watching = False

    def now(self) -> float:
        t = self.stream.clock()
        self.hosts.append(t)
        self.done.append(self.stream.completes(t))
        return t

    def begin(self) -> None:
        self.stream.wait()
        self.hosts.clear()
        self.done.clear()

    def finish(self) -> DeviceTime | None:
        self.stream.wait()
        return DeviceTime.from_markers(self.hosts, self.done)

    @contextlib.contextmanager
    def watch_syncs(self, on_sync: Callable[[str, int], None]) -> Iterator[None]:
        self.on_sync, self.watching = on_sync, True
        try:
            yield
        finally:
            self.on_sync, self.watching = None, False

    def item(self, value: Any) -> Any:
        """A synchronising call in the cell: the host waits, then the call is
        reported at the caller's line (as torch's sync debug mode does)."""
        caller = sys._getframe(1)
        self.stream.wait()
        if self.on_sync is not None:
            self.on_sync(caller.f_code.co_filename, caller.f_lineno)
        return value

    def memory(self) -> int:
        return self.allocated

    def tensor_on_device(self, t: Any) -> bool:
        return False

    def used(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "name": "Simulated GPU",
            "capability": "8.0",
            "bf16": True,
            "free_bytes": 2**30,
            "total_bytes": 2**31,
            "tf32": {"matmul": False, "cudnn": True, "float32_matmul_precision": "highest"},
        }
