"""Run a cell once with the probes on, stop it after the first epoch, and turn
what was recorded into an ``EpochProfile``.

The cell is compiled under a file name registered in IPython's compile cache,
so a traceback from the cell shows the user's own line (``Cell In[5], line
4``), not ``<timed exec>``.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

import torch
from IPython.core.error import UsageError

from epochmagic import environment as envmod
from epochmagic.probes import Probes, StopCell, loader_keys
from epochmagic.profile import EpochProfile
from epochmagic.recorder import Recorder
from epochmagic.timeline import Timeline, analyse, steady_median, warmup_count


@dataclass
class Cell:
    """A compiled cell: its code, its source and the name tracebacks show."""

    source: str
    code: CodeType
    filename: str
    tree: ast.Module
    label: str


@dataclass
class RunResult:
    status: str  # "ok", "interrupted", "error" or "oom"
    stop_reason: str  # "epoch", "steps", "seconds", "end", "interrupted" or "error"
    exc: BaseException | None
    timeline: Timeline
    probes: Probes
    output: str | None = None
    iterators: list[Any] = field(default_factory=list)
    cpu_s: float = 0.0  # process CPU time during the run


def compile_cell(shell: Any, source: str, magic_line: str | None = None) -> Cell:
    """Compile ``source`` for ``exec`` in the user namespace.

    ``magic_line`` is the ``%%epochprofile ...`` line above a cell body: it is
    kept in the cached source so line numbers match what the user sees.
    """
    transformed = shell.transform_cell(source) if magic_line is not None else source
    tree = shell.compile.ast_parse(transformed)
    if _has_top_level_await(tree):
        raise UsageError(
            "%%epochprofile cannot profile a cell with top-level `await`: put the loop in a "
            "function and call it with asyncio.run(...) or without await"
        )
    tree = shell.transform_ast(tree)
    shown = (
        source if magic_line is None else f"%%epochprofile {magic_line}".rstrip() + "\n" + source
    )
    if magic_line is not None:
        ast.increment_lineno(tree, 1)
    number = getattr(shell, "execution_count", 0)
    filename = shell.compile.cache(shown, number=number, raw_code=shown)
    code = shell.compile(tree, filename, "exec")
    label = f"Cell In[{number}]"
    return Cell(source=source, code=code, filename=filename, tree=tree, label=label)


def _has_top_level_await(tree: ast.AST) -> bool:
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)

    def walk(node: ast.AST) -> bool:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, scopes):
                continue
            if isinstance(child, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
                return True
            if walk(child):
                return True
        return False

    return walk(tree)


def run_cell(
    cell: Cell,
    user_ns: dict[str, Any],
    *,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    loader_name: str | None = None,
    capture: bool = False,
    tracer: Any = None,
    substitute: Any = None,
    autocast: Any = None,
    on_step: Any = None,
    time_modules: bool = False,
) -> RunResult:
    """Execute the cell once under the probes; never lets a probe outlive it."""
    __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
    rec = Recorder()
    probes = Probes(
        rec,
        max_steps=max_steps,
        max_seconds=max_seconds,
        loader_name=loader_name,
        user_ns=user_ns,
        substitute=substitute,
        autocast=autocast,
        on_step=on_step,
        time_modules=time_modules,
    )
    status, reason = "ok", "end"
    exc: BaseException | None = None
    output = None
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _captured() if capture else contextlib.nullcontext() as cap:
        with probes:
            rec.begin()
            try:
                if tracer is not None:
                    with tracer:
                        exec(cell.code, user_ns)
                else:
                    exec(cell.code, user_ns)
            except StopCell as stop:
                reason = stop.reason
                stop.__traceback__ = None
            except KeyboardInterrupt as e:
                status, reason, exc = "interrupted", "interrupted", e
            except torch.OutOfMemoryError as e:
                status, reason, exc = "oom", "error", e
            except BaseException as e:  # noqa: BLE001 (the user's error, re-raised by the magic)
                status, reason, exc = "error", "error", e
                if _is_cpu_oom(e):
                    status = "oom"
            finally:
                rec.finish()
            iterators = [p.iterator for p in probes.passes.values() if p.iterator is not None]
    if reason == "end" and probes.stopped is not None:
        # code the cell called caught StopCell and returned normally (Ignite's
        # EXCEPTION_RAISED handlers, a bare ``except:``): the stop still happened
        reason = probes.stopped.reason
    if cap is not None:
        output = cap.stdout + cap.stderr
    end = probes.stop_time if probes.stop_time is not None else rec.end
    timeline = analyse(
        rec.events,
        rec.start,
        end,
        trained_param_ids=probes.trained_param_ids(),
        clock_opt=probes.clock_opt,
    )
    if exc is not None:
        exc = _from_cell(exc, cell.filename)
    return RunResult(
        status, reason, exc, timeline, probes, output, iterators, rec.cpu_end - rec.cpu_start
    )


@contextlib.contextmanager
def _captured() -> Iterator[Any]:
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        yield cap


def _is_cpu_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, RuntimeError)) and (
        isinstance(e, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(e)
    )


def _from_cell(exc: BaseException, filename: str) -> BaseException:
    """Drop epochmagic's own frames above the cell from the traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb
    return exc


