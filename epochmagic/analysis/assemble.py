"""Turn a finished run into an ``EpochProfile``: steps and phases from the
timeline, the epoch estimate, the loader's config, the machine, the notes that
explain what was measured."""

from __future__ import annotations

import ast
import bisect
from typing import Any

import torch

from epochmagic.analysis import gpu as gpumod
from epochmagic.analysis.run import RunResult
from epochmagic.analysis.timeline import Timeline, steady_median, warmup_count
from epochmagic.capture import environment as envmod
from epochmagic.capture.probes import Probes, loader_keys
from epochmagic.model.cell import Cell
from epochmagic.model.gpurecord import GpuRecord
from epochmagic.model.profile import EpochProfile


def build_profile(run: RunResult, cell: Cell, user_ns: dict[str, Any]) -> EpochProfile:
    tl = run.timeline
    probes = run.probes
    steps = len(tl.step_bounds)
    step_times = tl.step_times
    in_steps = sum(step_times)
    samples = sum(tl.step_samples)
    tokens = tl.step_tokens
    has_tokens = bool(tokens) and all(t is not None for t in tokens)
    loader = tl.training_pass.loader if tl.training_pass is not None else None
    steps_per_epoch = _steps_per_epoch(tl, loader, cell, user_ns, steps)
    modules = [m for m in probes.roots.values()]
    trained = probes.trained_param_ids()
    modules.sort(key=lambda m: not any(id(p) in trained for p in m.parameters()))
    device = envmod.model_device(modules)
    prof = EpochProfile(
        wall_s=tl.wall_s,
        epoch_s=_epoch_s(run, steps_per_epoch),
        steps=steps,
        steps_per_epoch=steps_per_epoch,
        samples=samples,
        samples_per_s=samples / in_steps if samples and in_steps > 0 else None,
        phases=tl.phases,
        outside_steps_s=tl.outside_steps_s,
        memory=_memory(tl, run.device, device),
        gpu=_gpu(run, device),
        step_times=step_times,
        step_phases=tl.step_phases,
        throughput_unit="tokens" if has_tokens else "samples",
        tokens_per_s=(sum(t or 0 for t in tokens) / in_steps) if has_tokens and in_steps else None,
        config=_config(probes, loader, device),
        environment=envmod.environment(device),
        status=run.status,
        error=_describe(run.exc) if run.exc is not None and run.status != "interrupted" else None,
        output=run.output,
        step_starts_s=[a - tl.start for a, _ in tl.step_bounds],
        stop_reason=run.stop_reason,
        step_clock=tl.clock,
        training_loader=_loader_name(loader, user_ns),
        skipped_steps=probes.scaler_skips,
        cell=cell.source,
        cpu_s=run.cpu_s,
        compile=_compile(run),
        probe_cost_s=probe_cost(len(probes.rec.events), run.device),
    )
    prof.notes = _notes(prof, run, probes)
    return prof


def _epoch_s(run: RunResult, steps_per_epoch: int | None) -> float | None:
    """The epoch's time: measured when the cell ran a whole epoch, else the
    measured part plus the remaining steps at the steady median step."""
    tl = run.timeline
    steps = len(tl.step_bounds)
    if run.status == "ok" and run.stop_reason in ("epoch", "end"):
        return tl.wall_s
    if steps and steps_per_epoch:
        med = steady_median(tl.step_times) or 0.0
        return tl.wall_s + max(0, steps_per_epoch - steps) * med
    return None


def _config(probes: Probes, loader: Any, device: str) -> dict[str, Any]:
    """``prof.config``: the training loader's settings and the run's own."""
    config = envmod.loader_config(loader)
    config.update(
        precision=probes.precision or "fp32",
        threads=torch.get_num_threads(),
        fused=envmod.optimizer_fused(list(probes.optimizers.values())),
        device=device,
    )
    return config


# The probes' measured costs: per event on the host (benchmarks/probe_cost.py:
# 22 us per step of 12 events on this project's CPU machine), per CUDA event
# recording by path (measured on an H200, torch 2.11: cudaEventRecord through
# ctypes 2.7 us, Event.record on a cached Stream 4.4 us, Event.record() 12.5 us).
HOST_EVENT_S = 2e-6
DEVICE_READING_S = {"cudart": 2.7e-6, "stream": 4.4e-6, "event": 12.5e-6}


def probe_cost(events: int, clock: Any) -> float:
    """The profiler's own time in the run, from what it recorded: an estimate
    from measured unit costs, not a measurement of this run."""
    cost = events * HOST_EVENT_S
    readings = len(getattr(clock, "hosts", ()) or ())
    path = getattr(clock, "record_path", None)
    if readings and path in DEVICE_READING_S:
        cost += readings * DEVICE_READING_S[path]
    return cost


