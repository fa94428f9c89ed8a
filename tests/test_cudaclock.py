"""``CudaClock`` against a stand-in for torch's CUDA calls over a simulated
stream: event resolution (mid-run, re-anchored, pooled per device), the
cudart record path and its fallbacks, the anchor and the end calibration
against a drifting device timer, graph capture, a failing device, ``used()``
on a shared process, and the sync watch's routing of torch's warnings.

On a machine with a GPU, ``benchmarks/gpu_check.py`` runs the same class on
real CUDA events.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import warnings
from types import SimpleNamespace
from typing import Any

import pytest

from epochmagic.capture import cudaclock
from epochmagic.capture.cudaclock import CudaClock, time_readings
from epochmagic.capture.cudart import cudart_path, find_cudart
from epochmagic.capture.devicetime import overlap
from epochmagic.capture.syncwatch import SYNC_MESSAGE, user_frame
from tests.simdevice import SimStream


class FakeCuda:
    """torch.cuda's event, sync, memory and debug-mode calls over a virtual stream.

    The device's timer may run off the host clock (``offset``, ``drift``), a
    synchronisation may cost the host time (``sync_cost``), and an event on an
    idle stream completes ``latency`` after its record. ``api()`` is a torch
    stand-in with the private names the fast paths use; ``cudart`` stands for
    torch's libcudart (``cudaEventRecord`` on a raw handle and stream).
    """

    def __init__(
        self,
        stream: SimStream,
        *,
        drift: float = 0.0,
        offset: float = 0.0,
        sync_cost: float = 0.0,
        latency: float = 0.0,
    ) -> None:
        self.stream = stream
        self.drift, self.offset, self.sync_cost, self.latency = drift, offset, sync_cost, latency
        self.created = 0
        self.torch_records = 0
        self.capturing = False
        self.mode = 0
        self.broken = False
        self.initialized = True
        self.peak_resets = 0
        self.allocated = self.peak = 0
        self.device = 0
        self.raw_stream = 0x5000  # the current stream's cudaStream_t
        self.handles: dict[int, Any] = {}
        self.raw_calls: list[tuple[int, int]] = []
        self.record_rc: int | Exception = 0  # what cudaEventRecord returns (or raises)
        self.cudart = SimpleNamespace(cudaEventRecord=self.cuda_event_record)
        cuda = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                cuda.created += 1
                self.done: float | None = None
                self.cuda_event = 0  # torch creates the CUDA event at its first record
                self.device: int | None = None

            def mark(self) -> None:
                self.done = cuda.stream.completes(cuda.stream.clock()) + cuda.latency

            def record(self) -> None:
                if not self.cuda_event:
                    self.cuda_event = 0x7F00_0000_0000 + 16 * len(cuda.handles)
                    cuda.handles[self.cuda_event] = self
                    self.device = cuda.device
                elif self.device != cuda.device:
                    raise RuntimeError("Event device does not match recording stream's device")
                cuda.torch_records += 1
                self.mark()

            def query(self) -> bool:
                return self.done is not None and cuda.stream.clock() >= self.done

            def elapsed_time(self, end: Event) -> float:
                if end.done is None or self.done is None:
                    raise RuntimeError("event not recorded")
                if end.device != self.device:
                    raise RuntimeError("events on different devices")
                return (cuda.timer(end.done) - cuda.timer(self.done)) * 1000.0

            def synchronize(self) -> None:
                cuda.synchronize()
                if self.done is not None:
                    cuda.stream.host(max(0.0, self.done - cuda.stream.clock()))

        self.Event = Event

    def timer(self, t: float) -> float:
        """The device's timer at host time ``t``."""
        return self.offset + t * (1.0 + self.drift)

    def cuda_event_record(self, handle: int, stream: int) -> int:
        self.raw_calls.append((handle, stream))
        if isinstance(self.record_rc, Exception):
            raise self.record_rc
        if self.record_rc:
            return self.record_rc
        ev = self.handles.get(handle)
        if ev is None or ev.device != self.device:
            return 400  # cudaErrorInvalidResourceHandle
        ev.mark()
        return 0

    def api(self, *, raw: bool = True, stream: bool = True) -> SimpleNamespace:
        """A torch stand-in: ``raw``, the raw-stream lookup the cudart path
        needs; ``stream``, the pieces of torch's cached-``Stream`` path."""
        c = SimpleNamespace(
            _cuda_getDevice=lambda: self.device,
            _cuda_isCurrentStreamCapturing=lambda: self.capturing,
        )
        if raw:
            c._cuda_getCurrentRawStream = lambda device: self.raw_stream
        if stream:
            c._cuda_getCurrentStream = lambda device: (self.raw_stream, device, 1)
            c._CudaEventBase = SimpleNamespace(record=lambda ev, on: ev.record())
            self.Stream = lambda **kw: kw
        return SimpleNamespace(cuda=self, _C=c)

    def synchronize(self) -> None:
        if self.broken:
            raise RuntimeError("CUDA error: device-side assert triggered\nmore")
        self.stream.wait()
        self.stream.host(self.sync_cost)

    def is_initialized(self) -> bool:
        return self.initialized

    def alloc(self, nbytes: int) -> None:
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def memory_allocated(self) -> int:
        return self.allocated

    def max_memory_allocated(self) -> int:
        return self.peak

    def reset_peak_memory_stats(self) -> None:
        self.peak_resets += 1
        self.peak = self.allocated  # what torch does: the peak starts at the current

    def is_current_stream_capturing(self) -> bool:
        return self.capturing

    def get_sync_debug_mode(self) -> int:
        return self.mode

    def set_sync_debug_mode(self, mode: int | str) -> None:
        self.mode = {"default": 0, "warn": 1, "error": 2}.get(mode, mode)  # type: ignore[arg-type]


