"""The data-loading evidence: the dataset's own time, its transform's, the
collate, and the same measured inside a worker process."""

from __future__ import annotations

import time

import torch

from epochmagic import loaders
from tests.conftest import run


class Slowish:
    """A transform that takes a known time per sample."""

    def __call__(self, x):
        time.sleep(0.002)
        return x * 2


class WithTransform(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.transform = Slowish()

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i):
        x = torch.full((4,), float(i))
        if self.transform is not None:
            x = self.transform(x)
        return x, i % 2


def test_loading_cost_separates_the_transform_and_puts_it_back():
    ds = WithTransform()
    transform = ds.transform
    cost = loaders.loading_cost(torch.utils.data.DataLoader(ds, batch_size=8))
    assert cost["transform_s"] >= 0.0015  # the 2 ms sleep, less timer noise
    assert cost["per_sample_s"] >= cost["transform_s"]
    assert ds.transform is transform


def test_loading_cost_inside_a_worker_process():
    loader = torch.utils.data.DataLoader(WithTransform(), batch_size=8, num_workers=2)
    inside = loaders.loading_cost_in_worker(loader)
    assert inside is not None and inside["transform_s"] >= 0.0015


def test_data_loading_finding_cites_transform_and_workers(ip):
    ip.user_ns["WithTransform"] = WithTransform
    run(
        ip,
        """
import torch, torch.nn as nn
loader = torch.utils.data.DataLoader(WithTransform(), batch_size=8, num_workers=1)
lin = nn.Linear(4, 2); sgd = torch.optim.SGD(lin.parameters(), lr=0.1)
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for epoch in range(2):
    for x, y in loader:
        loss = nn.functional.cross_entropy(lin(x), y); sgd.zero_grad(); loss.backward(); sgd.step()
""",
    )
    prof = ip.user_ns["prof"]
    f = next(f for f in prof.findings if f.code == "data_loading")
    assert "its transform takes" in f.detail and "inside a worker process" in f.detail
