"""Are planted costs recovered in the right phase, within +-5 %?

    python benchmarks/accuracy.py [--quick] [--threads N]

A tiny model (Linear 16 -> 4) whose real compute is small next to known sleeps,
one in each phase:

    data       the training Dataset's __getitem__ sleeps per sample
               (batch b, per-sample sleep s: b*s per batch)
    forward    the model's forward sleeps (with grad enabled)
    backward   a custom autograd.Function whose backward sleeps
    optimizer  an SGD subclass whose step() sleeps
    other      a sleep in the loop body, after opt.step()
    eval       an evaluation pass after the training pass: its Dataset sleeps
               per sample and the model's forward sleeps under no_grad

The cell trains for two epochs; ``%%epochprofile --no-lines`` stops it when the
training loader starts its second pass, so one training pass and one evaluation
pass are measured. "planted" is the time each sleep actually took, timed by the
sleeping code itself (time.sleep overshoots its argument by tens of microseconds);
"floor" is the same phase in a run of the same cell with every sleep set to 0
(the real compute and Python around it, which the measured phase also contains).
error = measured / planted - 1, median over the repeats (PASS/FAIL is judged on
it); "net of floor" = (measured - floor) / planted - 1, for diagnosis: what is
left once the phase's own compute is taken out. Real compute right after a
sleep runs slower than in the floor run (cold caches, torch's intra-op threads
waking up), so planted costs must be large next to it: 10 ms by default.
"""

from __future__ import annotations

from typing import Any

import _common as c

SETUP = """
import time, torch
from collections import defaultdict
from torch import nn
from torch.utils.data import Dataset, DataLoader
torch.manual_seed(0)

PLANTED = defaultdict(float)
SLEEP = {{}}

def plant(phase, key):
    seconds = SLEEP[key]
    if seconds > 0:
        t0 = time.perf_counter()
        if {spin}:  # busy-wait: the CPU stays busy, no idle wake-up afterwards
            while time.perf_counter() - t0 < seconds:
                pass
        else:
            time.sleep(seconds)
        PLANTED[phase] += time.perf_counter() - t0

class SleepyData(Dataset):
    def __init__(self, n, phase, key):
        self.x = torch.randn(n, 16)
        self.y = torch.randint(0, 4, (n,))
        self.phase, self.key = phase, key
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        plant(self.phase, self.key)
        return self.x[i], self.y[i]

class SleepyGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)
    @staticmethod
    def backward(ctx, grad):
        plant("backward", "backward")
        return grad

class SleepyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)
    def forward(self, x):
        plant("forward" if torch.is_grad_enabled() else "eval", "forward")
        return SleepyGrad.apply(self.fc(x))

class SleepySGD(torch.optim.SGD):
    def step(self, closure=None):
        plant("optimizer", "optimizer")
        return super().step(closure)

model = SleepyNet()
opt = SleepySGD(model.parameters(), lr=0.01)
loss_fn = nn.CrossEntropyLoss()
train_loader = DataLoader(SleepyData({batch} * {steps}, "data", "data"), batch_size={batch},
                          shuffle=True)
val_loader = DataLoader(SleepyData({batch} * {val_steps}, "eval", "data"), batch_size={batch})
"""

CELL = """%%epochprofile --text --no-lines -o prof
for epoch in range(2):
    model.train()
    for xb, yb in train_loader:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        plant("other", "other")
    model.eval()
    with torch.no_grad():
        for xb, yb in val_loader:
            model(xb)
"""

PHASES = ("data", "forward", "backward", "optimizer", "other", "eval")


def measure(ip: Any, sleeps: dict[str, float]) -> tuple[dict[str, float], dict[str, float], Any]:
    """One profiled run: (planted seconds, measured seconds) per phase."""
    c.run(ip, f"SLEEP.update({sleeps!r}); PLANTED.clear()")
    c.run(ip, CELL)
    prof = c.ns(ip, "prof")
    assert prof.status == "ok" and prof.stop_reason == "epoch", prof
    planted = {k: float(v) for k, v in c.ns(ip, "PLANTED").items()}
    return planted, dict(prof.phases), prof


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="profiled runs (default 5, quick 1)")
    p.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    p.add_argument(
        "--sleep-ms", type=float, default=10.0, help="planted per phase per step, ms (default 10)"
    )
    p.add_argument(
        "--spin", action="store_true", help="plant busy-waits instead of time.sleep"
    )
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    batch, val_steps = 8, max(5, args.steps // 8)
    s = args.sleep_ms / 1000
    sleeps = {"data": s / batch, "forward": s, "backward": s, "optimizer": s, "other": s}
    ip = c.start_shell(args.threads)
    c.header(
        "epochmagic accuracy: planted sleeps",
        args,
        f"{args.steps} training steps of batch {batch} + {val_steps} evaluation batches; "
        f"{args.sleep_ms:g} ms {'busy-wait' if args.spin else 'sleep'} planted per phase per step (data: {s / batch * 1e3:.3f} ms x "
        f"{batch} samples); {repeats} profiled run(s)",
    )
    c.run(ip, SETUP.format(batch=batch, steps=args.steps, val_steps=val_steps, spin=args.spin))
    measure(ip, dict.fromkeys(sleeps, 0.0))  # warm-up, untimed
    _, floor, _ = measure(ip, dict.fromkeys(sleeps, 0.0))

    planted_runs: list[dict[str, float]] = []
    measured_runs: list[dict[str, float]] = []
    last: Any = None
    for _ in range(repeats):
        planted, measured, last = measure(ip, sleeps)
        planted_runs.append(planted)
        measured_runs.append(measured)

    rows = []
    worst = 0.0
    for ph in PHASES:
        errs = [m[ph] / pl[ph] - 1 for pl, m in zip(planted_runs, measured_runs)]
        nets = [(m[ph] - floor[ph]) / pl[ph] - 1 for pl, m in zip(planted_runs, measured_runs)]
        err = c.median(errs)
        worst = max(worst, abs(err))
        rows.append(
            [
                ph,
                f"{c.median([pl[ph] for pl in planted_runs]):.4f}",
                f"{c.median([m[ph] for m in measured_runs]):.4f}",
                f"{floor[ph]:.4f}",
                c.pct(err),
                f"{c.pct(min(errs))}..{c.pct(max(errs))}" if len(errs) > 1 else "-",
                c.pct(c.median(nets)),
                "ok" if abs(err) <= 0.05 else "OFF",
            ]
        )
    print(
        c.table(
            ["phase", "planted s", "measured s", "floor s", "error", "spread", "net of floor",
             ""],
            rows,
        )
    )
    print(
        f"\nlast run: wall_s {last.wall_s:.3f} s, {last.steps} steps, outside steps "
        f"{last.outside_steps_s:.4f} s, transfer {last.phases['transfer']:.4f} s "
        f"(nothing planted there on CPU)"
    )
    c.footer_load()
    c.verdict(
        "planted costs recovered",
        worst <= 0.05,
        f"worst median error {worst * 100:.1f} % over {', '.join(PHASES)}; target +-5 %",
    )


if __name__ == "__main__":
    c.main_guard(main)
