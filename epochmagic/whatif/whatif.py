"""What-if runs: the same cell again under another setting, measured.

``EpochProfile.rerun`` and ``sweep`` land here. A run re-executes the cell in
the user's namespace with the training loader rebuilt (``loaders.rebuild``),
autocast around root forwards for another precision, ``torch.set_num_threads``
and fused optimizer copies as asked, everything snapshotted before and restored
after (``snapshot``); its output is captured. The user's loader, model and
optimizer objects end exactly as they were.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from epochmagic.analysis import gpu
from epochmagic.analysis.assemble import build_profile
from epochmagic.analysis.figures import step_times_without_compile
from epochmagic.analysis.timeline import steady_median
from epochmagic.capture import environment as envmod
from epochmagic.capture import loaders
from epochmagic.capture.loaders import Unsupported
from epochmagic.diagnosis import predict, savings
from epochmagic.diagnosis.diagnose import diagnose
from epochmagic.model.cell import Cell
from epochmagic.model.profile import EpochProfile
from epochmagic.session.session import run_cell
from epochmagic.session.snapshot import Snapshot, rebound_names
from epochmagic.whatif import changes
from epochmagic.whatif.changes import PRECISIONS
from epochmagic.whatif.compilecopies import CompiledCopies

DEFAULT_STEPS = 30
LOADER_KEYS = ("batch_size", "workers", "pin_memory", "persistent_workers", "prefetch_factor")
SETTING_KEYS = ("batch_size", "workers", "precision", "threads", *LOADER_KEYS[2:], "fused")


@dataclass
class RunContext:
    """What a profile needs to run its cell again."""

    shell: Any
    cell: Cell
    loader_name: str | None
    train_loader: Any  # the user's training DataLoader, never modified
    modules: list[Any]
    optimizers: list[Any]
    loaders: list[Any]
    history: list[EpochProfile] = field(default_factory=list)
    loading: dict[str, float] | None = None
    copies: CompiledCopies = field(default_factory=CompiledCopies)  # compiled code for what-ifs

    # the SessionHandle a live profile holds (epochmagic.model.profile)
    def rerun(self, base: EpochProfile, steps: int | None, **changes: Any) -> EpochProfile:
        return rerun(base, steps=steps, **changes)

    def sweep(self, base: EpochProfile, steps: int | None, **grid: Any) -> list[EpochProfile]:
        return sweep(base, steps=steps, **grid)


def attach(prof: EpochProfile, shell: Any, cell: Cell, run: Any, original_loader: Any) -> None:
    tl = run.timeline
    train = original_loader
    if train is None and tl.training_pass is not None:
        train = tl.training_pass.loader
    prof.session = RunContext(
        shell=shell,
        cell=cell,
        loader_name=run.probes.loader_name,
        train_loader=train,
        modules=list(run.probes.roots.values()),
        optimizers=list(run.probes.optimizers.values()),
        loaders=[p.loader for p in run.probes.iter_passes() if p.loader is not None],
    )


def _context(prof: EpochProfile) -> RunContext:
    ctx = prof.session
    if not isinstance(ctx, RunContext):
        prof._live()  # raises: the profile has no session
        raise TypeError(f"a profile's session must be a RunContext, got {type(ctx).__name__}")
    return ctx


# -- settings ------------------------------------------------------------------------
def resolve(base: EpochProfile, **changes: Any) -> dict[str, Any]:
    """The full setting of a what-if: ``None`` keeps the baseline's value."""
    cfg = base.config
    setting = {k: cfg.get(k) for k in SETTING_KEYS}
    setting["precision"] = cfg.get("precision") or "fp32"
    setting["threads"] = cfg.get("threads") or torch.get_num_threads()
    for key, value in changes.items():
        if key not in SETTING_KEYS:
            raise TypeError(
                f"unknown what-if setting {key!r}; use one of {', '.join(SETTING_KEYS)}"
            )
        if value is not None:
            setting[key] = value
    _validate(setting)
    return setting


def _validate(s: dict[str, Any]) -> None:
    for key in ("batch_size", "threads", "prefetch_factor"):
        v = s.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{key} must be a positive integer, got {v!r}")
    w = s.get("workers")
    if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 0):
        raise ValueError(f"workers must be a non-negative integer, got {w!r}")
    if s.get("precision") not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {s['precision']!r}"
        )


