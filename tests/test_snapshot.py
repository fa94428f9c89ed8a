"""Snapshot/restore leaves models, optimizers, schedulers, scalers, RNGs and
loaders bit-identical, whatever the run in between did."""

from __future__ import annotations

import ast
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from epochmagic.session.snapshot import Snapshot, rebound_names, unrestorable


def state_of(model, opt, sched, scaler, loader) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "training": [m.training for m in model.modules()],
        "opt": {
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in enumerate(opt.state.values())
        },
        "lr": [g["lr"] for g in opt.param_groups],
        "sched": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
        "np_rng": np.random.get_state()[1].copy(),
        "gen": loader.generator.get_state(),
    }


def assert_same(a: dict, b: dict) -> None:
    for key in a:
        x, y = a[key], b[key]
        if key in ("params", "grads", "buffers"):
            assert len(x) == len(y)
            for u, v in zip(x, y):
                assert (u is None and v is None) or torch.equal(u, v), key
        elif key == "opt":
            assert x.keys() == y.keys()
            for i in x:
                for k in x[i]:
                    u, v = x[i][k], y[i][k]
                    assert torch.equal(u, v) if torch.is_tensor(u) else u == v, (key, k)
        elif key in ("torch_rng", "gen"):
            assert torch.equal(x, y), key
        elif key == "np_rng":
            assert (x == y).all()
        else:
            assert x == y, key


@pytest.fixture
def world():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    gen = torch.Generator().manual_seed(3)
    loader = DataLoader(
        TensorDataset(torch.randn(64, 4), torch.randn(64, 2)),
        batch_size=8,
        shuffle=True,
        generator=gen,
    )

    def train(steps: int) -> None:
        for i, (x, y) in enumerate(loader):
            if i == steps:
                break
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()

    train(3)  # optimizer state and grads exist before the snapshot
    ns = {"model": model, "opt": opt, "sched": sched, "scaler": scaler, "loader": loader}
    return ns, train


def test_restore_is_bit_identical_after_training(world):
    ns, train = world
    before = state_of(ns["model"], ns["opt"], ns["sched"], ns["scaler"], ns["loader"])
    snap = Snapshot.take(
        ns, set(), modules=[ns["model"]], optimizers=[ns["opt"]], loaders=[ns["loader"]]
    )
    train(5)
    ns["model"].eval()
    random.random()
    np.random.rand()
    snap.restore()
    assert_same(before, state_of(ns["model"], ns["opt"], ns["sched"], ns["scaler"], ns["loader"]))
    train(1)  # and everything still trains


def test_restore_after_an_exception_midway(world):
    ns, train = world
    before = state_of(ns["model"], ns["opt"], ns["sched"], ns["scaler"], ns["loader"])
    snap = Snapshot.take(ns, set())
    try:
        train(2)
        raise RuntimeError("boom")
    except RuntimeError:
        pass
    finally:
        snap.restore()
    assert_same(before, state_of(ns["model"], ns["opt"], ns["sched"], ns["scaler"], ns["loader"]))


def test_rebound_names_are_put_back_and_new_ones_removed(world):
    ns, _ = world
    model = ns["model"]
    snap = Snapshot.take(ns, {"model", "fresh"})
    ns["model"] = torch.nn.Linear(1, 1)
    ns["fresh"] = 1
    snap.restore()
    assert ns["model"] is model and "fresh" not in ns


def test_references_stay_valid(world):
    """Restoring copies into the same tensors: the optimizer still steps them."""
    ns, train = world
    params = list(ns["model"].parameters())
    snap = Snapshot.take(ns, set())
    train(2)
    snap.restore()
    assert all(a is b for a, b in zip(params, ns["model"].parameters()))
    assert all(p is q for p, q in zip(params, ns["opt"].param_groups[0]["params"]))


def test_attributes_rebound_on_plain_objects_are_restored():
    class Net:
        def __init__(self) -> None:
            self.module_ = torch.nn.Linear(1, 1)
            self.history = [1]

    net = Net()
    old = net.module_
    snap = Snapshot.take({"net": net}, set())
    net.module_ = torch.nn.Linear(2, 2)
    net.history = []
    net.extra = 5
    snap.restore()
    assert net.module_ is old and net.history == [1] and not hasattr(net, "extra")


def test_rebound_names_from_ast():
    tree = ast.parse(
        "import numpy as np\nfrom os import path\nx = 1\nfor i in range(3):\n    y = i\n"
        "def f():\n    z = 1\nclass C: pass\nwith open('f') as fh: pass\n(a := 2)\n"
    )
    assert rebound_names(tree) >= {"np", "path", "x", "i", "y", "f", "C", "fh", "a"}
    assert "z" not in rebound_names(tree)


def test_unrestorable_names_library_trainers():
    assert unrestorable({"x": 1}) is None
    ignite = pytest.importorskip("ignite.engine")
    engine = ignite.Engine(lambda e, b: None)
    assert "Ignite" in unrestorable({"trainer": engine})
