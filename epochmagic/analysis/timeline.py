"""Turns the probes' event log into steps and phases (docs/design.md §2).

Pure functions over recorded events: no torch calls, so the rules (which
loader trains, where a step starts and ends, what counts as evaluation, which
phase an instant belongs to) are unit-testable with a fake clock.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass, field
from typing import Any

from epochmagic.capture import recorder as r
from epochmagic.capture.recorder import Pass, passes

PHASES = ("data", "transfer", "forward", "backward", "optimizer", "eval", "other")
TRAINING_EXITS = (r.BWD_EXIT, r.OPT_EXIT, r.ZERO_EXIT)


@dataclass
class Timeline:
    start: float  # clock time the run began
    wall_s: float
    phases: dict[str, float]
    step_bounds: list[tuple[float, float]]  # absolute clock times
    step_phases: list[dict[str, float]]
    step_samples: list[int]
    step_tokens: list[int | None]
    memory_samples: list[tuple[float, int]]
    step_memory: list[int]
    clock: str  # "loader", "optimizer", "backward" or "none"
    training_pass: Pass | None
    eval_spans: list[tuple[float, float]] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    # on a device clock: seconds the device had work queued, by the phase that
    # launched it (None on the CPU), where it had (devicetime's intervals), and
    # the synchronising calls (time, filename, lineno, in a copy, seconds waited)
    device_phases: dict[str, float] | None = None
    busy: list[tuple[float, float]] = field(default_factory=list)
    busy_estimate: list[tuple[float, float]] = field(default_factory=list)
    syncs: list[tuple[float, str, int, bool, float]] = field(default_factory=list)

    @property
    def step_times(self) -> list[float]:
        return [b - a for a, b in self.step_bounds]

    @property
    def outside_steps_s(self) -> float:
        return max(0.0, self.wall_s - sum(self.step_times))


def analyse(
    events: list[r.Event],
    start: float,
    end: float,
    *,
    trained_param_ids: set[int] | None = None,
    clock_opt: Any = None,
    busy: list[tuple[float, float]] | None = None,
    busy_estimate: list[tuple[float, float]] | None = None,
) -> Timeline:
    """Work out steps, evaluation spans and per-phase time from the events.

    ``busy``: where the device had work queued, when the events are already
    on the device timeline (:mod:`epochmagic.capture.devicetime`).
    """
    events = [e for e in events if start <= e[0] <= end]
    trained_param_ids = trained_param_ids or set()
    trained_roots = _trained_roots(events, trained_param_ids)
    all_passes = passes(events)
    training_keys: set[tuple[str, int]] = set()
    for p in all_passes:
        if p.trained:
            training_keys |= p.keys
    train_pass = next((p for p in all_passes if p.trained), None)

    if train_pass is not None:
        clock = "loader"
        bounds, samples, tokens, labels = _loader_steps(events, train_pass, end)
    else:
        clock, bounds, samples, tokens = _update_steps(events, clock_opt, trained_roots)
        labels = []
    spans = _eval_spans(events, all_passes, training_keys, trained_roots, end)
    phases, step_phases, device = _sweep(events, start, end, bounds, spans, busy)
    mem = [(e[0], int(e[3])) for e in events if e[1] == r.MEM]
    return Timeline(
        start=start,
        wall_s=end - start,
        phases=phases,
        step_bounds=bounds,
        step_phases=step_phases,
        step_samples=samples,
        step_tokens=tokens,
        memory_samples=mem,
        step_memory=_step_memory(mem, bounds),
        clock=clock,
        training_pass=train_pass,
        eval_spans=spans,
        labels=labels,
        device_phases=device,
        busy=busy or [],
        syncs=[_sync(e) for e in events if e[1] == r.SYNC],
        busy_estimate=busy_estimate or [],
    )


def _sync(e: r.Event) -> tuple[float, str, int, bool, float]:
    """(time, filename, lineno, in a copy, seconds waited: 0 unless the run was
    moved to device time)."""
    filename, lineno, copy, *wait = e[3]
    return (e[0], filename, lineno, copy, wait[0] if wait else 0.0)


def _trained_roots(events: list[r.Event], param_ids: set[int]) -> set[int]:
    """ids of root modules with a parameter that an optimizer updates."""
    roots: dict[int, Any] = {}
    for e in events:
        if e[1] == r.FWD_ENTER and id(e[2]) not in roots:
            roots[id(e[2])] = e[2]
    trained = set()
    for key, module in roots.items():
        params = getattr(module, "parameters", None)
        if params is None:
            continue
        try:
            if any(id(p) in param_ids for p in params()):
                trained.add(key)
        except Exception:  # noqa: BLE001 (a module whose parameters() misbehaves is not ours to fix)
            continue
    return trained


def _loader_steps(
    events: list[r.Event], p: Pass, end: float
) -> tuple[list[tuple[float, float]], list[int], list[int | None], list[Any]]:
    """Step i runs from the ask for batch i to the ask for batch i+1."""
    asks: list[float] = []
    infos: list[Any] = []
    iter_start: float | None = None
    for e in events:
        if e[2] is not p:
            continue
        if e[1] == r.ITER_ENTER and iter_start is None:
            iter_start = e[0]
        elif e[1] == r.NEXT_ENTER:
            asks.append(e[0])
        elif e[1] == r.NEXT_EXIT and e[3] is not None:
            infos.append(e[3])
    if not infos:
        return [], [], [], []
    if iter_start is not None:
        asks[0] = iter_start
    n = len(infos)
    final = asks[n] if len(asks) > n else None
    lag, cut = _read_ahead(events, p, asks, n, final)
    if lag:
        # The loop reads one batch ahead: the user's step i starts at the ask
        # for batch i+1; the batch read last was never trained (cut: the cell
        # stopped at the final ask) or is trained after the final ask.
        read = [asks[0]] + asks[2 : n + 1]
        starts, final = (read[:-1], read[-1]) if cut else (read, None)
    else:
        starts = asks[:n]
    n = len(starts)
    infos = infos[:n]
    last_ask = starts[-1]
    # The last step also covers training that follows the final ask (loops that
    # prefetch one batch ahead ask before training on it), and ends where the
    # loop starts another loader's pass (an evaluation) before asking for the
    # next batch (Ignite stops after len(loader) batches and asks again only in
    # the next epoch, after its EPOCH_COMPLETED handlers).
    tail = last_ask
    for e in events:
        if e[0] <= last_ask:
            continue
        if e[1] == r.ITER_ENTER:
            if final is not None and e[0] < final:
                final = e[0]
            break
        if e[1] in TRAINING_EXITS:
            tail = e[0]
    step_end = max(final if final is not None else last_ask, tail)
    if final is None and tail == last_ask:
        step_end = end
    bounds = [(starts[i], starts[i + 1]) for i in range(n - 1)] + [(last_ask, step_end)]
    samples = [int(i[0]) for i in infos]
    tokens = [i[1] for i in infos]
    labels = [i[2] for i in infos]
    return bounds, samples, tokens, labels


def _read_ahead(
    events: list[r.Event], p: Pass, asks: list[float], n: int, final: float | None
) -> tuple[int, bool]:
    """(1 if the loop read one batch ahead of training else 0, whether the cell
    was stopped at the final ask).

    Read-ahead shows as exactly one batch more read than trained at the final
    ask, with training after that ask (the pass ran out) or the cell stopped at
    it (``--steps``). A loop that skips its last batch trains nothing after it.
    """
    if final is None or n < 2:
        return 0, False
    answered = any(
        e[2] is p and e[1] in (r.NEXT_EXIT, r.NEXT_STOP) and e[0] >= final for e in events
    )
    units = 0
    depth = 0
    after = False
    for e in events:
        if e[0] < asks[0]:
            continue
        if e[1] == r.ITER_ENTER and e[0] > final:
            break
        if e[1] == r.BWD_ENTER:
            depth += 1
        elif e[1] == r.BWD_EXIT and depth:
            depth -= 1
            if depth == 0:
                if e[0] < final:
                    units += 1
                else:
                    after = True
    cut = not answered
    if units and n - units == 1 and (cut or after):
        return 1, cut
    return 0, cut


def _update_steps(
    events: list[r.Event], clock_opt: Any, trained_roots: set[int]
) -> tuple[str, list[tuple[float, float]], list[int], list[int | None]]:
    """No training loader: one step per step() of the first optimizer that
    steps, else per outermost backward."""
    if clock_opt is not None:
        ends = [e[0] for e in events if e[1] == r.OPT_EXIT and e[2] is clock_opt]
        clock = "optimizer"
    else:
        ends = []
        depth = 0
        for e in events:
            if e[1] == r.BWD_ENTER:
                depth += 1
            elif e[1] == r.BWD_EXIT:
                depth -= 1
                if depth == 0:
                    ends.append(e[0])
        clock = "backward"
    if not ends:
        return "none", [], [], []
    first = ends[0]
    for e in events:
        if e[0] > first:
            break
        if (e[1] == r.FWD_ENTER and e[3][0]) or e[1] == r.BWD_ENTER:
            first = e[0]
            break
    starts = [first] + ends[:-1]
    bounds = list(zip(starts, ends))
    # samples: leading dimension of the input to the first trained model
    sample_model = None
    for e in events:
        if e[1] == r.FWD_ENTER and e[3][0] and (not trained_roots or id(e[2]) in trained_roots):
            sample_model = e[2]
            break
    samples = [0] * len(bounds)
    tokens: list[int | None] = [None] * len(bounds)
    if sample_model is not None:
        bound_starts = [b[0] for b in bounds]
        for e in events:
            if e[1] != r.FWD_ENTER or e[2] is not sample_model or not e[3][0]:
                continue
            i = bisect.bisect_right(bound_starts, e[0]) - 1
            if 0 <= i < len(bounds) and e[0] <= bounds[i][1]:
                samples[i] += e[3][2]
                if e[3][3] is not None:
                    tokens[i] = (tokens[i] or 0) + e[3][3]
    return clock, bounds, samples, tokens


def _eval_spans(
    events: list[r.Event],
    passes: list[Pass],
    training_keys: set[tuple[str, int]],
    trained_roots: set[int],
    end: float,
) -> list[tuple[float, float]]:
    """Evaluation is a context: passes over loaders that do not train, and runs
    of no-grad / eval-mode calls of a model that is being trained (a teacher or
    EMA model is not trained, so its forward stays ``forward``)."""
    spans: list[tuple[float, float]] = []
    busy = _passes_with_training(events)
    eval_passes = {
        id(p)
        for p in passes
        if not p.trained and not (p.keys & training_keys) and id(p) not in busy
    }
    open_pass: dict[int, float] = {}
    last_activity: dict[int, float] = {}
    current: int | None = None
    run: list[float] = []  # [start, end] of the current run of eval forwards
    run_had_grad = False
    for e in events:
        t, kind, obj = e[0], e[1], e[2]
        training_fwd = kind == r.FWD_ENTER and e[3][0] and e[3][1]
        if kind in (r.ITER_ENTER, r.NEXT_ENTER):
            current = id(obj) if id(obj) in eval_passes else None
            if current is not None:
                open_pass.setdefault(current, t)
        elif kind == r.NEXT_STOP and id(obj) in open_pass:
            spans.append((open_pass.pop(id(obj)), t))
            last_activity.pop(id(obj), None)
            current = None
        elif kind in (r.NEXT_EXIT, r.FWD_EXIT) and current is not None:
            last_activity[current] = t
        elif kind in (r.BWD_ENTER, r.OPT_ENTER) or training_fwd:
            current = None
        # runs of eval forwards of a trained model, outside eval passes
        if kind == r.FWD_ENTER and id(obj) in trained_roots and not training_fwd:
            if current is None:
                if not run:
                    run = [t, t]
                run_had_grad = run_had_grad or bool(e[3][0])
        elif kind == r.FWD_EXIT and run and id(obj) in trained_roots:
            run[1] = t
        elif run and (
            kind in (r.BWD_ENTER, r.OPT_ENTER, r.ITER_ENTER, r.NEXT_ENTER) or training_fwd
        ):
            # an eval-mode forward with grad followed by backward is training
            # (fine-tuning with frozen batch-norm), not evaluation
            if not (kind == r.BWD_ENTER and run_had_grad) and run[1] > run[0]:
                spans.append((run[0], run[1]))
            run, run_had_grad = [], False
    if run and run[1] > run[0]:
        spans.append((run[0], run[1]))
    for key, t0 in open_pass.items():
        spans.append((t0, last_activity.get(key, t0)))
    return _merge(spans)


def _passes_with_training(events: list[r.Event]) -> set[int]:
    """Passes with a backward or optimizer step between their first and last
    batch: loaders zipped with the training loader, not evaluation."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    training_at: list[int] = []
    for i, e in enumerate(events):
        if e[1] in (r.ITER_ENTER, r.NEXT_ENTER, r.NEXT_EXIT, r.NEXT_STOP):
            first.setdefault(id(e[2]), i)
            last[id(e[2])] = i
        elif e[1] in (r.BWD_ENTER, r.OPT_ENTER):
            training_at.append(i)
    return {
        key
        for key, a in first.items()
        if (j := bisect.bisect_right(training_at, a)) < len(training_at)
        and training_at[j] < last[key]
    }


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif b > a:
            out.append((a, b))
    return out


