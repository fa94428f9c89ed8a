"""The magic on a simulated GPU: device-time phases, sync detection, GPU
findings and what-ifs, through a real IPython shell.

``make_clock`` is replaced by a ``SimClock`` over a real-time simulated
stream (``tests.simdevice``): the cell's model queues "kernels" on it, and
``dev.item(x)`` is a synchronising call. Everything else (probes, session
re-timing, timeline, report, findings) is the code that runs on CUDA.
"""

from __future__ import annotations

import sys
import time

import pytest

from epochmagic.capture import cudaclock
from tests.conftest import run
from tests.simdevice import SimClock, SimStream
from tests.test_cell_shapes import check_phases

SETUP = """
import time, torch, torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

class OnDevice(nn.Module):
    '''A model whose forward queues `kernel_s` seconds of device work.'''
    def __init__(self, kernel_s):
        super().__init__()
        self.lin = nn.Linear(16, 4)
        self.kernel_s = kernel_s
    def forward(self, x):
        dev.stream.launch(self.kernel_s)
        return self.lin(x)

class Slow(Dataset):
    def __init__(self, n, ms):
        self.x, self.y, self.ms = torch.randn(n, 16), torch.randint(0, 4, (n,)), ms
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        time.sleep(self.ms / 1000)
        return self.x[i], self.y[i]

loss_fn = nn.CrossEntropyLoss()
"""

HEAVY = """
model = OnDevice(0.02)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
train_loader = DataLoader(TensorDataset(torch.randn(128, 16), torch.randint(0, 4, (128,))),
                          batch_size=8)
"""

LOOP = """%%epochprofile -o prof --text --no-lines
for xb, yb in train_loader:
    loss = loss_fn(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    seen = dev.item(loss)
"""


@pytest.fixture
def dev(ip, monkeypatch):
    clock = SimClock(SimStream(clock=time.perf_counter))
    monkeypatch.setattr(cudaclock, "make_clock", lambda: clock)
    ip.user_ns["dev"] = clock
    run(ip, SETUP)
    yield clock
    assert not clock.watching, "the sync watch outlived the run"


def test_gpu_heavy_forward_followed_by_a_sync_is_forward(ip, dev):
    run(ip, HEAVY)
    run(ip, LOOP)
    prof = ip.user_ns["prof"]
    check_phases(prof)
    assert prof.steps == 16
    steps = sum(prof.step_times)
    forward = sum(sp["forward"] for sp in prof.step_phases)
    other = sum(sp["other"] for sp in prof.step_phases)
    # the design's rule: the 20 ms of device work is the forward's, although
    # the host spent it waiting in dev.item() (host timing calls it `other`)
    assert forward / steps >= 0.8
    assert other / steps <= 0.10
    gpu = prof.gpu
    assert gpu["name"] == "Simulated GPU" and gpu["timing"] == "device events"
    assert gpu["syncs_per_step"] == pytest.approx(1.0)
    site = gpu["sync_sites"][0]
    assert site["source"] == "seen = dev.item(loss)" and site["count"] == 16
    assert gpu["host_wait_share"] > 0.5  # the host waited in each sync
    assert gpu["idle_in_steps_share"] < 0.2
    assert gpu["device_s_by_phase"]["forward"] > 0.8 * forward
    assert set(gpu) >= {
        "name",
        "idle_share",
        "host_wait_share",
        "device_s_by_phase",
        "tf32",
        "free_bytes",
        "flops_per_step",
        "mfu",
    }
    codes = {f.code for f in prof.findings}
    assert "sync_points" not in codes  # the GPU is never starved: the syncs cost little
    assert "gpu_idle" not in codes
    assert "python_overhead" not in codes
    assert "GPU phases from CUDA events" in " ".join(prof.notes)
    assert "GPU" in prof.text()


def test_input_bound_loop_is_data_and_the_gpu_idles(ip, dev):
    run(
        ip,
        """
model = OnDevice(0.002)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
train_loader = DataLoader(Slow(96, 2.0), batch_size=8)
""",
    )
    run(ip, LOOP)
    prof = ip.user_ns["prof"]
    check_phases(prof)
    steps = sum(prof.step_times)
    assert sum(sp["data"] for sp in prof.step_phases) / steps > 0.6
    gpu = prof.gpu
    assert gpu["idle_in_steps_share"] > 0.6
    assert max(gpu["idle_s_by_phase"], key=gpu["idle_s_by_phase"].get) == "data"
    codes = [f.code for f in prof.findings]
    assert "gpu_idle" in codes and "data_loading" in codes
    idle = next(f for f in prof.findings if f.code == "gpu_idle")
    assert "data" in idle.detail and "data-loading" in idle.fix


