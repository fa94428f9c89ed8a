"""Device time from markers: when each phase boundary's work finished on the GPU.

CUDA runs asynchronously, so a host timer charges a forward's kernels to
whatever call waits next (``.item()``, the next batch's ``.to()``). Instead,
every time the probes read the clock a marker (a CUDA event) is recorded on the
current stream. Marker ``k`` is recorded at host time ``h[k]`` and completes at
device time ``d[k]``, once the stream has run everything launched before it.

The attribution rule (docs/design.md §4.3) follows from one observation: between two
consecutive completion times ``d[k]`` and ``d[k+1]`` the device is either running
work launched between markers ``k`` and ``k+1``, or it is idle with nothing
queued, which means the host has not reached ``h[k+1]`` yet. Either way the
instant belongs to the phase the host was in after marker ``k``. So every event
is simply moved from its host time to its completion time, and the usual
innermost-phase sweep over the moved events credits device time to the phase
that launched it and idle time to the host phase of that instant. The phases
still tile the run exactly.

On one in-order stream ``d`` is non-decreasing and ``d[k] >= h[k]``; both are
enforced (work on other streams, clock jitter) by a running maximum.

Pure functions of numbers: the CUDA side lives in :mod:`epochmagic.capture.cudaclock`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

LAG_S = 50e-6  # a closing marker this late means the device lagged the host there


def completion_times(hosts: Sequence[float], done: Sequence[float | None]) -> list[float]:
    """Completion times made consistent: never before the marker was recorded,
    never before the previous marker completed. ``None`` (a marker that could
    not be timed) completes when it was recorded."""
    out: list[float] = []
    last = float("-inf")
    for h, d in zip(hosts, done):
        last = max(last, h, d if d is not None else h)
        out.append(last)
    return out


@dataclass
class DeviceTime:
    """Host times of the markers and the device times their work finished."""

    hosts: list[float]
    done: list[float]  # completion_times(), same length as hosts
    busy: list[tuple[float, float]] = field(init=False)  # known busy (a lower bound)
    busy_estimate: list[tuple[float, float]] = field(init=False)  # lagging segments filled

    def __post_init__(self) -> None:
        if len(self.hosts) != len(self.done):
            raise ValueError("one completion time per marker")
        self.busy = busy_intervals(self.hosts, self.done)
        self.busy_estimate = busy_intervals(self.hosts, self.done, lag=LAG_S)

    @classmethod
    def from_markers(cls, hosts: Sequence[float], done: Sequence[float | None]) -> DeviceTime:
        order = sorted(range(len(hosts)), key=hosts.__getitem__)
        h = [hosts[i] for i in order]
        return cls(h, completion_times(h, [done[i] for i in order]))

    def at(self, t: float) -> float:
        """Where host instant ``t`` falls on the device timeline.

        A marker's own time maps to its completion. An instant between markers
        ``k`` and ``k+1`` maps to ``t`` itself if the device had caught up by
        then, else to ``d[k]``; never past ``d[k+1]``.
        """
        k = bisect.bisect_right(self.hosts, t) - 1
        if k < 0:
            return t
        moved = max(t, self.done[k])
        if k + 1 < len(self.done):
            moved = min(moved, self.done[k + 1])
        return moved

    def wait_before(self, t: float) -> float:
        """How long the host was blocked in a synchronising call that returned
        at host time ``t`` (a marker's time).

        The device was known busy from the previous marker until that marker's
        work finished; the host left the call at ``t``. When the caller records
        a marker right as the call starts (``Tensor.item``) this is exact;
        otherwise host work between the previous marker and the call is
        counted as waiting.
        """
        k = bisect.bisect_left(self.hosts, t)
        if k <= 0:
            return 0.0
        prev = k - 1
        return max(0.0, min(self.done[prev], t) - self.hosts[prev])


def busy_intervals(
    hosts: Sequence[float], done: Sequence[float], lag: float | None = None
) -> list[tuple[float, float]]:
    """Where the stream had work queued, in device time: from each marker's
    record (or the previous completion, if later) until it completed. Merged,
    sorted.

    This is a lower bound of the device's busy time: work a device runs between
    two readings while it keeps up with the host is not seen. With ``lag``, a
    segment whose closing marker completed more than ``lag`` seconds after it
    was recorded counts as busy from its start: the device was still working
    through that segment's work at its end, so (for a segment of similar
    kernels) it had been since it began it. That estimate is exact for a
    device that lags all through a segment, and too high for a segment of
    small launches ending in one long kernel.
    """
    out: list[tuple[float, float]] = []
    prev_done = float("-inf")
    prev_host = float("-inf")
    for h, d in zip(hosts, done):
        s = max(h, prev_done)
        if lag is not None and d - h > lag:
            s = max(prev_host, prev_done)
        if d > s:
            if out and out[-1][1] >= s:
                out[-1] = (out[-1][0], max(out[-1][1], d))
            else:
                out.append((s, d))
        prev_done = max(prev_done, d)
        prev_host = h
    return out


def drift_corrected(
    done: Sequence[float | None], start: float, end: float, offset: float
) -> list[float | None]:
    """``done`` less an error that grew linearly from 0 at ``start`` to
    ``offset`` at ``end``: the device's timer drifts against the host clock,
    and a few dozen microseconds of it make every segment look lagging (busy)."""
    span = end - start
    if span <= 0:
        return list(done)
    rate = offset / span
    return [None if d is None else d - (d - start) * rate for d in done]


def overlap(
    intervals: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]]
) -> float:
    """Seconds of ``spans`` covered by ``intervals`` (both sorted, each disjoint)."""
    total, i = 0.0, 0
    for a, b in spans:
        while i < len(intervals) and intervals[i][1] <= a:
            i += 1
        j = i
        while j < len(intervals) and intervals[j][0] < b:
            total += max(0.0, min(b, intervals[j][1]) - max(a, intervals[j][0]))
            j += 1
    return total
