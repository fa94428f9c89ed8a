"""Findings: why this epoch is slow and what to try (docs/design.md §6).

``diagnose`` is a pure function of an ``EpochProfile`` (its phases, steps,
config, environment and ``evidence``). Every threshold is in ``THRESHOLDS`` with
where it comes from. Each finding carries its evidence in numbers, the share of
the epoch it is about, a ``rerun`` suggestion when a setting can test it and the
code change to make.
"""

from __future__ import annotations

import math
import statistics

from epochmagic.analysis.figures import epoch, flop, in_steps, ms, step_times_without_compile
from epochmagic.analysis.timeline import warmup_count
from epochmagic.diagnosis import datafindings, gpufindings, linephases, savings
from epochmagic.model.profile import EpochProfile, Finding
from epochmagic.model.thresholds import threshold as t
from epochmagic.model.vocabulary import FUSABLE


def diagnose(prof: EpochProfile) -> list[Finding]:
    if prof.status not in ("ok", "interrupted") or not prof.steps or not prof.wall_s:
        return []
    found = [f for rule in RULES if (f := rule(prof)) is not None]
    return savings.rank(savings.with_predictions(prof, found))


# -- rules ----------------------------------------------------------------------------
def small_batch(prof: EpochProfile) -> Finding | None:
    bs = prof.config.get("batch_size")
    if not bs or bs > t("small_batch_size"):
        return None
    work = sum(prof.step_times) - in_steps(prof, "data")  # the step without its data wait
    fixed = in_steps(prof, "optimizer") + in_steps(prof, "other") + in_steps(prof, "transfer")
    per_step = work / prof.steps
    if fixed / max(work, 1e-12) < t("small_batch_overhead") and per_step > t("small_batch_step_s"):
        return None
    share = work / epoch(prof)
    bigger = min(bs * 8, 256)
    return Finding(
        "small_batch",
        f"Batch size {bs}: fixed per-step costs dominate",
        f"{prof.steps} steps of {bs} samples, {ms(per_step)} of work each besides the data "
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
    enough = len(prof.step_times) - w >= t("growth_min_steps")
    n = max(1, (len(prof.step_times) - w) // 4) if enough else None
    first = slice(w, w + n) if n else slice(w, None)  # the first quarter, before any growth
    steady = prof.step_phases[first] or prof.step_phases
    per_step = statistics.median(sp.get("other", 0.0) for sp in steady)
    step = statistics.median(prof.step_times[first] or prof.step_times)
    if per_step / max(step, 1e-12) < t("python_overhead"):
        return None
    share = per_step * prof.steps / epoch(prof)
    hot = linephases.cited(prof)  # sampled: the hottest lines in `other`
    return Finding(
        "python_overhead",
        "Python in the loop, outside the model and the loader",
        f"{ms(per_step)} per step outside data, model, backward and optimizer"
        + (f"; {hot}" if hot else "")
        + ".",
        share,
        {},
        "move per-step logging, metrics and .item() calls out of the loop "
        "(log every N steps; accumulate on the device)",
    )


def step_time_growth(prof: EpochProfile) -> Finding | None:
    times = step_times_without_compile(prof)
    times = times[warmup_count(times) :]
    if len(times) < t("growth_min_steps"):
        return None
    q = len(times) // 4
    first, last = statistics.median(times[:q]), statistics.median(times[-q:])
    if first <= 0 or last / first < t("growth_ratio"):
        return None
    excess = sum(max(0.0, x - first) for x in times)
    return Finding(
        "step_time_growth",
        f"Steps slow down through the epoch ({last / first:.1f}x)",
        f"the median step went from {ms(first)} in the first quarter to {ms(last)} in the "
        "last: something accumulates (a Python list re-summed each step, a graph kept alive "
        "by `total += loss`).",
        excess / epoch(prof),
        {},
        "accumulate detached numbers: total += loss.item() (or loss.detach())",
    )


def memory_growth(prof: EpochProfile) -> Finding | None:
    mem = prof.memory.get("per_step_bytes") or []
    if len(mem) < t("memory_min_steps"):
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
    share = prof.phases.get("optimizer", 0.0) / epoch(prof)
    opts = prof.evidence.get("optimizers") or []
    if share < t("optimizer_share") or not opts:
        return None
    fusable = [o for o in opts if o["type"] in FUSABLE and not o["fused"]]
    if not fusable:
        return None
    names = ", ".join(o["type"] for o in fusable)
    return Finding(
        "optimizer_step",
        "The optimizer step loops over the parameters one by one",
        f"{ms(prof.phases['optimizer'] / prof.steps)} per step in {names} with the "
        "per-parameter loop implementation; a fused step (one kernel over all parameters) "
        "measured 3.1 ms -> 0.56 ms for a CPU AdamW.",
        share,
        {"fused": True},
        f"torch.optim.{fusable[0]['type']}(model.parameters(), ..., fused=True)",
    )


def eval_heavy(prof: EpochProfile) -> Finding | None:
    share = prof.phases.get("eval", 0.0) / epoch(prof)
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
    times = step_times_without_compile(prof)
    w = warmup_count(times)
    if not w:
        return None
    steady = times[w:]
    med = statistics.median(steady)
    # Warm-up is the leading run of steps slower than the steady steps' own
    # spread: a step inside the noise band, or a late spike, is not warm-up.
    mad = statistics.median(abs(x - med) for x in steady)
    high = sorted(steady)[int(t("warmup_quantile") * (len(steady) - 1))]
    band = med + max(t("warmup_noise_mads") * 1.4826 * mad, high - med)
    lead = 0
    while lead < w and times[lead] > band:
        lead += 1
    extra = sum(x - med for x in times[:lead])
    if prof.config.get("workers"):
        extra = max(0.0, extra - datafindings.startup_excess(prof))  # that is `worker_startup`'s
    share = extra / epoch(prof)
    if not lead or share < t("warmup_share") or extra < t("warmup_min_s"):
        return None
    return Finding(
        "warmup",
        f"The first {lead} step{'s' if lead > 1 else ''} take {ms(extra)} extra",
        f"warm-up (allocator, autotuning, compilation, lazy initialisation) costs {share:.0%} "
        "of this epoch; it is paid once per process, so later epochs are faster than this one.",
        share,
        {},
        "",
    )


def compile_cost(prof: EpochProfile) -> Finding | None:
    """torch.compile's first-epoch cost and its recompiles (docs/design.md §4.5)."""
    comp = prof.compile or {}
    seconds = float(comp.get("compile_s") or 0.0)
    recompiles = int(comp.get("recompiles") or 0)
    share = seconds / epoch(prof)
    if not comp.get("compiles") or (share < t("compile_share") and not recompiles):
        return None
    reasons = list(dict.fromkeys(comp.get("recompile_reasons") or []))
    breaks = int(comp.get("graph_breaks") or 0)
    detail = (
        f"torch.compile compiled {comp['compiles']} time(s) in this epoch, {seconds:.2f} s "
        f"({share:.0%} of it); later epochs reuse the compiled code and do not pay it"
        + (" unless their shapes are new" if recompiles else "")
        + ". %%epochprofile --skip-epochs 1 measures an epoch without it."
    )
    if recompiles:
        detail += f" {recompiles} recompile(s)" + (
            ": " + "; ".join(r.replace("\n", " ")[:200] for r in reasons[:3]) if reasons else ""
        )
        detail += "."
    if breaks:
        detail += (
            f" {breaks} graph break(s) split the compiled code"
            + (
                f" (first: {next(iter(comp.get('graph_break_reasons') or {}))})"
                if comp.get("graph_break_reasons")
                else ""
            )
            + "."
        )
    shapes = any("size" in r or "shape" in r or "mismatch" in r for r in reasons)
    if recompiles and (shapes or not reasons):
        fix = (
            "DataLoader(..., drop_last=True)  # a smaller last batch is a new shape\n"
            "# or compile for varying shapes: model = torch.compile(model, dynamic=True)\n"
            "# or mark the batch dimension: torch._dynamo.mark_dynamic(xb, 0)"
        )
    elif recompiles:
        fix = "keep what the failing guard checks constant between calls (see the reasons)"
    else:
        fix = (
            "paid once per process: keep the kernel running between experiments; "
            "mode='max-autotune' compiles longer for faster steps"
        )
    title = f"torch.compile took {seconds:.2f} s of this epoch"
    if recompiles:
        title += f", with {recompiles} recompile(s)"
    return Finding("compile", title, detail, share, {}, fix)


def hardware(prof: EpochProfile) -> Finding | None:
    device = str(prof.config.get("device", "cpu"))
    if device != "cpu" or not prof.evidence.get("cuda_available"):
        return None
    share = (prof.phases["forward"] + prof.phases["backward"]) / epoch(prof)
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
    share = (prof.phases["forward"] + prof.phases["backward"]) / epoch(prof)
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
    share = (prof.phases["forward"] + prof.phases["backward"]) / epoch(prof)
    bits = [f"{ev['params']:,} parameters ({ev.get('trainable_params', 0):,} trainable)"]
    flops = ev.get("flops_per_step")
    if flops:
        compute_s = (in_steps(prof, "forward") + in_steps(prof, "backward")) / prof.steps
        bits.append(f"~{flop(flops)} per step (forward + backward, as counted)")
        gpu = prof.gpu or {}
        peak_gpu = gpu.get("peak_flops")
        if gpu.get("mfu") is not None and peak_gpu:  # an MFU always has its peak
            bits.append(
                f"model FLOP utilisation {gpu['mfu']:.1%}: {flop(gpu['achieved_flops'])}/s over "
                f"the steady steps against {flop(peak_gpu)}/s ({gpu['peak_source']})"
            )
        elif gpu.get("mfu_note"):
            bits.append(f"no model FLOP utilisation: {gpu['mfu_note']}")
        elif compute_s > 0:
            achieved = flops / compute_s
            bits.append(f"{flop(achieved)}/s achieved in forward+backward")
            peak = ev.get("peak_flops")
            if peak:
                bits.append(
                    f"{achieved / peak:.0%} of the {flop(peak)}/s a 512x512 fp32 "
                    "matmul reaches on this device"
                )
    if ev.get("layers"):
        bits.append("largest layers: " + ", ".join(f"{n} {p:,}" for n, p in ev["layers"][:3]))

    def slowest(rows: list[tuple[str, float, int]]) -> str:
        return ", ".join(f"{n} {ms(sec / max(1, prof.steps))}/step" for n, sec, _ in rows[:3])

    if ev.get("module_forward_s"):
        bits.append("slowest layers in forward: " + slowest(ev["module_forward_s"]))
        if ev.get("module_backward_s"):
            bits.append("in backward: " + slowest(ev["module_backward_s"]))
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
    *datafindings.RULES,
    small_batch,
    python_overhead,
    step_time_growth,
    memory_growth,
    optimizer_step,
    eval_heavy,
    compile_cost,
    warmup,
    hardware,
    *gpufindings.RULES,
    precision,
    model_compute,
    imbalance,
]
