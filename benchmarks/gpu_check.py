"""The device check: what CUDA-event attribution gets right on a real GPU.

One script, one process, a few minutes on one H100/H200. It drives
``%%epochprofile`` through a real IPython shell on several loops and prints one
table (check, measured, target, PASS/FAIL); every row has a target:

T. per-phase truth: a loop with a DataLoader over a CPU dataset (a little CPU
   work per sample), a blocking pageable host-to-device copy of 16 MiB per step,
   an MLP forward, backward, an AdamW step and ``losses.append(loss.item())``,
   run plainly with a ``torch.cuda.synchronize()`` at every phase boundary and
   each phase timed by hand, against the same loop without those syncs under
   ``%%epochprofile``: each phase's share of the in-step time within 5 points
   of the truth's;
A. a GPU-heavy forward followed by ``loss.item()``: forward >= 80 % of the
   step, other <= 10 % (host timing alone, shown beside it, says the opposite);
   1.00 sync per step, at ``losses.append(loss.item())``; GPU idle in the steps
   <= 10 %; MFU <= 100 % (its ``mfu_note`` shown when there is none);
B. an input-bound loop (CPU work per sample, light model): data the largest
   phase (>= 60 %), ``data_loading`` and ``gpu_idle`` among the findings;
C. pinned vs pageable batches (``rerun(pin_memory=True)``): transfer ms/step
   and GB/s; bytes per step = the batch's bytes; pinned faster;
D. ``rerun(precision="bf16")`` and ``"fp16"`` (with the cell's GradScaler)
   against fp32 (TF32 as torch defaults it): speed-up > 1x, MFU <= 100 % in
   each precision, and MFU agrees across precisions (the ratio of achieved
   FLOP/s = the measured speed-up within 10 %: both count the same FLOPs);
E. distortion: ``wall_s`` of the profiled epoch vs the same epoch run plainly,
   alternated pairs, median, on a GPU-bound loop (<= 1 %), no ``gpu_idle``
   among its findings; F. the same on a host-bound loop (~1.7 ms steps), where
   every clock reading is on the critical path (<= 5 %); the clock's record
   path and the cost of one reading (<= 3 us);
H. a Hugging Face ``Trainer`` on a tiny BERT built from a config (nothing
   downloaded) around ``trainer.train()``: status ok, steps = the Trainer's
   steps = ``max_steps``, the phases (``other`` in particular) sum to
   ``wall_s``; skipped, with a message, where transformers is not importable;
G. ``torch.compile`` (inductor) with one graph break and a smaller last batch
   (a recompile), run plainly and profiled on fresh identical models: torch's
   own graph-break and unique-graph counters equal, ``prof.compile``'s
   recompiles = the plain run's, steps = ``len(loader)``, compile seconds > 0,
   the ``compile`` finding; with ``--skip-epochs 1`` over two epochs
   ``compile_s == 0`` and ``compiled_calls > 0``; ``mode="reduce-overhead"``
   (CUDA graphs, ``drop_last=True``): status ok, steps = ``len(loader)``,
   counters equal plain.

On any machine with CUDA, IPython and this checkout::

    python benchmarks/gpu_check.py            # the table
    python benchmarks/gpu_check.py --out DIR  # and each profile as JSON in DIR

It exits 0 whatever the verdicts (2 if the script itself breaks in ``--smoke``).
On a machine without IPython (and no network), copy over the wheels that
``benchmarks/gpu_wheels.sh`` downloads elsewhere into ``.whl/``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \\
      && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py

``--smoke`` runs the same cells on the CPU with tiny sizes and prints no
verdicts (``torch.compile`` with ``backend="eager"``, rows that need CUDA say
so): a check that the script itself works where there is no GPU (CI runs it).
"""

from __future__ import annotations

import contextlib
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from _common import (
    CellFailed,
    alternated,
    main_guard,
    median,
    ns,
    parser,
    quiet,
    run,
    start_shell,
    table,
)

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
    "t_features": (16384, 256),  # x t_batch x 4 bytes = 16 MiB per step on the GPU
    "t_batch": (256, 16),
    "t_width": (4096, 64),
    "t_depth": (2, 1),
    "t_steps": (30, 16),
    "t_rounds": (2, 1),
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
    "h_steps": (40, 4),
    "h_batch": (32, 4),
    "h_seq": (64, 16),
    "g_width": (1024, 32),
    "g_batch": (256, 8),
    "g_steps": (12, 4),  # full batches; one more, half as large, follows
}

T_PHASES = ("data", "transfer", "forward", "backward", "optimizer", "other")