def test_syncs_that_starve_the_gpu_are_a_finding(ip, dev):
    """Short kernels, three syncs and some Python per step: the queue drains
    at every sync and the GPU waits for the host."""
    run(ip, HEAVY.replace("OnDevice(0.02)", "OnDevice(0.001)"))
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for xb, yb in train_loader:
    loss = loss_fn(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    a = dev.item(loss)
    b = dev.item(loss)
    c = dev.item(loss)
    dev.stream.host(0.002)
""",
    )
    prof = ip.user_ns["prof"]
    gpu = prof.gpu
    assert gpu["syncs_per_step"] == pytest.approx(3.0)
    assert [s["source"] for s in gpu["sync_sites"]] == [
        "a = dev.item(loss)",
        "b = dev.item(loss)",
        "c = dev.item(loss)",
    ]
    sync = next(f for f in prof.findings if f.code == "sync_points")
    assert "3.0 GPU synchronisations per step" in sync.title
    assert "dev.item(loss)" in sync.detail and ".item()" in sync.fix
    assert 0 < sync.share < 1


def test_what_if_on_the_device_clock_restores_and_reports(ip, dev):
    run(ip, HEAVY)
    run(ip, LOOP)
    prof = ip.user_ns["prof"]
    dev.allocated = 123 * 2**20
    result = prof.rerun(batch_size=16, steps=4)
    assert result.status == "ok" and result.gpu is not None
    assert result.steps == 4 and result.config["batch_size"] == 16
    assert not dev.watching
    unsupported = prof.rerun(pin_memory=True, steps=2)
    assert unsupported.status == "unsupported" and "CPU" in unsupported.error


def test_a_gpu_profile_renders_everywhere_and_round_trips(ip, dev, tmp_path):
    from epochmagic import EpochProfile
    from epochmagic.report.dashboard import Dashboard

    run(ip, HEAVY)
    run(ip, LOOP)
    prof = ip.user_ns["prof"]
    bundle = prof._repr_mimebundle_()
    assert "GPU Simulated GPU" in bundle["text/plain"] and "GPU busy" in bundle["text/plain"]
    assert "GPU busy s" in bundle["text/html"] and bundle["image/png"]
    assert "Simulated GPU" in Dashboard(prof).widget.children[0].value
    page = prof.to_html(tmp_path / "gpu.html").read_text()
    assert "idle" in page and "syncs/step" in page
    back = EpochProfile.load(prof.save(tmp_path / "gpu.json"))
    assert back.gpu == prof.gpu


def test_transfers_record_bytes_pinned_and_non_blocking():
    """Any device other than the CPU counts; ``meta`` stands in for CUDA here."""
    import torch

    from epochmagic.capture import recorder as r
    from epochmagic.capture.probes import Probes
    from epochmagic.capture.recorder import Recorder

    rec = Recorder()
    x = torch.zeros(4, 8)
    with Probes(rec, watch_transfers=True) as probes:
        rec.begin()
        x.to("meta", non_blocking=True)
        x.to("meta")
        x.to(torch.float64)  # stays on the CPU: not a transfer
        rec.finish()
    count, size, pinned, non_blocking = probes.transfers
    assert (count, size, pinned, non_blocking) == (2, 2 * 128, 0, 128)
    kinds = [e[1] for e in rec.events]
    assert kinds.count(r.XFER_ENTER) == kinds.count(r.XFER_EXIT) == 2


def test_non_blocking_flag_in_every_spelling():
    from epochmagic.capture.batches import non_blocking

    assert non_blocking((), {"non_blocking": True})
    assert not non_blocking(("cuda",), {})
    assert non_blocking(("cuda", None, True), {})  # to(device, dtype, non_blocking)
    assert non_blocking((0, True), {})  # cuda(device, non_blocking)
    assert not non_blocking(("cuda",), {"non_blocking": False, "copy": True})


def test_modules_and_lines_on_the_device_clock(ip, dev):
    """--modules' layer spans and gradient marks move to device time too, and
    the sampled lines are moved onto the same clock."""
    run(ip, HEAVY)
    run(ip, LOOP.replace("--no-lines", "--modules"))
    prof = ip.user_ns["prof"]
    check_phases(prof)
    layers = dict((n, s) for n, s, _ in prof.evidence["module_forward_s"])
    assert any("lin" in n for n in layers)
    assert all(s >= 0 for s in layers.values())
    assert prof.evidence["module_backward_s"]
    assert prof.lines and any("dev.item(loss)" in ls.source for ls in prof.lines)


def test_a_device_that_fails_leaves_the_host_timeline(ip, dev):
    """A device-side error at the end (an assert in a kernel): phases fall
    back to host time, the profile says so, nothing breaks."""

    def broken():
        dev.stream.wait()
        dev.error = "RuntimeError: CUDA error: device-side assert triggered"
        return None

    dev.finish = broken
    run(ip, HEAVY)
    run(ip, LOOP)
    prof = ip.user_ns["prof"]
    check_phases(prof)
    assert prof.gpu["timing"] == "host clock" and prof.gpu["device_s_by_phase"] is None
    assert prof.gpu["syncs_per_step"] == pytest.approx(1.0)
    assert any("device timing failed" in n for n in prof.notes)
    assert not {"sync_points", "gpu_idle", "transfer"} & {f.code for f in prof.findings}


def test_an_explicit_synchronize_is_a_sync_at_its_line(ip, dev, monkeypatch):
    import torch

    # what torch.cuda.synchronize does on a GPU: wait until the stream is drained
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: dev.stream.wait())
    run(ip, HEAVY)
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for xb, yb in train_loader:
    loss = loss_fn(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    torch.cuda.synchronize()
""",
    )
    gpu = ip.user_ns["prof"].gpu
    assert gpu["syncs_per_step"] == pytest.approx(1.0)
    assert gpu["sync_sites"][0]["source"] == "torch.cuda.synchronize()"
    # the host waited there for the forward's 20 ms, read exactly from the call's start
    assert gpu["sync_sites"][0]["wait_s"] / 16 > 0.015


