"""The probes' clock on CUDA: host time plus a CUDA event per reading.

Every clock reading records a timing event on the current stream (no
``synchronize()``); the events are resolved into completion times in batches
while the run goes on (only those already complete, so nothing waits) and at
the end, after one ``synchronize()``. :mod:`epochmagic.devicetime` turns the
markers into device-true phases.

Synchronising calls are found with torch's own sync debug mode
(``torch.cuda.set_sync_debug_mode("warn")``): it warns on every ``.item()``,
``.cpu()``, ``print(tensor)``, blocking copy and the like. The warning is
delivered when the call returns, so ``Tensor.item`` also reads the clock as
it starts, which makes the host's wait in it exact.

:class:`DeviceClock` is the interface the session and probes use;
``make_clock`` picks the implementation (tests substitute a simulated stream).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from epochmagic.devicetime import DeviceTime

SYNC_MESSAGE = "called a synchronizing CUDA operation"
RESOLVE_BACKLOG = 4096  # pending events before completed ones are resolved mid-run
REANCHOR_S = 10.0  # elapsed_time is float32 milliseconds: keep differences short


class DeviceClock(Protocol):
    """What the probes need from an accelerator."""

    name: str
    error: str | None  # why device timing failed, if it did

    def now(self) -> float: ...  # host time; records a marker

    def begin(self) -> None: ...  # start of the run

    def finish(self) -> DeviceTime | None: ...  # waits for the device; None if it failed

    def watch_syncs(self, on_sync: Callable[[str, int], None]) -> Any: ...  # context manager

    def memory(self) -> int: ...  # bytes allocated now

    def tensor_on_device(self, t: Any) -> bool: ...

    def used(self) -> bool: ...  # the run put work on the device

    def describe(self) -> dict[str, Any]: ...  # name, capability, memory, TF32


def make_clock() -> DeviceClock | None:
    """A CUDA clock when CUDA can run, else ``None`` (host time only)."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        return CudaClock()
    except RuntimeError:  # a broken driver: profile on the host clock
        return None


class CudaClock:
    """Host clock + one CUDA timing event per reading on the current stream."""

    name = "cuda"

    def __init__(self, host: Callable[[], float] = time.perf_counter, api: Any = None) -> None:
        """``api``: the ``torch`` module (tests pass a stand-in for its CUDA calls)."""
        if api is None:
            import torch as api
        torch = api
        self._torch = torch
        self._event = torch.cuda.Event
        self._capturing = getattr(
            getattr(torch, "_C", None),
            "_cuda_isCurrentStreamCapturing",
            torch.cuda.is_current_stream_capturing,
        )
        self._record: Callable[[Any], None] | None = None  # the fast path, once checked
        self.host = host
        self.hosts: list[float] = []
        self.done: list[float | None] = []
        self._pending: deque[tuple[int, Any]] = deque()
        self._pool: list[Any] = []
        self._anchor: Any = None
        self._anchor_t = 0.0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._initialized = torch.cuda.is_initialized
        self._waiting = False  # begun before the cell brought CUDA up
        self._watching = False
        self._debug_before: int | None = None

    # -- the hot path ---------------------------------------------------------------
    def now(self) -> float:
        t = self.host()
        if self._anchor is None:
            if not self._waiting or not self._initialized():
                return t  # nothing can run on the device yet
            with self._lock:
                if self._waiting:
                    self._start()  # the cell brought CUDA up (moved a model there)
            if self._anchor is None:
                return t
            t = self.host()
        if self._capturing():
            return t  # inside CUDA graph capture: no events there
        with self._lock:  # autograd's device thread reads the clock too (--modules)
            ev = self._pool.pop() if self._pool else self._event(enable_timing=True)
            if self._record is not None:
                self._record(ev)
            else:
                ev.record()
            self._pending.append((len(self.hosts), ev))
            self.hosts.append(t)
            self.done.append(None)
            if len(self._pending) > RESOLVE_BACKLOG:
                self._resolve(final=False)
        return t

    # -- run boundaries ---------------------------------------------------------------
    def begin(self) -> None:
        """Start of the run. CUDA is not initialised here if the cell has not
        used it yet (a CPU cell on a GPU machine keeps its GPU untouched); the
        clock starts at its first reading after the cell brings CUDA up."""
        self.hosts.clear()
        self.done.clear()
        self._pending.clear()
        self.error = None
        self._waiting = True
        if self._initialized():
            self._start()

    def _start(self) -> None:
        """Drain the device once; an anchor event recorded on the idle device
        completes at once, so its host time is its device time."""
        self._waiting = False
        cuda = self._torch.cuda
        try:
            cuda.synchronize()
            cuda.reset_peak_memory_stats()  # the run's own peak
            if self._watching:
                self._debug_before = cuda.get_sync_debug_mode()
                cuda.set_sync_debug_mode("warn")
            anchor = self._event(enable_timing=True)
            anchor.record()
        except RuntimeError as e:  # a broken context: the cell will say why
            self.error = _describe(e)
            return
        self._record = _checked(stream_recorder(self._torch), self._event)
        self._anchor, self._anchor_t = anchor, self.host()

    def finish(self) -> DeviceTime | None:
        self._waiting = False
        if self._anchor is None:
            return None
        try:
            self._torch.cuda.synchronize()
            self._resolve(final=True)
        except RuntimeError as e:  # a device-side error: keep the host timeline
            self.error = _describe(e)
            return None
        finally:
            self._anchor = None
            self._pending.clear()
            self._pool.clear()
        return DeviceTime.from_markers(self.hosts, self.done)

    def _resolve(self, final: bool) -> None:
        """Completion times of the pending events, oldest first; mid-run only
        those already complete (``query`` never blocks)."""
        while self._pending:
            i, ev = self._pending[0]
            if not final and not ev.query():
                break
            self._pending.popleft()
            try:
                d = self._anchor_t + self._anchor.elapsed_time(ev) / 1000.0
            except RuntimeError:  # recorded on another device, or never ran
                self._pool.append(ev)
                continue
            self.done[i] = d
            if d - self._anchor_t > REANCHOR_S:
                self._anchor, self._anchor_t = ev, d
            else:
                self._pool.append(ev)

    # -- syncs, memory ----------------------------------------------------------------
    @contextlib.contextmanager
    def watch_syncs(self, on_sync: Callable[[str, int], None]) -> Iterator[None]:
        """Call ``on_sync(filename, lineno)`` after every synchronising call the
        main thread makes; the warnings torch raises for them are not shown."""
        cuda = self._torch.cuda
        main = threading.get_ident()
        shown = warnings.showwarning

        def showwarning(
            message: Any,
            category: Any,
            filename: str,
            lineno: int,
            file: Any = None,
            line: Any = None,
        ) -> None:
            if SYNC_MESSAGE in str(message):
                if threading.get_ident() == main:
                    on_sync(*user_frame(filename, lineno))
                return
            shown(message, category, filename, lineno, file, line)

        count = len(warnings.filters)
        warnings.filterwarnings("always", message=SYNC_MESSAGE)
        added = warnings.filters[0] if len(warnings.filters) > count else None  # else the user's
        warnings.showwarning = showwarning
        self._watching = True  # the debug mode is switched on when the clock starts
        try:
            yield
        finally:
            self._watching = False
            if self._debug_before is not None:
                cuda.set_sync_debug_mode(self._debug_before)
                self._debug_before = None
            if warnings.showwarning is showwarning:
                warnings.showwarning = shown
            if added is not None:
                with contextlib.suppress(ValueError):
                    warnings.filters.remove(added)  # type: ignore[attr-defined]
                warnings._filters_mutated()  # type: ignore[attr-defined]

    def memory(self) -> int:
        return int(self._torch.cuda.memory_stats().get("allocated_bytes.all.current", 0))

    def tensor_on_device(self, t: Any) -> bool:
        return bool(t.is_cuda)

    def used(self) -> bool:
        return self._torch.cuda.max_memory_allocated() > 0  # peak was reset at the start

    def describe(self) -> dict[str, Any]:
        cuda = self._torch.cuda
        backends = self._torch.backends
        index = cuda.current_device()
        props = cuda.get_device_properties(index)
        try:
            free, total = cuda.mem_get_info(index)
        except RuntimeError:
            free, total = None, int(props.total_memory)
        return {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "bf16": bool(cuda.is_bf16_supported()),
            "free_bytes": free,
            "total_bytes": total,
            "tf32": {
                "matmul": bool(backends.cuda.matmul.allow_tf32),
                "cudnn": bool(backends.cudnn.allow_tf32),
                "float32_matmul_precision": self._torch.get_float32_matmul_precision(),
            },
        }


