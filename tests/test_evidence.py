"""The data-loading evidence: the dataset's own time, its transform's, the
collate, and the same measured inside a worker process."""

from __future__ import annotations

import time

import pytest
import torch

from epochmagic.capture import loaders
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


@pytest.mark.fork
def test_loading_cost_inside_a_worker_process():
    loader = torch.utils.data.DataLoader(
        WithTransform(), batch_size=8, num_workers=2, multiprocessing_context="fork"
    )
    inside = loaders.loading_cost_in_worker(loader)
    assert inside is not None and inside["transform_s"] >= 0.0015


@pytest.mark.fork
def test_data_loading_finding_cites_transform_and_workers(ip):
    ip.user_ns["WithTransform"] = WithTransform
    run(
        ip,
        """
import torch, torch.nn as nn
loader = torch.utils.data.DataLoader(WithTransform(), batch_size=8, num_workers=1,
                                     multiprocessing_context="fork")
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


# -- the FLOPs of one training step, as it ran ------------------------------------------
def first_call(module, *args, **kwargs):
    """What the probes record of a training forward: module and input shapes."""
    from epochmagic.capture.batches import signature

    return (module, signature(args), signature(tuple(kwargs.values())), tuple(kwargs))


def linear_flops(batch: int, *shapes: tuple[int, int]) -> int:
    return sum(2 * batch * i * o for i, o in shapes)


class FrozenBody(torch.nn.Module):
    """A big frozen body run under no_grad and a small trained head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
        self.body.requires_grad_(False)
        self.head = torch.nn.Linear(64, 4)

    def forward(self, x):
        with torch.no_grad():
            h = self.body(x)
        return self.head(h)


def test_a_frozen_body_under_no_grad_gets_no_backward():
    from epochmagic.diagnosis.evidence import _flops

    forward, backward = _flops(first_call(FrozenBody(), torch.randn(8, 64)))
    assert forward == linear_flops(8, *[(64, 64)] * 4, (64, 4))
    assert backward == linear_flops(8, (64, 4))  # the head's weight gradient only
    assert forward + backward < 1.1 * forward  # not forward x 3


def test_a_trained_mlp_counts_about_three_forwards():
    from epochmagic.diagnosis.evidence import _flops

    mlp = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.Linear(64, 10)
    )
    forward, backward = _flops(first_call(mlp, torch.randn(8, 32)))
    assert forward == linear_flops(8, (32, 64), (64, 64), (64, 10))
    # weight gradients of every layer, input gradients of all but the first
    assert backward == forward + linear_flops(8, (64, 64), (64, 10))
    assert 2.5 < (forward + backward) / forward <= 3


def test_outputs_in_dicts_and_objects_are_followed():
    from epochmagic.diagnosis.evidence import _flops

    class Output:  # like a Hugging Face ModelOutput's attributes
        def __init__(self, logits, extra):
            self.logits, self.extra, self.note = logits, extra, "text"

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)

        def forward(self, x, mask=None):
            return {"out": Output(self.a(x), [self.b(x), x.long()]), "n": 3}

    forward, backward = _flops(first_call(Model(), torch.randn(4, 16), mask=torch.ones(4)))
    assert forward == linear_flops(4, (16, 8), (16, 8))
    assert backward == linear_flops(4, (16, 8), (16, 8))  # both heads' weight gradients


def test_no_output_needing_a_gradient_means_no_backward():
    from epochmagic.diagnosis.evidence import _flops

    lin = torch.nn.Linear(8, 8).requires_grad_(False)
    assert _flops(first_call(lin, torch.randn(2, 8))) == (linear_flops(2, (8, 8)), 0.0)


def test_the_count_leaves_the_model_and_the_rngs_as_they_were():
    import random

    from epochmagic.diagnosis.evidence import _flops

    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(16, 2),
    )
    model.train()
    model[3].eval()  # a mix of flags, each put back
    model(torch.randn(4, 8)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    stats = (model[1].running_mean.clone(), model[1].running_var.clone())
    batches = int(model[1].num_batches_tracked)
    call = first_call(model, torch.randn(4, 8))
    py, cpu = random.getstate(), torch.get_rng_state()
    forward, backward = _flops(call)  # draws random inputs, then puts the generators back
    assert forward > 0 and backward > 0
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert torch.equal(model[1].running_mean, stats[0])
    assert torch.equal(model[1].running_var, stats[1])
    assert int(model[1].num_batches_tracked) == batches
    assert [m.training for m in model.modules()] == [True, True, True, True, False]
    assert random.getstate() == py and torch.equal(torch.get_rng_state(), cpu)


def test_a_failed_count_is_no_count():
    from epochmagic.diagnosis.evidence import _flops

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("needs a real batch")

    broken = Broken()
    broken.train()
    assert _flops(first_call(broken, torch.randn(2, 2))) is None
    assert broken.training


def test_a_compiled_module_is_counted_without_compiling():
    from torch._dynamo.utils import counters

    from epochmagic.diagnosis.evidence import _flops

    class Outer(torch.nn.Module):  # a compiled submodule runs eagerly too
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.compile(torch.nn.Linear(16, 16), backend="eager")
            self.out = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.out(self.inner(x))

    model = torch.compile(Outer(), backend="eager")
    x = torch.randn(4, 16)
    model(x).sum().backward()  # compiled in training mode, as in the user's epoch
    graphs = counters["stats"]["unique_graphs"]
    forward, backward = _flops(first_call(model, x))
    assert counters["stats"]["unique_graphs"] == graphs
    assert forward == linear_flops(4, (16, 16), (16, 4))
    assert backward == forward + linear_flops(4, (16, 4))
    assert model.training and model._orig_mod.training


def test_the_weights_dtype_is_what_most_parameters_are_in():
    from epochmagic.diagnosis.evidence import _param_dtype

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    assert _param_dtype([model]) == "fp32"
    model[0].to(torch.bfloat16)
    assert _param_dtype([model]) == "bf16"
    assert _param_dtype([model.to(torch.float16)]) == "fp16"
    assert _param_dtype([]) is None


def test_evidence_records_forward_and_backward_flops(ip):
    run(
        ip,
        """
import torch, torch.nn as nn
loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,))), batch_size=16
)
lin = nn.Linear(8, 2).to(torch.bfloat16); sgd = torch.optim.SGD(lin.parameters(), lr=0.1)
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for x, y in loader:
    loss = nn.functional.cross_entropy(lin(x.bfloat16()).float(), y)
    sgd.zero_grad(); loss.backward(); sgd.step()
""",
    )
    ev = ip.user_ns["prof"].evidence
    assert ev["flops_forward"] == ev["flops_backward"] == 2 * 16 * 8 * 2
    assert ev["flops_per_step"] == ev["flops_forward"] + ev["flops_backward"]
    assert ev["flops_batch"] == 16 and ev["param_dtype"] == "bf16"