T = """
class Augmented(Dataset):
    '''Rows that cost the CPU a little each (a scale and a shift), collated
    into one pageable batch per step.'''
    def __init__(self, n, features):
        self.x, self.y = torch.randn(n, features), torch.randint(0, 10, (n,))
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i] * 0.5 + 0.25, self.y[i]

torch.manual_seed(0)
model_t = nn.Sequential(
    nn.Linear({t_features}, {t_width}), nn.GELU(),
    *[m for _ in range({t_depth}) for m in (nn.Linear({t_width}, {t_width}), nn.GELU())],
    nn.Linear({t_width}, 10)).to(dev)
opt_t = torch.optim.AdamW(model_t.parameters(), lr=1e-4)
loader_t = DataLoader(Augmented({t_batch} * {t_steps}, {t_features}), batch_size={t_batch})
losses_t = []

def sync():
    if dev == "cuda":
        torch.cuda.synchronize()

def truth_epoch():
    '''T_LOOP with a synchronize at every phase boundary, each phase timed by hand.'''
    took = dict.fromkeys({phases!r}, 0.0)
    sync()
    t = time.perf_counter()
    for xb, yb in loader_t:
        t0 = time.perf_counter()
        xb, yb = xb.to(dev, non_blocking=False), yb.to(dev, non_blocking=False)
        sync()
        t1 = time.perf_counter()
        loss = loss_fn(model_t(xb), yb)
        sync()
        t2 = time.perf_counter()
        loss.backward()
        sync()
        t3 = time.perf_counter()
        opt_t.step()
        opt_t.zero_grad()
        sync()
        t4 = time.perf_counter()
        losses_t.append(loss.item())
        took["data"] += t0 - t
        took["transfer"] += t1 - t0
        took["forward"] += t2 - t1
        took["backward"] += t3 - t2
        took["optimizer"] += t4 - t3
        t = time.perf_counter()
        took["other"] += t - t4
    return took
"""
T_LOOP = """%%epochprofile -o prof_t --text --no-lines
for xb, yb in loader_t:
    xb, yb = xb.to(dev, non_blocking=False), yb.to(dev, non_blocking=False)
    loss = loss_fn(model_t(xb), yb)
    loss.backward()
    opt_t.step()
    opt_t.zero_grad()
    losses_t.append(loss.item())
"""

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

H = """
import tempfile
import transformers
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
transformers.utils.logging.set_verbosity_error()

class Tokens(Dataset):
    '''Synthetic token ids, attention masks and labels: nothing downloaded.'''
    def __init__(self, n, seq, vocab):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {{"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}}

torch.manual_seed(0)
model_h = BertForSequenceClassification(BertConfig(
    vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=128, max_position_embeddings=64))
tmp_h = tempfile.TemporaryDirectory(prefix="gpu_check_h_")
trainer = Trainer(
    model=model_h,
    args=TrainingArguments(
        output_dir=tmp_h.name, max_steps={h_steps}, per_device_train_batch_size={h_batch},
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=dev != "cuda"),
    train_dataset=Tokens({h_batch} * {h_steps}, {h_seq}, 1000))
"""
H_LOOP = """%%epochprofile -o prof_h --text --no-lines
trainer.train()
"""

G = """
import torch._dynamo

class Broken(nn.Module):
    '''An MLP with one graph break in its forward.'''
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                  nn.Linear(width, width), nn.GELU())
        self.head = nn.Linear(width, 10)
    def forward(self, x):
        h = self.body(x)
        torch._dynamo.graph_break()
        return self.head(h)

def fresh_g(**kw):
    '''The same model compiled afresh: dynamo's caches (and what it learnt
    about shapes) reset first, so every run compiles as the first did.'''
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = torch.compile(Broken({g_width}).to(dev), **kw)
    return model, torch.optim.SGD(model.parameters(), lr=0.01)

g_backend = {{}} if dev == "cuda" else {{"backend": "eager"}}  # inductor on CUDA
n_g = {g_batch} * {g_steps} + {g_batch} // 2  # a smaller last batch: a new shape
data_g = TensorDataset(torch.randn(n_g, {g_width}), torch.randint(0, 10, (n_g,)))
loader_g = DataLoader(data_g, batch_size={g_batch})
loader_g_full = DataLoader(data_g, batch_size={g_batch}, drop_last=True)
"""
G_LOOP = """
for xb, yb in {loader}:
    xb, yb = xb.to(dev), yb.to(dev)
    loss = loss_fn(model_g(xb), yb)
    opt_g.zero_grad(); loss.backward(); opt_g.step()
"""
G_EPOCHS = """
for epoch in range(2):
    for xb, yb in loader_g:
        xb, yb = xb.to(dev), yb.to(dev)
        loss = loss_fn(model_g(xb), yb)
        opt_g.zero_grad(); loss.backward(); opt_g.step()
"""
SYNC = "\nif dev == 'cuda':\n    torch.cuda.synchronize()\n"