def _sweep(
    events: list[r.Event],
    start: float,
    end: float,
    bounds: list[tuple[float, float]],
    spans: list[tuple[float, float]],
    busy: list[tuple[float, float]] | None = None,
) -> tuple[dict[str, float], list[dict[str, float]], dict[str, float] | None]:
    """Credit every instant to one phase: the innermost open one inside a step,
    ``eval`` inside an evaluation span, ``other`` elsewhere. With ``busy``,
    also the device's busy seconds by phase."""
    on_device = busy is not None
    busy = busy or []
    cuts = sorted(
        {
            start,
            end,
            *(e[0] for e in events),
            *(t for b in bounds for t in b),
            *(t for s in spans for t in s),
            *(t for s in busy for t in s),
        }
    )
    cuts = [c for c in cuts if start <= c <= end]
    totals = dict.fromkeys(PHASES, 0.0)
    per_step = [dict.fromkeys(PHASES, 0.0) for _ in bounds]
    device = dict.fromkeys(PHASES, 0.0)
    stack: list[int] = []
    ei = 0
    si = 0
    vi = 0
    bi = 0
    n = len(events)
    for a, b in zip(cuts, cuts[1:]):
        while ei < n and events[ei][0] <= a:
            _apply(stack, events[ei][1])
            ei += 1
        while si < len(bounds) and bounds[si][1] <= a:
            si += 1
        while vi < len(spans) and spans[vi][1] <= a:
            vi += 1
        in_step = si < len(bounds) and bounds[si][0] <= a
        in_eval = vi < len(spans) and spans[vi][0] <= a
        if in_eval:
            phase = "eval"
        elif in_step and stack:
            phase = r.PHASE_OF_ENTER[stack[-1]]
        else:
            phase = "other"
        d = b - a
        totals[phase] += d
        if in_step:
            per_step[si][phase] += d
        while bi < len(busy) and busy[bi][1] <= a:
            bi += 1
        if bi < len(busy) and busy[bi][0] <= a:
            device[phase] += d
    totals = _exact(totals, end - start)
    per_step = [_exact(p, b1 - b0) for p, (b0, b1) in zip(per_step, bounds)]
    return totals, per_step, (device if on_device else None)


