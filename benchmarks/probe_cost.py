"""The probes' own cost, measured so that this machine's noise cancels out.

    python benchmarks/probe_cost.py [--quick] [--threads N]

(a) Per step, on a loop whose model does almost nothing: plain and under the
    probes, best of N runs each (the least disturbed run). Per step the probes
    run: ``DataLoader.__next__``, two root-module calls (model and loss),
    ``backward``, ``zero_grad`` and the optimizer's step hooks.
(b) Distortion on a real MLP loop (3 Linear layers of width 512, batch 64, ~240
    steps/s here): one long run of the loop in which the probes are installed
    and removed every 20 steps, so plain and probed chunks alternate every ~80
    ms and the machine's drift (seconds long, +-20-50 % here) hits both alike.
    Distortion = median over chunk pairs of probed / plain chunk time.
"""

from __future__ import annotations

import time

import _common as c
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from epochmagic.capture.probes import Probes
from epochmagic.capture.recorder import Recorder


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
    chunks(args.quick)


def chunks(quick: bool, width: int = 512, chunk: int = 20) -> None:
    import statistics

    torch.manual_seed(0)
    pairs = 20 if quick else 100
    model = nn.Sequential(
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )
    n = (2 * pairs + 2) * chunk * 64
    loader = DataLoader(
        TensorDataset(torch.randn(n, width), torch.randint(0, 10, (n,))), batch_size=64
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    it = iter(loader)

    def run(k: int) -> float:
        t = time.perf_counter()
        for _ in range(k):
            xb, yb = next(it)
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        return time.perf_counter() - t

    run(2 * chunk)  # warm-up
    ratios, plain_t, probed_t = [], [], []
    for i in range(pairs):
        times = {}
        for cond in ("P", "M") if i % 2 == 0 else ("M", "P"):
            if cond == "P":
                times["P"] = run(chunk)
            else:
                with Probes(Recorder(), user_ns={"model": model, "loss_fn": loss_fn}) as probes:
                    probes.rec.begin()
                    times["M"] = run(chunk)
        ratios.append(times["M"] / times["P"])
        plain_t.append(times["P"])
        probed_t.append(times["M"])
    step_ms = statistics.median(plain_t) / chunk * 1000
    med = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4)
    print(
        f"\n== distortion on an MLP loop (width {width}, batch 64, {1000 / step_ms:.0f} steps/s, "
        f"{pairs} alternating chunk pairs of {chunk} steps) =="
    )
    print(
        f"median probed/plain chunk time {med:.3f} (quartiles {q[0]:.3f}..{q[2]:.3f}, "
        f"min..max {min(ratios):.3f}..{max(ratios):.3f})"
    )
    c.verdict(
        "distortion of the measured epoch", med <= 1.02, f"{(med - 1) * 100:+.1f} %, target <= +2 %"
    )


if __name__ == "__main__":
    c.main_guard(main)