S = """
import io, contextlib
model_s = mlp(512, 2)
opt_s = torch.optim.SGD(model_s.parameters(), lr=0.01)
loader_s = DataLoader(TensorDataset(torch.randn(16 * 8, 512), torch.randint(0, 10, (16 * 8,))),
                      batch_size=16)
quiet_s = io.StringIO()
"""
# each kind of synchronising call on a line of its own (the loop's line numbers
# below are the cell's: the magic line is line 1)
S_KINDS = {
    ".item()": "a = loss.item()",
    ".cpu()": "b = loss.detach().cpu()",
    ".tolist()": "c = out.argmax(1).tolist()",
    "bool(tensor)": "d = bool(loss > 0)",
    "print(tensor)": "print(loss, file=quiet_s)",
    "nonzero": "e = (yb_d > 4).nonzero()",
}
S_LOOP = (
    "%%epochprofile -o prof_s --text --no-lines\n"
    "for xb, yb in loader_s:\n"
    "    xb_d = xb.to(dev)\n"  # a blocking pageable copy
    "    yb_d = yb.to(dev)\n"
    "    out = model_s(xb_d)\n"
    "    loss = loss_fn(out, yb_d)\n"
    "    opt_s.zero_grad(); loss.backward(); opt_s.step()\n"
    + "".join(f"    {line}\n" for line in S_KINDS.values())
)


def in_steps(prof: Any, phase: str) -> float:
    return sum(sp.get(phase, 0.0) for sp in prof.step_phases)


def share(prof: Any, phase: str) -> float:
    return in_steps(prof, phase) / (sum(prof.step_times) or 1e-12)


def ms_per_step(prof: Any, phase: str) -> float:
    return in_steps(prof, phase) / max(1, prof.steps) * 1000


class Checks:
    def __init__(self, smoke: bool) -> None:
        self.rows: list[list[str]] = []
        self.smoke = smoke

    def add(self, name: str, measured: str, target: str, ok: bool | None = None) -> None:
        """One row; ``ok`` None (or ``--smoke``): no verdict."""
        verdict = "" if ok is None or self.smoke else ("PASS" if ok else "FAIL")
        self.rows.append([name, measured, target, verdict])
        print(f"  {name}: {measured}  [{target}] {verdict}".rstrip(), flush=True)


class Ctx:
    """What every section needs."""

    def __init__(self, ip: Any, size: dict[str, Any], checks: Checks, cuda: bool) -> None:
        self.ip, self.size, self.checks, self.cuda = ip, size, checks, cuda
        self.smoke = checks.smoke
        self.saved: dict[str, Any] = {}  # name -> profile, for --out

    def run(self, source: str) -> Any:
        return run(self.ip, source)

    def ns(self, name: str) -> Any:
        return ns(self.ip, name)

    def keep(self, *names: str) -> None:
        for name in names:
            if name in self.ip.user_ns:
                self.saved[name] = self.ip.user_ns[name]


