"""The cell shapes a training loop comes in, each through a real IPython shell."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run

SETUP = """
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
train_ds = TensorDataset(torch.randn(640, 16), torch.randint(0, 4, (640,)))
test_ds = TensorDataset(torch.randn(256, 16), torch.randint(0, 4, (256,)))
train_loader = DataLoader(train_ds, batch_size=32, shuffle=True)
test_loader = DataLoader(test_ds, batch_size=64)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
epochs_run = 0
"""


def check_phases(prof) -> None:
    assert set(prof.phases) == {
        "data",
        "transfer",
        "forward",
        "backward",
        "optimizer",
        "eval",
        "other",
    }
    assert min(prof.phases.values()) >= 0
    assert sum(prof.phases.values()) == pytest.approx(prof.wall_s, abs=1e-9)
    assert len(prof.step_times) == prof.steps == len(prof.step_phases)
    for sp, t in zip(prof.step_phases, prof.step_times):
        assert sum(sp.values()) == pytest.approx(t, abs=1e-9)
    assert prof.outside_steps_s == pytest.approx(prof.wall_s - sum(prof.step_times), abs=1e-9)


def test_outer_epoch_loop_runs_one_epoch_and_stops_silently(ip, capsys):
    run(ip, SETUP)
    result = run(
        ip,
        """%%epochprofile -o prof --text
for epoch in range(10):
    epochs_run += 1
    for xb, yb in train_loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print("finished epoch", epoch)
""",
    )
    out = capsys.readouterr().out
    assert result.result is None
    prof = ip.user_ns["prof"]
    # epoch 1's first line ran before its loop asked for the second pass (lines are
    # sampled from this run: nothing ran the cell again)
    assert ip.user_ns["epochs_run"] == 2
    assert out.count("finished epoch 0") == 1
    assert "finished epoch 1" not in out
    assert "Traceback" not in out
    assert "second pass" in out
    assert prof.status == "ok" and prof.stop_reason == "epoch"
    assert prof.steps == prof.steps_per_epoch == 20
    assert prof.samples == 640
    assert prof.epoch_s == prof.wall_s
    assert prof.training_loader == "train_loader"
    assert prof.step_clock == "loader"
    for phase in ("data", "forward", "backward", "optimizer"):
        assert prof.phases[phase] > 0, phase
    check_phases(prof)
    assert prof.config["batch_size"] == 32 and prof.config["workers"] == 0
    assert prof.config["precision"] == "fp32" and prof.config["device"] == "cpu"
    assert prof.environment["torch_version"] == torch.__version__
    assert prof.lines and 1 <= prof.lines_steps <= prof.steps


def test_notebook_functions_and_eval_pass(ip):
    run(ip, SETUP)
    run(
        ip,
        """
def train_loop(dataloader, model, loss_fn, optimizer):
    model.train()
    for batch, (X, y) in enumerate(dataloader):
        pred = model(X)
        loss = loss_fn(pred, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

def test_loop(dataloader, model, loss_fn):
    model.eval()
    correct = 0
    with torch.no_grad():
        for X, y in dataloader:
            pred = model(X)
            correct += (pred.argmax(1) == y).sum().item()
    return correct
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --lines traced
for t in range(5):
    train_loop(train_loader, model, loss_fn, opt)
    acc = test_loop(test_loader, model, loss_fn)
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.steps == 20 and prof.stop_reason == "epoch"
    assert prof.phases["eval"] > 0
    check_phases(prof)
    sources = {ls.source.strip() for ls in prof.lines}
    assert "loss.backward()" in sources  # a line of the notebook-defined function
    assert any(ls.filename.startswith("Cell In[") for ls in prof.lines)


class SquaresDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int):
        return torch.full((8,), float(i)), i % 3