def _apply(stack: list[int], kind: int) -> None:
    if kind in r.EXIT_OF_ENTER:
        stack.append(kind)
        return
    enter = r.ENTER_OF_EXIT.get(kind)
    if enter is None or enter not in stack:
        return
    while stack:
        if stack.pop() == enter:
            break


def _exact(phases: dict[str, float], total: float) -> dict[str, float]:
    """Make ``other`` the remainder so the phases sum to ``total`` exactly."""
    out = {k: max(0.0, v) for k, v in phases.items()}
    known = sum(v for k, v in out.items() if k != "other")
    if known > total:  # float noise only
        scale = total / known if known else 0.0
        out = {k: v * scale for k, v in out.items()}
        known = sum(v for k, v in out.items() if k != "other")
    out["other"] = max(0.0, total - known)
    return out


def _step_memory(mem: list[tuple[float, int]], bounds: list[tuple[float, float]]) -> list[int]:
    out = []
    last = mem[0][1] if mem else 0
    j = 0
    for a, b in bounds:
        peak = None
        while j < len(mem) and mem[j][0] <= b:
            if mem[j][0] > a:
                peak = mem[j][1] if peak is None else max(peak, mem[j][1])
            last = mem[j][1]
            j += 1
        out.append(peak if peak is not None else last)
    return out


def steady_median(step_times: list[float]) -> float | None:
    """Median step time with warm-up steps left out."""
    if not step_times:
        return None
    if len(step_times) < 3:
        return statistics.median(step_times)
    warm = max(1, min(len(step_times) // 10, 5))
    return statistics.median(step_times[warm:])


def warmup_count(step_times: list[float]) -> int:
    if len(step_times) < 3:
        return 0
    return max(1, min(len(step_times) // 10, 5))