def _compile(run: RunResult) -> dict[str, Any] | None:
    """``prof.compile``: torch's counters for the run, and the compile seconds
    that fell inside each step (the warm-up rule and the epoch estimate leave
    them out; they stay in the phase they happened in)."""
    if run.compile is None:
        return None
    bounds = run.timeline.step_bounds
    per_step = [0.0] * len(bounds)
    starts = [a for a, _ in bounds]
    for a, b in run.compile_intervals:
        i = max(0, bisect.bisect_right(starts, a) - 1)
        while i < len(bounds) and bounds[i][0] < b:
            per_step[i] += max(0.0, min(b, bounds[i][1]) - max(a, bounds[i][0]))
            i += 1
    return {**run.compile, "step_compile_s": per_step}


def _steps_per_epoch(
    tl: Timeline, loader: Any, cell: Cell, user_ns: dict[str, Any], steps: int
) -> int | None:
    if loader is not None:
        try:
            return len(loader)
        except TypeError:
            return None
    if tl.clock in ("optimizer", "backward"):
        return loop_length(cell.tree, user_ns)
    return None


_SAFE_CALLS = {"len": len, "int": int, "min": min, "max": max, "abs": abs, "round": round}
_SAFE_NODES = (
    ast.Expression,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Attribute,
    ast.BinOp,
    ast.UnaryOp,
    ast.operator,
    ast.unaryop,
    ast.Call,
)


def loop_length(tree: ast.Module, user_ns: dict[str, Any]) -> int | None:
    """Iterations of the ``for ... in range(...)`` loops around ``.step(`` in
    the cell, when they can be read (literals and names in the namespace)."""
    total: int | None = None
    body: list[ast.stmt] = list(tree.body)
    while True:
        loops = [s for s in body if isinstance(s, (ast.For, ast.While)) and _calls_step(s)]
        if len(loops) != 1:
            return total
        loop = loops[0]
        if isinstance(loop, ast.While):
            return None
        n = _range_length(loop.iter, user_ns)
        if n is None:
            return None
        total = n if total is None else total * n
        body = loop.body


def _calls_step(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "step"
        for n in ast.walk(node)
    )


def _readable(node: ast.expr) -> bool:
    """Names, numbers, arithmetic and len()/min()/max(): nothing with effects."""
    for n in ast.walk(node):
        if not isinstance(n, _SAFE_NODES):
            return False
        if isinstance(n, ast.Call) and not (
            isinstance(n.func, ast.Name) and n.func.id in _SAFE_CALLS and not n.keywords
        ):
            return False
    return True


def _range_length(expr: ast.expr, user_ns: dict[str, Any]) -> int | None:
    """len(range(...)) of a ``range(...)`` call whose arguments are readable."""
    if not (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Name)
        and expr.func.id == "range"
        and 1 <= len(expr.args) <= 3
    ):
        return None
    if not all(_readable(a) for a in expr.args):
        return None
    scope = {**user_ns, **_SAFE_CALLS, "__builtins__": {}}
    try:
        values = [eval(compile(ast.Expression(a), "<range>", "eval"), scope) for a in expr.args]
        return len(range(*[int(v) for v in values]))
    except Exception:  # noqa: BLE001 (anything unreadable means unknown)
        return None


def _on_gpu(clock: Any, device: str) -> bool:
    """The run used the GPU: its allocator's peak rose, or the trained model
    lives there (a step can reuse memory allocated before the run)."""
    return clock is not None and (clock.used() or device.startswith("cuda"))


def _memory(tl: Timeline, clock: Any, device: str) -> dict[str, Any]:
    """Peak and per-step memory: the CUDA allocator's when the run used the
    GPU (its peak was reset at the start), else the process RSS."""
    peak = max((m for _, m in tl.memory_samples), default=0)
    if clock is None or clock.name != "cuda" or not _on_gpu(clock, device):
        return {"kind": "cpu", "peak_bytes": peak, "per_step_bytes": tl.step_memory}
    reserved = int(torch.cuda.max_memory_reserved())
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return {
        "kind": "cuda",
        "peak_bytes": int(torch.cuda.max_memory_allocated()),
        "peak_reserved_bytes": reserved,
        "per_step_bytes": tl.step_memory,  # allocated, sampled at step starts
        "total_bytes": int(total),
        "headroom_bytes": max(0, int(total) - reserved),  # before an out-of-memory
    }


def _gpu(run: RunResult, device: str) -> GpuRecord | None:
    clock, tl = run.device, run.timeline
    if clock is None or not _on_gpu(clock, device):
        return None
    fields = gpumod.fields(tl, clock.describe())
    count, size, pinned, async_ = run.probes.transfers
    fields["transfer"] = {
        "copies": count,
        "bytes": size,
        "pinned_share": pinned / size if size else None,
        "non_blocking_share": async_ / size if size else None,
    }
    return fields


def host_timed_note(device: str) -> str | None:
    """Accelerators other than CUDA (MPS, XPU, ...) run asynchronously too, but
    only CUDA's events are read: say plainly what the phases are there."""
    kind = device.split(":")[0]
    if kind in ("cpu", "cuda", "meta"):
        return None
    return (
        f"phases on {kind} are host-timed: device events are read on CUDA only, so "
        f"asynchronous {kind} work is charged to the call that waits for it (an .item(), "
        "a copy back to the CPU), not to the phase that launched it"
    )