def guarded(ctx: Ctx, title: str, section: Callable[[Ctx], None]) -> None:
    """Run one section. Under ``--smoke`` a broken cell stops the script (exit
    2: the script is broken); on the GPU the section gets a FAIL row and the
    others still run, so one surprise does not cost the whole device run."""
    print(title, flush=True)
    try:
        section(ctx)
    except Exception as e:  # noqa: BLE001 (reported as a row, the run goes on)
        if ctx.smoke:
            raise
        print(e if isinstance(e, CellFailed) else traceback.format_exc(), flush=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        ctx.checks.add(f"{title.split('.')[0]} section", f"broke: {first[:150]}", "runs", False)


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
    print("== epochmagic GPU check ==")
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
    # --smoke: one intra-op thread, or OpenMP spin-waits on a shared 2-core CI
    # machine make the tiny loops 10x slower whenever another process is busy
    ip = start_shell(args.threads if args.threads is not None else 1 if args.smoke else None)
    run(ip, SETUP.format(device=device))
    ctx = Ctx(ip, size, Checks(args.smoke), cuda)

    guarded(ctx, "T. per-phase truth (a synchronize at every phase boundary)", check_truth)
    guarded(ctx, "A. GPU-heavy forward followed by loss.item()", check_a)
    guarded(ctx, "S. each kind of sync found at its own line", check_sync_kinds)
    guarded(ctx, "B. input-bound loop", check_b)
    guarded(ctx, "C. pinned vs pageable batches", check_c)
    guarded(ctx, "D. bf16 and fp16 what-ifs against fp32", check_d)
    guarded(ctx, "E/F. distortion and the clock's cost", check_distortion)
    guarded(ctx, "H. Hugging Face Trainer, tiny BERT", check_trainer)
    guarded(ctx, "G. torch.compile", check_compile)
    forget_dynamo_globals()

    if args.out:
        from pathlib import Path

        Path(args.out).mkdir(parents=True, exist_ok=True)
        for name, prof in ctx.saved.items():
            prof.save(Path(args.out) / f"{name}.json")
    print()
    print(table(["check", "measured", "target", ""], ctx.checks.rows))
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")


# -- T: per-phase truth ---------------------------------------------------------------
def check_truth(ctx: Ctx) -> None:
    size = ctx.size
    ctx.run(T.format(phases=T_PHASES, **size))
    ctx.run("_truth = truth_epoch()")  # warm-up: allocator, cuBLAS handles, AdamW's state
    ctx.run(T_LOOP)  # and the profiler's first run on this loop
    truth = dict.fromkeys(T_PHASES, 0.0)
    profiled = dict.fromkeys(T_PHASES, 0.0)
    profiled_total = 0.0
    for _, order in alternated(("truth", "profiled"), size["t_rounds"]):
        for kind in order:
            if kind == "truth":
                ctx.run("_truth = truth_epoch()")
                for phase, s in ctx.ns("_truth").items():
                    truth[phase] += s
            else:
                ctx.run(T_LOOP)
                prof = ctx.ns("prof_t")
                for phase in T_PHASES:
                    profiled[phase] += in_steps(prof, phase)
                profiled_total += sum(prof.step_times)
    ctx.keep("prof_t")
    prof = ctx.ns("prof_t")
    steps = size["t_rounds"] * size["t_steps"]  # in each kind's sums
    truth_total = sum(truth.values()) or 1e-12
    profiled_total = profiled_total or 1e-12
    tr = (prof.gpu or {}).get("transfer") or {}
    copied = (tr.get("bytes") or 0) / max(1, prof.steps) / 2**20
    expected = size["t_batch"] * size["t_features"] * 4 / 2**20
    eval_s = in_steps(prof, "eval")
    print(
        f"  ({prof.steps} steps of {truth_total / steps * 1000:.2f} ms in the truth, "
        f"{profiled_total / steps * 1000:.2f} ms profiled; a {expected:.1f} MiB batch, "
        f"the profile saw {copied:.1f} MiB/step copied"
        + (f"; {eval_s / sum(prof.step_times):.1%} put in eval" if eval_s else "")
        + ")"
    )
    for phase in T_PHASES:
        t, p = truth[phase] / truth_total, profiled[phase] / profiled_total
        ctx.checks.add(
            f"T {phase} share vs truth",
            f"truth {t:.1%} ({truth[phase] / steps * 1000:.2f} ms), profiled {p:.1%} "
            f"({profiled[phase] / steps * 1000:.2f} ms), diff {(p - t) * 100:+.1f} pt",
            "|diff| <= 5 pt",
            abs(p - t) <= 0.05,
        )


# -- A: heavy forward + .item() ----------------------------------------------------------
def check_a(ctx: Ctx) -> None:
    checks = ctx.checks
    ctx.run(A.format(**ctx.size))
    from epochmagic.capture import cudaclock

    made = cudaclock.make_clock
    cudaclock.make_clock = lambda: None  # the host clock alone: what naive timers see
    try:
        ctx.run("%%epochprofile -o prof_host --text --no-lines\n" + A_LOOP)
    finally:
        cudaclock.make_clock = made
    ctx.run(A.format(**ctx.size))
    ctx.run("%%epochprofile -o prof_a --text --no-lines\n" + A_LOOP)
    ctx.keep("prof_host", "prof_a")
    a, host = ctx.ns("prof_a"), ctx.ns("prof_host")
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
        and "losses.append(loss.item())" in sites[0].get("source", ""),
    )
    idle_low = gpu.get("idle_in_steps_share_low")
    checks.add(
        "A host waited / GPU idle",
        f"{_pct(gpu.get('host_wait_share'))} / {_pct(gpu.get('idle_share'))} of the epoch "
        f"(idle in steps {_pct(idle_low)}..{_pct(gpu.get('idle_in_steps_share'))})",
        "GPU idle in steps <= 10 %",
        None if idle_low is None else idle_low <= 0.10,
    )
    ev = a.evidence or {}
    checks.add(
        "A MFU",
        _mfu(gpu) + f"; counted {_flop(ev.get('flops_forward'))} forward + "
        f"{_flop(ev.get('flops_backward'))} backward per step",
        "<= 100 %",
        _mfu_ok(gpu, ctx.cuda),
    )


# -- B: input-bound ----------------------------------------------------------------------
def check_b(ctx: Ctx) -> None:
    ctx.run(B.format(**ctx.size))
    ctx.run(B_LOOP)
    ctx.keep("prof_b")
    b = ctx.ns("prof_b")
    codes = [f.code for f in b.findings]
    gpu = b.gpu or {}
    ctx.checks.add(
        "B data share of the step",
        f"{share(b, 'data'):.1%}; GPU idle in steps "
        f"{_pct(gpu.get('idle_in_steps_share_low'))}..{_pct(gpu.get('idle_in_steps_share'))}",
        "data the largest phase, >= 60 %",
        share(b, "data") >= 0.6 and max(b.phases, key=b.phases.get) == "data",
    )
    ctx.checks.add(
        "B findings",
        f"{', '.join(codes) or 'none'}; idle_in_steps_share_low "
        f"{_pct(gpu.get('idle_in_steps_share_low'))}",
        "data_loading and gpu_idle",
        "data_loading" in codes and "gpu_idle" in codes,
    )


