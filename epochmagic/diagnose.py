"""Findings: why this epoch is slow and what to try (design.md §1, issue 4).

``diagnose`` is a pure function of an ``EpochProfile`` (its phases, steps,
config, environment and ``evidence``). Every threshold is in ``THRESHOLDS`` with
where it comes from. Each finding carries its evidence in numbers, the share of
the epoch it is about, a ``rerun`` suggestion when a setting can test it and the
code change to make.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from epochmagic import gpufindings
from epochmagic.profile import EpochProfile, Finding
from epochmagic.timeline import warmup_count

THRESHOLDS: dict[str, tuple[float, str]] = {
    "data_moderate": (
        0.05,
        "TensorFlow's input-pipeline analyzer: moderately input-bound at "
        ">= 5 % of step time waiting for input; PyTorch Profiler: > 5 %",
    ),
    "data_bound": (0.20, "TensorFlow's input-pipeline analyzer: input-bound at >= 20 %"),
    "worker_startup": (
        0.02,
        "first batch's extra wait, paid again every epoch without "
        "persistent_workers; 2 % of the epoch is worth one flag",
    ),
    "small_batch_size": (
        32,
        "per-step fixed cost (Python, kernel launches, optimizer) is "
        "amortised over few samples below this",
    ),
    "small_batch_overhead": (0.30, "share of a step outside forward/backward compute"),
    "python_overhead": (0.20, "share of in-step time in `other` (Python in the loop)"),
    "growth_ratio": (1.3, "last quarter's median step vs the first quarter's (after warm-up)"),
    "memory_growth_bytes": (64 * 2**20, "resident memory added across the epoch's steps"),
    "memory_growth_ratio": (0.10, "... and relative to the first step's memory"),
    "optimizer_share": (
        0.10,
        "optimizer share of the epoch; a CPU AdamW step measured 3.1 ms -> 0.56 ms with fused=True",
    ),
    "eval_share": (0.20, "evaluation share of the epoch"),
    "warmup_share": (0.05, "extra time of the warm-up steps over the steady median"),
    "precision_compute": (0.30, "forward+backward share worth a precision change"),
    "precision_flops": (
        1e8,
        "FLOPs per step below which casting overhead eats bf16's gain "
        "(a 512-wide MLP step, ~0.2 GFLOP, ran 1.7x faster in bf16 here)",
    ),
    "imbalance_ratio": (10.0, "most / least frequent label"),
    **gpufindings.THRESHOLDS,
}


MIN_GAIN = 1.05  # a suggestion must be predicted to save at least 5 %


def t(name: str) -> float:
    return THRESHOLDS[name][0]


def diagnose(prof: EpochProfile) -> list[Finding]:
    if prof.status not in ("ok", "interrupted") or not prof.steps or not prof.wall_s:
        return []
    found = [f for rule in RULES if (f := rule(prof)) is not None]
    informative = {"model_compute", "imbalance"}
    actionable = sorted((f for f in found if f.code not in informative), key=lambda f: -f.share)
    return actionable + [f for f in found if f.code in informative]


# -- helpers --------------------------------------------------------------------------
def _epoch(prof: EpochProfile) -> float:
    return prof.wall_s or 1.0


def _in_steps(prof: EpochProfile, phase: str) -> float:
    return sum(sp.get(phase, 0.0) for sp in prof.step_phases)


def _cores(prof: EpochProfile) -> int:
    return int(prof.environment.get("cpu_count") or 1)


def _ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def _flop(x: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def _oversubscribed(prof: EpochProfile) -> bool:
    """Loader workers plus more intra-op threads than the cores they leave."""
    workers = int(prof.config.get("workers") or 0)
    threads = int(prof.config.get("threads") or 1)
    return workers > 0 and threads > max(1, _cores(prof) - workers)


def _worker_setting(prof: EpochProfile) -> tuple[dict[str, Any], float]:
    """The workers and intra-op threads the prediction model expects to be
    fastest on this machine, and its predicted speed-up. Workers and threads
    share the cores: measured on 2 cores, 2 workers gave 1.04-1.09x until the
    main process used 1 thread (1.75x), while a compute-heavy loop lost more to
    one thread than the workers won."""
    from epochmagic import predict

    cores = _cores(prof)
    loading = prof.evidence.get("loading") if prof.evidence else None
    best: tuple[dict[str, Any], float] = ({}, 1.0)
    base = prof.epoch_s or prof.wall_s
    threads_now = int(prof.config.get("threads") or 1)
    data = prof.phases.get("data", 0.0)
    compute = prof.phases.get("forward", 0.0) + prof.phases.get("backward", 0.0)
    for workers in range(1, min(cores, 8) + 1):
        fewer = {1, max(1, cores - workers)}
        # Fewer intra-op threads only where loading dominates: the model does not
        # know how much a multi-threaded forward/backward loses with one thread
        # (the quickstart CNN measured 0.88-1.0x with workers=2, threads=1).
        options = fewer | {threads_now} if data >= compute else {threads_now}
        for nthreads in sorted(options):
            if (workers, nthreads) == (prof.config.get("workers"), prof.config.get("threads")):
                continue  # what ran is the baseline, not a suggestion
            s = {**prof.config, "workers": workers, "threads": nthreads}
            guess = predict.epoch(prof, s, [], loading).get("epoch_s")
            if guess and base / guess > best[1]:
                best = ({"workers": workers, "threads": nthreads}, base / guess)
    if best[0] and str(prof.config.get("device", "cpu")).startswith("cuda"):
        best[0]["pin_memory"] = True
    return best


# -- rules ----------------------------------------------------------------------------
def _startup_excess(prof: EpochProfile) -> float:
    """The first batch's wait beyond the steady one (worker start-up)."""
    if len(prof.step_phases) < 3:
        return 0.0
    steady = statistics.median(sp.get("data", 0.0) for sp in prof.step_phases[1:])
    return max(0.0, prof.step_phases[0].get("data", 0.0) - steady)


