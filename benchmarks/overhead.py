"""How much does ``%%epochprofile`` slow down the epoch it measures, and how long
does the whole magic take to answer?

    python benchmarks/overhead.py [--quick] [--model mlp|deep|both] [--threads N]

(a) Distortion: one epoch of an MLP over a TensorDataset DataLoader, run four
    ways in one process, in alternated order (P M S T, T S M P, ...):
      P  plain cell, perf_counter around the loop inside the cell;
      M  ``%%epochprofile --text --no-lines -o prof``: distortion = prof.wall_s / P;
      S  the same with ``--lines sampled`` (the sampler on): reported, no target;
      T  ``with torch.profiler.profile(activities=[CPU])`` around the loop
         (for comparison: the loop's time inside it, and the whole ``with``
         including the profiler's start/stop).
    Target (docs/design.md §9): median distortion <= 1.02.
(b) Time to answer: ``%%epochprofile --text`` with line attribution, the whole
    ``ip.run_cell`` timed from outside, vs the plain cell's whole ``ip.run_cell``,
    on an epoch of >= 5 s. Fewer pairs (each is long). Target: <= 1.3x.

Models: ``mlp`` = 3 Linear layers of width ``--width`` (default 512, batch 64: ~200
steps/s here, the "MLP loop doing >= 100 steps/s" of the target); ``deep`` = 50
Linear(64, 64)+ReLU pairs and a head (102 modules: the shape where global module
hooks cost most). Every condition runs once untimed first (imports, allocator
warm-up); the model keeps training across runs (its compute per step is constant).
"""

from __future__ import annotations

from typing import Any

import _common as c

SETUP = """
import time, torch
from torch import nn
from torch.utils.data import TensorDataset, DataLoader
from torch.profiler import profile as _tprofile, ProfilerActivity as _PA
torch.manual_seed(0)
torch.set_flush_denormal(True)  # a deep ReLU stack must not slow down on denormals

def _make_model(kind):
    if kind == "mlp":
        w = {width}
        return nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                             nn.Linear(w, 10)), w
    layers = []
    for _ in range(50):
        lin = nn.Linear(64, 64)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 10)), 64

model, _width = _make_model({kind!r})
X = torch.randn({steps} * 64, _width)
Y = torch.randint(0, 10, ({steps} * 64,))
train_loader = DataLoader(TensorDataset(X, Y), batch_size=64, shuffle=True)
opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
"""

LOOP = """
    for xb, yb in train_loader:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
"""

PLAIN = (
    "_t0 = time.perf_counter()\nfor epoch in range(1):"
    + LOOP
    + "_bench_s = time.perf_counter() - _t0\n"
)
MAGIC_NO_LINES = (
    "%%epochprofile --text --no-lines -o prof\n_t0 = time.perf_counter()\nfor epoch in range(2):"
    + LOOP
)
MAGIC_SAMPLED = (
    "%%epochprofile --text --lines sampled -o prof\n_t0 = time.perf_counter()\n"
    "for epoch in range(2):" + LOOP
)
MAGIC_LINES = (
    "%%epochprofile --text -o prof\n_t0 = time.perf_counter()\nfor epoch in range(2):" + LOOP
)
TORCH_PROFILER = (
    "_t0 = time.perf_counter()\n"
    "with _tprofile(activities=[_PA.CPU]) as _tp:\n"
    "    _t1 = time.perf_counter()\n"
    "    for epoch in range(1):"
    + LOOP.replace("\n    ", "\n        ")
    + "    _bench_s = time.perf_counter() - _t1\n"
    "_bench_total_s = time.perf_counter() - _t0\n"
    "del _tp\n"
)


WIDTH = [512]


def setup(ip: Any, kind: str, steps: int) -> None:
    c.run(ip, SETUP.format(kind=kind, steps=steps, width=WIDTH[0]))


def plain(ip: Any) -> float:
    c.run(ip, PLAIN)
    return float(c.ns(ip, "_bench_s"))


def calibrate(ip: Any, kind: str) -> float:
    """Seconds per step of the plain loop (after a warm-up epoch)."""
    setup(ip, kind, 100)
    plain(ip)
    return min(plain(ip), plain(ip)) / 100


