"""The ``gpu`` fields of a profile (docs/design.md §4.3): idle and host-wait shares,
device time by phase, synchronising calls, TF32, free memory, and model FLOP
utilisation against the card's peak.

Built from a timeline already on device time (:mod:`epochmagic.capture.devicetime`);
``utilisation`` adds the FLOP figures once the evidence has counted the
model's FLOPs.
"""

from __future__ import annotations

import bisect
import linecache
import re
import time
from collections import Counter
from typing import Any

from epochmagic.analysis.figures import step_times_without_compile
from epochmagic.analysis.timeline import Sync, Timeline, steady_median
from epochmagic.capture.devicetime import overlap
from epochmagic.model.gpurecord import GpuRecord, SiteRecord

# Dense datasheet peaks (no structured sparsity), TFLOP/s: fp32, tf32, bf16/fp16.
# Matched against torch.cuda.get_device_name() in this order.
PEAK_TFLOPS: list[tuple[str, tuple[float, float | None, float]]] = [
    (r"\bH200\b|\bGH200\b", (67.0, 494.7, 989.4)),
    (r"\bH100 NVL\b", (60.0, 417.5, 835.5)),
    (r"\bH100\b.*PCIe", (51.0, 378.0, 756.0)),
    (r"\bH100\b", (67.0, 494.7, 989.4)),  # SXM ("H100 80GB HBM3")
    (r"\bA100\b", (19.5, 156.0, 312.0)),
    (r"\bL40S\b", (91.6, 183.0, 362.0)),
    (r"\bL4\b", (30.3, 60.0, 121.0)),
    (r"\bA10\b", (31.2, 62.5, 125.0)),
    (r"\bRTX 4090\b", (82.6, 82.6, 165.2)),
    (r"\bRTX 3090\b", (35.6, 35.6, 71.0)),
    (r"\bV100\b", (15.7, None, 125.0)),
    (r"\bT4\b", (8.1, None, 65.0)),
]
TOP_SITES = 10  # every kind of sync in a loop; the finding cites the first three


def fields(tl: Timeline, device: dict[str, Any]) -> GpuRecord:
    """``device``: what the clock says about the card (``DeviceClock.describe``)."""
    wall = tl.wall_s or 1e-12
    timed = tl.device_phases is not None
    busy = tl.device_phases or {}
    in_steps = sum(tl.step_times)
    busy_in_steps = overlap(tl.busy, tl.step_bounds)
    bounds = tl.step_bounds
    in_step = [s for s in tl.syncs if _inside(s.t, bounds)]
    calls = [s for s in in_step if not s.in_copy]
    copies = [s for s in in_step if s.in_copy]
    wait = sum(s.wait for s in tl.syncs)
    steps = max(1, len(bounds))
    return {
        "name": device.get("name"),
        "idle_share": max(0.0, 1.0 - sum(busy.values()) / wall) if timed else None,
        "host_wait_share": min(1.0, wait / wall) if timed else None,
        "device_s_by_phase": dict(busy) if timed else None,
        "tf32": device.get("tf32"),
        "free_bytes": device.get("free_bytes"),
        "flops_per_step": None,
        "mfu": None,
        "mfu_note": None,  # why there is no MFU though the FLOPs were counted
        "matmul_dtype": None,  # the precision the peak is taken in
        # beyond the first eight fields (docs/design.md §3): what the findings cite
        "idle_in_steps_share": (
            max(0.0, 1.0 - busy_in_steps / in_steps) if in_steps and timed else None
        ),
        # the same with segments the device was still working through at their
        # end counted busy throughout: the findings use this lower figure
        "idle_in_steps_share_low": (
            max(0.0, 1.0 - overlap(tl.busy_estimate, bounds) / in_steps)
            if in_steps and timed
            else None
        ),
        "idle_s_by_phase": (
            {k: max(0.0, v - busy.get(k, 0.0)) for k, v in tl.phases.items()} if timed else None
        ),
        "host_wait_s": wait,
        "syncs_per_step": len(calls) / steps,
        "blocking_copies_per_step": len(copies) / steps,
        "sync_sites": _sites(calls),  # the lines of synchronising calls
        "copy_sites": _sites(copies),  # the lines of blocking host-to-device copies
        "total_bytes": device.get("total_bytes"),
        "capability": device.get("capability"),
        "bf16": device.get("bf16"),
        "timing": "device events" if timed else "host clock",
    }


def _inside(t: float, bounds: list[tuple[float, float]]) -> bool:
    i = bisect.bisect_right(bounds, (t, float("inf"))) - 1
    return i >= 0 and bounds[i][0] <= t <= bounds[i][1]


def _sites(syncs: list[Sync]) -> list[SiteRecord]:
    """The lines the syncs came from, most frequent first (each at the
    user's own line: torch's frames are skipped when it reports them)."""
    counts = Counter((s.filename, s.lineno) for s in syncs)
    waits: dict[tuple[str, int], float] = {}
    for s in syncs:
        where = (s.filename, s.lineno)
        waits[where] = waits.get(where, 0.0) + s.wait
    return [
        {"filename": f, "lineno": n, "source": _source(f, n), "count": c, "wait_s": waits[(f, n)]}
        for (f, n), c in counts.most_common(TOP_SITES)
    ]


def _source(filename: str, lineno: int) -> str:
    return linecache.getline(filename, lineno).strip()


