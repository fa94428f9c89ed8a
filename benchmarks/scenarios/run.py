"""Planted scenarios: one known cause per cell; the finding that must rank first.

    python benchmarks/scenarios/run.py [--quick] [--only NAME]

Each scenario is a small training cell with one planted cause. "first" means the
expected finding must rank first among the actionable findings; "present" that
it must appear (the informative ``model_compute`` and ``imbalance``, and
``memory_growth``, which is about memory, not time). The control is a
well-configured cell where no actionable finding above 5 % may fire. For the
data-loading and small-batch scenarios the finding's suggestion is run through
``prof.rerun`` and the measured speed-up printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as c  # noqa: E402

COMMON = """
import time, torch, torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
torch.manual_seed(0)
def mlp(width=64, depth=2, out=10):
    layers, w = [], 32
    for _ in range(depth):
        layers += [nn.Linear(w, width), nn.ReLU()]
        w = width
    return nn.Sequential(*layers, nn.Linear(w, out))
class Batches(Dataset):
    # whole batches made up front: a loader whose wait is negligible, so each
    # scenario shows its planted cause and nothing else
    def __init__(self, n, bs, labels=None):
        self.x = torch.randn(n, bs, 32)
        self.y = labels.view(n, bs) if labels is not None else torch.randint(0, 10, (n, bs))
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]
def batches(n, bs=64, labels=None):
    return DataLoader(Batches(n, bs, labels), batch_size=None)
class LazyInit(nn.Module):
    # slow on its first call, like compilation or autotuning
    def __init__(self, inner): super().__init__(); self.inner, self.ready = inner, False
    def forward(self, x):
        if not self.ready: time.sleep(0.3); self.ready = True
        return self.inner(x)
class Slow(Dataset):
    def __init__(self, n, work=40): self.n, self.work = n, work
    def __len__(self): return self.n
    def __getitem__(self, i):
        x = torch.randn(32)
        for _ in range(self.work): x = x * 0.99 + 0.01
        return x, i % 10