def data_loading(prof: EpochProfile) -> Finding | None:
    startup = _startup_excess(prof) if prof.config.get("workers") else 0.0
    data = _in_steps(prof, "data") - startup  # start-up is `worker_startup`'s
    share = data / _epoch(prof)
    if share < t("data_moderate"):
        return None
    cfg = prof.config
    workers = int(cfg.get("workers") or 0)
    cores = _cores(prof)
    if _oversubscribed(prof):
        return None  # workers and threads compete for the cores: the `threads` finding
    per_step = data / prof.steps
    bits = [
        f"{share:.0%} of the epoch waits for the next batch ({_ms(per_step)} per step)",
        f"{workers} worker{'s' if workers != 1 else ''} on {cores} cores, "
        f"{cfg.get('threads')} torch threads",
    ]
    loading = prof.evidence.get("loading") if prof.evidence else None
    if loading:
        bits.append(
            f"the dataset takes {_ms(loading['per_sample_s'])} per sample and collate "
            f"{_ms(loading['collate_s'])} per batch (timed in this process)"
        )
        if "transform_s" in loading:
            bits.append(f"of which its transform takes {_ms(loading['transform_s'])} per sample")
        if "worker_per_sample_s" in loading:
            bits.append(
                f"inside a worker process: {_ms(loading['worker_per_sample_s'])} per sample, "
                f"collate {_ms(loading['worker_collate_s'])} per batch"
            )
        if "worker_batch_s" in loading:
            bits.append(f"a batch takes {_ms(loading['worker_batch_s'])} inside one worker process")
    if prof.evidence.get("transform"):
        bits.append(f"its transform is {prof.evidence['transform']}")
    suggestion, gain = _worker_setting(prof)
    if gain < MIN_GAIN:
        suggestion = {}
        bits.append(
            "more workers are not predicted to help here (loading and compute already share "
            f"the {cores} cores): the per-sample work itself must get cheaper (precompute, "
            "vectorise the transform, cache decoded data)"
        )
    else:
        bits.append(
            f"predicted {gain:.2f}x with {suggestion['workers']} workers and "
            f"{suggestion['threads']} torch thread{'s' if suggestion['threads'] > 1 else ''}"
        )
    title = (
        "Input-bound" if share >= t("data_bound") else "Partly input-bound"
    ) + ": the loop waits for its next batch"
    fix = ""
    if suggestion:
        fix = (
            f"DataLoader(..., num_workers={suggestion['workers']}, persistent_workers=True)"
            f"\ntorch.set_num_threads({suggestion['threads']})"
        )
    return Finding("data_loading", title, "; ".join(bits) + ".", share, suggestion, fix)


