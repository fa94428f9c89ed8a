"""Library-owned training loops under ``%%epochprofile``, with no change to the
user's training code (docs/design.md §2, "What one epoch is").

Each test runs a real library loop (Lightning, skorch, Accelerate, Ignite) for
several epochs inside the magic and checks that exactly one epoch ran, that the
steps are the training loader's batches, and that the phases add up.
"""

from __future__ import annotations

import pytest
from conftest import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHASES = {"data", "transfer", "forward", "backward", "optimizer", "eval", "other"}


def _check_common(prof, *, stop_reason: str = "epoch") -> None:
    assert prof.status == "ok", prof.error
    assert prof.stop_reason == stop_reason
    assert set(prof.phases) == PHASES
    assert all(v >= 0 for v in prof.phases.values()), prof.phases
    assert sum(prof.phases.values()) == pytest.approx(prof.wall_s, abs=1e-9)
    assert prof.epoch_s == prof.wall_s  # a complete epoch: nothing extrapolated
    assert len(prof.step_times) == prof.steps
    assert len(prof.step_phases) == prof.steps
    for sp, st in zip(prof.step_phases, prof.step_times):
        assert sum(sp.values()) == pytest.approx(st, abs=1e-9)
    assert prof.phases["forward"] > 0
    assert prof.phases["backward"] > 0
    assert prof.phases["optimizer"] > 0


def test_lightning_trainer_fit(ip):
    pytest.importorskip("lightning")
    run(
        ip,
        """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import lightning.pytorch as pl

torch.manual_seed(0)
train_ds = TensorDataset(torch.randn(256, 16), torch.randint(0, 3, (256,)))
val_ds = TensorDataset(torch.randn(64, 16), torch.randint(0, 3, (64,)))
train_loader = DataLoader(train_ds, batch_size=32, shuffle=True)
val_loader = DataLoader(val_ds, batch_size=32)

class LitModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
        self.loss = nn.CrossEntropyLoss()
        self.epochs_started = 0
        self.epochs_ended = 0
        self.train_batches = 0
        self.val_batches = 0

    def forward(self, x):
        return self.net(x)

    def on_train_epoch_start(self):
        self.epochs_started += 1

    def on_train_epoch_end(self):
        self.epochs_ended += 1

    def training_step(self, batch, batch_idx):
        self.train_batches += 1
        x, y = batch
        return self.loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1
        x, y = batch
        self.loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

lit = LitModel()
trainer = pl.Trainer(
    accelerator="cpu",
    devices=1,
    max_epochs=3,
    enable_checkpointing=False,
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=2,
)
""",
    )
    run(
        ip, "%%epochprofile -o prof --text --no-lines\ntrainer.fit(lit, train_loader, val_loader)\n"
    )
    ns = ip.user_ns
    prof, lit, trainer = ns["prof"], ns["lit"], ns["trainer"]
    _check_common(prof)
    n = len(ns["train_loader"])  # 8
    # Only the first epoch trained: the cell stopped when epoch 2 called
    # iter(train_loader). Lightning's fit loop runs on_train_epoch_start of the
    # next epoch *before* it iterates the loader, so that hook ran twice; by
    # docs/design.md §2: the epoch ends at the loader's second pass, so this is expected.
    assert lit.epochs_ended == 1
    assert lit.epochs_started == 2
    assert trainer.current_epoch == 1  # epochs completed
    assert trainer.global_step == n
    assert lit.train_batches == n
    # The sanity check (2 batches) and the end-of-epoch validation (2 batches) ran.
    assert lit.val_batches == 2 + len(ns["val_loader"])
    # With a sized loader Lightning's _PrefetchDataFetcher does not read ahead
    # (it knows len()), and it stops after len(loader) batches without a
    # StopIteration ask: exactly one step per batch. The sanity check's val
    # pass comes before the first step, the validation after the last.
    assert prof.steps == n
    assert prof.steps_per_epoch == n
    assert prof.samples == len(ns["train_ds"])
    assert prof.step_clock == "loader"
    assert prof.training_loader == "train_loader"
    assert prof.phases["eval"] > 0


