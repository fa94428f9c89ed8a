"""How close is the ``--steps N`` estimate of ``epoch_s`` to the full epoch?

    python benchmarks/extrapolation.py [--quick] [--steps-cut N] [--epoch-steps S]
                                       [--workers W] [--threads N]

The same training cell (an MLP over a TensorDataset DataLoader, batch 64, three
Linear layers of width ``--width`` (default 1024: ~10 ms steps, so that the 20
measured steps span a few hundred ms of this noisy machine), several hundred steps) is profiled two ways,
in alternated order (E F, F E, ...):

    E  ``%%epochprofile --text --no-lines --steps 20 -o est``: stops after 20
       steps; est.epoch_s = time so far + remaining steps x steady median step
    F  ``%%epochprofile --text --no-lines -o full``: the whole first epoch;
       full.epoch_s = full.wall_s

ratio = est.epoch_s / full.epoch_s of the same pair; target (docs/design.md §9):
median ratio within 1 +- 0.10. Both runs skip line attribution (it does not
touch epoch_s). ``--workers W`` gives the loader worker processes, so the first
step carries their start-up.
"""

from __future__ import annotations

from typing import Any

import _common as c

SETUP = """
import time, torch
from torch import nn
from torch.utils.data import TensorDataset, DataLoader
torch.manual_seed(0)
model = nn.Sequential(nn.Linear({width}, {width}), nn.ReLU(), nn.Linear({width}, {width}),
                      nn.ReLU(), nn.Linear({width}, 10))
X = torch.randn({steps} * 64, {width})
Y = torch.randint(0, 10, ({steps} * 64,))
train_loader = DataLoader(TensorDataset(X, Y), batch_size=64, shuffle=True,
                          num_workers={workers})
opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
"""

BODY = """for epoch in range(2):
    for xb, yb in train_loader:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
"""


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="pairs (default 7, quick 3)")
    p.add_argument("--steps-cut", type=int, default=20, help="--steps N of the estimate (20)")
    p.add_argument("--epoch-steps", type=int, default=None, help="steps per epoch (default 500)")
    p.add_argument("--width", type=int, default=1024, help="MLP width (default 1024)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers (default 0)")
    args = p.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    epoch_steps = args.epoch_steps or 500
    est_cell = f"%%epochprofile --text --no-lines --steps {args.steps_cut} -o est\n" + BODY
    full_cell = "%%epochprofile --text --no-lines -o full\n" + BODY
    ip = c.start_shell(args.threads)
    c.header(
        "epochmagic --steps extrapolation",
        args,
        f"MLP, batch 64, {epoch_steps} steps per epoch, num_workers={args.workers}; estimate "
        f"from --steps {args.steps_cut}; {repeats} alternated pairs",
    )
    c.run(ip, SETUP.format(steps=epoch_steps, workers=args.workers, width=args.width))
    c.run(ip, full_cell)  # warm-up, untimed
    c.run(ip, est_cell)

    rows = []
    ratios: list[float] = []
    for i, order in c.alternated(["E", "F"], repeats):
        got: dict[str, Any] = {}
        for cond in order:
            if cond == "E":
                c.run(ip, est_cell)
                est = c.ns(ip, "est")
                assert est.status == "ok" and est.stop_reason == "steps", est
                assert est.steps == args.steps_cut and est.steps_per_epoch == epoch_steps, est
                got["E"] = est
            else:
                c.run(ip, full_cell)
                full = c.ns(ip, "full")
                assert full.status == "ok" and full.stop_reason == "epoch", full
                assert full.steps == epoch_steps, full
                got["F"] = full
        est, full = got["E"], got["F"]
        ratio = est.epoch_s / full.epoch_s
        ratios.append(ratio)
        rows.append(
            [
                i + 1,
                " ".join(order),
                f"{est.wall_s:.3f}",
                f"{est.step_times[0] * 1e3:.1f}",
                f"{(est.epoch_s - est.wall_s) / (epoch_steps - est.steps) * 1e3:.2f}",
                f"{full.step_s * 1e3:.2f}",
                f"{est.epoch_s:.3f}",
                f"{full.epoch_s:.3f}",
                f"{ratio:.3f}",
            ]
        )
    print(
        c.table(
            [
                "pair",
                "order",
                "est wall_s",
                "1st step ms",
                "est median ms",
                "full median ms",
                "est epoch_s",
                "full epoch_s",
                "ratio",
            ],
            rows,
        )
    )
    med = c.median(ratios)
    print()
    c.footer_load()
    c.verdict(
        "--steps estimate",
        abs(med - 1) <= 0.10,
        f"median est/full = {med:.3f} ({c.pct(med - 1)}), target within +-10 % "
        f"(spread {min(ratios):.3f}..{max(ratios):.3f}, {len(ratios)} pairs)",
    )


if __name__ == "__main__":
    c.main_guard(main)
