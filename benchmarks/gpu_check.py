"""The device check of issue 6: what CUDA-event attribution gets right on a real GPU.

One script, one process, under 5 minutes on one H100/H200. It drives
``%%epochprofile`` through a real IPython shell on five loops and prints one
table (check, measured, target, PASS/FAIL):

A. a GPU-heavy forward followed by ``loss.item()``: forward >= 80 % of the
   step, other <= 10 % (host timing alone, shown beside it, says the opposite);
   one sync per step found at the ``.item()`` line;
B. an input-bound loop (CPU work per sample, light model): data dominant, GPU
   idle, ``data_loading`` and ``gpu_idle`` among the findings;
C. pinned vs pageable batches (``rerun(pin_memory=True)``): transfer ms/step
   and GB/s, both measured;
D. ``rerun(precision="bf16")`` and ``"fp16"`` (with the cell's GradScaler)
   against fp32 (TF32 as torch defaults it): measured speed-up, peak memory,
   MFU against the datasheet;
E. distortion: ``wall_s`` of the profiled epoch vs the same epoch run plainly,
   alternated pairs, median (target <= 3 %), on a GPU-bound loop; F. the same on a
   host-bound loop, where every clock reading is on the critical path (the worst
   case, reported without a target); the cost of one clock reading.

On a machine without an IDE for IPython (the lent GPU machines), carry the
wheels from ``benchmarks/gpu_wheels.sh``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
      && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py

``--smoke`` runs the same cells on the CPU with tiny sizes (no verdicts): a
check that the script itself works where there is no GPU.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from _common import main_guard, median, ns, parser, quiet, run, start_shell, table

SETUP = """
import time, torch, torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
dev = {device!r}
torch.manual_seed(0)
loss_fn = nn.CrossEntropyLoss()

class Frozen(nn.Module):
    '''A heavy frozen body and a small trained head: the step is the forward.'''
    def __init__(self, width, depth):
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU())
                                    for _ in range(depth)])
        self.body.requires_grad_(False)
        self.head = nn.Linear(width, 10)
    def forward(self, x):
        with torch.no_grad():
            h = self.body(x)
        return self.head(h)

class Decoded(Dataset):
    '''Samples that cost the CPU `ms` each to produce (decode, augment).'''
    def __init__(self, n, width, ms):
        self.x, self.y, self.ms = torch.randn(n, width), torch.randint(0, 10, (n,)), ms
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        end = time.perf_counter() + self.ms / 1000
        while time.perf_counter() < end:
            pass
        return self.x[i], self.y[i]

def on_device(batches, repeat):
    '''Pre-made batches already on the device, handed out as they are.'''
    return DataLoader(batches * repeat, batch_size=None)

def mlp(width, depth):
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.GELU())]
    return nn.Sequential(*layers, nn.Linear(width, 10)).to(dev)
"""

SIZES = {
    # name: (gpu, smoke)
    "a_width": (8192, 256),
    "a_depth": (12, 2),
    "a_batch": (1024, 16),
    "a_steps": (40, 8),
    "b_width": (1024, 64),
    "b_batch": (64, 8),
    "b_steps": (30, 6),
    "b_ms": (0.2, 0.2),
    "c_batch": (64, 4),
    "c_steps": (30, 6),
    "c_side": (224, 32),
    "d_width": (4096, 128),
    "d_depth": (6, 2),
    "d_batch": (1024, 16),
    "d_steps": (25, 6),
    "e_width": (4096, 128),  # GPU-bound: ~5 ms of fp32 matmuls per step on an H100
    "e_depth": (4, 2),
    "e_batch": (512, 16),
    "e_steps": (120, 24),
    "f_width": (1024, 64),  # host-bound: every clock reading is on the critical path
    "f_depth": (2, 2),
    "f_batch": (128, 16),
    "f_steps": (300, 24),
    "pairs": (8, 2),
}

A = """
model_a = Frozen({a_width}, {a_depth}).to(dev)
opt_a = torch.optim.SGD(model_a.head.parameters(), lr=0.01)
loader_a = on_device([(torch.randn({a_batch}, {a_width}, device=dev),
                       torch.randint(0, 10, ({a_batch},), device=dev)) for _ in range(4)],
                     {a_steps} // 4)
losses = []
"""
A_LOOP = """
for xb, yb in loader_a:
    loss = loss_fn(model_a(xb), yb)
    opt_a.zero_grad()
    loss.backward()
    opt_a.step()
    losses.append(loss.item())
"""

B = """
model_b = mlp({b_width}, 2)
opt_b = torch.optim.SGD(model_b.parameters(), lr=0.01)
loader_b = DataLoader(Decoded({b_batch} * {b_steps}, {b_width}, {b_ms}), batch_size={b_batch})
"""
B_LOOP = """%%epochprofile -o prof_b --text --no-lines
for xb, yb in loader_b:
    xb, yb = xb.to(dev), yb.to(dev)
    loss = loss_fn(model_b(xb), yb)
    opt_b.zero_grad(); loss.backward(); opt_b.step()
"""

C = """
images = torch.randn({c_batch} * {c_steps}, 3, {c_side}, {c_side})
loader_c = DataLoader(TensorDataset(images, torch.randint(0, 10, (len(images),))),
                      batch_size={c_batch})
model_c = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10)).to(dev)
opt_c = torch.optim.SGD(model_c.parameters(), lr=0.01)
"""
C_LOOP = """%%epochprofile -o prof_c --text --no-lines
for xb, yb in loader_c:
    xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
    loss = loss_fn(model_c(xb), yb)
    opt_c.zero_grad(); loss.backward(); opt_c.step()