def stream_recorder(torch: Any) -> Callable[[Any], None] | None:
    """Record an event on the current stream without building a ``Stream``
    object per reading, as ``Event.record()`` does through
    ``torch.cuda.current_stream()`` (most of a reading's cost): the current
    stream is looked up by its id and its Python object reused."""
    try:
        get_stream = torch._C._cuda_getCurrentStream
        get_device = torch._C._cuda_getDevice
        base_record = torch._C._CudaEventBase.record
        stream_type = torch.cuda.Stream
    except AttributeError:
        return None
    streams: dict[Any, Any] = {}

    def record(ev: Any) -> None:
        data = tuple(get_stream(get_device()))
        stream = streams.get(data)
        if stream is None:
            stream = streams[data] = stream_type(
                stream_id=data[0], device_index=data[1], device_type=data[2]
            )
        base_record(ev, stream)

    return record


def _checked(record: Callable[[Any], None] | None, event: Any) -> Callable[[Any], None] | None:
    """``record`` if it records a completing event here, else None (the public path)."""
    if record is None:
        return None
    try:
        probe = event(enable_timing=True)
        record(probe)
        probe.synchronize()
        return record if probe.query() else None
    except Exception:  # noqa: BLE001 (a private API that changed: use the public one)
        return None


def _describe(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def user_frame(filename: str, lineno: int) -> tuple[str, int]:
    """The caller outside torch and epochmagic: a sync inside ``print(t)`` is
    reported at the user's ``print``, not in torch's tensor formatting."""
    if not filename.startswith(_internal()):
        return filename, lineno
    found = caller_outside(sys._getframe(1))
    return found if found[0] else (filename, lineno)


def caller_outside(frame: Any) -> tuple[str, int]:
    """The first frame from ``frame`` outwards that is not torch's, ours or
    the warnings machinery's: the user's line."""
    skip = _internal()
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    if frame is None:
        return "", 0
    return frame.f_code.co_filename, frame.f_lineno


def _internal() -> tuple[str, ...]:
    import torch

    return (torch.__path__[0], __file__.rsplit("/", 1)[0], warnings.__file__)