# -- S: sync sites by kind -------------------------------------------------------------------
def check_sync_kinds(ctx: Ctx) -> None:
    """Every kind of synchronising call, and a blocking copy, is reported at
    the cell's own line (torch's sync debug mode reports them; frames inside
    torch, such as print's tensor formatting, are skipped)."""
    ctx.run(S)
    ctx.run(S_LOOP)
    ctx.keep("prof_s")
    gpu = ctx.ns("prof_s").gpu or {}
    found = {site["source"] for site in gpu.get("sync_sites") or []}
    lines = S_LOOP.splitlines()
    everywhere = {
        site["source"]: site["lineno"]
        for site in [*(gpu.get("sync_sites") or []), *(gpu.get("copy_sites") or [])]
    }
    for kind, line in S_KINDS.items():
        lineno = everywhere.get(line)
        ctx.checks.add(
            f"S sync at its line: {kind}",
            f"line {lineno}" if lineno else f"not among {sorted(found) or 'none'}",
            f"`{line}` at line {lines.index('    ' + line) + 1}",
            lineno == lines.index("    " + line) + 1 if ctx.cuda else None,
        )
    copy_line = everywhere.get("xb_d = xb.to(dev)")
    ctx.checks.add(
        "S blocking copy at its line",
        f"line {copy_line}; {gpu.get('blocking_copies_per_step', float('nan')):.2f} per step",
        "`xb_d = xb.to(dev)` at line 3",
        copy_line == 3 if ctx.cuda else None,
    )


# -- C: pinned vs pageable -----------------------------------------------------------------
def check_c(ctx: Ctx) -> None:
    size = ctx.size
    ctx.run(C.format(**size))
    ctx.run(C_LOOP)
    ctx.keep("prof_c")
    c = ctx.ns("prof_c")
    with quiet():  # the progress bar
        pinned = c.rerun(pin_memory=True, steps=size["c_steps"])
    batch_bytes = size["c_batch"] * (3 * size["c_side"] ** 2 * 4 + 8)  # images + int64 labels
    for label, prof in (("pageable", c), ("pinned", pinned)):
        tr = (prof.gpu or {}).get("transfer") or {}
        bytes_step = (tr.get("bytes") or 0) / max(1, prof.steps)
        ms = ms_per_step(prof, "transfer")
        rate = bytes_step / (ms / 1000) / 1e9 if ms else float("nan")
        ctx.checks.add(
            f"C transfer, {label}",
            f"{ms:.2f} ms/step, {bytes_step / 2**20:.1f} MiB/step, {rate:.1f} GB/s, "
            f"pinned share {_pct(tr.get('pinned_share'))}; status {prof.status}",
            f"{batch_bytes / 2**20:.2f} MiB/step (the batch)",
            prof.status == "ok" and abs(bytes_step / batch_bytes - 1) <= 0.01,
        )
    if pinned.status == "ok" and c.steps:
        gain = ms_per_step(c, "transfer") / max(ms_per_step(pinned, "transfer"), 1e-9)
        ctx.checks.add(
            "C pinned transfer speed-up",
            f"{gain:.2f}x transfer, {c.epoch_s / pinned.epoch_s:.2f}x epoch",
            "pinned faster",
            gain > 1.0,
        )
    else:
        ctx.checks.add(
            "C pinned transfer speed-up",
            f"no pinned rerun: {pinned.status} {pinned.error or ''}".strip(),
            "pinned faster",
            False if ctx.cuda else None,
        )


# -- D: precision ----------------------------------------------------------------------------
def check_d(ctx: Ctx) -> None:
    size, checks = ctx.size, ctx.checks
    ctx.run(D.format(**size))
    ctx.run(D_LOOP.format(**size))
    ctx.keep("prof_d")
    d = ctx.ns("prof_d")
    base_step = statistics.median(d.step_times[2:] or d.step_times)
    base = d.gpu or {}
    checks.add(
        "D fp32 baseline",
        f"{base_step * 1000:.2f} ms/step, peak {_gib(d.memory.get('peak_bytes'))} allocated, "
        f"MFU {_mfu(base)}",
        "MFU <= 100 %",
        _mfu_ok(base, ctx.cuda),
    )
    for precision in ("bf16", "fp16"):
        with quiet():
            r = d.rerun(precision=precision, steps=size["d_steps"])
        if r.status != "ok":
            for row in ("speed-up over fp32", "MFU", "MFU agrees across precisions"):
                checks.add(
                    f"D {precision} {row}",
                    f"{r.status}: {r.error}",
                    "runs",
                    False if ctx.cuda else None,
                )
            continue
        ctx.saved[f"prof_d_{precision}"] = r
        step = statistics.median(r.step_times[2:] or r.step_times)
        speedup = base_step / step
        notes = [n for n in r.notes if "GradScaler" in n]
        gpu = r.gpu or {}
        checks.add(
            f"D {precision} speed-up over fp32",
            f"{speedup:.2f}x ({step * 1000:.2f} ms/step), peak "
            f"{_gib(r.memory.get('peak_bytes'))}" + (f"; {notes[0]}" if notes else ""),
            "> 1x",
            speedup > 1.0,
        )
        checks.add(f"D {precision} MFU", _mfu(gpu), "<= 100 %", _mfu_ok(gpu, ctx.cuda))
        mine, theirs = gpu.get("achieved_flops"), base.get("achieved_flops")
        if mine and theirs:
            ratio = mine / theirs
            ok: bool | None = abs(ratio / speedup - 1) <= 0.10
            measured = (
                f"achieved FLOP/s {ratio:.2f}x fp32's ({_flop(mine)}/s vs {_flop(theirs)}/s; "
                f"{_flop(gpu.get('flops_per_step'))} vs {_flop(base.get('flops_per_step'))} "
                f"per step) vs speed-up {speedup:.2f}x"
            )
        else:
            ok = False if ctx.cuda else None
            measured = "no achieved FLOP/s" + ("" if ctx.cuda else " (no GPU)")
        checks.add(
            f"D {precision} MFU agrees across precisions",
            measured,
            "FLOP/s ratio = speed-up +- 10 %",
            ok,
        )


