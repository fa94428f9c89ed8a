"""``CudaClock`` against a stand-in for torch's CUDA calls over a simulated
stream: event resolution (mid-run, re-anchored, pooled), graph capture, a
failing device, and the sync watch's routing of torch's warnings.

On a machine with a GPU, ``benchmarks/gpu_check.py`` runs the same class on
real CUDA events.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from epochmagic import cudaclock
from epochmagic.cudaclock import SYNC_MESSAGE, CudaClock, user_frame
from tests.simdevice import SimStream


class FakeCuda:
    """torch.cuda's event, sync and debug-mode calls over a virtual stream."""

    def __init__(self, stream: SimStream) -> None:
        self.stream = stream
        self.created = 0
        self.capturing = False
        self.mode = 0
        self.broken = False
        self.initialized = True
        self.peak_resets = 0
        cuda = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                cuda.created += 1
                self.done: float | None = None

            def record(self) -> None:
                self.done = cuda.stream.completes(cuda.stream.clock())

            def query(self) -> bool:
                return self.done is not None and cuda.stream.clock() >= self.done

            def elapsed_time(self, end: Event) -> float:
                if end.done is None or self.done is None:
                    raise RuntimeError("event not recorded")
                return (end.done - self.done) * 1000.0

        self.Event = Event

    def synchronize(self) -> None:
        if self.broken:
            raise RuntimeError("CUDA error: device-side assert triggered\nmore")
        self.stream.wait()

    def is_initialized(self) -> bool:
        return self.initialized

    def reset_peak_memory_stats(self) -> None:
        self.peak_resets += 1

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
    monkeypatch.setattr(cudaclock, "RESOLVE_BACKLOG", 8)
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
    assert clock._record is not None
    for _ in range(5):
        stream.launch(0.001)
        clock.now()
    assert len(made) == 1 and set(recorded) == {(3, 0, 1)}
    assert clock.finish() is not None

    def broken(ev, on):
        raise RuntimeError("changed private API")

    fake_c._CudaEventBase = SimpleNamespace(record=broken)
    clock.begin()
    assert clock._record is None  # the public Event.record() path
    clock.now()
    assert len(clock.finish().hosts) == 1
