"""Device-time attribution against a simulated stream with known answers.

Each script drives a virtual in-order stream (``tests.simdevice.SimStream``):
the host launches work, waits in syncs and loads data; every clock reading is
a marker as on CUDA. The events then go through the session's real
re-timing (``to_device_time``) and the timeline's real sweep.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from epochmagic.analysis.gpu import fields
from epochmagic.analysis.timeline import analyse
from epochmagic.capture import recorder as r
from epochmagic.capture.devicetime import (
    LAG_S,
    DeviceTime,
    busy_intervals,
    completion_times,
    drift_corrected,
    overlap,
)
from epochmagic.capture.recorder import Pass, Recorder
from epochmagic.capture.retime import to_device_time
from tests.simdevice import SimStream

MS = 1e-3


class Loop:
    """A training loop on a simulated GPU, recorded as the probes would."""

    def __init__(self) -> None:
        self.stream = SimStream()
        self.hosts: list[float] = []
        self.done: list[float] = []
        self.rec = Recorder(clock=self.now)
        self.rec.begin()
        self.model = torch.nn.Linear(2, 2)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.p = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
        self.rec.mark(r.ITER_ENTER, self.p)
        self.rec.mark(r.ITER_EXIT, self.p)

    def now(self) -> float:
        t = self.stream.clock()
        self.hosts.append(t)
        self.done.append(self.stream.completes(t))
        return t

    def span(self, enter: int, host_ms: float, device_ms: float = 0.0, obj=None, info=None):
        self.rec.mark(enter, obj, info)
        self.stream.launch(device_ms * MS)
        self.stream.host(host_ms * MS)
        self.rec.mark(r.EXIT_OF_ENTER[enter], obj)

    def step(self, data=0.1, fwd=(1.0, 30.0), bwd=(1.0, 20.0), opt=(0.5, 2.0), sync=True, py=0.2):
        self.rec.mark(r.NEXT_ENTER, self.p)
        self.stream.host(data * MS)
        self.p.yielded += 1
        self.rec.mark(r.NEXT_EXIT, self.p, (8, None, None))
        self.span(r.FWD_ENTER, *fwd, obj=self.model, info=(True, True, 8, None))
        self.span(r.BWD_ENTER, *bwd)
        self.span(r.OPT_ENTER, *opt, obj=self.opt)
        if sync:  # loss.item(): the patched Tensor.item reads the clock first
            self.now()
            self.stream.wait()
            self.rec.mark(r.SYNC, None, ("cell", 7, False))
        self.stream.host(py * MS)

    def analyse(self, *, device: bool = True):
        self.rec.mark(r.NEXT_ENTER, self.p)
        self.rec.mark(r.NEXT_STOP, self.p)
        self.rec.finish()
        self.stream.wait()
        end = self.now()
        busy = None
        dt = None
        if device:
            dt = DeviceTime.from_markers(self.hosts, self.done)
            probes = SimpleNamespace(grad_marks=[], module_spans=[])
            end = to_device_time(self.rec, probes, dt, end)
            busy = dt.busy
        params = {id(p) for p in self.model.parameters()}
        return analyse(
            self.rec.events,
            self.rec.start,
            end,
            trained_param_ids=params,
            busy=busy,
            busy_estimate=dt.busy_estimate if dt is not None else None,
        )


def per_step(tl, phase: str) -> float:
    return sum(sp[phase] for sp in tl.step_phases) / len(tl.step_phases)


def test_gpu_heavy_forward_then_item_is_forward_not_other():
    loop = Loop()
    for _ in range(5):
        loop.step()
    tl = loop.analyse()
    assert len(tl.step_bounds) == 5
    # what the device ran, credited to the phase that launched it
    assert per_step(tl, "forward") == pytest.approx(30 * MS, rel=1e-6)
    assert per_step(tl, "backward") == pytest.approx(20 * MS, rel=1e-6)
    assert per_step(tl, "optimizer") == pytest.approx(2 * MS, rel=1e-6)
    assert per_step(tl, "data") == pytest.approx(0.1 * MS, rel=1e-6)
    assert per_step(tl, "other") == pytest.approx(0.2 * MS, rel=1e-6)
    assert sum(tl.phases.values()) == pytest.approx(tl.wall_s)
    # the step's time is the device's: 52.3 ms, not the host's 2.8 ms of launches
    assert tl.step_times[1] == pytest.approx(52.3 * MS, rel=1e-6)
    # one sync per step; the host waited there for everything it had queued
    assert len(tl.syncs) == 5
    waits = [s[4] for s in tl.syncs]
    assert waits == pytest.approx([(52.1 - 2.6) * MS] * 5, rel=1e-6)


def test_host_clock_alone_charges_the_forward_to_the_sync():
    """The bug this module exists for (Lightning's SimpleProfiler, fastxtend)."""
    loop = Loop()
    for _ in range(5):
        loop.step()
    tl = loop.analyse(device=False)
    assert per_step(tl, "forward") == pytest.approx(1 * MS, rel=1e-6)
    assert per_step(tl, "other") > 45 * MS


def test_input_bound_loop_keeps_its_data_wait():
    loop = Loop()
    for _ in range(6):
        loop.step(data=20.0, fwd=(0.5, 2.0), bwd=(0.5, 3.0), opt=(0.2, 0.5), sync=True)
    tl = loop.analyse()
    step = sum(tl.step_times[1:]) / len(tl.step_times[1:])
    assert per_step(tl, "data") == pytest.approx(20 * MS, rel=1e-6)
    assert per_step(tl, "data") / step > 0.7
    gpu = fields(tl, {"name": "sim"})
    # the device only ran 5.5 ms of each ~25.6 ms step
    assert gpu["idle_in_steps_share"] == pytest.approx(1 - 5.2 / 25.7, abs=0.03)
    assert gpu["idle_s_by_phase"]["data"] == pytest.approx(tl.phases["data"], rel=1e-6)
    assert gpu["syncs_per_step"] == 1


def test_loading_hidden_behind_device_work_is_not_a_stall():
    """No sync: the host asks for the next batch while the device still runs
    the previous backward; that wait overlaps device work, so it is not data."""
    loop = Loop()
    for _ in range(6):
        loop.step(data=5.0, fwd=(0.5, 10.0), bwd=(0.5, 20.0), opt=(0.2, 1.0), sync=False)
    tl = loop.analyse()
    steady = tl.step_phases[2:]
    assert all(sp["data"] == pytest.approx(0.0, abs=1e-9) for sp in steady)
    assert all(sp["forward"] == pytest.approx(10 * MS, rel=1e-6) for sp in steady)
    gpu = fields(tl, {"name": "sim"})
    assert gpu["syncs_per_step"] == 0
    # busy all the time but the first launch: idle is under 5 % of the steps
    assert gpu["idle_in_steps_share"] < 0.05


def test_device_time_by_phase_and_idle_add_up():
    loop = Loop()
    for _ in range(4):
        loop.step(data=3.0)
    tl = loop.analyse()
    gpu = fields(tl, {"name": "sim"})
    for phase, seconds in tl.phases.items():
        busy = gpu["device_s_by_phase"][phase]
        assert busy <= seconds + 1e-12
        assert busy + gpu["idle_s_by_phase"][phase] == pytest.approx(seconds, abs=1e-12)
    assert gpu["device_s_by_phase"]["data"] == 0.0
    # known-busy is a lower bound: the 1 ms the host took to launch the
    # forward is not seen as busy (29 of 30 ms)
    assert gpu["device_s_by_phase"]["forward"] == pytest.approx(4 * 29 * MS, rel=1e-6)
    assert gpu["host_wait_share"] == pytest.approx(
        sum(s[4] for s in tl.syncs) / tl.wall_s, rel=1e-9
    )


def test_launches_that_overlap_device_work_are_busy_in_the_estimate():
    """Host and device about balanced, a sync per step: the forward's kernels run
    while the host is still launching them. At marker resolution that overlap
    looks idle (the lower bound); the estimate fills segments whose closing
    marker lagged."""
    loop = Loop()
    for _ in range(5):
        loop.step(data=0.05, fwd=(1.0, 2.0), bwd=(2.0, 4.0), opt=(1.0, 1.5), py=0.05)
    tl = loop.analyse()
    gpu = fields(tl, {"name": "sim"})
    assert gpu["idle_in_steps_share"] > 0.2  # 2 of 7.6 ms look idle
    assert gpu["idle_in_steps_share_low"] < 0.03  # truly: only data and the Python
    # a launch-bound segment (the device keeps up) stays idle in the estimate
    loop = Loop()
    for _ in range(5):
        loop.step(data=0.05, fwd=(2.0, 0.01), bwd=(2.0, 0.01), opt=(1.0, 0.01), py=0.05)
    gpu = fields(loop.analyse(), {"name": "sim"})
    assert gpu["idle_in_steps_share_low"] > 0.95


def test_completion_times_are_monotone_and_never_before_the_record():
    hosts = [0.0, 1.0, 2.0, 3.0]
    done = [0.5, 0.2, None, 5.0]  # a marker from another stream; one never timed
    assert completion_times(hosts, done) == [0.5, 1.0, 2.0, 5.0]


def test_at_moves_instants_between_markers_within_their_completions():
    dt = DeviceTime.from_markers([0.0, 1.0, 2.0], [0.0, 5.0, 6.0])
    assert dt.at(1.0) == 5.0  # a marker: its completion
    assert dt.at(0.5) == 0.5  # device had caught up with marker 0: the instant itself
    assert dt.at(1.5) == 5.0  # lagging: where marker 1 completed
    assert dt.at(-1.0) == -1.0
    assert dt.at(10.0) == 10.0
    assert [dt.at(x / 10) for x in range(30)] == sorted(dt.at(x / 10) for x in range(30))


def test_busy_intervals_merge_and_measure():
    assert busy_intervals([0, 1, 2, 10], [0, 4, 6, 11]) == [(1, 6), (10, 11)]
    dt = DeviceTime.from_markers([0, 1, 2, 10], [0, 4, 6, 11])
    assert overlap(dt.busy, [(0, 20)]) == 6
    assert overlap(dt.busy, [(3, 5), (5, 10.5)]) == pytest.approx(3.5)


def test_wait_before_a_sync_is_the_lag_of_the_marker_before_it():
    # marker at 1.0 completes at 4.0; the sync returns at 4.0
    dt = DeviceTime.from_markers([0.0, 1.0, 4.0], [0.0, 4.0, 4.0])
    assert dt.wait_before(4.0) == pytest.approx(3.0)
    # the device had caught up: no wait
    dt = DeviceTime.from_markers([0.0, 1.0, 1.5], [0.0, 1.0, 1.5])
    assert dt.wait_before(1.5) == 0.0


def input_bound_markers(steps: int = 10) -> tuple[list[float], list[float], float]:
    """20 ms of loading with the device idle (its markers complete at once),
    then 3 ms of kernels whose closing marker lags; and the busy seconds."""
    hosts: list[float] = []
    done: list[float] = []
    t = 0.0
    for _ in range(steps):
        hosts += [t, t + 20 * MS, t + 20.05 * MS]
        done += [t, t + 20 * MS, t + 23 * MS]
        t += 23.1 * MS
    return hosts, done, steps * 3 * MS


def low_idle(hosts: list[float], done: list[float]) -> float:
    span = [(hosts[0], done[-1])]
    return 1 - overlap(busy_intervals(hosts, done, lag=LAG_S), span) / (done[-1] - hosts[0])


def test_completions_shifted_late_past_lag_hide_an_input_bound_loops_idle():
    """Why the clock's anchor must be read as it is recorded: a shift of
    LAG_S makes every marker look lagging, so every segment counts busy."""
    hosts, done, busy = input_bound_markers()
    truth = 1 - busy / (done[-1] - hosts[0])
    assert low_idle(hosts, done) == pytest.approx(truth, abs=1e-9)
    late = [d + 2 * LAG_S for d in done]
    assert low_idle(hosts, completion_times(hosts, late)) == pytest.approx(0.0, abs=1e-9)


def test_drift_corrected_takes_out_a_linearly_grown_offset():
    hosts, done, _ = input_bound_markers()
    start, end, rate = hosts[0], done[-1] + 1 * MS, 5e-3  # the device's timer runs 0.5 % fast
    drifted = [start + (d - start) * (1 + rate) for d in done]
    measured_end = start + (end - start) * (1 + rate)  # the end calibration's event
    fixed = drift_corrected(drifted, start, measured_end, measured_end - end)
    assert fixed == pytest.approx(done, abs=1e-12)
    assert low_idle(hosts, completion_times(hosts, fixed)) > 0.8 > low_idle(hosts, drifted)
    assert drift_corrected([None, 1.0], 0.0, 0.0, 1.0) == [None, 1.0]  # no span: unchanged