def distortion(ip: Any, kind: str, rounds: int, epoch_s: float, step_s: float) -> bool:
    steps = max(100, round(epoch_s / step_s))
    setup(ip, kind, steps)
    print(
        f"(a) distortion, model {kind}: {steps} steps of batch 64, ~{1 / step_s:.0f} steps/s "
        f"plain (~{steps * step_s:.2f} s), {rounds} alternated rounds"
    )
    # one untimed run of each: imports, first-call costs, allocator warm-up
    plain(ip)
    c.run(ip, MAGIC_NO_LINES)
    c.run(ip, MAGIC_SAMPLED)
    c.run(ip, TORCH_PROFILER)

    m_ratio: list[float] = []
    s_ratio: list[float] = []  # the sampler on: reported, no target (docs/design.md §9)
    t_ratio: list[float] = []
    t_total_ratio: list[float] = []
    p_times: list[float] = []
    m_times: list[float] = []
    m_answer: list[float] = []
    per_step_us: list[float] = []
    rows = []
    for i, order in c.alternated(["P", "M", "S", "T"], rounds):
        got: dict[str, Any] = {}
        for cond in order:
            if cond == "P":
                got["P"] = plain(ip)
            elif cond == "M":
                run = c.run(ip, MAGIC_NO_LINES)
                prof = c.ns(ip, "prof")
                assert prof.status == "ok" and prof.stop_reason == "epoch", prof
                assert prof.steps == steps, (prof.steps, steps)
                got["M"] = prof.wall_s
                got["M_answer"] = run.seconds
            elif cond == "S":
                c.run(ip, MAGIC_SAMPLED)
                prof = c.ns(ip, "prof")
                assert prof.lines_source == "sampled", prof.notes
                got["S"] = prof.wall_s
            else:
                c.run(ip, TORCH_PROFILER)
                got["T"] = float(c.ns(ip, "_bench_s"))
                got["T_total"] = float(c.ns(ip, "_bench_total_s"))
        p = got["P"]
        p_times.append(p)
        m_times.append(got["M"])
        m_answer.append(got["M_answer"])
        m_ratio.append(got["M"] / p)
        s_ratio.append(got["S"] / p)
        per_step_us.append((got["M"] - p) / steps * 1e6)
        t_ratio.append(got["T"] / p)
        t_total_ratio.append(got["T_total"] / p)
        rows.append(
            [
                i + 1,
                " ".join(order),
                f"{p:.3f}",
                f"{got['M']:.3f}",
                f"{got['M'] / p:.3f}",
                f"{got['S'] / p:.3f}",
                f"{got['T']:.3f}",
                f"{got['T'] / p:.3f}",
                f"{got['T_total'] / p:.3f}",
            ]
        )
    print(
        c.table(
            [
                "round",
                "order",
                "plain s",
                "magic wall_s",
                "ratio",
                "sampled ratio",
                "torch.prof s",
                "ratio",
                "incl. start/stop",
            ],
            rows,
        )
    )
    print()
    print(
        c.table(
            ["", "median (min..max)"],
            [
                ["plain epoch, s", c.spread(p_times)],
                ["magic wall_s, s", c.spread(m_times)],
                ["magic whole cell --no-lines, s", c.spread(m_answer)],
                ["distortion wall_s / plain", c.spread(m_ratio)],
                ["same, lines sampled (--lines sampled)", c.spread(s_ratio)],
                [
                    "distortion of the fastest runs (min / min)",
                    f"{min(m_times) / min(p_times):.3f}",
                ],
                ["probe cost per step, us", c.spread(per_step_us, "{:.1f}")],
                ["torch.profiler loop / plain", c.spread(t_ratio)],
                ["torch.profiler incl. start/stop / plain", c.spread(t_total_ratio)],
            ],
        )
    )
    med = c.median(m_ratio)
    ok = med <= 1.02
    c.verdict(
        f"(a) distortion [{kind}]",
        ok,
        f"median wall_s/plain = {med:.3f} ({c.pct(med - 1)}), target <= 1.02 "
        f"(spread {min(m_ratio):.3f}..{max(m_ratio):.3f}, {len(m_ratio)} rounds); "
        f"torch.profiler {c.median(t_ratio):.2f}x",
    )
    cost = c.median(per_step_us)
    print(
        f"      at {cost:.0f} us per step the distortion would be {c.pct(cost * 1e-6 * 100)} at "
        f"100 steps/s, {c.pct(cost * 1e-6 * 300)} at 300, {c.pct(cost * 1e-6 * 1000)} at 1000"
    )
    return ok


