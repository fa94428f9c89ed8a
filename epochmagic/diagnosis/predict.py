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
from typing import Any

from epochmagic.analysis.timeline import warmup_count
from epochmagic.model.profile import EpochProfile

WORKER_START_S = 0.05  # per worker and epoch when the baseline had none to measure


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
    history: list[EpochProfile],
    loading: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``{"epoch_s", "samples_per_s", "model"}`` for setting ``s``."""
    T = _step(base)
    if not T or not base.steps:
        return {"epoch_s": None, "samples_per_s": None, "model": "none: no steps measured"}
    cfg = base.config
    D, X = _steady(base, "data"), _steady(base, "transfer")
    C = max(0.0, T - D - X)
    B0, B1 = cfg.get("batch_size"), s.get("batch_size")
    W0, W1 = int(cfg.get("workers") or 0), int(s.get("workers") or 0)
    t0, t1 = int(cfg.get("threads") or 1), int(s.get("threads") or 1)
    cores = int(base.environment.get("cpu_count") or 1)
    N0 = base.steps_per_epoch or base.steps
    models = []

    # loading cost of one batch at the baseline's batch size
    if W0 == 0:
        L = D
    elif loading and "per_batch_s" in loading:
        L = loading["per_batch_s"]
    else:
        L = D * max(1, W0)
    # what one worker process really takes per batch (IPC, fork, shared cores)
    Lw = loading["worker_batch_s"] if loading and "worker_batch_s" in loading else L
    ratio = (B1 / B0) if B0 and B1 else 1.0
    N1 = math.ceil(N0 / ratio) if ratio != 1.0 else N0
    C1 = C
    if ratio != 1.0:
        fixed, per_sample = _batch_fit(base, history, C)
        C1 = fixed + per_sample * float(B1 or 0)
        models.append(
            "batch: fixed + per-sample cost"
            + (
                " (fitted)"
                if len({p.config.get("batch_size") for p in _ok(history)} | {B0}) > 1
                else ""
            )
        )
    L1, X1 = L * ratio, X * ratio
    step = _pipeline(L1, Lw * ratio, C1, X1, W1, t0, t1, cores, base)
    if W1 != W0 or t1 != t0:
        models.append("pipeline: max(L/(W*share), C/share) + transfer, share = cores/busy threads")
    startup = 0.0
    if W1 > 0 and W0 == 0:
        startup = WORKER_START_S * W1
    elif W1 > 0 and base.step_phases:
        startup = max(0.0, base.step_phases[0].get("data", 0.0) - D) * (W1 / max(1, W0))
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


def _ok(history: list[EpochProfile]) -> list[EpochProfile]:
    return [p for p in history if p.status == "ok" and p.steps >= 3]


def _batch_fit(base: EpochProfile, history: list[EpochProfile], C: float) -> tuple[float, float]:
    """(fixed seconds, seconds per sample) of the non-data part of a step."""
    points = {}
    B0 = base.config.get("batch_size")
    if B0:
        points[B0] = C
    for p in _ok(history):
        b = p.config.get("batch_size")
        if b and p.config.get("precision") == base.config.get("precision"):
            points[b] = max(0.0, _step(p) - _steady(p, "data") - _steady(p, "transfer"))
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