# -- E, F: distortion, the clock's cost ------------------------------------------------------
def check_distortion(ctx: Ctx) -> None:
    from epochmagic.capture import cudaclock

    checks = ctx.checks
    made = cudaclock.make_clock
    made_clocks: list[Any] = []
    if ctx.cuda:
        per, path, note = reading_cost(cudaclock)  # CUDA is up: earlier sections used it

    def keep() -> Any:  # the last profiled run's clock: how many readings per step
        clock = made()
        made_clocks[:] = [clock]
        return clock

    cudaclock.make_clock = keep
    try:
        for key, title, limit in (
            ("e", "E distortion, GPU-bound loop", 0.01),
            ("f", "F distortion, host-bound loop (worst case)", 0.05),
        ):
            print(f"{title}", flush=True)
            plain, measured, prof = distortion(ctx, key)
            ctx.keep(f"prof_{key}")
            ratios = [m / p for m, p in zip(measured, plain)]
            dist = median(measured) / median(plain) - 1
            step_s = median(plain) / max(1, prof.steps)
            detail = ""
            if ctx.cuda and made_clocks and made_clocks[0] is not None:
                readings = len(made_clocks[0].hosts) / max(1, prof.steps)
                detail = (
                    f"; {readings:.1f} readings/step = "
                    f"{per * readings / step_s:.1%} of a plain step"
                )
            checks.add(
                f"{title} (wall_s vs plain)",
                f"{dist:+.1%}; per pair {min(ratios) - 1:+.1%}..{max(ratios) - 1:+.1%}; "
                f"{prof.steps} steps of {step_s * 1000:.2f} ms" + detail,
                f"<= {limit * 100:.0f} %",
                dist <= limit,
            )
            if key == "e":
                codes = [f.code for f in prof.findings]
                gpu = prof.gpu or {}
                checks.add(
                    "E findings",
                    f"{', '.join(codes) or 'none'}; idle_in_steps_share_low "
                    f"{_pct(gpu.get('idle_in_steps_share_low'))}",
                    "no gpu_idle",
                    "gpu_idle" not in codes,
                )
    finally:
        cudaclock.make_clock = made
    if ctx.cuda:
        used = made_clocks[0] if made_clocks else None
        checks.add(
            "E clock reading cost",
            f"{per * 1e6:.2f} us per reading, record path {path}"
            + (f" ({note})" if note else "")
            + (f"; the profiled runs recorded by {used.record_path}" if used else ""),
            "<= 3 us",
            per <= 3e-6,
        )
    else:
        checks.add("E clock reading cost", "CUDA only: no device clock on the CPU", "<= 3 us")


def distortion(ctx: Ctx, key: str) -> tuple[list[float], list[float], Any]:
    """Alternated pairs of the same epoch, plain (timed around the loop, with a
    final synchronize) and profiled (``wall_s``)."""
    size = ctx.size
    ctx.run(
        E.format(
            width=size[f"{key}_width"],
            depth=size[f"{key}_depth"],
            batch=size[f"{key}_batch"],
            steps=size[f"{key}_steps"],
        ),
    )
    ctx.run(E_PLAIN.format(loop=E_LOOP))  # warm-up: allocator, cuBLAS handles
    plain, measured = [], []
    for _, order in alternated(("plain", "profiled"), size["pairs"]):
        for kind in order:
            if kind == "plain":
                ctx.run(E_PLAIN.format(loop=E_LOOP))
                plain.append(ctx.ns("plain_s"))
            else:
                ctx.run(f"%%epochprofile -o prof_{key} --text --no-lines\n" + E_LOOP)
                measured.append(ctx.ns(f"prof_{key}").wall_s)
    return plain, measured, ctx.ns(f"prof_{key}")


