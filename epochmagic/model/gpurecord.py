"""``EpochProfile.gpu``: what the GPU did during the run (docs/design.md §4.3).

Filled by :mod:`epochmagic.analysis.gpu` (``fields``, then ``utilisation``
once the evidence has counted the model's FLOPs) and by
:mod:`epochmagic.analysis.assemble` (``transfer``). ``None`` on a profile
unless the run used CUDA. A profile loaded from JSON holds a plain dict with
the same keys. Shares are fractions (0.25 is 25 %), times are seconds.
"""

from __future__ import annotations

from typing import TypedDict


class Tf32Record(TypedDict, total=False):
    """torch's TF32 settings as the run left them."""

    matmul: bool  # torch.backends.cuda.matmul.allow_tf32
    cudnn: bool  # torch.backends.cudnn.allow_tf32
    float32_matmul_precision: str  # "highest", "high" or "medium"


class SiteRecord(TypedDict):
    """One source line that synchronised with the device (or copied blocking)."""

    filename: str
    lineno: int
    source: str  # the line's text
    count: int  # calls from this line inside the steps
    wait_s: float  # seconds the host waited there in all


class TransferRecord(TypedDict):
    """Host-to-device copies (``Tensor.to`` / ``.cuda``) during the run."""

    copies: int
    bytes: int
    pinned_share: float | None  # of the bytes, from pinned memory; None without copies
    non_blocking_share: float | None  # of the bytes, copied with non_blocking=True


class GpuRecord(TypedDict, total=False):
    """``prof.gpu``. ``*_share`` and ``idle*`` figures are None when device
    timing failed (``timing`` is then "host clock")."""

    name: str | None  # torch.cuda.get_device_name()
    idle_share: float | None  # of the run's wall time with no work queued on the device
    host_wait_share: float | None  # of the wall time the host spent blocked in syncs
    device_s_by_phase: dict[str, float] | None  # busy seconds by the phase that launched the work
    tf32: Tf32Record | None
    free_bytes: int | None  # device memory free at the end of the run
    flops_per_step: float | None  # model FLOPs per step at this batch size (utilisation)
    mfu: float | None  # model FLOP utilisation: achieved_flops / peak_flops, at most 1
    mfu_note: str | None  # why there is no MFU though the FLOPs were counted
    matmul_dtype: str | None  # "fp32", "tf32", "bf16" or "fp16": the precision of the peak
    idle_in_steps_share: float | None  # of in-step time with no work queued
    idle_in_steps_share_low: float | None  # the same, segments still running counted busy
    idle_s_by_phase: dict[str, float] | None  # seconds idle by the host's phase
    host_wait_s: float  # seconds the host waited in syncs
    syncs_per_step: float  # synchronising calls (not copies) per step, inside the steps
    blocking_copies_per_step: float  # blocking host-to-device copies per step
    sync_sites: list[SiteRecord]  # the lines of synchronising calls, most frequent first (10)
    copy_sites: list[SiteRecord]  # the lines of blocking copies, most frequent first (10)
    total_bytes: int | None  # the device's memory
    capability: str | None  # compute capability, "9.0"
    bf16: bool | None  # the device supports bf16
    timing: str  # "device events" or "host clock"
    transfer: TransferRecord  # host-to-device copies
    achieved_flops: float  # FLOP/s over the steady steps (utilisation)
    peak_flops: float | None  # the card's peak FLOP/s in matmul_dtype
    peak_source: str | None  # where the peak comes from: a datasheet or a matmul probe
