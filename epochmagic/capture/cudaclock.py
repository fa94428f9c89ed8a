"""The probes' clock on CUDA: host time plus a CUDA event per reading.

Every clock reading records a timing event on the current stream (no
``synchronize()``); the events are resolved into completion times in batches
while the run goes on (only those already complete, so nothing waits) and at
the end, after one ``synchronize()``. :mod:`epochmagic.capture.devicetime` turns the
markers into device-true phases.

A reading is on the hot path of every step, so events are pooled per device
and re-recorded with ``cudaEventRecord`` from torch's own libcudart on the
raw current stream (2.7 us per record on an H200, against 12.5 us for
``Event.record()``, most of which is building the current ``Stream``); torch's
``Event`` still does ``query`` and ``elapsed_time`` on the same handle. Where
that path is missing or fails, torch records.

Completion times are host times: an anchor event recorded on the drained
device completes at once, so the host time read right after it is its device
time; a second such event at the end measures the offset the device's timer
drifted by, which is taken out linearly.

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
import ctypes
import re
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from epochmagic.capture.devicetime import DeviceTime, drift_corrected

SYNC_MESSAGE = "called a synchronizing CUDA operation"
POOL_BATCH = 1024  # events made at the start and whenever a device's pool runs dry
REANCHOR_S = 10.0  # elapsed_time is float32 milliseconds: keep differences short
CALIBRATE_S = 5e-6  # an end offset above this is taken out of the completion times

Item = tuple[int, Any, list[Any]]  # (raw cudaEvent_t or 0, torch Event, its device's pool)


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

    def __init__(
        self,
        host: Callable[[], float] = time.perf_counter,
        api: Any = None,
        cudart: Callable[[], Any] | None = None,
    ) -> None:
        """``api``: the ``torch`` module (tests pass a stand-in for its CUDA
        calls); ``cudart``: returns torch's loaded libcudart or None
        (default :func:`find_cudart`; tests pass a stand-in)."""
        if api is None:
            import torch as api
        torch = api
        c = getattr(torch, "_C", None)
        self._torch = torch
        # bound now, before the probes wrap torch.cuda.synchronize: the clock's
        # own drains are not the cell's syncs
        self._synchronize = torch.cuda.synchronize
        self._event = torch.cuda.Event
        self._capturing = getattr(
            c, "_cuda_isCurrentStreamCapturing", torch.cuda.is_current_stream_capturing
        )
        self._device: Callable[[], int] = (
            getattr(c, "_cuda_getDevice", None)
            or getattr(torch.cuda, "current_device", None)
            or _device_zero
        )
        self._raw_stream: Callable[[int], int] = (
            getattr(c, "_cuda_getCurrentRawStream", None) or _no_raw_stream
        )
        self._cudart = cudart if cudart is not None else find_cudart
        self._lib: Any = None
        self._lib_looked_up = False
        self._record: Callable[[Any], None] | None = None  # torch's fast path, once checked
        self._raw: Callable[[int, int], int] | None = None  # cudaEventRecord, once checked
        self._chosen = False
        self.record_note: str | None = None  # why readings are not on the cudart path
        self.clock_offset_s: float | None = None  # device minus host clock at the end
        self.host = host
        self.hosts: list[float] = []
        self.done: list[float | None] = []  # resolved in order; as long as hosts at the end
        self._pending: deque[Item] = deque()
        self._pools: dict[int, list[Item]] = {}
        self._anchor: Any = None
        self._anchor_t = 0.0
        self._start_t = 0.0
        self._started = False  # the clock started during this run
        self._base_bytes = 0  # allocated when it did: earlier cells' tensors
        self.error: str | None = None
        self._lock = threading.Lock()
        self._initialized = torch.cuda.is_initialized
        self._waiting = False  # begun before the cell brought CUDA up
        self._watching = False
        self._debug_before: int | None = None

    @property
    def record_path(self) -> str | None:
        """How readings are recorded: "cudart", "stream" (torch's record on a
        cached ``Stream``) or "event" (``Event.record()``); None before a start."""
        if not self._chosen:
            return None
        return "cudart" if self._raw is not None else "stream" if self._record else "event"

    # -- the hot path ---------------------------------------------------------------
    def now(self) -> float:
        """Host time, and a marker on the current stream (every probe reads it)."""
        t = self.host()
        if self._anchor is None:
            if not self._waiting or not self._initialized():
                return t  # nothing can run on the device yet
            with self._lock:
                if self._waiting:
                    self._start(base=False)  # the cell brought CUDA up (moved a model there)
            if self._anchor is None:
                return t
            t = self.host()
        if self._capturing():
            return t  # inside CUDA graph capture: no events there
        with self._lock:  # autograd's device thread reads the clock too (--modules)
            dev = self._device()
            try:
                item = self._pools[dev].pop()
            except (KeyError, IndexError):
                item = self._refill(dev)
            raw = self._raw
            if raw is not None:
                try:
                    rc: int | None = raw(item[0], self._raw_stream(dev))
                except Exception:  # noqa: BLE001 (never into the user's cell)
                    rc = -1
            else:
                rc = None
            if rc != 0 and not self._record_slow(item, rc):
                return t
            self._pending.append(item)
            self.hosts.append(t)
        return t

    def _record_slow(self, item: Item, rc: int | None) -> bool:
        """Record through torch; ``rc``: what a failed cudaEventRecord returned
        (the rest of the run then records through torch). False: no marker."""
        if rc is not None:
            self._drop_raw(f"cudaEventRecord returned {rc} mid-run")
        try:
            self._torch_record(item[1])
        except Exception:  # noqa: BLE001 (a broken context: finish() says so)
            return False
        return True

    def _refill(self, dev: int) -> Item:
        """A device's pool ran dry: recycle the events that completed, and
        make a batch when that freed few (the device lags the host)."""
        pool = self._pools.setdefault(dev, [])
        with contextlib.suppress(RuntimeError):  # a device error: finish() reports it
            self._resolve(final=False)
        if len(pool) <= POOL_BATCH // 4:
            pool.extend([self._new_item(pool) for _ in range(POOL_BATCH)])
        return pool.pop()

    def _new_item(self, pool: list[Item]) -> Item:
        ev = self._event(enable_timing=True)
        if self._raw is not None:
            try:
                return self._materialised(ev, pool)
            except Exception as e:  # noqa: BLE001 (torch records from here on)
                self._drop_raw(f"creating an event failed: {_describe(e)}")
        return (0, ev, pool)

    def _materialised(self, ev: Any, pool: list[Item]) -> Item:
        """torch creates the CUDA event at its first record: record once
        through torch, then the raw handle can be re-recorded."""
        self._torch_record(ev)
        handle = int(ev.cuda_event)
        if not handle:
            raise RuntimeError("the event has no CUDA handle")
        return (handle, ev, pool)

    def _torch_record(self, ev: Any) -> None:
        if self._record is not None:
            try:
                self._record(ev)
                return
            except Exception as e:  # noqa: BLE001 (a changed private API: the public one)
                self._record = None
                self.record_note = f"stream record failed: {_describe(e)}"
        ev.record()

    def _drop_raw(self, why: str) -> None:
        self._raw = None
        self.record_note = why

    # -- run boundaries ---------------------------------------------------------------
    def begin(self) -> None:
        """Start of the run. CUDA is not initialised here if the cell has not
        used it yet (a CPU cell on a GPU machine keeps its GPU untouched); the
        clock starts at its first reading after the cell brings CUDA up."""
        self.hosts.clear()
        self.done.clear()
        self._pending.clear()
        self._pools.clear()
        self.error = None
        self.clock_offset_s = None
        self._started = False
        self._base_bytes = 0
        self._chosen = False
        self._waiting = True
        if self._initialized():
            self._start(base=True)

    def _start(self, base: bool) -> None:
        """Drain the device, pick the record path (its checks synchronise, so
        before the anchor), then record the anchor on the idle device.
        ``base``: CUDA was up before the run, so tensors of earlier cells may
        be allocated (else nothing was)."""
        self._waiting = False
        cuda = self._torch.cuda
        try:
            self._synchronize()
            cuda.reset_peak_memory_stats()  # the run's own peak
            self._base_bytes = int(cuda.memory_allocated()) if base else 0
            self._started = True
            self._choose_path()
            if self._watching:
                self._debug_before = cuda.get_sync_debug_mode()
                cuda.set_sync_debug_mode("warn")
            anchor, anchor_t = self._record_idle()
        except RuntimeError as e:  # a broken context: the cell will say why
            self.error = _describe(e)
            return
        self._anchor, self._anchor_t, self._start_t = anchor, anchor_t, anchor_t

    def _choose_path(self) -> None:
        """The cheapest record path that works here, checked once per run; the
        device's pool is filled here, outside the cell's timing."""
        self._record = _checked(stream_recorder(self._torch), self._event)
        self._chosen = True
        self.record_note = None
        self._raw = self._cudart_record()
        dev = self._device()
        pool = self._pools.setdefault(dev, [])
        pool.extend([self._new_item(pool) for _ in range(POOL_BATCH)])  # materialised for cudart
        if self._raw is not None:
            self._check_raw(self._raw, dev, pool)

    def _cudart_record(self) -> Callable[[int, int], int] | None:
        """``cudaEventRecord`` of torch's libcudart, or None (``record_note`` says why)."""
        try:
            self._raw_stream(self._device())
        except Exception:  # noqa: BLE001 (torch without the private name)
            self.record_note = "no torch._C._cuda_getCurrentRawStream"
            return None
        if not self._lib_looked_up:
            self._lib_looked_up = True
            try:
                self._lib = self._cudart()
            except Exception:  # noqa: BLE001
                self._lib = None
        try:
            record: Callable[[int, int], int] = self._lib.cudaEventRecord
        except AttributeError as e:
            self.record_note = "torch's libcudart not found" if self._lib is None else _describe(e)
            return None
        return record

    def _check_raw(self, record: Callable[[int, int], int], dev: int, pool: list[Item]) -> None:
        """Keep the cudart path if two events recorded through it on the
        current stream complete with a valid elapsed time. Synchronising on
        the second also drains the pool's first records before the anchor."""
        try:
            pair = [pool.pop(), pool.pop()]
            for handle, _, _ in pair:
                rc = record(handle, self._raw_stream(dev))
                if rc != 0:
                    self._drop_raw(f"cudaEventRecord returned {rc}")
                    return
            first, second = pair[0][1], pair[1][1]
            second.synchronize()
            if not (first.query() and second.query()) or first.elapsed_time(second) < 0:
                self._drop_raw("events recorded through cudart did not complete")
                return
        except Exception as e:  # noqa: BLE001 (a changed API: torch records)
            self._drop_raw(_describe(e))
            return
        pool.extend(pair)

    def _record_idle(self) -> tuple[Any, float]:
        """An event recorded on the drained device by the run's path, and the
        host time right after: it completes within microseconds (erring
        early is safe: a completion is never taken before its record)."""
        dev = self._device()
        pool = self._pools.setdefault(dev, [])
        item = pool.pop() if pool else self._new_item(pool)
        raw = self._raw
        ok = False
        if raw is not None:
            try:
                ok = raw(item[0], self._raw_stream(dev)) == 0
            except Exception:  # noqa: BLE001 (torch records from here on)
                ok = False
            if not ok:
                self._drop_raw("cudaEventRecord failed on the idle device")
        if not ok:
            self._torch_record(item[1])
        return item[1], self.host()

    def finish(self) -> DeviceTime | None:
        self._waiting = False
        if self._anchor is None:
            return None
        try:
            self._synchronize()
            self._resolve(final=True)
            self._calibrate()
        except RuntimeError as e:  # a device-side error: keep the host timeline
            self.error = _describe(e)
            return None
        finally:
            self._anchor = None
            self._pending.clear()
            self._pools.clear()
        return DeviceTime.from_markers(self.hosts, self.done)

    def _calibrate(self) -> None:
        """Compare the clocks once more on the drained device: what the end
        event's computed completion exceeds the host time by is the offset the
        run accumulated (timer drift); take it out linearly from the anchor."""
        try:
            ev, h = self._record_idle()
            ev.synchronize()
            d = self._anchor_t + self._anchor.elapsed_time(ev) / 1000.0
        except Exception:  # noqa: BLE001 (another device current now: no calibration)
            return
        self.clock_offset_s = offset = d - h
        if abs(offset) > CALIBRATE_S:
            self.done = drift_corrected(self.done, self._start_t, d, offset)

    def _resolve(self, final: bool) -> None:
        """Completion times of the pending events, oldest first; mid-run only
        those already complete (``query`` never blocks). Resolved events go
        back to their device's pool."""
        pending, done = self._pending, self.done
        while pending:
            item = pending[0]
            ev = item[1]
            if not final and not ev.query():
                break
            pending.popleft()
            try:
                d = self._anchor_t + self._anchor.elapsed_time(ev) / 1000.0
            except RuntimeError:  # recorded on another device, or never ran
                item[2].append(item)
                done.append(None)
                continue
            done.append(d)
            if d - self._anchor_t > REANCHOR_S:
                self._anchor, self._anchor_t = ev, d  # not reused while it anchors
            else:
                item[2].append(item)

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
        """The clock started in this run and the peak (reset then) rose above
        what was allocated then: tensors earlier cells left on the device do
        not make a CPU cell look like a GPU one."""
        return self._started and self._torch.cuda.max_memory_allocated() > self._base_bytes

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
            "record_path": self.record_path,  # how readings were recorded
            "record_note": self.record_note,  # why not through cudart
            "clock_offset_s": self.clock_offset_s,  # device vs host clock at the end
        }