def label(setting: dict[str, Any], base: EpochProfile) -> str:
    """The changed settings, e.g. ``workers=2, threads=1``; ``baseline`` if none."""
    cfg = {**base.config, "threads": base.config.get("threads")}
    parts = [f"{k}={setting[k]}" for k in SETTING_KEYS if setting.get(k) != cfg.get(k)]
    return ", ".join(parts) or "baseline"


# -- one run ---------------------------------------------------------------------------
def rerun(
    base: EpochProfile, steps: int | None = None, _progress: Any = None, **changes: Any
) -> EpochProfile:
    ctx = _context(base)
    setting = resolve(base, **changes)
    n_steps = steps if steps is not None else default_steps(base)
    if n_steps < 1:
        raise ValueError(f"steps must be at least 1, got {n_steps}")
    predicted = predict.epoch(base, setting, ctx.history, _loading(base, ctx, setting))
    try:
        plan = _plan(base, ctx, setting)
    except Unsupported as e:
        return _unsupported(base, setting, predicted, str(e))
    with _progress_bar(_progress, n_steps, label(setting, base)) as on_step:
        result = _run(base, ctx, setting, plan, n_steps, on_step)
    result.predicted = predicted
    ctx.history.append(result)
    # the what-if of exactly a finding's suggestion measures its saving
    savings.remeasured(base, {k: v for k, v in changes.items() if v is not None}, result)
    return result


def _loading(base: EpochProfile, ctx: RunContext, s: dict[str, Any]) -> dict[str, float] | None:
    """Per-batch loading costs the prediction needs, measured once per profile:
    in this process (when the baseline's workers hide it) and in one worker
    process (when the what-if uses workers)."""
    if ctx.train_loader is None or base.step_clock != "loader":
        return None
    if ctx.loading is None:  # start from what the magic already measured for the findings
        ctx.loading = dict(base.evidence.get("loading") or {})
    if base.config.get("workers") and "per_batch_s" not in ctx.loading:
        ctx.loading.update(loaders.loading_cost(ctx.train_loader) or {})
    if s.get("workers") and "worker_batch_s" not in ctx.loading:
        seconds = loaders.worker_batch_time(ctx.train_loader)
        if seconds is not None:
            ctx.loading["worker_batch_s"] = seconds
    return ctx.loading or None


def default_steps(base: EpochProfile) -> int:
    """Enough steps for a steady median after warm-up, within the epoch."""
    if base.steps_per_epoch:
        return max(1, min(DEFAULT_STEPS, base.steps_per_epoch))
    return DEFAULT_STEPS


@dataclass
class _Plan:
    substitute: Callable[[Any], Any] | None
    autocast: Callable[[], Any] | None
    rebuilt: list[Any]
    steps_per_epoch: int | None
    notes: list[str]


def _plan(base: EpochProfile, ctx: RunContext, s: dict[str, Any]) -> _Plan:
    notes: list[str] = []
    # compared with the user's loader: the baseline may itself be a what-if
    # (%%epochprofile --batch-size 64)
    current = envmod.loader_config(ctx.train_loader)
    loader_changes = {
        k: s[k] for k in LOADER_KEYS if s.get(k) is not None and s.get(k) != current.get(k)
    }
    rebuilt: list[Any] = []
    substitute: Callable[[Any], Any] | None = None
    steps_per_epoch = base.steps_per_epoch
    if loader_changes.get("pin_memory") and str(base.config.get("device", "cpu")) == "cpu":
        raise Unsupported(
            "pin_memory=True: the model is on the CPU, so no batch is copied to a device "
            "(pinned memory only speeds up host-to-GPU copies)"
        )
    if loader_changes:
        if ctx.train_loader is None or base.step_clock != "loader":
            raise Unsupported(
                f"{', '.join(loader_changes)}: this cell has no training DataLoader to change "
                "(its steps are counted by the optimizer)"
            )
        substitute, rebuilt = changes.substitution(ctx.train_loader, loader_changes)
        _check_memory(base, s)
        try:
            steps_per_epoch = len(rebuilt[0])
        except TypeError:
            steps_per_epoch = None

    autocast = _autocast(base, s, notes)
    return _Plan(substitute, autocast, rebuilt, steps_per_epoch, notes)


