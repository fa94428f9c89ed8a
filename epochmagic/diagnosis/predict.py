"""Predicted epoch time of a what-if, before it runs (docs/design.md §5.5).

Workers: a pipeline model. With ``L`` the time to load one batch, ``C`` the
rest of a step and ``k`` the cores the main process keeps busy for ``C``,

    step ~ max(L / W, C, (L + k*C) / cores) + transfer

(a plain ``max(L/W, C)`` promised 2x on two cores where 1.04-1.09x was measured:
torch's intra-op threads compete with the workers for the cores). Batch size: a
step is a fixed cost plus a per-sample cost, fitted once two batch sizes have
been measured. Precision and fused optimizers are not modelled: the result says
so, and the measurement answers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

from epochmagic.analysis.timeline import warmup_count
from epochmagic.model.profile import EpochProfile
from epochmagic.model.thresholds import threshold


class Measured(NamedTuple):
    """What a later prediction needs from a what-if that ran: a session keeps
    these instead of the profiles (which hold timelines and the user's cell)."""

    batch_size: int | None
    precision: str | None
    compute_s: float  # the steady step less its data wait and transfer


def measured(prof: EpochProfile) -> Measured | None:
    """The record of a run that finished, None for one that failed or ran
    fewer than 3 steps (too few for a steady step time)."""
    if prof.status != "ok" or prof.steps < 3:
        return None
    compute = max(0.0, _step(prof) - _steady(prof, "data") - _steady(prof, "transfer"))
    return Measured(prof.config.get("batch_size"), prof.config.get("precision"), compute)


def _steady(prof: EpochProfile, phase: str) -> float:
    w = warmup_count(prof.step_times)
    values = [sp.get(phase, 0.0) for sp in prof.step_phases[w:]] or [0.0]
    return statistics.median(values)


def _step(prof: EpochProfile) -> float:
    w = warmup_count(prof.step_times)
    return statistics.median(prof.step_times[w:]) if prof.step_times else 0.0


def epoch(
    base: EpochProfile,
    s: dict[str, Any],
    history: Sequence[Measured | None],
    loading: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``{"epoch_s", "samples_per_s", "model"}`` for setting ``s``. ``history``
    holds what the session's earlier what-ifs measured (:func:`measured`; its
    None entries, runs that did not finish, are skipped)."""
    T = _step(base)
    if not T or not base.steps:
        return {"epoch_s": None, "samples_per_s": None, "model": "none: no steps measured"}
    cfg = base.config
    runs = [m for m in history if m is not None]
    D, X = _steady(base, "data"), _steady(base, "transfer")
    C = max(0.0, T - D - X)
    B0, B1 = cfg.get("batch_size"), s.get("batch_size")
    W0, W1 = int(cfg.get("workers") or 0), int(s.get("workers") or 0)
    t0, t1 = int(cfg.get("threads") or 1), int(s.get("threads") or 1)
    cores = int(base.environment.get("cpu_count") or 1)
    N0 = base.steps_per_epoch or base.steps
    models = []
    L, Lw = _load_times(D, W0, loading)
    ratio = (B1 / B0) if B0 and B1 else 1.0
    N1 = math.ceil(N0 / ratio) if ratio != 1.0 else N0
    C1 = C
    if ratio != 1.0:
        fixed, per_sample = _batch_fit(base, runs, C)
        C1 = fixed + per_sample * float(B1 or 0)
        fitted = len({m.batch_size for m in runs} | {B0}) > 1
        models.append("batch: fixed + per-sample cost" + (" (fitted)" if fitted else ""))
    L1, X1 = L * ratio, X * ratio
    step = _pipeline(L1, Lw * ratio, C1, X1, W1, t0, t1, cores, base)
    if W1 != W0 or t1 != t0:
        models.append("pipeline: max(L/(W*share), C/share) + transfer, share = cores/busy threads")
    startup = _startup(base, D, W0, W1)
    if s.get("precision") != (cfg.get("precision") or "fp32") or (
        s.get("fused") and not cfg.get("fused")
    ):
        models.append("precision/fused not modelled")
    epoch_s = base.outside_steps_s + N1 * step + startup
    samples = (B1 or B0 or 0) * N1
    return {
        "epoch_s": epoch_s,
        "samples_per_s": samples / (N1 * step) if samples and step > 0 else None,
        "model": "; ".join(models) or "unchanged",
        "peak_bytes": peak_bytes(base, s),
    }


def _load_times(D: float, W0: int, loading: dict[str, float] | None) -> tuple[float, float]:
    """(L, Lw): the loading cost of one batch at the baseline's batch size, and
    what one worker process really takes per batch (IPC, fork, shared cores)."""
    if W0 == 0:
        L = D
    elif loading and "per_batch_s" in loading:
        L = loading["per_batch_s"]
    else:
        L = D * max(1, W0)
    Lw = loading["worker_batch_s"] if loading and "worker_batch_s" in loading else L
    return L, Lw


def _startup(base: EpochProfile, D: float, W0: int, W1: int) -> float:
    """Worker start-up in the new epoch: the baseline's first-batch excess,
    scaled by the workers, or a per-worker default when it had none."""
    if W1 > 0 and W0 == 0:
        return threshold("worker_start_s") * W1
    if W1 > 0 and base.step_phases:
        return max(0.0, base.step_phases[0].get("data", 0.0) - D) * (W1 / max(1, W0))
    return 0.0


def peak_bytes(base: EpochProfile, s: dict[str, Any]) -> int | None:
    """Peak memory at another batch size: what a step adds on top of the
    memory held between steps (parameters, gradients, optimizer state) grows
    with the batch. ``None`` when the baseline has no memory figures; the
    baseline's own peak when the batch size does not change."""
    mem = base.memory or {}
    peak = mem.get("peak_bytes")
    per_step = mem.get("per_step_bytes") or []
    if not peak:
        return None
    old, new = base.config.get("batch_size"), s.get("batch_size")
    if not old or not new or new == old:
        return int(peak)
    held = min(per_step) if per_step else 0
    return int(held + max(0, peak - held) * new / old)


def _pipeline(
    L: float,
    Lw: float,
    C: float,
    X: float,
    W: int,
    t0: int,
    t1: int,
    cores: int,
    base: EpochProfile,
) -> float:
    """Steady step time with W loader workers and t1 intra-op threads.

    Workers and the main process share the cores. The main process keeps
    ``busy`` cores occupied: measured in the baseline as its CPU time over wall
    time (torch's OpenMP threads spin between ops, so with t > 1 that is close
    to t even while it waits for data); with one thread it sleeps while it waits
    and is busy only for its own compute. Each busy thread then gets ``share``
    = cores / (W + busy) of a core. ``Lw`` is a batch's time in one worker
    process with the main process idle, measured (``loaders.worker_batch_time``).
    """
    if W == 0:
        return L + C + X
    busy0 = (base.cpu_s or 0.0) / base.wall_s if base.wall_s else 1.0
    busy_spin = max(1.0, min(float(t1), busy0 if t1 >= t0 else busy0 * t1 / t0))
    step = Lw / W + C + X
    for _ in range(20):  # busy depends on the step time when the main thread sleeps
        busy = busy_spin if t1 > 1 else min(1.0, C / max(step, 1e-12))
        share = min(1.0, cores / (W + busy))
        new = max(Lw / (W * share), C / share) + X
        if abs(new - step) < 1e-9:
            break
        step = new
    return step


def _batch_fit(base: EpochProfile, runs: list[Measured], C: float) -> tuple[float, float]:
    """(fixed seconds, seconds per sample) of the non-data part of a step."""
    points = {}
    B0 = base.config.get("batch_size")
    if B0:
        points[B0] = C
    for m in runs:
        if m.batch_size and m.precision == base.config.get("precision"):
            points[m.batch_size] = m.compute_s
    if len(points) >= 2:
        xs, ys = list(points), list(points.values())
        mx, my = statistics.mean(xs), statistics.mean(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
        slope = max(0.0, slope)
        return max(0.0, my - slope * mx), slope
    fixed = _steady(base, "optimizer") + _steady(base, "other")
    fixed = min(fixed, C)
    return fixed, (C - fixed) / B0 if B0 else 0.0


def error(prof: EpochProfile) -> float | None:
    """Relative error of the prediction against the measurement."""
    if not prof.predicted or prof.predicted.get("epoch_s") is None or not prof.epoch_s:
        return None
    return float(prof.predicted["epoch_s"]) / prof.epoch_s - 1.0
