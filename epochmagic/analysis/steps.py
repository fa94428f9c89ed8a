"""Where the steps of a run start and end (docs/design.md §2): by the training
loader's batches, else by an optimizer's steps, else by outermost backwards.

Pure functions over typed events (:mod:`epochmagic.model.events`), used by
:mod:`epochmagic.analysis.timeline`.
"""

from __future__ import annotations

import bisect
from typing import Any

from epochmagic.capture.recorder import Pass
from epochmagic.model.events import (
    BWD_ENTER,
    BWD_EXIT,
    FWD_ENTER,
    ITER_ENTER,
    NEXT_ENTER,
    NEXT_EXIT,
    NEXT_STOP,
    OPT_EXIT,
    ZERO_EXIT,
    BatchInfo,
    Event,
)

TRAINING_EXITS = (BWD_EXIT, OPT_EXIT, ZERO_EXIT)
Bounds = list[tuple[float, float]]


def loader_steps(
    events: list[Event], p: Pass, end: float
) -> tuple[Bounds, list[int], list[int | None], list[Any]]:
    """Step i runs from the ask for batch i to the ask for batch i+1."""
    asks: list[float] = []
    infos: list[BatchInfo] = []
    iter_start: float | None = None
    for e in events:
        if e.obj is not p:
            continue
        if e.kind == ITER_ENTER and iter_start is None:
            iter_start = e.t
        elif e.kind == NEXT_ENTER:
            asks.append(e.t)
        elif e.kind == NEXT_EXIT and e.info is not None:
            infos.append(e.info)
    if not infos:
        return [], [], [], []
    if iter_start is not None:
        asks[0] = iter_start
    n = len(infos)
    final = asks[n] if len(asks) > n else None
    lag, cut = read_ahead(events, p, asks, n, final)
    if lag:
        # The loop reads one batch ahead: the user's step i starts at the ask
        # for batch i+1; the batch read last was never trained (cut: the cell
        # stopped at the final ask) or is trained after the final ask.
        read = [asks[0]] + asks[2 : n + 1]
        starts, final = (read[:-1], read[-1]) if cut else (read, None)
    else:
        starts = asks[:n]
    infos = infos[: len(starts)]
    last_ask = starts[-1]
    step_end = _last_step_end(events, last_ask, final, end)
    bounds = list(zip(starts, starts[1:])) + [(last_ask, step_end)]
    samples = [int(i.samples) for i in infos]
    tokens = [i.tokens for i in infos]
    labels = [i.labels for i in infos]
    return bounds, samples, tokens, labels


def _last_step_end(events: list[Event], last_ask: float, final: float | None, end: float) -> float:
    """The last step also covers training that follows the final ask (loops that
    prefetch one batch ahead ask before training on it), and ends where the
    loop starts another loader's pass (an evaluation) before asking for the
    next batch (Ignite stops after len(loader) batches and asks again only in
    the next epoch, after its EPOCH_COMPLETED handlers)."""
    tail = last_ask
    for e in events:
        if e.t <= last_ask:
            continue
        if e.kind == ITER_ENTER:
            if final is not None and e.t < final:
                final = e.t
            break
        if e.kind in TRAINING_EXITS:
            tail = e.t
    if final is None and tail == last_ask:
        return end
    return max(final if final is not None else last_ask, tail)


def read_ahead(
    events: list[Event], p: Pass, asks: list[float], n: int, final: float | None
) -> tuple[int, bool]:
    """(1 if the loop read one batch ahead of training else 0, whether the cell
    was stopped at the final ask).

    Read-ahead shows as exactly one batch more read than trained at the final
    ask, with training after that ask (the pass ran out) or the cell stopped at
    it (``--steps``). A loop that skips its last batch trains nothing after it.
    """
    if final is None or n < 2:
        return 0, False
    answered = any(e.obj is p and e.kind in (NEXT_EXIT, NEXT_STOP) and e.t >= final for e in events)
    units = 0
    depth = 0
    after = False
    for e in events:
        if e.t < asks[0]:
            continue
        if e.kind == ITER_ENTER and e.t > final:
            break
        if e.kind == BWD_ENTER:
            depth += 1
        elif e.kind == BWD_EXIT and depth:
            depth -= 1
            if depth == 0:
                if e.t < final:
                    units += 1
                else:
                    after = True
    cut = not answered
    if units and n - units == 1 and (cut or after):
        return 1, cut
    return 0, cut


def update_steps(
    events: list[Event], clock_opt: Any, trained_roots: set[int]
) -> tuple[str, Bounds, list[int], list[int | None]]:
    """No training loader: one step per step() of the first optimizer that
    steps, else per outermost backward."""
    if clock_opt is not None:
        ends = [e.t for e in events if e.kind == OPT_EXIT and e.obj is clock_opt]
        clock = "optimizer"
    else:
        ends = _backward_ends(events)
        clock = "backward"
    if not ends:
        return "none", [], [], []
    first = ends[0]
    for e in events:
        if e.t > first:
            break
        if (e.kind == FWD_ENTER and e.info.grad) or e.kind == BWD_ENTER:
            first = e.t
            break
    bounds = list(zip([first] + ends[:-1], ends))
    samples, tokens = _forward_samples(events, bounds, trained_roots)
    return clock, bounds, samples, tokens


def _backward_ends(events: list[Event]) -> list[float]:
    """Where each outermost backward returned."""
    ends = []
    depth = 0
    for e in events:
        if e.kind == BWD_ENTER:
            depth += 1
        elif e.kind == BWD_EXIT:
            depth -= 1
            if depth == 0:
                ends.append(e.t)
    return ends


def _forward_samples(
    events: list[Event], bounds: Bounds, trained_roots: set[int]
) -> tuple[list[int], list[int | None]]:
    """Samples (and tokens) per step: the leading dimension of the input to the
    first trained model, summed over its forwards with grad in each step."""
    sample_model = None
    for e in events:
        if (
            e.kind == FWD_ENTER
            and e.info.grad
            and (not trained_roots or id(e.obj) in trained_roots)
        ):
            sample_model = e.obj
            break
    samples = [0] * len(bounds)
    tokens: list[int | None] = [None] * len(bounds)
    if sample_model is None:
        return samples, tokens
    bound_starts = [b[0] for b in bounds]
    for e in events:
        if e.kind != FWD_ENTER or e.obj is not sample_model or not e.info.grad:
            continue
        i = bisect.bisect_right(bound_starts, e.t) - 1
        if 0 <= i < len(bounds) and e.t <= bounds[i][1]:
            samples[i] += e.info.samples
            if e.info.tokens is not None:
                tokens[i] = (tokens[i] or 0) + e.info.tokens
    return samples, tokens
