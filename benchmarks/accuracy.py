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
pass are measured. Columns:

    planted     the time the planted sleeps took, timed by the sleeping code
                itself (time.sleep overshoots its argument by tens of us)
    magic       the phase in ``prof.phases``; "magic vs planted" = magic /
                planted - 1, median over the repeats: PASS/FAIL is judged on it
    floor       the phase in a profiled run with every sleep set to 0
    hand-timed  the same loop with perf_counter stamps at the probes' boundaries,
                no magic, alternated with the profiled runs: its excess over
                planted is real work on this machine, so "magic vs hand" is the
                tool's own attribution error

Real work right after a sleep runs slower than in the floor run (cold caches,
torch's intra-op threads waking up; a vCPU coming back), about 0.1-0.6 ms per
phase per step here, so the planted costs must be large next to it: 20 ms per
phase per step by default (at 10 ms the excess was +2 to +6 %, in the hand-timed
runs as much as under the magic). Runs with 1 torch thread unless ``--threads``
says otherwise: with 2 threads on a shared 2-core machine the forward/backward
compute after each sleep grew by +17 to +28 % of the planted time (hand-timed
alike), which says nothing about the tool.
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

# The same loop with hand-placed perf_counter stamps at the boundaries the probes
# use, run without the magic: what this machine makes of the planted costs.
REFERENCE = """
REF = dict.fromkeys(("data", "forward", "backward", "optimizer", "eval"), 0.0)
_c = time.perf_counter
_w0 = _c()
for epoch in range(1):
    model.train()
    _a = _c()
    _it = iter(train_loader)
    while True:
        try:
            xb, yb = next(_it)
        except StopIteration:
            break
        _b = _c()
        opt.zero_grad()
        _d = _c()
        loss = loss_fn(model(xb), yb)
        _e = _c()
        loss.backward()
        _f = _c()
        opt.step()
        _g = _c()
        plant("other", "other")
        REF["data"] += _b - _a
        REF["optimizer"] += (_d - _b) + (_g - _f)
        REF["forward"] += _e - _d
        REF["backward"] += _f - _e
        _a = _c()
    model.eval()
    _v = _c()
    with torch.no_grad():
        for xb, yb in val_loader:
            model(xb)
    REF["eval"] += _c() - _v
REF["other"] = _c() - _w0 - sum(REF.values())
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


def reference(ip: Any) -> tuple[dict[str, float], dict[str, float]]:
    """One hand-timed run without the magic: (planted, hand-timed) per phase."""
    c.run(ip, "PLANTED.clear()")
    c.run(ip, REFERENCE)
    planted = {k: float(v) for k, v in c.ns(ip, "PLANTED").items()}
    return planted, {k: float(v) for k, v in c.ns(ip, "REF").items()}


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="profiled runs (default 5, quick 1)")
    p.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    p.add_argument(
        "--sleep-ms", type=float, default=20.0, help="planted per phase per step, ms (default 20)"
    )
    p.add_argument("--spin", action="store_true", help="plant busy-waits instead of time.sleep")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    batch, val_steps = 8, max(5, args.steps // 8)
    s = args.sleep_ms / 1000
    sleeps = {"data": s / batch, "forward": s, "backward": s, "optimizer": s, "other": s}
    # one intra-op thread unless asked: the tiny model gains nothing from two, and with
    # two the workers' wake-up after every sleep inflates forward/backward by 15-30 %
    # on a shared machine (in the hand-timed runs as much as under the magic)
    ip = c.start_shell(args.threads if args.threads is not None else 1)
    kind = "busy-wait" if args.spin else "sleep"
    c.header(
        "epochmagic accuracy: planted costs",
        args,
        f"{args.steps} training steps of batch {batch} + {val_steps} evaluation batches; "
        f"{args.sleep_ms:g} ms {kind} planted per phase per step (data: "
        f"{s / batch * 1e3:.3f} ms x {batch} samples); {repeats} alternated pair(s) of a "
        "profiled run and a hand-timed run",
    )
    c.run(ip, SETUP.format(batch=batch, steps=args.steps, val_steps=val_steps, spin=args.spin))
    measure(ip, dict.fromkeys(sleeps, 0.0))  # warm-up, untimed
    _, floor, _ = measure(ip, dict.fromkeys(sleeps, 0.0))
    c.run(ip, f"SLEEP.update({sleeps!r})")
    reference(ip)  # warm-up, untimed

    runs: list[tuple[dict[str, float], dict[str, float]]] = []  # (planted, magic)
    refs: list[tuple[dict[str, float], dict[str, float]]] = []  # (planted, hand-timed)
    last: Any = None
    for _, order in c.alternated(["M", "R"], repeats):
        for cond in order:
            if cond == "M":
                planted, measured, last = measure(ip, sleeps)
                runs.append((planted, measured))
            else:
                refs.append(reference(ip))

    rows = []
    worst = 0.0
    worst_ref = 0.0
    for ph in PHASES:
        errs = [m[ph] / pl[ph] - 1 for pl, m in runs]
        ref_errs = [m[ph] / pl[ph] - 1 for pl, m in refs]
        err = c.median(errs)
        vs_ref = (1 + err) / (1 + c.median(ref_errs)) - 1
        worst = max(worst, abs(err))
        worst_ref = max(worst_ref, abs(vs_ref))
        rows.append(
            [
                ph,
                f"{c.median([pl[ph] for pl, _ in runs]):.4f}",
                f"{c.median([m[ph] for _, m in runs]):.4f}",
                f"{floor[ph]:.4f}",
                c.pct(err),
                f"{c.pct(min(errs))}..{c.pct(max(errs))}" if len(errs) > 1 else "-",
                c.pct(c.median(ref_errs)),
                c.pct(vs_ref),
                "ok" if abs(err) <= 0.05 else "OFF",
            ]
        )
    print(
        c.table(
            [
                "phase",
                "planted s",
                "magic s",
                "floor s",
                "magic vs planted",
                "spread",
                "hand-timed vs planted",
                "magic vs hand",
                "",
            ],
            rows,
        )
    )
    print(
        "\nplanted: the time the planted calls took, timed by themselves; floor: the phase in a "
        "profiled run with\nevery planted cost set to 0; hand-timed: the same loop with "
        "perf_counter stamps, no magic (its\nexcess over planted is real work on this machine, "
        "e.g. compute slowed by waking up after a sleep)."
    )
    print(
        f"last profiled run: wall_s {last.wall_s:.3f} s, {last.steps} steps, outside steps "
        f"{last.outside_steps_s:.4f} s, transfer {last.phases['transfer']:.4f} s"
    )
    c.footer_load()
    print(f"magic vs hand-timed: worst {worst_ref * 100:.1f} % (information, not the target)")
    c.verdict(
        "planted costs recovered",
        worst <= 0.05,
        f"worst median error {worst * 100:.1f} % over {', '.join(PHASES)}; target +-5 %",
    )


if __name__ == "__main__":
    c.main_guard(main)