"""

LOOP = """
for epoch in range(2):
    for xb, yb in train_loader:
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
"""

SCENARIOS: dict[str, tuple[str, str, str, str]] = {
    # name: (setup, cell, expected code, "first" | "present")
    "data_bound": (
        "train_loader = DataLoader(Slow(2048), batch_size=32, shuffle=True)\n"
        "model = mlp(); opt = torch.optim.AdamW(model.parameters(), fused=True)\n"
        "torch.set_num_threads(2)",
        LOOP,
        "data_loading",
        "first",
    ),
    "workers_and_threads": (
        "train_loader = DataLoader(Slow(2048), batch_size=32, num_workers=2, "
        "persistent_workers=True)\n"
        "model = mlp(); opt = torch.optim.AdamW(model.parameters(), fused=True)\n"
        "torch.set_num_threads(2)",
        LOOP,
        "threads",
        "first",
    ),
    "worker_startup": (
        "def slow_init(i): time.sleep(0.4)\n"
        "train_loader = DataLoader(TensorDataset(torch.randn(4096, 32), torch.randint(0, 10, "
        "(4096,))), batch_size=64, num_workers=1, worker_init_fn=slow_init)\n"
        "model = mlp(); opt = torch.optim.AdamW(model.parameters(), fused=True)\n"
        "torch.set_num_threads(1)",
        LOOP,
        "worker_startup",
        "first",
    ),
    "small_batch": (
        "train_loader = DataLoader(TensorDataset(torch.randn(2048, 32), torch.randint(0, 10, "
        "(2048,))), batch_size=2, shuffle=True)\n"
        "model = mlp(); opt = torch.optim.SGD(model.parameters(), lr=0.01, fused=True)",
        LOOP,
        "small_batch",
        "first",
    ),
    "python_overhead": (
        "train_loader = batches(64)\n"
        "model = mlp(); opt = torch.optim.AdamW(model.parameters(), fused=True)\nlog = []",
        LOOP.replace(
            "opt.step()\n",
            "opt.step()\n        log.append(sorted(str(v) for v in "
            "model(xb).flatten().tolist()))\n",
        ),
        "python_overhead",
        "first",
    ),
    "step_time_growth": (
        "train_loader = batches(300)\n"
        "model = mlp(); opt = torch.optim.AdamW(model.parameters(), fused=True)\nseen = []",
        LOOP.replace(
            "opt.step()\n",
            "opt.step()\n        seen.append(loss.detach())\n"
            "        running = sum(s.item() for s in seen) + sum(seen).item()\n",
        ),
        "step_time_growth",
        "first",
    ),
    "memory_growth": (
        "train_loader = batches(80, 256)\n"
        "model = mlp(width=1024); opt = torch.optim.AdamW(model.parameters(), fused=True)\n"
        "kept = []",
        LOOP.replace("opt.step()\n", "opt.step()\n        kept.append(model(xb) * 1.0)\n"),
        "memory_growth",
        "present",
    ),
    "optimizer_step": (
        "train_loader = batches(32)\n"
        "model = mlp(width=16, depth=60); opt = torch.optim.Adam(model.parameters(), "
        "foreach=False)",
        LOOP,
        "optimizer_step",
        "first",
    ),
    "eval_heavy": (
        "train_loader = batches(16)\n"
        "val_loader = DataLoader(Slow(2048, 10), batch_size=64)\n"
        "model = mlp(); opt = torch.optim.AdamW(model.parameters(), fused=True)",
        LOOP.replace(
            "opt.step()\n",
            "opt.step()\n    with torch.no_grad():\n        for xv, yv in val_loader: model(xv)\n",
        ),
        "eval_heavy",
        "first",
    ),
    "warmup": (
        "train_loader = batches(100)\n"
        "model = LazyInit(mlp(width=256)); opt = torch.optim.AdamW(model.parameters(), "
        "fused=True)",
        LOOP,
        "warmup",
        "first",
    ),
    "precision": (
        "train_loader = batches(8, 256)\n"
        "model = mlp(width=1024, depth=3); opt = torch.optim.AdamW(model.parameters(), fused=True)",
        LOOP,
        "precision",
        "first",
    ),
    "model_compute": (
        "train_loader = batches(8, 128)\n"
        "model = mlp(width=512, depth=3); opt = torch.optim.AdamW(model.parameters(), fused=True)",
        LOOP,
        "model_compute",
        "present",
    ),
    "imbalance": (
        "labels = torch.cat([torch.zeros(970), torch.ones(10), torch.full((10,), 2.), "
        "torch.full((10,), 3.)]).long()[torch.randperm(1000)]\n"
        "train_loader = batches(20, 50, labels)\n"
        "model = mlp(); opt = torch.optim.AdamW(model.parameters(), fused=True)",
        LOOP,
        "imbalance",
        "present",
    ),
    "control": (
        "train_loader = batches(64, 512)\n"
        "model = mlp(width=512, depth=2); opt = torch.optim.AdamW(model.parameters(), fused=True)",
        LOOP.replace(
            "        loss = nn",
            "        with torch.autocast('cpu', dtype=torch.bfloat16):\n            loss = nn",
        ),
        "",
        "none",
    ),
}

INFORMATIVE = {"model_compute", "imbalance"}


def run_one(ip: Any, name: str) -> tuple[bool, list[Any]]:
    setup, cell, expected, how = SCENARIOS[name]
    c.run(ip, COMMON + setup)
    c.run(ip, "%%epochprofile -o prof --text --no-lines\n" + cell)
    prof = c.ns(ip, "prof")
    found = prof.findings
    actionable = [f for f in found if f.code not in INFORMATIVE]
    codes = [f.code for f in found]
    if how == "none":
        loud = [f for f in actionable if f.share > 0.05]
        ok = not loud
        got, rank, share = ", ".join(f.code for f in loud) or "-", "-", "-"
    else:
        got = actionable[0].code if actionable else "-"
        if expected in codes:
            f = next(f for f in found if f.code == expected)
            rank = str(
                ([x.code for x in actionable].index(expected) + 1)
                if expected not in INFORMATIVE
                else "info"
            )
            share = f"{f.share:.0%}"
        else:
            rank, share = "missing", "-"
        ok = (rank == "1") if how == "first" else expected in codes
    extra = ""
    if ok and expected in ("data_loading", "small_batch"):
        f = next(f for f in found if f.code == expected)
        with c.quiet():
            r = prof.rerun(**f.suggestion)
        extra = f"rerun({f.suggestion}): {prof.epoch_s / r.epoch_s:.2f}x faster"
    row = [name, expected or "(nothing > 5 %)", got, rank, share, "ok" if ok else "FAIL", extra]
    return ok, row


def main() -> None:
    p = c.parser(__doc__ or "")
    p.add_argument("--only", default=None)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each scenario N times and count how often it came out as expected "
        "(for the control: how often nothing fired, the false-alarm rate)",
    )
    args = p.parse_args()
    ip = c.start_shell(args.threads)
    c.header("epochmagic planted scenarios", args)
    names = [n for n in SCENARIOS if not args.only or n == args.only]
    if args.repeat > 1:
        repeated(ip, names, args.repeat)
        return
    rows, oks = [], []
    for name in names:
        ok, row = run_one(ip, name)
        oks.append(ok)
        rows.append(row)
    print(
        c.table(
            ["scenario", "expected", "got (first actionable)", "rank", "share", "", "what-if"], rows
        )
    )
    c.verdict("planted scenarios", all(oks), f"{sum(oks)}/{len(oks)} as expected")


def repeated(ip: Any, names: list[str], n: int) -> None:
    """Each scenario n times: how often it came out as expected, and what
    fired when it did not."""
    rows, all_ok = [], True
    for name in names:
        oks, wrong = 0, []
        for _ in range(n):
            ok, row = run_one(ip, name)
            oks += ok
            if not ok:
                wrong.append(row[2])
        all_ok = all_ok and oks == n
        rows.append([name, f"{oks}/{n}", ", ".join(sorted(set(wrong))) or "-"])
    print(c.table(["scenario", "as expected", "instead"], rows))
    c.verdict("planted scenarios, repeated", all_ok, f"{n} runs each")


if __name__ == "__main__":
    c.main_guard(main)