@pytest.mark.parametrize("workers", [0, 2])
def test_enumerate_tqdm_workers_drop_last_shuffle(ip, workers):
    ip.user_ns["SquaresDataset"] = SquaresDataset
    run(
        ip,
        f"""
import torch, torch.nn as nn
from tqdm.auto import tqdm
loader = torch.utils.data.DataLoader(SquaresDataset(), batch_size=16, shuffle=True,
                                     drop_last=True, num_workers={workers})
net = nn.Linear(8, 3)
sgd = torch.optim.SGD(net.parameters(), lr=0.01)
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for epoch in range(3):
    for i, data in enumerate(tqdm(loader), 0):
        inputs, labels = data
        sgd.zero_grad()
        loss = nn.functional.cross_entropy(net(inputs), labels)
        loss.backward()
        sgd.step()
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.steps == prof.steps_per_epoch == 6  # 100 // 16 with drop_last
    assert prof.samples == 96
    assert prof.config["workers"] == workers
    check_phases(prof)


def test_gan_two_models_two_optimizers_one_step_per_batch(ip):
    run(
        ip,
        """
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
real = DataLoader(TensorDataset(torch.randn(256, 2)), batch_size=32, shuffle=True)
G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
D = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
optG = torch.optim.Adam(G.parameters(), 1e-3)
optD = torch.optim.Adam(D.parameters(), 1e-3)
bce = nn.BCEWithLogitsLoss()
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for epoch in range(4):
    for (x,) in real:
        z = torch.randn(x.shape[0], 4)
        fake = G(z)
        optD.zero_grad()
        d_loss = bce(D(x), torch.ones(len(x), 1)) + bce(D(fake.detach()), torch.zeros(len(x), 1))
        d_loss.backward()
        optD.step()
        optG.zero_grad()
        g_loss = bce(D(fake), torch.ones(len(x), 1))
        g_loss.backward()
        optG.step()
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.steps == 8 and prof.samples == 256
    assert prof.phases["optimizer"] > 0
    check_phases(prof)


def test_manual_slicing_without_dataloader(ip):
    run(
        ip,
        """
import torch, torch.nn as nn
X = torch.randn(512, 16); Y = torch.randn(512, 1)
lin = nn.Linear(16, 1)
sgd = torch.optim.SGD(lin.parameters(), lr=0.01)
bs = 32
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for i in range(0, len(X), bs):
    xb, yb = X[i:i + bs], Y[i:i + bs]
    loss = ((lin(xb) - yb) ** 2).mean()
    sgd.zero_grad()
    loss.backward()
    sgd.step()
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.step_clock == "optimizer"
    assert prof.steps == prof.steps_per_epoch == 16
    assert prof.samples == 512
    assert prof.stop_reason == "end" and prof.epoch_s == prof.wall_s
    check_phases(prof)


def test_get_batch_accumulation_autocast_scaler_clipping_while_true(ip):
    run(
        ip,
        """
import torch, torch.nn as nn
data = torch.randint(0, 50, (4096,))
def get_batch(bs=8, T=16):
    ix = torch.randint(0, len(data) - T - 1, (bs,))
    x = torch.stack([data[i:i + T] for i in ix])
    y = torch.stack([data[i + 1:i + T + 1] for i in ix])
    return x, y
class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.head = nn.Linear(32, 50)
    def forward(self, x, y):
        logits = self.head(self.emb(x))
        return nn.functional.cross_entropy(logits.view(-1, 50).float(), y.view(-1))
lm = TinyLM()
adam = torch.optim.AdamW(lm.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cpu")
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines --steps 5
it = 0
while True:
    for micro in range(2):
        x, y = get_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm(x, y) / 2
        scaler.scale(loss).backward()
    scaler.unscale_(adam)
    torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    scaler.step(adam)
    scaler.update()
    adam.zero_grad(set_to_none=True)
    it += 1
    if it >= 1000:
        break
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.steps == 5 and prof.stop_reason == "steps"
    assert prof.samples == 5 * 2 * 8
    assert prof.throughput_unit == "tokens" and prof.tokens_per_s > 0
    assert prof.config["precision"] == "bf16"
    assert prof.epoch_s is None  # a while loop has no readable length
    check_phases(prof)


def test_cell_that_trains_nothing(ip, capsys):
    run(
        ip,
        """%%epochprofile -o prof --text
x = 1 + 1
""",
    )
    assert ip.user_ns["x"] == 2
    prof = ip.user_ns["prof"]
    assert prof.steps == 0 and prof.status == "ok"
    assert "no training step was seen" in capsys.readouterr().out
    check_phases(prof)


def test_steps_option_extrapolates_with_a_loader(ip):
    run(ip, SETUP)
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines --steps 5
for epoch in range(2):
    for xb, yb in train_loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.steps == 5 and prof.stop_reason == "steps" and prof.steps_per_epoch == 20
    assert prof.epoch_s > prof.wall_s
    assert any("extrapolated" in n for n in prof.notes)


def test_stop_is_not_swallowed_by_except_exception(ip):
    run(ip, SETUP)
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for epoch in range(3):
    try:
        for xb, yb in train_loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
    except Exception:
        pass
    epochs_run += 1
""",
    )
    assert ip.user_ns["epochs_run"] == 1
    assert ip.user_ns["prof"].stop_reason == "epoch"


def test_peeking_a_batch_is_not_the_first_pass(ip):
    run(ip, SETUP)
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines
xb0, yb0 = next(iter(train_loader))
for epoch in range(3):
    for xb, yb in train_loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
    epochs_run += 1
""",
    )
    assert ip.user_ns["epochs_run"] == 1
    assert ip.user_ns["prof"].steps == 20


def test_named_loader_option(ip):
    run(ip, SETUP)
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines --loader train_loader
for epoch in range(3):
    for (xb, yb), (xt, yt) in zip(train_loader, test_loader):
        loss = loss_fn(model(xb), yb) + loss_fn(model(xt), yt)
        opt.zero_grad(); loss.backward(); opt.step()
    epochs_run += 1
""",
    )
    prof = ip.user_ns["prof"]
    assert ip.user_ns["epochs_run"] == 1
    assert prof.training_loader == "train_loader"
    # zip takes a fifth batch from train_loader before test_loader runs out:
    # five batches were handed out, so five steps (docs/design.md §2: a step is a batch)
    assert prof.steps == 5
    assert prof.phases["eval"] == 0  # test_loader trains here, it is not evaluation