def _autocast(base: EpochProfile, s: dict[str, Any], notes: list[str]) -> Callable[[], Any] | None:
    device = str(base.config.get("device") or "cpu").split(":")[0]
    factory = changes.autocast_factory(
        s["precision"], base.config.get("precision") or "fp32", device
    )
    note = changes.scaler_note(s["precision"], device, base.evidence.get("grad_scaler"))
    if factory is not None and note:
        notes.append(note)
    return factory


def _check_memory(base: EpochProfile, s: dict[str, Any]) -> None:
    """On the CPU a real out-of-memory kills the kernel instead of raising:
    refuse a batch size whose estimated memory will not fit (on a GPU an
    out-of-memory is caught and reported as ``oom``)."""
    old, new = base.config.get("batch_size"), s.get("batch_size")
    if base.memory.get("kind") != "cpu" or not old or not new or new <= old:
        return
    estimate = (predict.peak_bytes(base, s) or 0) - int(base.memory.get("peak_bytes") or 0)
    free = changes.available_memory()
    if free is not None and estimate > 0.8 * free:
        raise Unsupported(
            f"batch_size={new}: estimated {estimate / 2**30:.1f} GiB more memory than batch "
            f"{old} used, but only {free / 2**30:.1f} GiB is available"
        )


def _run(
    base: EpochProfile,
    ctx: RunContext,
    s: dict[str, Any],
    plan: _Plan,
    n_steps: int,
    on_step: Callable[[int], None] | None,
) -> EpochProfile:
    shell, cell = ctx.shell, ctx.cell
    ns = shell.user_ns
    names = rebound_names(cell.tree)
    loader_names = {
        n for n, v in ns.items() if v is ctx.train_loader and ctx.train_loader is not None
    }
    opt_names = {n for n, v in ns.items() if any(v is o for o in ctx.optimizers)}
    snap = Snapshot.take(
        ns,
        names | loader_names | opt_names,
        modules=ctx.modules,
        optimizers=ctx.optimizers,
        loaders=ctx.loaders,
    )
    threads = torch.get_num_threads()
    run = None
    try:
        if plan.rebuilt:
            for n in loader_names:
                ns[n] = plan.rebuilt[0]
        with contextlib.ExitStack() as stack:
            if s["fused"] and not base.config.get("fused"):
                stack.enter_context(
                    changes.fused_optimizers(ns, opt_names, ctx.optimizers, plan.notes)
                )
            torch.set_num_threads(int(s["threads"]))
            switched = stack.enter_context(ctx.copies.swapped(ns, base.compile is not None))
            run = run_cell(
                cell,
                ns,
                max_steps=n_steps,
                loader_name=ctx.loader_name,
                capture=True,
                substitute=plan.substitute,
                autocast=plan.autocast,
                on_step=on_step,
            )
    finally:
        torch.set_num_threads(threads)
        snap.restore()
        # worker processes of the rebuilt loaders must not outlive the run
        loaders.shut_down(
            [
                *(run.iterators if run is not None else []),
                *(getattr(r, "_iterator", None) for r in plan.rebuilt),
            ]
        )
        if run is not None and run.status == "oom":
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    if run.status == "interrupted":
        raise KeyboardInterrupt
    prof = build_profile(run, cell, ns)
    prof.config.update(
        {k: s[k] for k in SETTING_KEYS if k != "precision"}, precision=s["precision"]
    )
    if not prof.config.get("workers"):
        prof.config["prefetch_factor"] = None
    prof.steps_per_epoch = plan.steps_per_epoch
    prof.epoch_s = _epoch_estimate(base, prof)
    in_steps = sum(step_times_without_compile(prof))  # as the epoch estimate counts them
    if prof.samples and in_steps > 0:
        prof.samples_per_s = prof.samples / in_steps
    prof.notes = [*plan.notes, *_what_ran(prof, n_steps), *_compiled(prof, switched)]
    if run.status == "oom":
        prof.error = f"out of memory at {label(s, base)}: {prof.error}"
    prof.evidence = {
        **base.evidence,
        "optimizers": [
            {**o, "fused": o["fused"] or bool(s["fused"])}
            for o in base.evidence.get("optimizers", [])
        ],
    }
    gpu.utilisation(prof.gpu, prof)
    prof.findings = diagnose(prof)
    prof.session = ctx
    return prof


