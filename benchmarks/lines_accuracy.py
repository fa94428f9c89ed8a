"""Do sampled lines recover planted line costs within 3 points of the epoch?

    python benchmarks/lines_accuracy.py [--quick] [--seconds S] [--repeats N]

A tiny model (Linear 16 -> 4) trains for about ``--seconds`` (default 5) with
three planted costs per step, each a sleep timed by the cell itself:

    cell       one line of the cell sleeps 3 ms per step           (~30 % of a step)
    function   a notebook-defined function's line sleeps 2 ms       (~20 %)
    library    a cell line calls into a library (threading's
               Event.wait, pure Python around a lock) for 1 ms      (~10 %)

plus a 3.5 ms filler line, so a step is about 10 ms. ``%%epochprofile --lines
sampled`` samples the measured epoch; a planted line's sampled share is its
``time_s / wall_s``, its true share the planted seconds the cell timed divided
by the same ``wall_s``. PASS when the median over the repeats of each line's
|sampled - true| is within 3 points (docs/design.md §9).
"""

from __future__ import annotations

from typing import Any

import _common as c

SETUP = """
import threading, time
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

PLANT = {{"cell": 0.003, "function": 0.002, "library": 0.001, "filler": 0.0035}}
ACC = dict.fromkeys(PLANT, 0.0)

def notebook_work(seconds):
    time.sleep(seconds)  # planted: a notebook-defined function's line

torch.manual_seed(0)
model = nn.Linear(16, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
loader = DataLoader(TensorDataset(torch.randn({steps} * 8, 16), torch.randint(0, 4, ({steps} * 8,))),
                    batch_size=8)
event = threading.Event()
"""

CELL = """%%epochprofile -o prof --text --lines sampled
for epoch in range(2):
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        t0 = time.perf_counter()
        time.sleep(PLANT["cell"])  # planted: the cell's line
        t1 = time.perf_counter()
        notebook_work(PLANT["function"])
        t2 = time.perf_counter()
        event.wait(PLANT["library"])  # planted: a library call
        t3 = time.perf_counter()
        time.sleep(PLANT["filler"])
        t4 = time.perf_counter()
        ACC["cell"] += t1 - t0; ACC["function"] += t2 - t1; ACC["library"] += t3 - t2
"""

# how each planted line is found among prof.lines: a piece of its source
MARKS = {
    "cell": 'time.sleep(PLANT["cell"])',
    "function": "time.sleep(seconds)",
    "library": 'event.wait(PLANT["library"])',
}


def one_run(ip: Any) -> dict[str, tuple[float, float]]:
    """{line: (true share, sampled share)} of one profiled epoch."""
    c.run(ip, "ACC.update(dict.fromkeys(ACC, 0.0))")
    c.run(ip, CELL)
    prof = c.ns(ip, "prof")
    if prof.lines_source != "sampled":
        raise c.CellFailed(f"lines_source is {prof.lines_source!r}: {prof.notes}")
    acc = c.ns(ip, "ACC")
    out = {}
    for key, mark in MARKS.items():
        lines = [ls for ls in prof.lines if mark in ls.source]
        sampled = max((ls.time_s for ls in lines), default=0.0) / prof.wall_s
        out[key] = (acc[key] / prof.wall_s, sampled)
    return out


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="epoch length (default 5 s)")
    p.add_argument("--repeats", type=int, default=None, help="profiled runs (default 5)")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    seconds = 1.0 if args.quick else args.seconds
    steps = max(20, int(seconds / 0.0098))
    ip = c.start_shell(args.threads if args.threads is not None else 1)
    c.header(
        "epochmagic sampled lines: planted line costs",
        args,
        f"{steps} steps of ~10 ms (~{seconds:g} s epoch), {repeats} profiled run(s); planted "
        "30 % in a cell line, 20 % in a notebook function, 10 % in a library call",
    )
    c.run(ip, SETUP.format(steps=steps))
    runs = [one_run(ip) for _ in range(repeats)]
    rows, worst = [], 0.0
    for key in MARKS:
        true = [r[key][0] for r in runs]
        sampled = [r[key][1] for r in runs]
        errors = [abs(s - t) * 100 for t, s in zip(true, sampled)]
        med = c.median(errors)
        worst = max(worst, med)
        rows.append(
            [
                key,
                c.spread([t * 100 for t in true], "{:.1f} %"),
                c.spread([s * 100 for s in sampled], "{:.1f} %"),
                f"{med:.1f} pt",
                "ok" if med <= 3 else "off",
            ]
        )
    print(c.table(["planted line", "true share", "sampled share", "median |error|", ""], rows))
    print()
    c.footer_load()
    c.verdict(
        "planted line shares recovered",
        worst <= 3,
        f"worst median error {worst:.1f} points over the cell line, the notebook function and "
        "the library call; target <= 3 points",
    )


if __name__ == "__main__":
    c.main_guard(main)