def reading_cost(cudaclock: Any, repeats: int = 5) -> tuple[float, str | None, str | None]:
    """Seconds per clock reading on a started clock (median of ``repeats``
    runs of 1,000 readings, within one event pool), its record path and why
    that path if not cudart."""
    clock = cudaclock.CudaClock()
    costs = []
    for _ in range(repeats):
        clock.begin()
        costs.append(cudaclock.time_readings(clock, 1000))
        clock.finish()
    return median(costs), clock.record_path, clock.record_note


# -- H: Hugging Face Trainer -------------------------------------------------------------------
def check_trainer(ctx: Ctx) -> None:
    size, checks = ctx.size, ctx.checks
    try:
        import transformers  # noqa: F401
    except Exception as e:  # noqa: BLE001 (any reason it cannot load)
        why = f"skipped: transformers is not importable ({type(e).__name__}: {e})"
        print(f"  {why}")
        checks.add("H Trainer status and steps", why, "ok, steps == max_steps")
        checks.add("H Trainer phases", why, "sum == wall_s")
        return
    ctx.run(H.format(**size))
    ctx.run(H_LOOP)
    ctx.keep("prof_h")
    ctx.run("tmp_h.cleanup()")
    h = ctx.ns("prof_h")
    ran = ctx.ns("trainer").state.global_step
    codes = [f.code for f in h.findings]
    checks.add(
        "H Trainer status and steps",
        f"{h.status}{': ' + h.error if h.error else ''}; {h.steps} steps profiled, the "
        f"Trainer ran {ran} of max_steps {size['h_steps']}; findings "
        f"{', '.join(codes) or 'none'}",
        "ok, steps == max_steps",
        h.status == "ok" and h.steps == ran == size["h_steps"],
    )
    wall = h.wall_s or 1e-12
    total = sum(h.phases.values())
    shares = ", ".join(f"{k} {v / wall:.1%}" for k, v in h.phases.items() if k != "other")
    other_in = in_steps(h, "other")
    checks.add(
        "H Trainer phases",
        f"{shares}, other {h.phases.get('other', 0) / wall:.1%} (in the steps "
        f"{other_in / wall:.1%}, {h.outside_steps_s / wall:.1%} outside them); "
        f"sum {total:.3f} s of wall_s {h.wall_s:.3f} s",
        "sum == wall_s",
        abs(total - h.wall_s) <= 0.005 * wall,
    )


# -- G: torch.compile ------------------------------------------------------------------------------
def compile_counts() -> tuple[int, int, dict[int, Any]]:
    """torch's own counters: graph breaks, unique graphs, compilation metrics."""
    from torch._dynamo.utils import counters, get_compilation_metrics

    return (
        sum(counters["graph_break"].values()),
        counters["stats"]["unique_graphs"],
        {id(m): m for m in get_compilation_metrics()},
    )


def counted(before: tuple[int, int, dict[int, Any]]) -> dict[str, int]:
    """What happened since ``before``: graph breaks, unique graphs, and
    recompiles (metrics of a frame's compile n > 0, ``compile_id`` "x/n")."""
    breaks, graphs, metrics = compile_counts()
    recompiles = 0
    for key, m in metrics.items():
        if key in before[2] or not getattr(m, "co_name", None):
            continue
        found = re.search(r"(\d+)/(\d+)", str(getattr(m, "compile_id", "")))
        if found and int(found.group(2)) > 0:
            recompiles += 1
    return {
        "graph_breaks": breaks - before[0],
        "unique_graphs": graphs - before[1],
        "recompiles": recompiles,
    }


def compiled_pair(ctx: Ctx, options: str, loop: str, out: str) -> tuple[dict, dict, Any]:
    """The loop plainly, then profiled as ``out``, each on a fresh model
    compiled with ``options``: torch's counts for both, and the profile."""
    counts = []
    for profiled in (False, True):
        ctx.run(f"model_g, opt_g = fresh_g({options})")
        before = compile_counts()
        if profiled:
            ctx.run(f"%%epochprofile -o {out} --text --no-lines\n" + loop)
        else:
            ctx.run(loop + SYNC)
        counts.append(counted(before))
    ctx.keep(out)
    return counts[0], counts[1], ctx.ns(out)


