"""How :class:`~epochmagic.capture.cudaclock.CudaClock` records a reading's
event, cheapest first: ``cudaEventRecord`` of torch's own libcudart through
ctypes on a pooled raw handle (2.7 us on an H200), torch's private record on a
cached ``Stream``, then ``Event.record()`` (12.5 us, most of it building the
current ``Stream``).

Each path is looked up and checked once per run before the run relies on it;
one that is missing or fails, then or mid-run, leaves the clock on the next
slower one, and ``record_note`` says why.
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections.abc import Callable
from typing import Any

Item = tuple[int, Any, list[Any]]  # (raw cudaEvent_t or 0, torch Event, its device's pool)

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


def device_zero() -> int:
    """The current device where torch cannot say (one device)."""
    return 0


def no_raw_stream(device: int) -> int:
    """Stands in for ``torch._C._cuda_getCurrentRawStream`` where torch lacks it."""
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


def checked(record: Callable[[Any], None] | None, event: Any) -> Callable[[Any], None] | None:
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


def describe_error(e: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class RecordPaths:
    """The record paths of one clock and the checks that pick one per run;
    :class:`~epochmagic.capture.cudaclock.CudaClock` builds on it."""

    def __init__(self, torch: Any, cudart: Callable[[], Any]) -> None:
        """``torch``: the module or a stand-in for its CUDA calls; ``cudart``:
        returns torch's loaded libcudart or None (:func:`find_cudart`)."""
        c = getattr(torch, "_C", None)
        self._torch = torch
        self._event = torch.cuda.Event
        self._device: Callable[[], int] = (
            getattr(c, "_cuda_getDevice", None)
            or getattr(torch.cuda, "current_device", None)
            or device_zero
        )
        self._raw_stream: Callable[[int], int] = (
            getattr(c, "_cuda_getCurrentRawStream", None) or no_raw_stream
        )
        self._cudart = cudart
        self._lib: Any = None
        self._lib_looked_up = False
        self._record: Callable[[Any], None] | None = None  # torch's fast path, once checked
        self._raw: Callable[[int, int], int] | None = None  # cudaEventRecord, once checked
        self._chosen = False
        self.record_note: str | None = None  # why readings are not on the cudart path

    @property
    def record_path(self) -> str | None:
        """How readings are recorded: "cudart", "stream" (torch's record on a
        cached ``Stream``) or "event" (``Event.record()``); None before a start."""
        if not self._chosen:
            return None
        return "cudart" if self._raw is not None else "stream" if self._record else "event"

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

    def _new_item(self, pool: list[Item]) -> Item:
        ev = self._event(enable_timing=True)
        if self._raw is not None:
            try:
                return self._materialised(ev, pool)
            except Exception as e:  # noqa: BLE001 (torch records from here on)
                self._drop_raw(f"creating an event failed: {describe_error(e)}")
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
                self.record_note = f"stream record failed: {describe_error(e)}"
        ev.record()

    def _drop_raw(self, why: str) -> None:
        self._raw = None
        self.record_note = why

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
            self.record_note = (
                "torch's libcudart not found" if self._lib is None else describe_error(e)
            )
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
            self._drop_raw(describe_error(e))
            return
        pool.extend(pair)

    def _pick_paths(self) -> None:
        """The cheapest paths that work here, checked once per run (the
        cudart one again on pooled events: :meth:`_check_raw`)."""
        self._record = checked(stream_recorder(self._torch), self._event)
        self._chosen = True
        self.record_note = None
        self._raw = self._cudart_record()