def test_skorch_fresh_loader_each_epoch(ip):
    pytest.importorskip("skorch")
    run(
        ip,
        """
import numpy as np
import torch
from torch import nn
from skorch import NeuralNetClassifier

rng = np.random.default_rng(0)
X = rng.standard_normal((300, 20)).astype(np.float32)
y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x):
        return self.net(x)

net = NeuralNetClassifier(
    MLP,
    criterion=nn.CrossEntropyLoss,
    max_epochs=5,
    lr=0.1,
    batch_size=32,
    verbose=0,
)
""",
    )
    run(ip, "%%epochprofile -o prof --text --no-lines\nnet.fit(X, y)\n")
    ns = ip.user_ns
    prof, net = ns["prof"], ns["net"]
    _check_common(prof)
    # skorch's default train_split is a 5-fold stratified split: 240 train, 60 valid.
    # It builds a new DataLoader for every epoch over the same Dataset object;
    # the second one counts as the training loader's second pass.
    # skorch appends the next epoch's history row (on_epoch_begin) before it
    # builds that epoch's loader, so a second, empty row is there; exactly one
    # epoch trained and validated.
    trained = [row for row in net.history if "train_loss" in row]
    assert len(trained) == 1
    batches = net.history[0]["batches"]
    assert sum("train_loss" in b for b in batches) == 8
    assert sum("valid_loss" in b for b in batches) == 2
    assert "valid_loss" in net.history[0]
    assert len(net.history) == 2 and net.history[-1]["batches"] == []
    assert prof.steps == 240 // 32 + 1  # 8 batches, the last one of 16
    assert prof.steps_per_epoch == prof.steps
    assert prof.samples == 240
    assert prof.step_clock == "loader"
    assert prof.phases["eval"] > 0  # the validation pass over the 60 held-out samples


def test_accelerate_prepared_loop(ip):
    pytest.importorskip("accelerate")
    run(
        ip,
        """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from accelerate import Accelerator

torch.manual_seed(0)
accelerator = Accelerator(cpu=True)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
ds = TensorDataset(torch.randn(320, 16), torch.randn(320, 1))
dl = DataLoader(ds, batch_size=32, shuffle=True)
model, opt, dl = accelerator.prepare(model, opt, dl)
loss_fn = nn.MSELoss()
epochs_done = 0
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for epoch in range(3):
    model.train()
    for xb, yb in dl:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        accelerator.backward(loss)
        opt.step()
    epochs_done += 1
""",
    )
    ns = ip.user_ns
    prof = ns["prof"]
    _check_common(prof)
    assert ns["epochs_done"] == 1
    # accelerate's DataLoaderShard is not a DataLoader subclass (it fakes
    # __class__ and iterates its base_dataloader one batch ahead, to know which
    # batch is the last): the count is right, the step bounds are shifted by one
    # batch (see test_accelerate_steps_align_with_trained_batches).
    assert prof.steps == len(ns["dl"]) == 10
    assert prof.steps_per_epoch == 10
    assert prof.samples == 320
    assert prof.step_clock == "loader"


def test_ignite_engine_run(ip):
    pytest.importorskip("ignite")
    run(
        ip,
        """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from ignite.engine import Events, create_supervised_trainer, create_supervised_evaluator
from ignite.metrics import Accuracy

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
train_ds = TensorDataset(torch.randn(256, 16), torch.randint(0, 3, (256,)))
val_ds = TensorDataset(torch.randn(64, 16), torch.randint(0, 3, (64,)))
loader = DataLoader(train_ds, batch_size=32, shuffle=True)
val_loader = DataLoader(val_ds, batch_size=32)
trainer = create_supervised_trainer(model, opt, loss_fn)
evaluator = create_supervised_evaluator(model, metrics={"acc": Accuracy()})
epochs_completed = []

@trainer.on(Events.EPOCH_COMPLETED)
def validate(engine):
    evaluator.run(val_loader)
    epochs_completed.append(engine.state.epoch)
""",
    )
    run(ip, "%%epochprofile -o prof --text --no-lines\ntrainer.run(loader, max_epochs=3)\n")
    ns = ip.user_ns
    prof, trainer = ns["prof"], ns["trainer"]
    _check_common(prof)
    assert ns["epochs_completed"] == [1]
    # Ignite increments state.epoch (and fires EPOCH_STARTED) before it asks the
    # data for the next epoch's iterator, so the counter already reads 2 when
    # the cell stops; only 8 iterations ran.
    assert trainer.state.epoch == 2
    assert trainer.state.iteration == 8
    assert prof.steps == len(ns["loader"]) == 8
    assert prof.steps_per_epoch == 8
    assert prof.samples == 256
    assert prof.step_clock == "loader"
    assert prof.phases["eval"] > 0  # the evaluator's pass over val_loader


# -- regressions: Ignite's end-of-epoch handlers, swallowed stops, read-ahead loops ---