def _loader_name(loader: Any, user_ns: dict[str, Any]) -> str | None:
    if loader is None:
        return None
    keys = loader_keys(loader)
    for name, value in user_ns.items():
        if value is loader and not name.startswith("_"):
            return name
    for name, value in user_ns.items():
        if (
            not name.startswith("_")
            and isinstance(value, torch.utils.data.DataLoader)
            and (loader_keys(value) & keys)
        ):
            return name
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _notes(prof: EpochProfile, run: RunResult, probes: Probes) -> list[str]:
    """What the report says about how the profile was measured."""
    notes = _stop_notes(prof, run, probes) + _epoch_notes(prof) + _timing_notes(prof, run)
    notes.extend(_skip_notes(probes))
    notes.extend(probes.notes)
    comp = prof.compile
    if comp and comp.get("compiles"):
        notes.append(
            f"torch.compile: {comp['compile_s']:.2f} s compiling in {comp['compiles']} "
            f"compile(s), {comp['recompiles']} recompile(s), {comp['graph_breaks']} graph "
            "break(s); compile time stays in the phase it happened in"
        )
    if probes.loader_name is not None and not probes.named_loader_seen:
        notes.append(f"--loader {probes.loader_name}: no loader of that name was iterated")
    return notes


def _stop_notes(prof: EpochProfile, run: RunResult, probes: Probes) -> list[str]:
    """Why the cell stopped where it did."""
    name = f"`{prof.training_loader}`" if prof.training_loader else "the training loader"
    reason = run.stop_reason
    if reason == "epoch":
        return [f"stopped the cell when {name} started its second pass: one epoch measured"]
    if reason in ("steps", "seconds"):
        why = (
            f"--steps {probes.max_steps}"
            if reason == "steps"
            else (
                f"--max-seconds {probes.max_seconds:g}"
                if probes.max_seconds is not None
                else "the 60 s default limit for loops without a DataLoader (--max-seconds)"
            )
        )
        return [f"stopped the cell after {prof.steps} steps ({why})"]
    if reason == "interrupted":
        return [f"interrupted after {prof.steps} steps: a partial profile"]
    if reason == "error":
        return [f"the cell raised {prof.error} after {prof.steps} steps: a partial profile"]
    return []


def _epoch_notes(prof: EpochProfile) -> list[str]:
    """How the epoch time was reached, and what clocked the steps."""
    notes = []
    if prof.epoch_s is not None and prof.epoch_s != prof.wall_s and prof.steps_per_epoch:
        warm = warmup_count(prof.step_times)
        med = steady_median(prof.step_times) or 0.0
        notes.append(
            f"epoch time extrapolated: {prof.wall_s:.3f} s measured + "
            f"{prof.steps_per_epoch - prof.steps} remaining steps x {med * 1000:.1f} ms "
            f"(median step, first {warm} warm-up step{'s' if warm != 1 else ''} left out)"
        )
    elif prof.epoch_s is None and prof.steps:
        notes.append("the epoch's length is unknown, so the epoch time is not extrapolated")
    if prof.step_clock == "optimizer":
        notes.append("no training DataLoader: one step per optimizer step() call")
    elif prof.step_clock == "backward":
        notes.append("no DataLoader or optimizer: one step per backward() call")
    if prof.skipped_steps:
        notes.append(
            f"a GradScaler skipped {prof.skipped_steps} optimizer steps (inf/nan gradients)"
        )
    return notes


def _timing_notes(prof: EpochProfile, run: RunResult) -> list[str]:
    """Which clock the phases are on."""
    notes = []
    note = host_timed_note(str(prof.config.get("device") or "cpu"))
    if note:
        notes.append(note)
    if run.device is not None and run.device.error:
        notes.append(
            f"device timing failed ({run.device.error}): phases are host times, which "
            "charge asynchronous GPU work to the call that waits for it"
        )
    elif prof.gpu is not None:
        notes.append(
            "GPU phases from CUDA events at every phase boundary: device work is credited "
            "to the phase that launched it, idle time to what the host was doing"
        )
    return notes


def _skip_notes(probes: Probes) -> list[str]:
    """What ``--skip-epochs`` did."""
    if not probes.skip_epochs:
        return []
    if probes.no_loader_to_skip:
        return [
            f"--skip-epochs {probes.skip_epochs}: the cell has no training DataLoader, so "
            "there are no epochs to skip; measured from the second training step"
        ]
    if not probes.measured:
        return [
            f"--skip-epochs {probes.skip_epochs}: the training loader ran only "
            f"{probes.idle_epochs} epoch(s), so "
            "no epoch was left to measure"
        ]
    return [
        f"skipped {probes.skipped_epochs} epoch(s) unmeasured (--skip-epochs); this is the next one"
    ]