def check_compile(ctx: Ctx) -> None:
    checks = ctx.checks
    ctx.run(G.format(**ctx.size))
    steps = len(ctx.ns("loader_g"))
    plain, profiled, g = compiled_pair(
        ctx, "**g_backend", G_LOOP.format(loader="loader_g"), "prof_g"
    )
    comp = g.compile or {}
    print(f"  plain run: {plain}; profiled run: {profiled}; prof.compile: {comp}")
    for key, label in (("graph_breaks", "graph breaks"), ("unique_graphs", "unique graphs")):
        checks.add(
            f"G compiled: {label}, profiled vs plain",
            f"{profiled[key]} vs {plain[key]}"
            + (f" (prof.compile: {comp.get(key)})" if key in comp else ""),
            "profiled == plain",
            profiled[key] == plain[key],
        )
    reasons = "; ".join(r.replace("\n", " ")[:80] for r in comp.get("recompile_reasons") or [])
    checks.add(
        "G compiled: recompiles, prof.compile vs plain",
        f"{comp.get('recompiles')} vs {plain['recompiles']}" + (f" ({reasons})" if reasons else ""),
        "prof.compile == plain",
        comp.get("recompiles") == plain["recompiles"],
    )
    checks.add(
        "G compiled: steps",
        f"{g.steps} of len(loader) {steps}; status {g.status}",
        "== len(loader)",
        g.status == "ok" and g.steps == steps,
    )
    compile_s = comp.get("compile_s") or 0.0
    checks.add(
        "G compiled: compile seconds",
        f"{compile_s:.2f} s of {g.wall_s:.2f} s ({comp.get('compiles')} compiles, "
        f"{comp.get('compiled_calls')} compiled calls)",
        "> 0",
        compile_s > 0,
    )
    found = [f for f in g.findings if f.code == "compile"]
    checks.add(
        "G compiled: compile finding",
        found[0].title if found else "none; findings " + ", ".join(f.code for f in g.findings),
        "present",
        bool(found),
    )

    ctx.run("model_g, opt_g = fresh_g(**g_backend)")
    ctx.run("%%epochprofile -o prof_g_skip --text --no-lines --skip-epochs 1\n" + G_EPOCHS)
    ctx.keep("prof_g_skip")
    skip = ctx.ns("prof_g_skip")
    sc = skip.compile or {}
    checks.add(
        "G compiled --skip-epochs 1",
        f"compile_s {sc.get('compile_s')}, compiled_calls {sc.get('compiled_calls')}, "
        f"{skip.steps} steps; status {skip.status}",
        "compile_s == 0, compiled_calls > 0",
        skip.status == "ok" and sc.get("compile_s") == 0 and (sc.get("compiled_calls") or 0) > 0,
    )

    if not ctx.cuda:
        checks.add(
            "G reduce-overhead (CUDA graphs)",
            "CUDA only",
            "status ok, steps == len(loader), counts == plain",
        )
        return
    full = len(ctx.ns("loader_g_full"))
    plain, profiled, cg = compiled_pair(
        ctx, 'mode="reduce-overhead"', G_LOOP.format(loader="loader_g_full"), "prof_g_cg"
    )
    cc = cg.compile or {}
    checks.add(
        "G reduce-overhead (CUDA graphs)",
        f"{cg.status}{': ' + cg.error if cg.error else ''}; {cg.steps} of {full} steps; "
        f"graph breaks {profiled['graph_breaks']} vs {plain['graph_breaks']}, unique graphs "
        f"{profiled['unique_graphs']} vs {plain['unique_graphs']}, recompiles "
        f"{cc.get('recompiles')} vs {plain['recompiles']}",
        "status ok, steps == len(loader), counts == plain",
        cg.status == "ok"
        and cg.steps == full
        and profiled["graph_breaks"] == plain["graph_breaks"]
        and profiled["unique_graphs"] == plain["unique_graphs"]
        and cc.get("recompiles") == plain["recompiles"],
    )


def forget_dynamo_globals() -> None:
    """Dynamo puts globals (``__builtins_dict___N``) into the namespace of the
    code it compiles, here IPython's, with a hook that deletes them when the
    compiled code dies; at exit IPython empties its namespace first, so every
    hook prints "Exception ignored ... KeyError". Drop the hooks: the globals
    stay, harmlessly, until the process ends."""
    if "torch._dynamo" not in sys.modules:
        return
    with contextlib.suppress(Exception):
        from torch._dynamo.utils import CleanupManager

        CleanupManager.instance.clear()


# -- formatting ------------------------------------------------------------------------------------
def _mfu(gpu: dict[str, Any]) -> str:
    if gpu.get("mfu") is not None:
        return (
            f"{gpu['mfu']:.1%} ({_flop(gpu.get('achieved_flops'))}/s of "
            f"{_flop(gpu.get('peak_flops'))}/s, {gpu.get('matmul_dtype')}; "
            f"{gpu.get('peak_source')})"
        )
    if gpu.get("mfu_note"):
        return f"n/a: {gpu['mfu_note']}"
    return "n/a"


def _mfu_ok(gpu: dict[str, Any], cuda: bool) -> bool | None:
    """On the GPU: an MFU was computed and is at most 100 % (None with a note
    means the counted FLOPs implied more than the peak: a FAIL)."""
    if not cuda:
        return None
    return gpu.get("mfu") is not None and gpu["mfu"] <= 1.0


def _flop(x: float | None) -> str:
    if not x:
        return "n/a"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _gib(x: float | None) -> str:
    return "n/a" if not x else f"{x / 2**30:.2f} GiB"


if __name__ == "__main__":
    main_guard(main)
