"""What the finding rules share: the epoch and in-step totals they divide by,
the machine's cores, and how they print seconds, FLOPs and bytes."""

from __future__ import annotations

from epochmagic.model.profile import EpochProfile


def epoch(prof: EpochProfile) -> float:
    return prof.wall_s or 1.0


def step_times_without_compile(prof: EpochProfile) -> list[float]:
    """Step times less the torch.compile seconds inside each step: compile time
    is the `compile` finding's, never also warm-up or growth."""
    per_step = (prof.compile or {}).get("step_compile_s") or []
    if len(per_step) != len(prof.step_times):
        return list(prof.step_times)
    return [max(0.0, t - c) for t, c in zip(prof.step_times, per_step)]


def in_steps(prof: EpochProfile, phase: str) -> float:
    return sum(sp.get(phase, 0.0) for sp in prof.step_phases)


def cores(prof: EpochProfile) -> int:
    return int(prof.environment.get("cpu_count") or 1)


def ms(s: float) -> str:
    """Milliseconds; below 0.1 ms in microseconds, so time spent never reads 0.0 ms."""
    if 0 < abs(s) < 1e-4:
        return f"{s * 1e6:.0f} µs"
    return f"{s * 1000:.1f} ms"


def flop(x: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