def worker_startup(prof: EpochProfile) -> Finding | None:
    cfg = prof.config
    if not cfg.get("workers") or cfg.get("persistent_workers") or len(prof.step_phases) < 3:
        return None
    steady = statistics.median(sp.get("data", 0.0) for sp in prof.step_phases[1:])
    extra = _startup_excess(prof)
    share = extra / _epoch(prof)
    if share < t("worker_startup"):
        return None
    return Finding(
        "worker_startup",
        f"Worker start-up costs {_ms(extra)} every epoch",
        f"the first batch waited {_ms(extra)} more than the steady {_ms(steady)}: "
        f"{cfg['workers']} worker processes start again every epoch.",
        share,
        {"persistent_workers": True},
        "DataLoader(..., persistent_workers=True)",
    )


def threads(prof: EpochProfile) -> Finding | None:
    cfg = prof.config
    workers, nthreads, cores = (
        int(cfg.get("workers") or 0),
        int(cfg.get("threads") or 1),
        _cores(prof),
    )
    if not _oversubscribed(prof):
        return None
    share = _in_steps(prof, "data") / _epoch(prof)
    if share < t("data_moderate"):
        return None
    setting = {"workers": min(workers, cores), "threads": max(1, cores - min(workers, cores))}
    return Finding(
        "threads",
        f"{workers} workers and {nthreads} torch threads compete for {cores} cores",
        f"{workers} loader processes plus {nthreads} intra-op threads is more than {cores} "
        "cores: measured on 2 cores, 2 workers gave 1.04-1.09x until the main process used "
        "one thread, then 1.75x.",
        share,
        setting,
        f"torch.set_num_threads({setting['threads']})",
    )


def small_batch(prof: EpochProfile) -> Finding | None:
    bs = prof.config.get("batch_size")
    if not bs or bs > t("small_batch_size"):
        return None
    work = sum(prof.step_times) - _in_steps(prof, "data")  # the step without its data wait
    fixed = _in_steps(prof, "optimizer") + _in_steps(prof, "other") + _in_steps(prof, "transfer")
    per_step = work / prof.steps
    if fixed / max(work, 1e-12) < t("small_batch_overhead") and per_step > 0.005:
        return None
    share = work / _epoch(prof)
    bigger = min(bs * 8, 256)
    return Finding(
        "small_batch",
        f"Batch size {bs}: fixed per-step costs dominate",
        f"{prof.steps} steps of {bs} samples, {_ms(per_step)} of work each besides the data "
        f"wait, {fixed / max(work, 1e-12):.0%} of it in the optimizer and the loop's Python. "
        "A larger batch amortises them; the learning rate may need scaling with it, and "
        "gradient accumulation reaches a large effective batch when memory limits the real "
        "one, but does not make samples faster by itself.",
        share,
        {"batch_size": bigger},
        f"DataLoader(..., batch_size={bigger})",
    )


