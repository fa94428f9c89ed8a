"""What-ifs: measured re-runs that leave the user's work exactly as it was."""

from __future__ import annotations

import multiprocessing
import random

import pytest
import torch

from epochmagic import EpochProfile
from tests.conftest import run

SETUP = """
import torch, torch.nn as nn, random
import numpy as np
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
ds = TensorDataset(torch.randn(512, 8), torch.randint(0, 3, (512,)))
g = torch.Generator().manual_seed(7)
train_loader = DataLoader(ds, batch_size=16, shuffle=True, generator=g)
net = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
adam = torch.optim.Adam(net.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(adam, 10)
"""

CELL = """%%epochprofile -o prof --text --no-lines
for epoch in range(3):
    for xb, yb in train_loader:
        if xb.shape[0] > BIG:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        loss = nn.functional.cross_entropy(net(xb), yb)
        adam.zero_grad(); loss.backward(); adam.step(); sched.step()
        print("step")
"""


def state(ns) -> dict:
    return {
        "params": [t.detach().clone() for t in [*ns["net"].parameters(), *ns["net"].buffers()]],
        "training": [m.training for m in ns["net"].modules()],
        "opt": [{k: v.clone() for k, v in s.items()} for s in ns["adam"].state.values()],
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in ns["adam"].param_groups],
        "sched": ns["sched"].state_dict(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "gen": ns["g"].get_state(),
        "loader": (ns["train_loader"].batch_size, ns["train_loader"].num_workers),
    }


def same(a: dict, b: dict) -> bool:
    for key in a:
        x, y = a[key], b[key]
        if key == "params":
            assert all(torch.equal(u, v) for u, v in zip(x, y)), key
        elif key == "opt":
            assert all(torch.equal(s1[k], s2[k]) for s1, s2 in zip(x, y) for k in s1), key
        elif key in ("torch", "gen"):
            assert torch.equal(x, y), key
        else:
            assert x == y, key
    return True


@pytest.fixture
def base(ip):
    run(ip, SETUP + "\nBIG = 10_000\n")
    run(ip, CELL)
    return ip.user_ns["prof"]


def test_rerun_measures_and_restores(ip, base, capsys):
    capsys.readouterr()
    before = state(ip.user_ns)
    r = base.rerun(batch_size=64, steps=5)
    assert r.status == "ok" and r.steps == 5
    assert r.config["batch_size"] == 64 and r.steps_per_epoch == 8
    assert r.samples == 5 * 64
    assert r.epoch_s is not None and r.predicted["epoch_s"] is not None
    assert "step" in r.output and "step\n" not in capsys.readouterr().out
    assert same(before, state(ip.user_ns))


def test_twenty_random_what_ifs_leave_everything_bit_identical(ip, base):
    rng = random.Random(0)
    before = state(ip.user_ns)
    statuses = set()
    for _ in range(20):
        choice = {
            "batch_size": rng.choice([None, 8, 32, 128]),
            "workers": rng.choice([None, 0, 2]),
            "precision": rng.choice([None, "fp32", "bf16"]),
            "threads": rng.choice([None, 1]),
        }
        ip.user_ns["BIG"] = rng.choice([10_000, 40])  # batch 128 runs out of "memory"
        r = base.rerun(steps=3, **choice)
        statuses.add(r.status)
        assert same(before, state(ip.user_ns))
        assert not multiprocessing.active_children()
    assert "ok" in statuses and "oom" in statuses


def test_oom_is_a_status_and_the_session_goes_on(ip, base):
    ip.user_ns["BIG"] = 32
    before = state(ip.user_ns)
    r = base.rerun(batch_size=64, steps=3)
    assert r.status == "oom" and "out of memory" in r.error
    assert same(before, state(ip.user_ns))
    ip.user_ns["BIG"] = 10_000
    assert base.rerun(steps=2).status == "ok"


def test_workers_start_and_stop(ip, base):
    r = base.rerun(workers=2, threads=1, steps=6)
    assert r.status == "ok" and r.config["workers"] == 2 and r.config["threads"] == 1
    assert not multiprocessing.active_children()
    assert torch.get_num_threads() == 1  # the test session's own setting, restored


def test_users_loader_and_generator_are_untouched(ip, base):
    loader = ip.user_ns["train_loader"]
    gen_state = loader.generator.get_state()
    base.rerun(batch_size=32, workers=0, steps=4)
    assert ip.user_ns["train_loader"] is loader and loader.batch_size == 16
    assert torch.equal(loader.generator.get_state(), gen_state)


