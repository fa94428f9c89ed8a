"""Findings that need the GPU's own timeline (docs/design.md §6):
synchronising calls, host-to-device copies and idle time.

Pure functions of an ``EpochProfile`` whose ``gpu`` fields came from CUDA
events (:mod:`epochmagic.analysis.gpu`); on the CPU, or when device timing failed, they
stay silent. Their thresholds are in ``epochmagic.model.thresholds``.
"""

from __future__ import annotations

from typing import Any

from epochmagic.analysis.figures import ms, size
from epochmagic.analysis.gpu import datasheet
from epochmagic.model.gpurecord import GpuRecord
from epochmagic.model.profile import EpochProfile, Finding
from epochmagic.model.thresholds import threshold as _t
from epochmagic.model.vocabulary import PHASES

# the phases in which the host runs the loop itself (not the loader, not evaluation)
HOST_PHASES = tuple(p for p in PHASES if p not in ("data", "eval"))


def _timed(prof: EpochProfile) -> GpuRecord | None:
    gpu = prof.gpu
    if not gpu or gpu.get("device_s_by_phase") is None or not prof.steps:
        return None
    return gpu


def _idle(gpu: GpuRecord) -> float:
    """Idle share of the steps, counting as busy the segments the device was
    still working through at their end (``idle_in_steps_share`` counts only
    the time work was known to be queued, so it over-states idleness when the
    host's launches overlap the device's work)."""
    low = gpu.get("idle_in_steps_share_low")
    return float(low if low is not None else gpu.get("idle_in_steps_share") or 0.0)


def sync_points(prof: EpochProfile) -> Finding | None:
    gpu = _timed(prof)
    if gpu is None:
        return None
    per_step = gpu.get("syncs_per_step") or 0.0
    idle = _idle(gpu)
    in_steps = sum(prof.step_times) or 1e-12
    by_phase = gpu.get("idle_s_by_phase") or {}
    outside_loader = sum(by_phase.get(p, 0.0) for p in HOST_PHASES)
    # the idle time outside the loader, at the conservative idle estimate
    bubble = idle * in_steps * outside_loader / (sum(by_phase.values()) or 1e-12)
    if per_step < _t("sync_per_step") or bubble / in_steps < _t("sync_idle"):
        return None
    sites = "; ".join(
        f"{s['filename']}:{s['lineno']} `{s['source']}` "
        f"({s['count'] / prof.steps:.1f}/step, waited {ms(s['wait_s'] / prof.steps)}/step)"
        for s in (gpu.get("sync_sites") or [])[:3]
    )
    return Finding(
        "sync_points",
        f"{per_step:.1f} GPU synchronisations per step",
        f"each `.item()`, `.cpu()`, `print(tensor)` or data-dependent shape makes the host "
        f"wait until the GPU has run everything queued; the GPU then sits idle while Python "
        f"prepares the next kernels: {idle:.0%} of the steps' time idle, "
        f"{ms(bubble / prof.steps)} per step of it outside the loader."
        + (f" Where: {sites}." if sites else ""),
        bubble / (prof.wall_s or 1.0),
        {},
        "keep running metrics on the GPU and read them every N steps:\n"
        "    running += loss.detach()\n"
        "    if step % 100 == 0: print((running / 100).item()); running.zero_()",
    )


def transfer(prof: EpochProfile) -> Finding | None:
    gpu = _timed(prof)
    if gpu is None:
        return None
    seconds = prof.phases.get("transfer", 0.0)
    share = seconds / (prof.wall_s or 1.0)
    if share < _t("transfer_share"):
        return None
    tr: dict[str, Any] = dict(gpu.get("transfer") or {})  # a loaded profile may lack keys
    per_step = (tr.get("bytes") or 0) / prof.steps
    in_step = sum(sp.get("transfer", 0.0) for sp in prof.step_phases) / prof.steps
    pinned = tr.get("pinned_share") or 0.0
    non_blocking = tr.get("non_blocking_share") or 0.0
    rate = f" at {per_step / in_step / 1e9:.1f} GB/s" if in_step > 0 and per_step else ""
    blocking = gpu.get("blocking_copies_per_step") or 0.0
    fixes = []
    if pinned < _t("transfer_flag_share") and not prof.config.get("pin_memory"):
        fixes.append("DataLoader(..., pin_memory=True)")
    if non_blocking < _t("transfer_flag_share"):
        fixes.append("xb = xb.to(device, non_blocking=True)")
    if not fixes:
        fixes.append(
            "copy less: keep a small dataset on the GPU, send uint8 images and convert there"
        )
    can_pin = prof.step_clock == "loader" and not prof.config.get("pin_memory")
    return Finding(
        "transfer",
        "Host-to-device copies of the batches",
        f"{size(per_step)} per step copied to the GPU{rate}, {ms(in_step)} per step; "
        f"{pinned:.0%} from pinned memory, {non_blocking:.0%} with non_blocking=True"
        + (
            f", {blocking:.1f} blocking copies per step that wait for the GPU's queue"
            + "".join(
                f" (`{c['source']}`, {c['filename']}:{c['lineno']})"
                for c in (gpu.get("copy_sites") or [])[:1]
            )
            if blocking
            else ""
        )
        + ". Pageable memory is staged through a pinned buffer by the driver; a pinned, "
        "non_blocking copy overlaps with the GPU's work.",
        share,
        {"pin_memory": True} if can_pin else {},
        "\n".join(fixes),
    )