def test_an_error_in_the_cell_leaves_nothing_of_the_device_clock(ip, dev):
    """The user's exception reaches them; the sync watch, the ``Tensor.item``
    and ``torch.cuda.synchronize`` patches are gone (the leak fixture checks
    the patches, this test the clock's own watch)."""
    run(ip, HEAVY)
    result = run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for i, (xb, yb) in enumerate(train_loader):
    loss = loss_fn(model(xb), yb)
    loss.backward(); opt.step()
    dev.item(loss)
    if i == 3:
        raise ValueError("bad batch")
""",
        ok=False,
    )
    assert isinstance(result.error_in_exec, ValueError)
    assert not dev.watching
    prof = ip.user_ns["prof"]
    assert prof.status == "error" and prof.gpu is not None and prof.steps == 4


def test_a_sync_after_leading_blank_lines_is_found_at_its_own_line(ip, dev):
    """The cell body starts with a blank line (IPython drops it before
    compiling): the sync must still be reported at `seen = dev.item(loss)`,
    not at the line above it."""
    run(ip, HEAVY)
    run(ip, LOOP.replace("--no-lines\n", "--no-lines\n\n"))
    site = ip.user_ns["prof"].gpu["sync_sites"][0]
    assert site["source"] == "seen = dev.item(loss)"
    assert site["lineno"] == 6  # the magic line, the blank line, then the loop's four


COPY_LOOP = """%%epochprofile -o prof --text --no-lines
for xb, yb in train_loader:
    staged = xb.to("meta")
    loss = loss_fn(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
"""


def blocking_copies(dev, monkeypatch, copy_s: float) -> None:
    """``Tensor.to("meta")`` behaves as a blocking pageable copy to the GPU:
    the host waits for everything queued, then for ``copy_s`` of copying, and
    torch's sync debug mode reports it at the caller's line while the copy is
    still inside ``to`` (so before the probe knows a copy began)."""
    import torch

    from epochmagic.capture.syncwatch import caller_outside

    original_to = torch.Tensor.to

    def to(t, *args, **kwargs):
        if args and args[0] == "meta":
            dev.stream.wait()
            dev.stream.launch(copy_s)
            dev.stream.wait()
            if dev.on_sync is not None:
                dev.on_sync(*caller_outside(sys._getframe(1)))
        return original_to(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)


def test_a_blocking_pageable_copy_is_transfer_not_other(ip, dev, monkeypatch):
    """``xb.to(device)`` without non_blocking from pageable memory: the copy's
    time is ``transfer``; the wait for the forward's kernels queued before it
    is ``forward``; nothing of it is ``other``."""
    blocking_copies(dev, monkeypatch, 0.004)
    run(ip, HEAVY.replace("OnDevice(0.02)", "OnDevice(0.008)"))
    run(ip, COPY_LOOP)
    prof = ip.user_ns["prof"]
    check_phases(prof)
    per_step = {k: sum(sp[k] for sp in prof.step_phases) / prof.steps for k in prof.phases}
    assert per_step["transfer"] >= 0.0035  # the 4 ms copy
    assert per_step["forward"] >= 0.007  # the 8 ms of kernels the copy waited for
    assert per_step["other"] < 0.002
    assert prof.gpu["blocking_copies_per_step"] == pytest.approx(1.0)
    assert prof.gpu["transfer"]["copies"] == prof.steps


def test_blocking_copies_are_found_at_their_line(ip, dev, monkeypatch):
    """A blocking copy is a sync site of its own kind: its line is in
    ``copy_sites`` (and cited by the transfer finding), not among the calls."""
    blocking_copies(dev, monkeypatch, 0.006)
    run(ip, HEAVY.replace("OnDevice(0.02)", "OnDevice(0.002)"))
    run(ip, COPY_LOOP)
    gpu = ip.user_ns["prof"].gpu
    assert gpu["copy_sites"][0]["source"] == 'staged = xb.to("meta")'
    assert gpu["copy_sites"][0]["lineno"] == 3
    assert gpu["syncs_per_step"] == 0 and not gpu["sync_sites"]
    found = next(f for f in ip.user_ns["prof"].findings if f.code == "transfer")
    assert 'staged = xb.to("meta")' in found.detail


def test_every_spelling_of_a_host_to_device_copy_is_a_transfer(monkeypatch):
    """``.to(device)``, ``.to(device, dtype)``, ``.to(device=...)``, ``.cuda()``
    and batches that are dicts, tuples or dataclasses moved field by field:
    each copy is one transfer. ``meta`` stands in for the GPU."""
    import dataclasses

    import torch

    from epochmagic.capture import recorder as r
    from epochmagic.capture.probes import Probes
    from epochmagic.capture.recorder import Recorder

    original_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "cuda", lambda t, *a, **k: original_to(t, "meta"))

    @dataclasses.dataclass
    class Batch:
        x: torch.Tensor
        y: torch.Tensor

        def to(self, device):
            return Batch(self.x.to(device), self.y.to(device))

    x, y = torch.zeros(4, 8), torch.zeros(4, dtype=torch.long)
    rec = Recorder()
    with Probes(rec, watch_transfers=True) as probes:
        rec.begin()
        x.to("meta")  # 1
        x.to("meta", torch.float64)  # 2
        x.to(device="meta", non_blocking=True)  # 3
        x.cuda()  # 4
        {k: v.to("meta") for k, v in {"x": x, "y": y}.items()}  # 5, 6
        tuple(t.to("meta") for t in (x, y))  # 7, 8
        Batch(x, y).to("meta")  # 9, 10
        x.to(torch.float64)  # stays on the CPU: not a transfer
        rec.finish()
    count, size, _, non_blocking = probes.transfers
    assert count == 10
    assert size == 4 * 128 + 3 * (128 + 32)  # x is 128 bytes, y 32
    assert non_blocking == 4 * 8 * 4
    kinds = [e[1] for e in rec.events]
    assert kinds.count(r.XFER_ENTER) == kinds.count(r.XFER_EXIT) == 10


def test_sampled_lines_mark_the_host_waiting_at_its_sync_line(ip, dev):
    """A sample taken while the host waits in a sync is marked as waiting, and
    its line is the sync's: the cell line that called `.item()`. Waiting is a
    mark on the samples, never a phase of its own."""
    run(ip, HEAVY)
    run(ip, LOOP.replace("--no-lines", "--lines sampled"))
    prof = ip.user_ns["prof"]
    check_phases(prof)
    assert prof.lines_source == "sampled", prof.notes
    cell_lines = [ls for ls in prof.lines if ls.filename.startswith("Cell In[")]
    waiting = max(cell_lines, key=lambda ls: ls.wait_ticks)
    assert waiting.source.strip() == "seen = dev.item(loss)", cell_lines
    assert waiting.wait_ticks >= 0.5 * waiting.ticks > 0, waiting
    assert set(waiting.phase_ticks) <= set(prof.phases)  # no "wait" phase
    others = [ls for ls in cell_lines if ls is not waiting and "for xb" not in ls.source]
    # a tick right at a wait's end may land on the next line: rare, never the bulk
    assert sum(ls.wait_ticks for ls in others) <= 0.2 * waiting.wait_ticks, others