@pytest.fixture
def sim():
    stream = SimStream()
    cuda = FakeCuda(stream)
    clock = CudaClock(host=stream.clock, api=SimpleNamespace(cuda=cuda))
    return stream, cuda, clock


def test_markers_resolve_to_when_the_stream_reached_them(sim):
    stream, cuda, clock = sim
    stream.host(1.0)
    clock.begin()
    expected = []
    for _ in range(3):
        t = clock.now()
        expected.append(stream.completes(t))
        stream.launch(0.030)
        stream.host(0.001)
    t = clock.now()
    expected.append(stream.completes(t))
    dt = clock.finish()
    assert dt is not None
    assert dt.done == pytest.approx(expected, abs=1e-9)
    assert dt.done[-1] == pytest.approx(1.0 + 0.090, abs=1e-9)  # 3 x 30 ms of queued work


def test_long_runs_resolve_mid_run_reuse_events_and_reanchor(sim, monkeypatch):
    stream, cuda, clock = sim
    monkeypatch.setattr(cudaclock, "POOL_BATCH", 8)
    monkeypatch.setattr(cudaclock, "REANCHOR_S", 0.05)
    clock.begin()
    expected = []
    for _ in range(200):
        stream.launch(0.001)
        t = clock.now()
        expected.append(stream.completes(t))
        stream.host(0.002)  # the device keeps up: completed events free up mid-run
    dt = clock.finish()
    assert dt.done == pytest.approx(expected, abs=1e-9)
    assert cuda.created < 30  # events are pooled, not one per reading


def test_no_events_during_graph_capture(sim):
    stream, cuda, clock = sim
    clock.begin()
    cuda.capturing = True
    clock.now()
    cuda.capturing = False
    assert clock.hosts == []  # a timing event inside a capture would break it
    clock.now()
    assert len(clock.finish().hosts) == 1


def test_a_failing_device_falls_back_to_host_time(sim):
    stream, cuda, clock = sim
    clock.begin()
    clock.now()
    cuda.broken = True
    assert clock.finish() is None
    assert clock.error == "RuntimeError: CUDA error: device-side assert triggered"
    cuda.broken = True
    clock.begin()  # a context broken before the run: no markers at all
    assert clock.error and clock.now() == stream.clock() and clock.hosts == []
    assert clock.finish() is None