def gpu_idle(prof: EpochProfile) -> Finding | None:
    gpu = _timed(prof)
    if gpu is None:
        return None
    idle = _idle(gpu)
    if idle < _t("gpu_idle"):
        return None
    in_steps = sum(prof.step_times)
    by_phase = {k: v for k, v in (gpu.get("idle_s_by_phase") or {}).items() if k != "eval" and v}
    total = sum(by_phase.values()) or 1e-12
    where = ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(by_phase.items(), key=lambda kv: -kv[1])[:3]
    )
    top = max(by_phase, key=by_phase.__getitem__) if by_phase else "other"
    batch = prof.config.get("batch_size")
    suggestion: dict[str, Any] = {}
    if top == "data":
        fix = "the GPU waits for batches: see the data-loading finding (workers, pin_memory)"
    else:
        fix = (
            "give each launch more work: a larger batch, torch.compile(model) or CUDA graphs "
            "to cut per-kernel launch cost, fewer syncs in the loop"
        )
        if batch and prof.step_clock == "loader":
            suggestion = {"batch_size": int(batch) * 2}
    return Finding(
        "gpu_idle",
        f"The GPU is idle {idle:.0%} of the training steps",
        f"no work was queued on the GPU for {ms(idle * in_steps / prof.steps)} of each "
        f"{ms(in_steps / prof.steps)} step; meanwhile the host was in: {where}.",
        idle * in_steps / (prof.wall_s or 1.0),
        suggestion,
        fix,
    )


def precision_on_gpu(prof: EpochProfile, share: float) -> Finding | None:
    """fp32 on a GPU with tensor cores (compute capability 7.0+: fp16; 8.0+:
    bf16 and TF32)."""
    gpu = prof.gpu or {}
    try:
        capability = float(gpu.get("capability") or 0.0) or None
    except ValueError:
        capability = None
    if capability is not None and capability < 7.0:
        return None
    name = gpu.get("name") or "this GPU"
    dtype = "bf16" if gpu.get("bf16", True) else "fp16"
    tf32 = bool((gpu.get("tf32") or {}).get("matmul"))
    sheet = datasheet(name)
    if sheet is not None:
        fp32, tf, half = sheet
        rate = f"{half:g} TFLOP/s in {dtype} against {fp32:g} in fp32"
        if tf is not None:
            rate += f" ({tf:g} with TF32)"
        why = f"{name}'s tensor cores run {rate} (datasheet, dense)"
    else:
        why = f"{name}'s tensor cores run {dtype} matmuls several times faster than fp32"
    tf32_note = ""
    fix_tf32 = ""
    if (capability is None or capability >= 8.0) and not tf32:
        tf32_note = (
            "; TF32 is off for fp32 matmuls (torch's default), so even fp32 runs on the slow path"
        )
        fix_tf32 = "\n# or, staying in fp32: torch.set_float32_matmul_precision('high')  # TF32"
    torch_dtype = "torch.bfloat16" if dtype == "bf16" else "torch.float16"
    fix = f"with torch.autocast('cuda', dtype={torch_dtype}):\n    loss = loss_fn(model(xb), yb)"
    if dtype == "fp16":
        fix += "\n# fp16 needs torch.amp.GradScaler('cuda') around backward and step"
    return Finding(
        "precision",
        f"fp32 compute on tensor cores that run {dtype}",
        f"{why}{tf32_note}. Forward and backward are {share:.0%} of the epoch. "
        + (
            "bf16 keeps fp32's range (no GradScaler needed); "
            if dtype == "bf16"
            else "fp16 needs a GradScaler against underflow; "
        )
        + "check the loss still converges.",
        share,
        {"precision": dtype},
        fix + fix_tf32,
    )


RULES = [sync_points, transfer, gpu_idle]  # precision_on_gpu is part of diagnose.precision