def python_overhead(prof: EpochProfile) -> Finding | None:
    # the typical step's Python: a slow first step is `warmup`'s, a growing
    # one `step_time_growth`'s
    w = warmup_count(prof.step_times)
    n = max(1, (len(prof.step_times) - w) // 4) if len(prof.step_times) - w >= 12 else None
    first = slice(w, w + n) if n else slice(w, None)  # the first quarter, before any growth
    steady = prof.step_phases[first] or prof.step_phases
    per_step = statistics.median(sp.get("other", 0.0) for sp in steady)
    step = statistics.median(prof.step_times[first] or prof.step_times)
    if per_step / max(step, 1e-12) < t("python_overhead"):
        return None
    share = per_step * prof.steps / _epoch(prof)
    cell_lines = [ls for ls in prof.lines if ls.filename.startswith("Cell")]
    hot = "; ".join(
        f"{ls.filename}:{ls.lineno} `{ls.source.strip()}` "
        f"{_ms(ls.time_s / max(1, prof.lines_steps))}/step"
        for ls in cell_lines[:3]
    )
    return Finding(
        "python_overhead",
        "Python in the loop, outside the model and the loader",
        f"{_ms(per_step)} per step outside data, model, backward and optimizer"
        + (f"; hottest lines: {hot}" if hot else "")
        + ".",
        share,
        {},
        "move per-step logging, metrics and .item() calls out of the loop "
        "(log every N steps; accumulate on the device)",
    )


def step_time_growth(prof: EpochProfile) -> Finding | None:
    times = prof.step_times[warmup_count(prof.step_times) :]
    if len(times) < 12:
        return None
    q = len(times) // 4
    first, last = statistics.median(times[:q]), statistics.median(times[-q:])
    if first <= 0 or last / first < t("growth_ratio"):
        return None
    excess = sum(max(0.0, x - first) for x in times)
    return Finding(
        "step_time_growth",
        f"Steps slow down through the epoch ({last / first:.1f}x)",
        f"the median step went from {_ms(first)} in the first quarter to {_ms(last)} in the "
        "last: something accumulates (a Python list re-summed each step, a graph kept alive "
        "by `total += loss`).",
        excess / _epoch(prof),
        {},
        "accumulate detached numbers: total += loss.item() (or loss.detach())",
    )


def memory_growth(prof: EpochProfile) -> Finding | None:
    mem = prof.memory.get("per_step_bytes") or []
    if len(mem) < 8:
        return None
    start, end = mem[len(mem) // 8], mem[-1]
    grew = end - start
    if grew < t("memory_growth_bytes") or grew < t("memory_growth_ratio") * max(1, start):
        return None
    return Finding(
        "memory_growth",
        f"Memory grows by {grew / 2**20:,.0f} MiB over the epoch",
        f"{prof.memory.get('kind', 'cpu')} memory went from {start / 2**20:,.0f} MiB to "
        f"{end / 2**20:,.0f} MiB across {len(mem)} steps: tensors (or their graphs) are "
        "kept from step to step.",
        0.0,
        {},
        "keep detached values: losses.append(loss.item()) rather than losses.append(loss)",
    )


def optimizer_step(prof: EpochProfile) -> Finding | None:
    share = prof.phases.get("optimizer", 0.0) / _epoch(prof)
    opts = prof.evidence.get("optimizers") or []
    if share < t("optimizer_share") or not opts:
        return None
    fusable = [
        o for o in opts if o["type"] in ("Adam", "AdamW", "SGD", "Adagrad") and not o["fused"]
    ]
    if not fusable:
        return None
    names = ", ".join(o["type"] for o in fusable)
    return Finding(
        "optimizer_step",
        "The optimizer step loops over the parameters one by one",
        f"{_ms(prof.phases['optimizer'] / prof.steps)} per step in {names} with the "
        "per-parameter loop implementation; a fused step (one kernel over all parameters) "
        "measured 3.1 ms -> 0.56 ms for a CPU AdamW.",
        share,
        {"fused": True},
        f"torch.optim.{fusable[0]['type']}(model.parameters(), ..., fused=True)",
    )


def eval_heavy(prof: EpochProfile) -> Finding | None:
    share = prof.phases.get("eval", 0.0) / _epoch(prof)
    if share < t("eval_share"):
        return None
    return Finding(
        "eval_heavy",
        "Evaluation is a large part of the epoch",
        f"{prof.phases['eval']:.2f} s of evaluation against {sum(prof.step_times):.2f} s of "
        "training steps.",
        share,
        {},
        "evaluate every N epochs or on a subset; use torch.inference_mode() and a larger "
        "evaluation batch",
    )


def warmup(prof: EpochProfile) -> Finding | None:
    w = warmup_count(prof.step_times)
    if not w:
        return None
    steady = statistics.median(prof.step_times[w:])
    extra = sum(max(0.0, x - steady) for x in prof.step_times[:w])
    if prof.config.get("workers"):
        extra = max(0.0, extra - _startup_excess(prof))  # that is `worker_startup`'s
    share = extra / _epoch(prof)
    if share < t("warmup_share"):
        return None
    return Finding(
        "warmup",
        f"The first {w} step{'s' if w > 1 else ''} take {_ms(extra)} extra",
        f"warm-up (allocator, autotuning, compilation, lazy initialisation) costs {share:.0%} "
        "of this epoch; it is paid once per process, so later epochs are faster than this one.",
        share,
        {},
        "",
    )


def hardware(prof: EpochProfile) -> Finding | None:
    device = str(prof.config.get("device", "cpu"))
    if device != "cpu" or not prof.evidence.get("cuda_available"):
        return None
    share = (prof.phases["forward"] + prof.phases["backward"]) / _epoch(prof)
    return Finding(
        "hardware",
        "Training on the CPU while a CUDA GPU is available",
        f"the model's parameters are on the CPU; forward and backward take {share:.0%} of "
        "the epoch there.",
        share,
        {},
        "model.to('cuda'); xb, yb = xb.to('cuda'), yb.to('cuda')",
    )


def precision(prof: EpochProfile) -> Finding | None:
    if prof.config.get("precision", "fp32") != "fp32":
        return None
    share = (prof.phases["forward"] + prof.phases["backward"]) / _epoch(prof)
    device = str(prof.config.get("device", "cpu"))
    flops = prof.evidence.get("flops_per_step")
    if share < t("precision_compute") or (flops and flops < t("precision_flops")):
        return None
    if device == "cpu":
        if not prof.evidence.get("cpu_bf16"):
            return None
        return Finding(
            "precision",
            "fp32 compute where bf16 is faster",
            "this CPU has bfloat16 instructions (avx512_bf16/AMX); on the CPU this was written "
            "on, bf16 autocast ran a 512-wide MLP step 1.7x faster than fp32 (fp16 11x slower). "
            "bf16 keeps fp32's range (no GradScaler; fp16 needs one) and learning-rate "
            "schedules carry over; check the loss still converges.",
            share,
            {"precision": "bf16"},
            "with torch.autocast('cpu', dtype=torch.bfloat16):\n    loss = loss_fn(model(xb), yb)",
        )
    if device.startswith("cuda"):
        return gpufindings.precision_on_gpu(prof, share)
    return None


def model_compute(prof: EpochProfile) -> Finding | None:
    ev = prof.evidence
    if not ev.get("params"):
        return None
    share = (prof.phases["forward"] + prof.phases["backward"]) / _epoch(prof)
    bits = [f"{ev['params']:,} parameters ({ev.get('trainable_params', 0):,} trainable)"]
    flops = ev.get("flops_per_step")
    if flops:
        compute_s = (_in_steps(prof, "forward") + _in_steps(prof, "backward")) / prof.steps
        bits.append(f"~{_flop(flops)} per step (forward x 3)")
        gpu = prof.gpu or {}
        if gpu.get("mfu") is not None:
            bits.append(
                f"model FLOP utilisation {gpu['mfu']:.1%}: {_flop(gpu['achieved_flops'])}/s over "
                f"the steps against {_flop(gpu['peak_flops'])}/s ({gpu['peak_source']})"
            )
        elif compute_s > 0:
            achieved = flops / compute_s
            bits.append(f"{_flop(achieved)}/s achieved in forward+backward")
            peak = ev.get("peak_flops")
            if peak:
                bits.append(
                    f"{achieved / peak:.0%} of the {_flop(peak)}/s a 512x512 fp32 "
                    "matmul reaches on this device"
                )
    if ev.get("layers"):
        bits.append("largest layers: " + ", ".join(f"{n} {p:,}" for n, p in ev["layers"][:3]))
    if ev.get("module_forward_s"):
        bits.append(
            "slowest layers in forward: "
            + ", ".join(
                f"{n} {_ms(sec / max(1, prof.steps))}/step"
                for n, sec, _ in ev["module_forward_s"][:3]
            )
        )
        if ev.get("module_backward_s"):
            bits.append(
                "in backward: "
                + ", ".join(
                    f"{n} {_ms(sec / max(1, prof.steps))}/step"
                    for n, sec, _ in ev["module_backward_s"][:3]
                )
            )
    else:
        bits.append("%%epochprofile --modules times each layer's forward and backward")
    return Finding(
        "model_compute",
        "Model compute: forward and backward",
        "; ".join(bits) + ".",
        share,
        {},
        "",
    )


def imbalance(prof: EpochProfile) -> Finding | None:
    counts = prof.evidence.get("labels")
    if not counts:
        return None
    values = list(counts.values())
    ratio = max(values) / max(1, min(values))
    if ratio < t("imbalance_ratio"):
        return None
    total = sum(values)
    entropy = -sum(v / total * math.log(v / total) for v in values if v)
    return Finding(
        "imbalance",
        f"Labels are imbalanced ({ratio:.0f}:1)",
        f"{len(values)} classes in the batches seen, effective number {math.exp(entropy):.1f}. "
        "Imbalance costs epochs to converge, not time per epoch (a 97/1/1/1 mix ran exactly as "
        "fast as a balanced one); oversampling with WeightedRandomSampler made an epoch 3.9x "
        "longer, class weights in the loss cost nothing.",
        0.0,
        {},
        "loss_fn = nn.CrossEntropyLoss(weight=class_weights)",
    )


RULES = [
    data_loading,
    worker_startup,
    threads,
    small_batch,
    python_overhead,
    step_time_growth,
    memory_growth,
    optimizer_step,
    eval_heavy,
    warmup,
    hardware,
    *gpufindings.RULES,
    precision,
    model_compute,
    imbalance,
]