def test_sync_watch_routes_torchs_warnings_and_restores_everything(sim):
    stream, cuda, clock = sim
    seen: list[tuple[str, int]] = []
    shown = warnings.showwarning
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as other:
        warnings.simplefilter("default")
        before = warnings.showwarning
        with clock.watch_syncs(lambda f, n: seen.append((f, n))):
            assert cuda.mode == 0  # switched on when the clock starts
            clock.begin()
            assert cuda.mode == 1
            for _ in range(3):  # "always": every sync counts, not once per line
                warnings.warn(SYNC_MESSAGE, UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
        assert warnings.showwarning is before
    assert cuda.mode == 0
    assert len(seen) == 3 and seen[0][0] == __file__
    assert [str(w.message) for w in other] == ["something else"]  # passed through
    assert warnings.showwarning is shown and warnings.filters == filters


def test_a_cell_that_brings_cuda_up_starts_the_clock_then(sim):
    """A CPU cell on a GPU machine must not initialise CUDA; a cell that moves
    its model to the GPU starts the clock at its first reading after that."""
    stream, cuda, clock = sim
    cuda.initialized = False
    with clock.watch_syncs(lambda f, n: None):
        clock.begin()
        assert cuda.mode == 0 and cuda.peak_resets == 0
        early = clock.now()
        assert clock.hosts == []  # host time only: nothing can run on the device yet
        cuda.initialized = True  # model.to("cuda") in the cell
        stream.launch(0.005)  # its copy is still running
        clock.now()
        assert cuda.mode == 1 and cuda.peak_resets == 1
        stream.launch(0.010)
        t = clock.now()
        dt = clock.finish()
    assert cuda.mode == 0
    assert early < dt.hosts[0]
    # the start drained the device: the reading after it completes at once
    assert dt.done[0] == pytest.approx(dt.hosts[0])
    assert dt.done[1] == pytest.approx(t + 0.010)
    cuda.initialized = False
    clock.begin()
    clock.now()
    assert clock.finish() is None  # CUDA never came up: the host timeline


def test_user_frame_skips_torch_and_epochmagic():
    import torch

    here = user_frame(__file__, 7)
    assert here == (__file__, 7)
    inside = user_frame(torch.__file__, 1)  # reported from torch: walk out to the caller
    assert inside[0] == __file__


def test_fast_stream_path_reuses_one_stream_object_and_falls_back_when_broken(sim):
    stream, cuda, _ = sim
    made: list[dict] = []
    recorded: list[tuple] = []

    def make_stream(**kw):
        made.append(kw)
        return kw

    def base_record(ev, on):
        recorded.append(tuple(on.values()))
        ev.record()

    cuda.Stream = make_stream
    cuda.Event.synchronize = lambda ev: cuda.synchronize()
    fake_c = SimpleNamespace(
        _cuda_getCurrentStream=lambda device: [3, device, 1],  # a list, as C may return
        _cuda_getDevice=lambda: 0,
        _CudaEventBase=SimpleNamespace(record=base_record),
        _cuda_isCurrentStreamCapturing=lambda: False,
    )
    clock = CudaClock(host=stream.clock, api=SimpleNamespace(cuda=cuda, _C=fake_c))
    clock.begin()
    assert clock._record is not None and clock.record_path == "stream"
    for _ in range(5):
        stream.launch(0.001)
        clock.now()
    assert len(made) == 1 and set(recorded) == {(3, 0, 1)}
    assert clock.finish() is not None

    def broken(ev, on):
        raise RuntimeError("changed private API")

    fake_c._CudaEventBase = SimpleNamespace(record=broken)
    clock.begin()
    assert clock._record is None and clock.record_path == "event"  # Event.record()
    clock.now()
    assert len(clock.finish().hosts) == 1


# -- the cudart path ----------------------------------------------------------------------
@pytest.fixture
def fast():
    stream = SimStream()
    cuda = FakeCuda(stream)
    clock = CudaClock(host=stream.clock, api=cuda.api(), cudart=lambda: cuda.cudart)
    return stream, cuda, clock


def test_cudart_path_rerecords_pooled_handles_on_the_current_raw_stream(fast, monkeypatch):
    """Each reading is one cudaEventRecord of a pooled, torch-created event on
    the stream current at that moment: no torch record, no new event."""
    stream, cuda, clock = fast
    monkeypatch.setattr(cudaclock, "POOL_BATCH", 16)
    stream.host(1.0)
    clock.begin()
    assert clock.record_path == "cudart" and clock.record_note is None
    made, by_torch, calls = cuda.created, cuda.torch_records, len(cuda.raw_calls)
    expected = []
    for i in range(40):
        if i == 20:
            cuda.raw_stream = 0x6000  # the cell switched streams
        stream.launch(0.001)
        t = clock.now()
        expected.append(stream.completes(t))
        stream.host(0.002)
    assert cuda.torch_records == by_torch  # every reading went through cudart
    readings = cuda.raw_calls[calls:]
    assert len(readings) == 40
    assert {s for _, s in readings[:20]} == {0x5000} and {s for _, s in readings[20:]} == {0x6000}
    assert all(h in cuda.handles for h, _ in readings)
    assert cuda.created == made  # completed events were recycled, none made mid-run
    dt = clock.finish()
    assert dt.done == pytest.approx(expected, abs=1e-9)
    assert clock.record_path == "cudart"  # still known after the run, for the report


def test_each_device_has_its_own_pool(fast, monkeypatch):
    """An event is tied to the device it was created on: a reading on another
    device takes one made there, and cudart keeps working."""
    stream, cuda, clock = fast
    monkeypatch.setattr(cudaclock, "POOL_BATCH", 4)
    clock.begin()
    calls = len(cuda.raw_calls)
    clock.now()
    cuda.device = 1  # torch.cuda.set_device(1) in the cell
    for _ in range(6):
        clock.now()
    cuda.device = 0
    clock.now()
    devices = [cuda.handles[h].device for h, _ in cuda.raw_calls[calls:]]
    assert devices == [0, 1, 1, 1, 1, 1, 1, 0]
    assert clock.record_path == "cudart"
    assert len(clock.finish().hosts) == 8  # device 1's markers fall back to their host time


@pytest.mark.parametrize(
    "case, path, note",
    [
        ("no library", "stream", "torch's libcudart not found"),
        ("loader raises", "stream", "torch's libcudart not found"),
        ("no raw stream", "stream", "no torch._C._cuda_getCurrentRawStream"),
        ("record fails", "stream", "cudaEventRecord returned 1"),
        ("no symbol", "stream", "AttributeError"),
        ("nothing private", "event", "no torch._C._cuda_getCurrentRawStream"),
    ],
)
def test_the_cudart_path_is_checked_once_per_run_and_falls_back(case, path, note):
    stream = SimStream()
    cuda = FakeCuda(stream)
    loader: Any = lambda: cuda.cudart  # noqa: E731
    api = cuda.api(raw=case != "no raw stream")
    if case == "no library":
        loader = lambda: None  # noqa: E731
    elif case == "loader raises":

        def loader():
            raise OSError("no /proc")

    elif case == "record fails":
        cuda.record_rc = 1
    elif case == "no symbol":
        loader = lambda: SimpleNamespace()  # noqa: E731
    elif case == "nothing private":
        api = SimpleNamespace(cuda=cuda)
    clock = CudaClock(host=stream.clock, api=api, cudart=loader)
    clock.begin()
    assert clock.record_path == path
    assert clock.record_note is not None and clock.record_note.startswith(note)
    expected = []
    for _ in range(3):
        stream.launch(0.004)
        t = clock.now()
        expected.append(stream.completes(t))
    assert clock.finish().done == pytest.approx(expected, abs=1e-9)
    if case == "record fails":
        cuda.record_rc = 0  # checked again at the next run
        clock.begin()
        assert clock.record_path == "cudart"


@pytest.mark.parametrize("failure", [700, "raises"])
def test_a_failing_cudart_call_mid_run_moves_the_rest_of_the_run_to_torch(fast, failure):
    """Never an exception in the user's cell: the reading is recorded through
    torch instead, and so is every later one of the run."""
    import ctypes

    stream, cuda, clock = fast
    clock.begin()
    expected = []
    for i in range(6):
        if i == 3:
            cuda.record_rc = 700 if failure == 700 else ctypes.ArgumentError("argument 1")
        stream.launch(0.002)
        t = clock.now()
        expected.append(stream.completes(t))
    calls = len(cuda.raw_calls)
    cuda.record_rc = 0
    stream.launch(0.002)
    expected.append(stream.completes(clock.now()))
    assert len(cuda.raw_calls) == calls  # not tried again this run
    assert clock.record_path == "stream"
    rc = 700 if failure == 700 else -1
    assert clock.record_note == f"cudaEventRecord returned {rc} mid-run"
    assert clock.finish().done == pytest.approx(expected, abs=1e-9)


def test_no_cudart_records_during_graph_capture(fast):
    stream, cuda, clock = fast
    clock.begin()
    calls = len(cuda.raw_calls)
    cuda.capturing = True
    clock.now()
    assert len(cuda.raw_calls) == calls and clock.hosts == []
    cuda.capturing = False
    clock.now()
    assert len(cuda.raw_calls) == calls + 1


def test_readings_from_autograds_device_thread_all_resolve(fast, monkeypatch):
    stream, cuda, clock = fast
    monkeypatch.setattr(cudaclock, "POOL_BATCH", 8)  # refills and recycling under the lock
    clock.begin()

    def read() -> None:
        for _ in range(300):
            clock.now()

    threads = [threading.Thread(target=read) for _ in range(2)]
    for th in threads:
        th.start()
    read()
    for th in threads:
        th.join()
    dt = clock.finish()
    assert len(dt.hosts) == 900 and len(clock.done) == 900
    assert len({h for h, _ in cuda.raw_calls}) < 900  # pooled


def test_time_readings_counts_the_readings_of_a_started_clock(fast):
    stream, cuda, clock = fast
    clock.begin()
    per = time_readings(clock, 50)
    assert per > 0 and len(clock.hosts) == 50
    clock.finish()


def test_describe_names_the_record_path_and_the_clock_offset(fast):
    stream, cuda, clock = fast
    props = SimpleNamespace(name="Fake H200", major=9, minor=0, total_memory=2**30)
    cuda.current_device = lambda: 0
    cuda.get_device_properties = lambda i: props
    cuda.mem_get_info = lambda i: (2**29, 2**30)
    cuda.is_bf16_supported = lambda: True
    api = clock._torch
    api.backends = SimpleNamespace(
        cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False)),
        cudnn=SimpleNamespace(allow_tf32=True),
    )
    api.get_float32_matmul_precision = lambda: "highest"
    clock.begin()
    clock.now()
    clock.finish()
    info = clock.describe()
    assert info["record_path"] == "cudart" and info["record_note"] is None
    assert info["clock_offset_s"] == pytest.approx(0.0, abs=1e-9)


