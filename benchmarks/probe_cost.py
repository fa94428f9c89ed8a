"""The probes' own cost per training step, measured without the noise of a
real epoch: a loop whose model does almost nothing, run plain and under the
probes, best of N runs each (the minimum is the run least disturbed by the
rest of the machine).

    python benchmarks/probe_cost.py [--quick] [--threads N]

Per step the probes run: ``DataLoader.__next__``, two root-module calls (model
and loss), ``backward``, ``zero_grad`` and the optimizer's step hooks. The cost
per step divided by a loop's step time is the distortion it adds.
"""

from __future__ import annotations

import time

import _common as c
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from epochmagic.probes import Probes
from epochmagic.recorder import Recorder


def main() -> None:
    p = c.parser(__doc__ or "")
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    steps, repeats = (1000, 3) if args.quick else (3000, 9)
    model, loss_fn = nn.Linear(4, 2), nn.MSELoss()
    loader = DataLoader(TensorDataset(torch.randn(steps, 4), torch.randn(steps, 2)), batch_size=1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def epoch() -> float:
        t = time.perf_counter()
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        return time.perf_counter() - t

    epoch()
    plain, probed = [], []
    for _, order in c.alternated(["P", "M"], repeats):
        for cond in order:
            if cond == "P":
                plain.append(epoch())
            else:
                with Probes(Recorder(), user_ns={"model": model, "loss_fn": loss_fn}) as probes:
                    probes.rec.begin()
                    probed.append(epoch())
    base = min(plain) / steps * 1e6
    cost = (min(probed) - min(plain)) / steps * 1e6
    print(
        f"== probe cost per step ({steps} steps, best of {repeats}, "
        f"{torch.get_num_threads()} torch thread(s)) =="
    )
    print(
        f"plain step {base:.1f} us, probed step {min(probed) / steps * 1e6:.1f} us: "
        f"probes cost {cost:.1f} us per step"
    )
    for rate in (100, 300, 1000):
        print(f"  at {rate:>4} steps/s that is {cost * rate / 1e4:.2f} % of the epoch")


if __name__ == "__main__":
    c.main_guard(main)
