"""The probes' clock on CUDA: host time plus a CUDA event per reading.

Every clock reading records a timing event on the current stream (no
``synchronize()``); the events are resolved into completion times in batches
while the run goes on (only those already complete, so nothing waits) and at
the end, after one ``synchronize()``. :mod:`epochmagic.capture.devicetime` turns the
markers into device-true phases.

A reading is on the hot path of every step, so events are pooled per device
and re-recorded through the cheapest path that works
(:mod:`epochmagic.capture.cudart`); torch's ``Event`` does ``query`` and
``elapsed_time`` on the same handle.

Completion times are host times: an anchor event recorded on the drained
device completes at once, so the host time read right after it is its device
time; a second such event at the end measures the offset the device's timer
drifted by, which is taken out linearly.

Synchronising calls are found with torch's own sync debug mode
(``torch.cuda.set_sync_debug_mode("warn")``), switched on when the clock
starts, and routed by :mod:`epochmagic.capture.syncwatch`.

:class:`DeviceClock` is the interface the session and probes use;
``make_clock`` picks the implementation (tests substitute a simulated stream).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from epochmagic.capture.cudart import Item, RecordPaths, describe_error, find_cudart
from epochmagic.capture.devicetime import DeviceTime, drift_corrected
from epochmagic.capture.patching import Patches
from epochmagic.capture.syncwatch import route_sync_warnings

POOL_BATCH = 1024  # events made at the start and whenever a device's pool runs dry
REANCHOR_S = 10.0  # elapsed_time is float32 milliseconds: keep differences short
CALIBRATE_S = 5e-6  # an end offset above this is taken out of the completion times


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


class CudaClock(RecordPaths):
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
        super().__init__(torch, cudart if cudart is not None else find_cudart)
        c = getattr(torch, "_C", None)
        # bound now, before the probes wrap torch.cuda.synchronize: the clock's
        # own drains are not the cell's syncs
        self._synchronize = torch.cuda.synchronize
        self._capturing = getattr(
            c, "_cuda_isCurrentStreamCapturing", torch.cuda.is_current_stream_capturing
        )
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
        self._watch: Patches | None = None  # the open sync watch's patches

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

    def _refill(self, dev: int) -> Item:
        """A device's pool ran dry: recycle the events that completed, and
        make a batch when that freed few (the device lags the host)."""
        pool = self._pools.setdefault(dev, [])
        with contextlib.suppress(RuntimeError):  # a device error: finish() reports it
            self._resolve(final=False)
        if len(pool) <= POOL_BATCH // 4:
            pool.extend([self._new_item(pool) for _ in range(POOL_BATCH)])
        return pool.pop()

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
            if self._watch is not None:
                self._watch.setting(cuda.get_sync_debug_mode, cuda.set_sync_debug_mode, "warn")
            anchor, anchor_t = self._record_idle()
        except RuntimeError as e:  # a broken context: the cell will say why
            self.error = describe_error(e)
            return
        self._anchor, self._anchor_t, self._start_t = anchor, anchor_t, anchor_t

    def _choose_path(self) -> None:
        """The cheapest record path that works here, checked once per run; the
        device's pool is filled here, outside the cell's timing."""
        self._pick_paths()
        dev = self._device()
        pool = self._pools.setdefault(dev, [])
        pool.extend([self._new_item(pool) for _ in range(POOL_BATCH)])  # materialised for cudart
        if self._raw is not None:
            self._check_raw(self._raw, dev, pool)

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
            self.error = describe_error(e)
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
        main thread makes (:func:`~epochmagic.capture.syncwatch.route_sync_warnings`);
        torch's sync debug mode is switched on when the clock starts."""
        with Patches() as patches:
            route_sync_warnings(patches, on_sync)
            patches.on_close(self._stop_watching)
            self._watch = patches
            yield

    def _stop_watching(self) -> None:
        self._watch = None

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