# -- the anchor and the end calibration ---------------------------------------------------
@pytest.mark.parametrize("drift", [2e-4, -2e-4])
def test_input_bound_loop_keeps_its_idle_with_a_drifting_timer_and_slow_checks(drift):
    """The low idle estimate counts a segment busy when its closing marker
    completed over LAG_S after its record. An anchor read after the path's
    checks (a slow synchronize) shifted every completion late, and a device
    timer drifting by 200 ppm does so by 200 us after a second: either made
    the data loading look busy. The anchor's host time is now read as it is
    recorded, and the offset measured at the end is taken out."""
    stream = SimStream()
    cuda = FakeCuda(stream, drift=drift, offset=1234.5, sync_cost=300e-6, latency=2e-6)
    clock = CudaClock(host=stream.clock, api=cuda.api(), cudart=lambda: cuda.cudart)
    stream.host(1.0)
    clock.begin()
    assert clock.record_path == "cudart"
    busy = 0.0
    for _ in range(40):
        clock.now()  # next(loader): the host loads data, the device is idle
        stream.host(20e-3)
        clock.now()
        for kernel in (1e-3, 2e-3, 0.5e-3):  # forward, backward, step: short kernels
            stream.launch(kernel)
            busy += kernel
            stream.host(50e-6)
            clock.now()
    stream.host(5e-3)
    clock.now()
    dt = clock.finish()
    span = dt.done[-1] - dt.hosts[0]
    true_idle = 1 - busy / span
    low_idle = 1 - overlap(dt.busy_estimate, [(dt.hosts[0], dt.done[-1])]) / span
    assert true_idle > 0.8
    assert low_idle == pytest.approx(true_idle, abs=1e-3)  # without the calibration: 0.25, 0.831
    assert clock.clock_offset_s == pytest.approx(drift * span, rel=0.05)