def time_readings(clock: DeviceClock, n: int = 1000) -> float:
    """Seconds per reading of a started clock (benchmarks). Up to the pool's
    size this is the hot path alone; beyond it, the resolution of completed
    events (``query`` + ``elapsed_time``) is amortised into it."""
    now = clock.now
    t0 = time.perf_counter()
    for _ in range(n):
        now()
    return (time.perf_counter() - t0) / n


_CUDART = re.compile(r"/libcudart[^/\s]*\.so[^/\s]*$")
_MAJOR = re.compile(r"\.so\.(\d+)")


def cudart_path(maps: str, cuda_version: str | None = None) -> str | None:
    """The libcudart mapped into this process, from ``/proc/self/maps`` text;
    of several, one of torch's CUDA major version (a stray one from another
    package would not be torch's runtime)."""
    paths: list[str] = []
    for line in maps.splitlines():
        fields = line.split(None, 5)
        path = fields[5] if len(fields) == 6 else ""
        if _CUDART.search(path) and path not in paths:  # a replaced file: "... (deleted)"
            paths.append(path)
    if cuda_version:
        major = cuda_version.split(".")[0]
        for path in paths:
            found = _MAJOR.search(path.rsplit("/", 1)[-1])
            if found and found.group(1) == major:
                return path
    return paths[0] if paths else None


def find_cudart(maps: str = "/proc/self/maps") -> Any:
    """torch's own libcudart, already loaded once CUDA is up (``CDLL`` of a
    loaded path returns it), with ``cudaEventRecord`` declared; else None."""
    try:
        with open(maps) as f:
            text = f.read()
        torch = sys.modules.get("torch")
        path = cudart_path(text, getattr(getattr(torch, "version", None), "cuda", None))
        if path is None:
            return None
        lib = ctypes.CDLL(path)
        record = lib.cudaEventRecord
    except (OSError, AttributeError):
        return None
    record.argtypes = [ctypes.c_void_p, ctypes.c_void_p]  # cudaEvent_t, cudaStream_t
    record.restype = ctypes.c_int  # cudaError_t
    return lib


def _device_zero() -> int:
    return 0


def _no_raw_stream(device: int) -> int:
    raise AttributeError("torch._C._cuda_getCurrentRawStream")


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