"""

D = """
model_d = mlp({d_width}, {d_depth})
opt_d = torch.optim.AdamW(model_d.parameters(), lr=1e-4)
scaler = torch.amp.GradScaler(dev, enabled=dev == "cuda")
loader_d = on_device([(torch.randn({d_batch}, {d_width}, device=dev),
                       torch.randint(0, 10, ({d_batch},), device=dev)) for _ in range(4)], 20)
"""
D_LOOP = """%%epochprofile -o prof_d --text --no-lines --steps {d_steps}
for xb, yb in loader_d:
    loss = loss_fn(model_d(xb), yb)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt_d)
    scaler.update()
"""

E = """
model_e = mlp({width}, {depth})
opt_e = torch.optim.AdamW(model_e.parameters(), lr=1e-4)
loader_e = on_device([(torch.randn({batch}, {width}, device=dev),
                       torch.randint(0, 10, ({batch},), device=dev)) for _ in range(6)],
                     {steps} // 6)
running = torch.zeros((), device=dev)
"""
E_LOOP = """
for xb, yb in loader_e:
    loss = loss_fn(model_e(xb), yb)
    opt_e.zero_grad(); loss.backward(); opt_e.step()
    running += loss.detach()
if dev == "cuda":
    torch.cuda.synchronize()
"""
E_PLAIN = """
if dev == "cuda":
    torch.cuda.synchronize()
_t0 = time.perf_counter()
{loop}
plain_s = time.perf_counter() - _t0
"""


def in_steps(prof: Any, phase: str) -> float:
    return sum(sp[phase] for sp in prof.step_phases)


def share(prof: Any, phase: str) -> float:
    return in_steps(prof, phase) / (sum(prof.step_times) or 1e-12)


def ms_per_step(prof: Any, phase: str) -> float:
    return in_steps(prof, phase) / max(1, prof.steps) * 1000


class Checks:
    def __init__(self, smoke: bool) -> None:
        self.rows: list[list[str]] = []
        self.smoke = smoke

    def add(self, name: str, measured: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None or self.smoke else ("PASS" if ok else "FAIL")
        self.rows.append([name, measured, target, verdict])
        print(f"  {name}: {measured}" + (f"  [{target}] {verdict}" if target else ""), flush=True)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, no verdicts")
    p.add_argument("--out", metavar="DIR", help="also save each scenario's profile as JSON here")
    args = p.parse_args()
    import torch

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device here: run with --smoke for a CPU check of the script itself")
        return
    size = {k: v[1 if args.smoke else 0] for k, v in SIZES.items()}
    device = "cuda" if cuda else "cpu"
    print("== epochmagic GPU check (issue 6) ==")
    print(f"torch {torch.__version__}, device {device}", end="")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        print(
            f" = {props.name}, {props.total_memory / 2**30:.0f} GiB, capability "
            f"{props.major}.{props.minor}, TF32 matmul "
            f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} (torch default)",
            end="",
        )
    print("\n")
    ip = start_shell()
    run(ip, SETUP.format(device=device))
    checks = Checks(args.smoke)

    # A: heavy forward + .item() -------------------------------------------------------
    print("A. GPU-heavy forward followed by loss.item()", flush=True)
    run(ip, A.format(**size))
    from epochmagic import cudaclock

    made = cudaclock.make_clock
    cudaclock.make_clock = lambda: None  # the host clock alone: what naive timers see
    try:
        run(ip, "%%epochprofile -o prof_host --text --no-lines\n" + A_LOOP)
    finally:
        cudaclock.make_clock = made
    run(ip, A.format(**size))
    run(ip, "%%epochprofile -o prof_a --text --no-lines\n" + A_LOOP)
    a, host = ns(ip, "prof_a"), ns(ip, "prof_host")
    checks.add(
        "A forward share of the step",
        f"{share(a, 'forward'):.1%} (host clock alone: {share(host, 'forward'):.1%})",
        ">= 80 %",
        share(a, "forward") >= 0.80,
    )
    checks.add(
        "A other share of the step",
        f"{share(a, 'other'):.1%} (host clock alone: {share(host, 'other'):.1%})",
        "<= 10 %",
        share(a, "other") <= 0.10,
    )
    gpu = a.gpu or {}
    sites = gpu.get("sync_sites") or [{}]
    checks.add(
        "A syncs per step, at the .item() line",
        f"{gpu.get('syncs_per_step', float('nan')):.2f} at `{sites[0].get('source', '?')}`",
        "1.00 at losses.append(loss.item())",
        abs(gpu.get("syncs_per_step", 0) - 1) < 0.05
        and "loss.item()" in sites[0].get("source", ""),
    )
    checks.add(
        "A host waited / GPU idle",
        f"{_pct(gpu.get('host_wait_share'))} / {_pct(gpu.get('idle_share'))} of the epoch "
        f"(idle in steps {_pct(gpu.get('idle_in_steps_share_low'))}.."
        f"{_pct(gpu.get('idle_in_steps_share'))}); MFU {_pct(gpu.get('mfu'))}",
    )

    # B: input-bound -------------------------------------------------------------------
    print("B. input-bound loop", flush=True)
    run(ip, B.format(**size))
    run(ip, B_LOOP)
    b = ns(ip, "prof_b")
    codes = [f.code for f in b.findings]
    checks.add(
        "B data share of the step",
        f"{share(b, 'data'):.1%}; GPU idle in steps "
        f"{_pct((b.gpu or {}).get('idle_in_steps_share_low'))}.."
        f"{_pct((b.gpu or {}).get('idle_in_steps_share'))}",
        "data the largest phase, >= 60 %",
        share(b, "data") >= 0.6 and max(b.phases, key=b.phases.get) == "data",
    )
    checks.add(
        "B findings",
        ", ".join(codes[:4]),
        "data_loading and gpu_idle",
        "data_loading" in codes and "gpu_idle" in codes,
    )

    # C: pinned vs pageable --------------------------------------------------------------
    print("C. pinned vs pageable batches", flush=True)
    run(ip, C.format(**size))
    run(ip, C_LOOP)
    c = ns(ip, "prof_c")
    with quiet():  # the progress bar
        pinned = c.rerun(pin_memory=True, steps=size["c_steps"])
    for label, prof in (("pageable", c), ("pinned", pinned)):
        tr = (prof.gpu or {}).get("transfer") or {}
        bytes_step = (tr.get("bytes") or 0) / max(1, prof.steps)
        ms = ms_per_step(prof, "transfer")
        rate = bytes_step / (ms / 1000) / 1e9 if ms else float("nan")
        checks.add(
            f"C transfer, {label}",
            f"{ms:.2f} ms/step, {bytes_step / 2**20:.1f} MiB/step, {rate:.1f} GB/s, "
            f"pinned share {_pct(tr.get('pinned_share'))}; status {prof.status}",
        )
    if pinned.status == "ok" and c.steps:
        gain = ms_per_step(c, "transfer") / max(ms_per_step(pinned, "transfer"), 1e-9)
        checks.add(
            "C pinned transfer speed-up",
            f"{gain:.2f}x transfer, {c.epoch_s / pinned.epoch_s:.2f}x epoch",
            "pinned faster",
            gain > 1.0,
        )

    # D: precision ------------------------------------------------------------------------
    print("D. bf16 and fp16 what-ifs against fp32", flush=True)
    run(ip, D.format(**size))
    run(ip, D_LOOP.format(**size))
    d = ns(ip, "prof_d")
    base_step = statistics.median(d.step_times[2:] or d.step_times)
    checks.add(
        "D fp32 baseline",
        f"{base_step * 1000:.2f} ms/step, peak {_gib(d.memory.get('peak_bytes'))} allocated, "
        f"MFU {_pct((d.gpu or {}).get('mfu'))} ({(d.gpu or {}).get('peak_source')})",
    )
    for precision in ("bf16", "fp16"):
        with quiet():
            r = d.rerun(precision=precision, steps=size["d_steps"])
        if r.status != "ok":
            checks.add(f"D {precision}", f"{r.status}: {r.error}", "runs", False)
            continue
        step = statistics.median(r.step_times[2:] or r.step_times)
        notes = [n for n in r.notes if "GradScaler" in n]
        checks.add(
            f"D {precision} speed-up over fp32",
            f"{base_step / step:.2f}x ({step * 1000:.2f} ms/step), peak "
            f"{_gib(r.memory.get('peak_bytes'))}, MFU {_pct((r.gpu or {}).get('mfu'))}"
            + (f"; {notes[0]}" if notes else ""),
            "> 1x",
            base_step / step > 1.0,
        )

    # E: distortion --------------------------------------------------------------------------
    made_clocks: list[Any] = []

    def keep() -> Any:  # the last profiled run's clock: how many readings per step
        clock = made()
        made_clocks[:] = [clock]
        return clock

    cudaclock.make_clock = keep
    try:
        for key, title, target in (
            ("e", "E distortion, GPU-bound loop", True),
            ("f", "F distortion, host-bound loop (worst case)", False),
        ):
            print(f"{title}", flush=True)
            plain, measured, prof = distortion(ip, size, key)
            ratios = [m / p for m, p in zip(measured, plain)]
            dist = median(measured) / median(plain) - 1
            step_s = median(plain) / max(1, prof.steps)
            checks.add(
                f"{title} (wall_s vs plain)",
                f"{dist:+.1%}; per pair {min(ratios) - 1:+.1%}..{max(ratios) - 1:+.1%}; "
                f"{prof.steps} steps of {step_s * 1000:.2f} ms",
                "<= 3 %" if target else "",
                dist <= 0.03 if target else None,
            )
            if cuda and made_clocks:
                per = reading_cost(cudaclock)
                readings = len(made_clocks[0].hosts) / max(1, prof.steps)
                checks.add(
                    f"{key.upper()} clock readings (CUDA events)",
                    f"{per * 1e6:.2f} us each x {readings:.1f} per step = "
                    f"{per * readings / step_s:.1%} of a plain step's host time",
                )
    finally:
        cudaclock.make_clock = made

    if args.out:
        from pathlib import Path

        Path(args.out).mkdir(parents=True, exist_ok=True)
        for name in ("prof_host", "prof_a", "prof_b", "prof_c", "prof_d", "prof_e"):
            if name in ip.user_ns:
                ns(ip, name).save(Path(args.out) / f"{name}.json")
    print()
    print(table(["check", "measured", "target", ""], checks.rows))
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")


def distortion(ip: Any, size: dict[str, Any], key: str) -> tuple[list[float], list[float], Any]:
    """Alternated pairs of the same epoch, plain (timed around the loop, with a
    final synchronize) and profiled (``wall_s``)."""
    run(
        ip,
        E.format(
            width=size[f"{key}_width"],
            depth=size[f"{key}_depth"],
            batch=size[f"{key}_batch"],
            steps=size[f"{key}_steps"],
        ),
    )
    run(ip, E_PLAIN.format(loop=E_LOOP))  # warm-up: allocator, cuBLAS handles
    plain, measured = [], []
    for i in range(size["pairs"]):
        order = ("plain", "profiled") if i % 2 == 0 else ("profiled", "plain")
        for kind in order:
            if kind == "plain":
                run(ip, E_PLAIN.format(loop=E_LOOP))
                plain.append(ns(ip, "plain_s"))
            else:
                run(ip, "%%epochprofile -o prof_e --text --no-lines\n" + E_LOOP)
                measured.append(ns(ip, "prof_e").wall_s)
    return plain, measured, ns(ip, "prof_e")


def reading_cost(cudaclock: Any, n: int = 20000) -> float:
    """Seconds per clock reading (an event recorded on the current stream)."""
    clock = cudaclock.CudaClock()
    clock.begin()
    t0 = time.perf_counter()
    for _ in range(n):
        clock.now()
    per = (time.perf_counter() - t0) / n
    clock.finish()
    return per


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _gib(x: float | None) -> str:
    return "n/a" if not x else f"{x / 2**30:.2f} GiB"


if __name__ == "__main__":
    main_guard(main)