def test_the_end_calibration_leaves_a_true_clock_alone(fast):
    stream, cuda, clock = fast
    clock.begin()
    stream.launch(0.010)
    t = clock.now()
    stream.host(0.5)
    dt = clock.finish()
    assert clock.clock_offset_s == pytest.approx(0.0, abs=1e-9)
    assert dt.done == pytest.approx([t + 0.010], abs=1e-12)


# -- used() ------------------------------------------------------------------------------
def test_used_ignores_tensors_earlier_cells_left_on_the_device(sim):
    stream, cuda, clock = sim
    cuda.alloc(100 << 20)  # an earlier cell's model
    clock.begin()
    clock.now()
    clock.finish()
    assert not clock.used()  # a CPU-only cell in the same process
    clock.begin()
    cuda.alloc(1 << 20)  # activations
    cuda.alloc(-(1 << 20))
    clock.finish()
    assert clock.used()
    cuda.initialized = False
    clock.begin()
    clock.now()
    clock.finish()
    assert not clock.used()  # CUDA never came up: the clock never started


def test_a_cell_that_brings_cuda_up_picks_the_cudart_path_then_and_counts_as_used(fast):
    stream, cuda, clock = fast
    cuda.initialized = False
    clock.begin()
    clock.now()
    assert clock.record_path is None and cuda.raw_calls == []  # CUDA untouched
    cuda.initialized = True
    cuda.alloc(10 << 20)  # model.to("cuda"): before the clock's first reading
    stream.launch(0.005)
    clock.now()
    assert clock.record_path == "cudart"
    stream.launch(0.010)
    t = clock.now()
    dt = clock.finish()
    assert dt.done[0] == pytest.approx(dt.hosts[0]) and dt.done[1] == pytest.approx(t + 0.010)
    assert clock.used()  # nothing was allocated before the run: CUDA was not up


