"""The probes' event records: kinds, the ``Event`` tuple and its payloads.

While the cell runs, the probes (:mod:`epochmagic.capture.probes`) append plain
``(t, kind, obj, info)`` tuples to the recorder: building a named record there
would cost time inside the measured epoch. After the run, :func:`as_events`
turns the log into :class:`Event` records whose ``info`` is the payload type
below for its kind, so the analysis reads fields by name. Both are tuples, so
code that still indexes them keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

# Event kinds. Enter/exit pairs carry the phase they open; the rest are marks.
ITER_ENTER, ITER_EXIT = 1, 2  # DataLoader.__iter__ (worker start-up is here); obj: the Pass
NEXT_ENTER, NEXT_EXIT, NEXT_STOP = 3, 4, 5  # _BaseDataLoaderIter.__next__; obj: the Pass
FWD_ENTER, FWD_EXIT = 6, 7  # a root module's forward; obj: the module
BWD_ENTER, BWD_EXIT = 8, 9  # Tensor.backward / autograd.backward / autograd.grad
OPT_ENTER, OPT_EXIT = 10, 11  # Optimizer.step (via the global step hooks); obj: the optimizer
ZERO_ENTER, ZERO_EXIT = 12, 13  # Optimizer.zero_grad
XFER_ENTER, XFER_EXIT = 14, 15  # a host-to-device Tensor.to / .cuda
MEM = 16  # a memory sample; info: bytes (RSS, or the CUDA allocator's)
SCALER_SKIP = 17  # GradScaler.step skipped the optimizer (inf/nan gradients); obj: the optimizer
SYNC = 18  # a call that waited for the device returned; info: SyncInfo
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

# What the probes append: (time, kind, obj, info), info as a plain tuple.
RawEvent = tuple[float, int, Any, Any]


class BatchInfo(NamedTuple):
    """``NEXT_EXIT``'s info: the batch the loader handed out (None when
    ``__next__`` raised)."""

    samples: int  # the first tensor's leading dimension
    tokens: int | None  # its element count when it holds integer ids, else None
    labels: Any  # a 1-D integer tensor of labels, or None


class ForwardInfo(NamedTuple):
    """``FWD_ENTER``'s info: how a root module was called."""

    grad: bool  # autograd was on
    training: bool  # the module was in training mode
    samples: int  # the first tensor argument's leading dimension (0 without one)
    tokens: int | None  # its element count when it holds integer ids, else None


class SyncInfo(NamedTuple):
    """``SYNC``'s info: where the synchronising call was made."""

    filename: str
    lineno: int
    in_copy: bool  # raised inside a host-to-device copy (a blocking copy)
    wait: float | None = None  # seconds the host waited: set once moved to device time


class Event(NamedTuple):
    """One record of the log, on the run's clock (host, or device once
    :mod:`epochmagic.capture.retime` moved it)."""

    t: float
    kind: int
    obj: Any  # the Pass, module or optimizer the kind names, else None
    info: Any  # BatchInfo, ForwardInfo, SyncInfo, bytes (MEM) or None, by kind


_INFO: dict[int, type[BatchInfo] | type[ForwardInfo] | type[SyncInfo]] = {
    NEXT_EXIT: BatchInfo,
    FWD_ENTER: ForwardInfo,
    SYNC: SyncInfo,
}


def as_event(e: RawEvent) -> Event:
    """``e`` as a typed record (an already typed one is returned as is)."""
    t, kind, obj, info = e
    make = _INFO.get(kind)
    if make is not None and info is not None and type(info) is not make:
        return Event(t, kind, obj, make(*info))
    if type(e) is Event:
        return e
    return Event(t, kind, obj, info)


def as_events(events: Iterable[RawEvent]) -> list[Event]:
    """The log as typed records: accepts raw tuples, typed records or both."""
    return [as_event(e) for e in events]