# -- model FLOP utilisation -------------------------------------------------------------
def utilisation(gpu: GpuRecord | None, prof: Any) -> None:
    """Fill ``flops_per_step`` and ``mfu``: the model's FLOPs per step (forward +
    backward as counted, scaled to this run's batch) over the steady step time,
    against the card's peak in the precision the matmuls ran in. Above 100 %
    the count or the peak does not match what ran: no MFU, a note instead."""
    if gpu is None:
        return
    ev = prof.evidence
    flops = ev.get("flops_per_step")
    step_s = steady_step_s(prof)
    if not flops or not step_s or not prof.steps:
        return
    counted_at = ev.get("flops_batch")
    batch = prof.config.get("batch_size")
    if counted_at and batch and batch != counted_at:
        flops = flops * batch / counted_at
    achieved = flops / step_s
    dtype = matmul_dtype(prof.config.get("precision") or "fp32", ev.get("param_dtype"), gpu)
    peak, source = peak_flops(gpu.get("name") or "", dtype, dtype == "tf32")
    if source and dtype != (prof.config.get("precision") or "fp32") and dtype != "tf32":
        source += f"; the weights are {dtype}"
    gpu.update(
        {
            "flops_per_step": flops,
            "achieved_flops": achieved,
            "peak_flops": peak,
            "peak_source": source,
            "matmul_dtype": dtype,
            "mfu_note": None,
        }
    )
    mfu = achieved / peak if peak else None
    if mfu is not None and mfu > 1.0:
        gpu["mfu_note"] = (
            f"counted FLOPs imply {mfu:.0%} of the peak: the count or the peak "
            "does not match what ran"
        )
        mfu = None
    gpu["mfu"] = mfu


def steady_step_s(prof: Any) -> float | None:
    """Median step time without the warm-up steps (first kernel selection,
    autocast caches) nor the compile seconds inside a step, where recorded."""
    step_s = steady_median(step_times_without_compile(prof))
    return step_s if step_s and step_s > 0 else None


def matmul_dtype(precision: str, param_dtype: str | None, gpu: GpuRecord) -> str:
    """ "fp32", "tf32", "bf16" or "fp16": autocast's precision, else that of
    bf16/fp16 weights, else fp32 with TF32 where torch allows it."""
    if precision in ("bf16", "fp16"):
        return precision
    if param_dtype in ("bf16", "fp16"):
        return param_dtype
    tf32 = gpu.get("tf32") or {}
    allowed = bool(tf32.get("matmul")) or tf32.get("float32_matmul_precision") in (
        "high",
        "medium",
    )
    return "tf32" if precision == "fp32" and allowed else precision


def peak_flops(name: str, precision: str, tf32: bool) -> tuple[float | None, str | None]:
    """The card's peak for this precision ("tf32" or fp32 with ``tf32``): its
    datasheet, else a matmul probe."""
    tf32 = tf32 or precision == "tf32"
    sheet = datasheet(name)
    if sheet is not None:
        fp32, tf, half = sheet
        if precision in ("bf16", "fp16"):
            value, label = half, precision
        elif tf32 and tf is not None:
            value, label = tf, "tf32"
        else:
            value, label = fp32, "fp32"
        return value * 1e12, f"{name} datasheet, dense {label.upper()}"
    label = precision if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    measured = matmul_probe(label, tf32)
    return measured, (f"measured: large {label.upper()} matmul on this GPU" if measured else None)


def datasheet(name: str) -> tuple[float, float | None, float] | None:
    """(fp32, tf32, bf16/fp16) dense TFLOP/s of a known card, else None."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, name):
            return peaks
    return None


# the one matmul probe's results: (device, dtype, tf32, n) -> FLOP/s. Only
# measurements are kept: a failed probe is tried again next time.
_PROBED: dict[tuple[str, str, bool, int], float] = {}


def matmul_flops(
    device: str, dtype: Any, n: int, seconds: float, tf32: bool = False
) -> float | None:
    """FLOP/s of an ``n`` x ``n`` matmul on ``device`` in ``dtype``, timed for
    about ``seconds`` (kept once measured). Inputs come from a private
    generator, so the user's random streams do not move. ``tf32`` is part of
    the key: the run's TF32 setting changes what an fp32 matmul reaches."""
    import torch

    key = (device, str(dtype).replace("torch.", ""), tf32, n)
    if key in _PROBED:
        return _PROBED[key]
    on_cuda = device.startswith("cuda")
    try:
        g = torch.Generator(device=device)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        a @ b
        if on_cuda:
            torch.cuda.synchronize()
        runs, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            runs += 1
            if on_cuda and runs % 10 == 0:
                torch.cuda.synchronize()
        if on_cuda:
            torch.cuda.synchronize()
        measured = 2 * n**3 * runs / (time.perf_counter() - t0)
        del a, b
    except Exception:  # noqa: BLE001 (no such device, out of memory, a lost device: no peak this time)
        return None
    if measured <= 0:
        return None
    _PROBED[key] = measured
    return measured


def matmul_probe(precision: str, tf32: bool, n: int = 4096, seconds: float = 0.2) -> float | None:
    """FLOP/s of a large matmul on the current GPU in this precision; a
    practical peak for cards the table does not know. TF32 is as the run left it."""
    import torch

    if not torch.cuda.is_available():
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return matmul_flops("cuda", dtype, n, seconds, tf32)