# -- finding torch's libcudart ---------------------------------------------------------------
MAPS = """\
7f01-7f02 r--p 00000000 08:01 11 /usr/lib/x86_64-linux-gnu/libc.so.6
7f03-7f04 r-xp 00000000 08:01 12 /opt/other/lib/libcudart.so.12
7f05-7f06 r-xp 00000000 08:01 13 /site/nvidia/cu13/lib/libcudart.so.13
7f07-7f08 r--p 00001000 08:01 13 /site/nvidia/cu13/lib/libcudart.so.13
7f09-7f0a rw-p 00000000 00:00 0 [heap]
"""


def test_cudart_path_prefers_torchs_cuda_major():
    assert cudart_path(MAPS, "13.0") == "/site/nvidia/cu13/lib/libcudart.so.13"
    assert cudart_path(MAPS, "12.8") == "/opt/other/lib/libcudart.so.12"
    assert cudart_path(MAPS, None) == "/opt/other/lib/libcudart.so.12"
    hashed = "7f-7f r-xp 0 08:01 9 /site/torch/lib/libcudart-9335f6a2.so.11.0\n"
    assert cudart_path(hashed, "11.8") == "/site/torch/lib/libcudart-9335f6a2.so.11.0"
    assert cudart_path("7f-7f r-xp 0 08:01 9 /x/libcudart.so.13 (deleted)\n", "13.0") is None
    assert cudart_path(MAPS.splitlines()[0], "13.0") is None


FAKE_CUDART = """
#include <stdint.h>
static uintptr_t last_event, last_stream;
int cudaEventRecord(void *event, void *stream) {
    last_event = (uintptr_t)event; last_stream = (uintptr_t)stream; return 0;
}
uintptr_t seen_event(void) { return last_event; }
uintptr_t seen_stream(void) { return last_stream; }
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_find_cudart_declares_64_bit_handles(tmp_path):
    import ctypes

    src = tmp_path / "fake.c"
    src.write_text(FAKE_CUDART)
    lib_path = tmp_path / "libcudart.so.99"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib_path), str(src)], check=True)
    maps = tmp_path / "maps"
    maps.write_text(f"7f-7f r-xp 0 08:01 9 {lib_path}\n")
    lib = find_cudart(str(maps))
    assert lib is not None
    event, stream = 0x7F12_3456_7890, 0x7F00_CAFE_0020  # above 32 bits, as real handles are
    assert lib.cudaEventRecord(event, stream) == 0
    lib.seen_event.restype = lib.seen_stream.restype = ctypes.c_uint64
    assert (lib.seen_event(), lib.seen_stream()) == (event, stream)
    src.write_text("int cudaGetDeviceCount(int *n) { *n = 0; return 0; }\n")
    other = tmp_path / "libcudart.so.98"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(other), str(src)], check=True)
    maps.write_text(f"7f-7f r-xp 0 08:01 9 {other}\n")
    assert find_cudart(str(maps)) is None  # no cudaEventRecord there
    assert find_cudart(str(tmp_path / "no-such-maps")) is None