# -- building the profile -----------------------------------------------------------
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
    complete = run.status == "ok" and run.stop_reason in ("epoch", "end")
    if complete:
        epoch_s: float | None = tl.wall_s
    elif steps and steps_per_epoch:
        med = steady_median(step_times) or 0.0
        epoch_s = tl.wall_s + max(0, steps_per_epoch - steps) * med
    else:
        epoch_s = None
    modules = [m for m in probes.roots.values()]
    trained = probes.trained_param_ids()
    modules.sort(key=lambda m: not any(id(p) in trained for p in m.parameters()))
    device = envmod.model_device(modules)
    config = envmod.loader_config(loader)
    config.update(
        precision=probes.precision or "fp32",
        threads=torch.get_num_threads(),
        fused=envmod.optimizer_fused(list(probes.optimizers.values())),
        device=device,
    )
    prof = EpochProfile(
        wall_s=tl.wall_s,
        epoch_s=epoch_s,
        steps=steps,
        steps_per_epoch=steps_per_epoch,
        samples=samples,
        samples_per_s=samples / in_steps if samples and in_steps > 0 else None,
        phases=tl.phases,
        outside_steps_s=tl.outside_steps_s,
        memory=_memory(tl, device),
        gpu=None,
        step_times=step_times,
        step_phases=tl.step_phases,
        throughput_unit="tokens" if has_tokens else "samples",
        tokens_per_s=(sum(t or 0 for t in tokens) / in_steps) if has_tokens and in_steps else None,
        config=config,
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
    )
    prof.notes = _notes(prof, run, probes)
    return prof


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


def loop_length(tree: ast.Module, user_ns: dict[str, Any]) -> int | None:
    """Iterations of the ``for ... in range(...)`` loops around ``.step(`` in
    the cell, when they can be read (literals and names in the namespace)."""

    def calls_step(node: ast.AST) -> bool:
        return any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "step"
            for n in ast.walk(node)
        )

    safe_calls = {"len": len, "int": int, "min": min, "max": max, "abs": abs, "round": round}
    safe_nodes = (
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

    def readable(node: ast.expr) -> bool:
        """Names, numbers, arithmetic and len()/min()/max(): nothing with effects."""
        for n in ast.walk(node):
            if not isinstance(n, safe_nodes):
                return False
            if isinstance(n, ast.Call) and not (
                isinstance(n.func, ast.Name) and n.func.id in safe_calls and not n.keywords
            ):
                return False
        return True

    def length(expr: ast.expr) -> int | None:
        if not (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Name)
            and expr.func.id == "range"
            and 1 <= len(expr.args) <= 3
        ):
            return None
        if not all(readable(a) for a in expr.args):
            return None
        scope = {**user_ns, **safe_calls, "__builtins__": {}}
        try:
            values = [eval(compile(ast.Expression(a), "<range>", "eval"), scope) for a in expr.args]
            return len(range(*[int(v) for v in values]))
        except Exception:  # noqa: BLE001 (anything unreadable means unknown)
            return None

    total: int | None = None
    body: list[ast.stmt] = list(tree.body)
    while True:
        loops = [s for s in body if isinstance(s, (ast.For, ast.While)) and calls_step(s)]
        if len(loops) != 1:
            return total
        loop = loops[0]
        if isinstance(loop, ast.While):
            return None
        n = length(loop.iter)
        if n is None:
            return None
        total = n if total is None else total * n
        body = loop.body


def _memory(tl: Timeline, device: str) -> dict[str, Any]:
    mem: dict[str, Any] = {
        "kind": "cpu",
        "peak_bytes": max((m for _, m in tl.memory_samples), default=0),
        "per_step_bytes": tl.step_memory,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        mem = {
            "kind": "cuda",
            "peak_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "per_step_bytes": tl.step_memory,
            "host_peak_bytes": mem["peak_bytes"],
        }
    return mem


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
    notes = []
    name = f"`{prof.training_loader}`" if prof.training_loader else "the training loader"
    reason = run.stop_reason
    if reason == "epoch":
        notes.append(f"stopped the cell when {name} started its second pass: one epoch measured")
    elif reason in ("steps", "seconds"):
        why = (
            f"--steps {probes.max_steps}"
            if reason == "steps"
            else (
                f"--max-seconds {probes.max_seconds:g}"
                if probes.max_seconds is not None
                else "the 60 s default limit for loops without a DataLoader (--max-seconds)"
            )
        )
        notes.append(f"stopped the cell after {prof.steps} steps ({why})")
    elif reason == "interrupted":
        notes.append(f"interrupted after {prof.steps} steps: a partial profile")
    elif reason == "error":
        notes.append(f"the cell raised {prof.error} after {prof.steps} steps: a partial profile")
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
    if probes.loader_name is not None and not probes.named_loader_seen:
        notes.append(f"--loader {probes.loader_name}: no loader of that name was iterated")
    return notes