def test_precision_bf16_on_cpu(ip, base):
    r = base.rerun(precision="bf16", steps=4)
    assert r.status == "ok" and r.config["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        base.rerun(precision="int8")


def test_fused_copy_leaves_the_users_optimizer_alone(ip, base):
    adam = ip.user_ns["adam"]
    r = base.rerun(fused=True, steps=4)
    assert r.status == "ok" and r.config["fused"] is True
    assert ip.user_ns["adam"] is adam
    assert not adam.param_groups[0]["fused"]


def test_sweep_ranks_fastest_first_with_unsupported_last(ip, base):
    results = base.sweep(batch_size=[16, 64], precision=["fp32", "fp16"], steps=3)
    assert len(results) == 4
    times = [r.epoch_s for r in results if r.status == "ok"]
    assert times == sorted(times)


def test_settings_that_do_not_apply_say_why(ip):
    run(
        ip,
        """
import torch, torch.nn as nn
X = torch.randn(256, 4); Y = torch.randn(256, 1)
lin = nn.Linear(4, 1); sgd = torch.optim.SGD(lin.parameters(), lr=0.1)
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for i in range(0, 256, 16):
    loss = ((lin(X[i:i+16]) - Y[i:i+16]) ** 2).mean()
    sgd.zero_grad(); loss.backward(); sgd.step()
""",
    )
    prof = ip.user_ns["prof"]
    r = prof.rerun(batch_size=64)
    assert r.status == "unsupported" and "no training DataLoader" in r.error
    assert prof.rerun(precision="bf16", steps=4).status == "ok"


def test_custom_batch_sampler_fixes_the_batch_size(ip):
    run(
        ip,
        """
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset, BatchSampler, SequentialSampler
ds = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
bl = DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 8, False))
lin = nn.Linear(4, 1); sgd = torch.optim.SGD(lin.parameters(), lr=0.1)
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for epoch in range(2):
    for x, y in bl:
        loss = ((lin(x) - y) ** 2).mean(); sgd.zero_grad(); loss.backward(); sgd.step()
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.config["batch_size"] == 8
    r = prof.rerun(batch_size=16)
    assert r.status == "unsupported" and "batch_sampler" in r.error
    assert prof.rerun(workers=2, steps=3).status == "ok"


def test_iterable_dataset_workers_need_sharding(ip):
    run(
        ip,
        """
import torch, torch.nn as nn
from torch.utils.data import DataLoader, IterableDataset
class Stream(IterableDataset):
    def __iter__(self):
        for i in range(64):
            yield torch.randn(4), torch.randn(1)
sl = DataLoader(Stream(), batch_size=8)
lin = nn.Linear(4, 1); sgd = torch.optim.SGD(lin.parameters(), lr=0.1)
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for epoch in range(2):
    for x, y in sl:
        loss = ((lin(x) - y) ** 2).mean(); sgd.zero_grad(); loss.backward(); sgd.step()
""",
    )
    prof = ip.user_ns["prof"]
    r = prof.rerun(workers=2)
    assert r.status == "unsupported" and "get_worker_info" in r.error
    assert prof.rerun(batch_size=16, steps=2).status == "ok"


def test_spawned_workers_cannot_import_a_notebook_dataset(ip, monkeypatch):
    from epochmagic.capture import loaders

    # as on macOS / Windows, or Linux from Python 3.14 (forkserver)
    monkeypatch.setattr(
        loaders.multiprocessing, "get_start_method", lambda allow_none=False: "spawn"
    )
    run(
        ip,
        """
import torch, torch.nn as nn
from torch.utils.data import DataLoader, Dataset
class NbData(Dataset):
    def __len__(self): return 32
    def __getitem__(self, i): return torch.randn(4), torch.randn(1)
spawn_loader = DataLoader(NbData(), batch_size=8)
lin = nn.Linear(4, 1); sgd = torch.optim.SGD(lin.parameters(), lr=0.1)
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for epoch in range(2):
    for x, y in spawn_loader:
        loss = ((lin(x) - y) ** 2).mean(); sgd.zero_grad(); loss.backward(); sgd.step()
""",
    )
    r = ip.user_ns["prof"].rerun(workers=2)
    assert r.status == "unsupported" and "spawn" in r.error and "notebook" in r.error


def test_cpu_memory_estimate_refuses_a_batch_that_would_not_fit(ip, base, monkeypatch):
    from epochmagic.whatif import changes

    base.memory["peak_bytes"] = max(base.memory["per_step_bytes"]) + 2**30  # 1 GiB per batch
    monkeypatch.setattr(changes, "available_memory", lambda: 2 * 2**30)
    r = base.rerun(batch_size=16 * 64)
    assert r.status == "unsupported" and "GiB" in r.error
    assert r.predicted["peak_bytes"] > base.memory["peak_bytes"] + 2**30


def test_predicted_peak_memory_scales_what_a_step_adds():
    from epochmagic.diagnosis import predict

    prof = EpochProfile(
        memory={"kind": "cuda", "peak_bytes": 3 * 2**30, "per_step_bytes": [2**30, 2**30]},
        config={"batch_size": 32},
    )
    assert predict.peak_bytes(prof, {"batch_size": 64}) == 5 * 2**30  # 1 GiB held + 2 x 2
    assert predict.peak_bytes(prof, {"batch_size": 32}) == 3 * 2**30
    assert predict.peak_bytes(EpochProfile(config={"batch_size": 32}), {"batch_size": 64}) is None


def test_loaded_profile_cannot_rerun(base, tmp_path):
    loaded = EpochProfile.load(base.save(tmp_path / "p.json"))
    with pytest.raises(RuntimeError, match="no cell to re-run"):
        loaded.rerun(workers=2)


def test_magic_first_run_under_a_setting(ip):
    run(ip, SETUP + "\nBIG = 10_000\n")
    loader = ip.user_ns["train_loader"]
    run(ip, CELL.replace("--no-lines", "--no-lines --batch-size 64 --precision bf16"))
    prof = ip.user_ns["prof"]
    assert prof.config["batch_size"] == 64 and prof.steps == prof.steps_per_epoch == 8
    assert prof.config["precision"] == "bf16"
    assert ip.user_ns["train_loader"] is loader and loader.batch_size == 16
    r = prof.rerun(workers=0, steps=3)  # keeps batch 64: None means the profile's value
    assert r.config["batch_size"] == 64 and r.steps_per_epoch == 8


def test_magic_what_if_needs_to_know_the_loader(ip):
    run(ip, SETUP + "\nBIG = 10_000\ntrain_loader_small = DataLoader(ds, batch_size=4)\n")
    result = run(ip, CELL.replace("--no-lines", "--no-lines --workers 2"), ok=False)
    assert "--loader" in str(result.error_in_exec)
    run(ip, CELL.replace("--no-lines", "--no-lines --workers 2 --loader train_loader"))
    assert ip.user_ns["prof"].config["workers"] == 2
    assert not multiprocessing.active_children()


SHAPES = {
    "functions": (
        """
def train_loop(dataloader, model, optimizer):
    for X, y in dataloader:
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward(); optimizer.step(); optimizer.zero_grad()
""",
        "for t in range(3):\n    train_loop(train_loader, net, adam)\n",
    ),
    "tqdm": (
        "from tqdm.auto import tqdm\n",
        "for epoch in range(3):\n    for i, (xb, yb) in enumerate(tqdm(train_loader)):\n"
        "        loss = nn.functional.cross_entropy(net(xb), yb)\n"
        "        adam.zero_grad(); loss.backward(); adam.step()\n",
    ),
    "two_optimizers": (
        "head = nn.Linear(3, 3)\nsgd = torch.optim.SGD(head.parameters(), lr=0.1)\n",
        "for epoch in range(3):\n    for xb, yb in train_loader:\n"
        "        loss = nn.functional.cross_entropy(head(net(xb)), yb)\n"
        "        adam.zero_grad(); sgd.zero_grad(); loss.backward(); adam.step(); sgd.step()\n",
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_what_ifs_on_the_core_cell_shapes(ip, shape):
    setup, cell = SHAPES[shape]
    run(ip, SETUP + setup)
    run(ip, "%%epochprofile -o prof --text --no-lines\n" + cell)
    prof = ip.user_ns["prof"]
    before = state(ip.user_ns)
    for kw in ({"batch_size": 64}, {"workers": 2}, {"precision": "bf16"}):
        r = prof.rerun(steps=3, **kw)
        assert r.status == "ok" and r.steps == 3, (kw, r.error)
        assert same(before, state(ip.user_ns))
    assert prof.rerun(batch_size=64, steps=3).steps_per_epoch == 8


def test_trying_a_findings_suggestion_measures_its_saving(ip, base):
    """The Try it of a finding is ``rerun(**suggestion)``: afterwards the
    finding carries the measured saving and the findings re-rank."""
    from epochmagic.model.profile import Finding

    base.findings = [
        Finding(
            "small_batch", "t", "", 0.5, {"batch_size": 64}, saving=0.1, saving_source="predicted"
        ),
        *base.findings,
    ]
    r = base.rerun(batch_size=64, steps=4)
    assert r.status == "ok"
    tried = next(f for f in base.findings if f.title == "t")  # the one planted here
    assert tried.saving_source == "measured"
    assert tried.saving == pytest.approx(1 - r.epoch_s / base.epoch_s)
    numbers = [f.saving for f in base.findings if f.saving is not None and f.saving >= 0]
    assert numbers == sorted(numbers, reverse=True)