IGNITE_SETUP = """
import time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from ignite.engine import Events, create_supervised_trainer, create_supervised_evaluator

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(torch.randn(256, 16), torch.randint(0, 3, (256,))), batch_size=32)
val_loader = DataLoader(TensorDataset(torch.randn(64, 16), torch.randint(0, 3, (64,))), batch_size=32)
trainer = create_supervised_trainer(model, opt, nn.CrossEntropyLoss())
evaluator = create_supervised_evaluator(model)
"""


def test_ignite_end_of_epoch_evaluation_is_outside_steps(ip):
    pytest.importorskip("ignite")
    run(
        ip,
        IGNITE_SETUP
        + """
@trainer.on(Events.EPOCH_COMPLETED)
def validate(engine):
    evaluator.run(val_loader)
    time.sleep(0.2)  # e.g. saving a checkpoint after validation
""",
    )
    run(ip, "%%epochprofile -o prof --text --no-lines\ntrainer.run(loader, max_epochs=3)\n")
    prof = ip.user_ns["prof"]
    assert prof.steps == 8
    assert prof.phases["eval"] > 0
    # docs/design.md §2: evaluation and code after the last step are outside the steps.
    assert all(sp["eval"] == 0.0 for sp in prof.step_phases)
    assert prof.outside_steps_s >= 0.2


def test_ignite_exception_handler_swallowing_the_stop(ip):
    pytest.importorskip("ignite")
    run(
        ip,
        IGNITE_SETUP
        + """
caught = []

@trainer.on(Events.EXCEPTION_RAISED)
def on_exception(engine, e):
    caught.append(type(e).__name__)  # handled: Ignite does not re-raise
""",
    )
    run(ip, "%%epochprofile -o prof --text --no-lines\ntrainer.run(loader, max_epochs=3)\n")
    prof = ip.user_ns["prof"]
    assert ip.user_ns["caught"] == ["StopCell"]
    assert prof.status == "ok"
    assert prof.steps == 8
    assert prof.stop_reason == "epoch"


ACCELERATE_SETUP = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from accelerate import Accelerator

torch.manual_seed(0)
accelerator = Accelerator(cpu=True)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
dl = DataLoader(TensorDataset(torch.randn(320, 16), torch.randn(320, 1)), batch_size=32)
model, opt, dl = accelerator.prepare(model, opt, dl)
trained = 0
"""

ACCELERATE_CELL = """
for epoch in range(3):
    for xb, yb in dl:
        loss = nn.functional.mse_loss(model(xb), yb)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
        trained += 1
"""


def test_accelerate_steps_align_with_trained_batches(ip):
    """DataLoaderShard reads the DataLoader one batch ahead of training."""
    pytest.importorskip("accelerate")
    run(ip, ACCELERATE_SETUP)
    run(ip, "%%epochprofile -o prof --text --no-lines" + ACCELERATE_CELL)
    prof = ip.user_ns["prof"]
    assert ip.user_ns["trained"] == prof.steps == 10
    # Each step is one trained batch: each has its own forward and backward.
    assert all(sp["forward"] > 0 and sp["backward"] > 0 for sp in prof.step_phases)


def test_accelerate_steps_option_trains_n_batches(ip):
    pytest.importorskip("accelerate")
    run(ip, ACCELERATE_SETUP)
    run(ip, "%%epochprofile -o prof --text --no-lines --steps 3" + ACCELERATE_CELL)
    prof = ip.user_ns["prof"]
    assert prof.stop_reason == "steps"
    assert prof.steps == 3
    assert ip.user_ns["trained"] == 3


def test_lightning_unsized_loader_steps_align_with_trained_batches(ip):
    pytest.importorskip("lightning")
    run(
        ip,
        """
import logging
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
import lightning.pytorch as pl

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

class Stream(IterableDataset):  # no __len__: Lightning prefetches one batch
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(128):
            yield torch.randn(16, generator=g), torch.randint(0, 3, (), generator=g)

stream_loader = DataLoader(Stream(), batch_size=32)

class Lit(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(16, 3)
        self.batches = 0

    def training_step(self, batch, batch_idx):
        self.batches += 1
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

lit = Lit()
trainer = pl.Trainer(
    accelerator="cpu",
    max_epochs=3,
    enable_checkpointing=False,
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
""",
    )
    run(ip, "%%epochprofile -o prof --text --no-lines\ntrainer.fit(lit, stream_loader)\n")
    prof = ip.user_ns["prof"]
    assert prof.stop_reason == "epoch"
    assert ip.user_ns["lit"].batches == prof.steps == 4
    assert all(sp["forward"] > 0 and sp["backward"] > 0 for sp in prof.step_phases)