def answer_time(ip: Any, kind: str, pairs: int, epoch_s: float, step_s: float) -> bool:
    steps = max(100, round(epoch_s / step_s))
    setup(ip, kind, steps)
    print(
        f"\n(b) time to answer with --text and line attribution, model {kind}: {steps} steps "
        f"(~{steps * step_s:.1f} s plain), {pairs} alternated pairs (each run is long)"
    )
    rows = []
    ratios: list[float] = []
    for i, order in c.alternated(["P", "M"], pairs):
        got: dict[str, Any] = {}
        for cond in order:
            if cond == "P":
                run = c.run(ip, PLAIN)
                got["P"] = run.seconds
                got["P_in"] = float(c.ns(ip, "_bench_s"))
            else:
                run = c.run(ip, MAGIC_LINES)
                prof = c.ns(ip, "prof")
                assert prof.status == "ok" and prof.stop_reason == "epoch", prof
                got["M"] = run.seconds
                got["wall"] = prof.wall_s
                got["lines_steps"] = prof.lines_steps
                got["lines"] = len(prof.lines)
        ratio = got["M"] / got["P"]
        ratios.append(ratio)
        rows.append(
            [
                i + 1,
                " ".join(order),
                f"{got['P']:.2f}",
                f"{got['M']:.2f}",
                f"{got['wall']:.2f}",
                f"{got['M'] - got['wall']:.2f}",
                f"{got['lines_steps']} / {got['lines']}",
                f"{ratio:.3f}",
            ]
        )
    print(
        c.table(
            [
                "pair",
                "order",
                "plain cell s",
                "magic cell s",
                "of it wall_s",
                "rest s",
                "traced steps / lines",
                "ratio",
            ],
            rows,
        )
    )
    med = c.median(ratios)
    ok = med <= 1.3
    c.verdict(
        f"(b) time to answer [{kind}]",
        ok,
        f"median whole magic cell / plain cell = {med:.3f}x, target <= 1.3x "
        f"(spread {min(ratios):.3f}..{max(ratios):.3f}, {len(ratios)} pairs)",
    )
    return ok


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["mlp", "deep", "both"], default="mlp")
    p.add_argument("--rounds", type=int, default=None, help="rounds for (a) (default 12, quick 4)")
    p.add_argument("--pairs", type=int, default=None, help="pairs for (b) (default 5, quick 1)")
    p.add_argument("--epoch", type=float, default=1.0, help="plain epoch for (a), s (default 1)")
    p.add_argument("--long-epoch", type=float, default=6.0, help="plain epoch for (b), s (>= 5)")
    p.add_argument("--width", type=int, default=512, help="mlp width (default 512)")
    p.add_argument("--skip-answer", action="store_true", help="only run (a)")
    args = p.parse_args()
    rounds = args.rounds or (4 if args.quick else 20)
    WIDTH[0] = args.width
    pairs = args.pairs or (1 if args.quick else 5)
    ip = c.start_shell(args.threads)
    c.header("epochmagic overhead", args)
    kinds = ["mlp", "deep"] if args.model == "both" else [args.model]
    results = []
    for kind in kinds:
        step_s = calibrate(ip, kind)
        results.append(distortion(ip, kind, rounds, args.epoch, step_s))
        if not args.skip_answer:
            results.append(answer_time(ip, kind, pairs, args.long_epoch, step_s))
        print()
    c.footer_load()
    print(
        f"overall: {'PASS' if all(results) else 'FAIL'} ({sum(results)}/{len(results)} targets met)"
    )


if __name__ == "__main__":
    c.main_guard(main)
