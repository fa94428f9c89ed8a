"""Line-level attribution from a short, separate traced run.

Line tracing slows every Python frame on 3.11 (+18 % to 2.6x measured), so the
measured epoch is never traced. Instead the cell runs again for a few steps
under line_profiler, with its output captured and everything a re-run can
change snapshotted before and restored after (:mod:`epochmagic.session.snapshot`).
"""

from __future__ import annotations

import linecache
import types
from typing import Any

from line_profiler import LineProfiler

from epochmagic.capture import loaders
from epochmagic.model.cell import Cell
from epochmagic.model.profile import EpochProfile, LineStat
from epochmagic.session.session import run_cell
from epochmagic.session.snapshot import Snapshot, rebound_names, unrestorable

MIN_STEPS, MAX_STEPS = 3, 20
SHARE = 0.10  # of the epoch's time the traced run may take
TRACE_SLOWDOWN = 2.0  # assumed cost of tracing when sizing the run
MAX_LINES = 200


def traced_steps(prof: EpochProfile) -> int:
    """A handful of steps, sized to stay within about 10 % of the epoch."""
    med = prof.step_s or 0.0
    setup = prof.step_starts_s[0] if prof.step_starts_s else 0.0
    budget = SHARE * prof.wall_s - setup
    n = int(budget / (med * TRACE_SLOWDOWN)) if med > 0 else MAX_STEPS
    return max(1, min(prof.steps, max(MIN_STEPS, min(MAX_STEPS, n))))


def attribute_lines(
    prof: EpochProfile, cell: Cell, shell: Any, run_probes: Any, hooks: dict[str, Any] | None = None
) -> None:
    """Fill ``prof.lines`` / ``prof.lines_steps`` (or add a note saying why not)."""
    user_ns = shell.user_ns
    blocker = unrestorable(user_ns)
    if blocker:
        prof.notes.append(
            f"no line attribution: re-running this cell would advance {blocker}'s progress, "
            "which a snapshot cannot roll back (--no-lines hides this note)"
        )
        return
    steps = traced_steps(prof)
    time_limit = max(1.0, 2 * SHARE * prof.wall_s)
    lp = LineProfiler()
    swapped = _register_notebook_functions(lp, shell)
    code = _register_code(lp, cell.code)
    traced_cell = Cell(cell.source, code, cell.filename, cell.tree, cell.label)
    snap = Snapshot.take(
        user_ns,
        rebound_names(cell.tree),
        modules=list(run_probes.roots.values()),
        optimizers=list(run_probes.optimizers.values()),
        loaders=[p.loader for p in run_probes.iter_passes() if p.loader is not None],
    )
    result = None
    try:
        result = run_cell(
            traced_cell,
            user_ns,
            max_steps=steps,
            max_seconds=time_limit,
            loader_name=run_probes.loader_name,
            capture=True,
            tracer=lp,
        )
    finally:
        for fn, original in swapped:
            fn.__code__ = original
        snap.restore()
        if result is not None:
            # worker processes the traced run started must not outlive it
            held = [getattr(v, "_iterator", None) for v in user_ns.values()]
            loaders.shut_down(result.iterators, keep=held)
    if result.status != "ok":
        what = "interrupted" if result.status == "interrupted" else f"failed ({result.exc!r})"
        prof.notes.append(f"line attribution {what}: no hot lines")
        if result.status == "interrupted":
            raise KeyboardInterrupt
        return
    prof.lines = _line_stats(lp, shell)
    prof.lines_steps = len(result.timeline.step_bounds)


def _register_code(lp: LineProfiler, code: types.CodeType) -> types.CodeType:
    """Register a code object and the functions/classes nested in it; returns
    the (NOP-padded) code to run instead."""
    consts = tuple(
        _register_code(lp, c) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    code = code.replace(co_consts=consts)
    holder = types.SimpleNamespace(__code__=code)
    lp.add_function(holder)
    return holder.__code__  # type: ignore[no-any-return]


def _is_notebook_file(shell: Any, filename: str) -> bool:
    if filename in getattr(shell.compile, "_filename_map", {}):
        return True
    entry: Any = linecache.cache.get(filename)
    return (
        entry is not None
        and entry[1] is None
        and (filename.startswith("<ipython-input") or "ipykernel_" in filename)
    )


def _notebook_functions(shell: Any) -> list[types.FunctionType]:
    found: dict[int, types.FunctionType] = {}

    def add(obj: Any) -> None:
        fn = getattr(obj, "__func__", obj)
        if isinstance(fn, types.FunctionType) and _is_notebook_file(shell, fn.__code__.co_filename):
            found[id(fn)] = fn

    for value in list(shell.user_ns.values()):
        if isinstance(value, type) and value.__module__ == "__main__":
            for attr in vars(value).values():
                if isinstance(attr, property):
                    for f in (attr.fget, attr.fset):
                        add(f)
                else:
                    add(attr)
        else:
            add(value)
    return list(found.values())


def _register_notebook_functions(
    lp: LineProfiler, shell: Any
) -> list[tuple[types.FunctionType, types.CodeType]]:
    """Swap in line_profiler's padded code for notebook-defined functions; the
    caller swaps the originals back."""
    swapped = []
    for fn in _notebook_functions(shell):
        original = fn.__code__
        holder = types.SimpleNamespace(__code__=original)
        lp.add_function(holder)
        try:
            fn.__code__ = holder.__code__
        except ValueError:  # closure mismatch: leave this one untraced
            continue
        swapped.append((fn, original))
    return swapped


def _line_stats(lp: LineProfiler, shell: Any) -> list[LineStat]:
    stats = lp.get_stats()
    unit = stats.unit
    merged: dict[tuple[str, int], list[float]] = {}  # [hits, seconds]
    for (filename, _first, _name), rows in stats.timings.items():
        for lineno, hits, t in rows:
            acc = merged.setdefault((filename, lineno), [0.0, 0.0])
            acc[0] += hits
            acc[1] += t * unit
    out = []
    fmap = getattr(shell.compile, "_filename_map", {})
    for (filename, lineno), (count, secs) in merged.items():
        if count <= 0:
            continue
        label = f"Cell In[{fmap[filename]}]" if filename in fmap else filename
        source = linecache.getline(filename, lineno).rstrip("\n")
        out.append(LineStat(label, int(lineno), source, int(count), float(secs)))
    out.sort(key=lambda s: s.time_s, reverse=True)
    return out[:MAX_LINES]