def _epoch_estimate(base: EpochProfile, prof: EpochProfile) -> float | None:
    """Steps measured + the rest at the steady median; time outside the steps
    borrowed from the baseline when this run did no evaluation. Compiling for
    the what-if is kept out (it is reported apart, in ``prof.compile``)."""
    if prof.status != "ok" or not prof.steps:
        return None
    times = step_times_without_compile(prof)
    med = steady_median(times) or 0.0
    total = prof.steps_per_epoch
    if total is None:
        return None
    outside = prof.outside_steps_s
    if prof.phases.get("eval", 0.0) == 0.0 and prof.steps < total:
        outside = base.outside_steps_s
    return outside + sum(times) + max(0, total - prof.steps) * med


def _compiled(prof: EpochProfile, switched: int) -> list[str]:
    """What compiling cost this what-if, kept apart from its step times."""
    comp = prof.compile
    if not switched or not comp or not comp.get("compiles"):
        return []
    fresh = comp["compiles"] - comp["recompiles"]
    said = (
        f"compiled {comp['compiles']} time(s) in {comp['compile_s']:.2f} s, kept out of the "
        "step times and the epoch estimate; what-ifs compile into copies of your compiled "
        "code, which stays as it was"
    )
    if fresh and comp["recompiles"]:
        said += f" ({fresh} first compile(s) of the copies, {comp['recompiles']} recompile(s))"
    elif fresh:
        said += " (the first what-if compiles the copies afresh)"
    else:
        said += f"; this setting recompiled: {'; '.join(comp['recompile_reasons'][:2])}"
    return [said]


def _what_ran(prof: EpochProfile, n_steps: int) -> list[str]:
    if prof.status != "ok":
        return [f"what-if {prof.status}: {prof.error}"]
    if prof.steps < min(n_steps, prof.steps_per_epoch or n_steps):
        return [f"only {prof.steps} of the {n_steps} requested steps ran (the cell ended first)"]
    return [
        f"what-if measured {prof.steps} steps; epoch time extrapolated to "
        f"{prof.steps_per_epoch} steps"
    ]


def _unsupported(base: EpochProfile, s: dict[str, Any], predicted: Any, why: str) -> EpochProfile:
    cfg = {**base.config, **{k: s[k] for k in SETTING_KEYS}}
    return EpochProfile(
        status="unsupported",
        error=why,
        config=cfg,
        environment=dict(base.environment),
        predicted=predicted,
        notes=[f"not run: {why}"],
        cell=base.cell,
    )


@contextlib.contextmanager
def _progress_bar(bar: Any, total: int, desc: str) -> Iterator[Callable[[int], None] | None]:
    if bar is False:
        yield None
        return
    if bar is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"what-if {desc}", unit="step", leave=False)
        own = True
    else:
        own = False
        bar.reset(total=total)
        bar.set_description(f"what-if {desc}")

    def on_step(done: int) -> None:
        bar.n = min(done, total)
        bar.refresh()

    try:
        yield on_step
    finally:
        if own:
            bar.close()


# -- sweeps ----------------------------------------------------------------------------
def sweep(base: EpochProfile, steps: int | None = None, **grid: Any) -> list[EpochProfile]:
    """Run every combination of the listed settings; ranked by epoch time
    (fastest first), unsupported and failed runs last."""
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    combos = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    from tqdm.auto import tqdm

    results = []
    with tqdm(total=len(combos), desc="sweep", unit="run") as outer:
        for combo in combos:
            results.append(rerun(base, steps=steps, _progress=False, **combo))
            outer.update(1)
    return rank(results)


def rank(results: list[EpochProfile]) -> list[EpochProfile]:
    def key(p: EpochProfile) -> tuple[int, float]:
        if p.status == "ok" and p.epoch_s is not None:
            return (0, p.epoch_s)
        return (1, 0.0)

    return sorted(results, key=key)


__all__ = [
    "Unsupported",
    "attach",
    "default_steps",
    "rank",
    "rerun",
    "sweep",
]
