"""Every number a diagnosis rule compares against, in one place.

``THRESHOLDS`` maps each name to its number and ``THRESHOLD_SOURCES`` says
where the number comes from. Rules read ``THRESHOLDS`` when they run, so
changing a value here (``epochmagic.THRESHOLDS["data_bound"] = 0.3``) changes
the next diagnosis. It sits in the model layer because rules in several layers
(analysis, diagnosis, what-if, report) read it.
"""

from __future__ import annotations

_TABLE: dict[str, tuple[float, str]] = {
    # -- diagnose
    "small_batch_size": (
        32,
        "per-step fixed cost (Python, kernel launches, optimizer) is "
        "amortised over few samples below this",
    ),
    "small_batch_overhead": (0.30, "share of a step outside forward/backward compute"),
    "small_batch_step_s": (
        0.005,
        "seconds of work per step (besides the data wait) at or below which a small batch is "
        "named whatever its fixed-cost share: steps this short leave the hardware underused",
    ),
    "python_overhead": (0.20, "share of in-step time in `other` (Python in the loop)"),
    "growth_ratio": (1.3, "last quarter's median step vs the first quarter's (after warm-up)"),
    "growth_min_steps": (
        12,
        "steps after warm-up needed to compare quarters (3 a quarter): growth, and the "
        "first-quarter steps python_overhead reads",
    ),
    "memory_growth_bytes": (64 * 2**20, "resident memory added across the epoch's steps"),
    "memory_growth_ratio": (0.10, "... and relative to the first step's memory"),
    "memory_min_steps": (
        8,
        "per-step memory samples needed to call growth (the first eighth is allocator warm-up)",
    ),
    "optimizer_share": (
        0.10,
        "optimizer share of the epoch; a CPU AdamW step measured 3.1 ms -> 0.56 ms with fused=True",
    ),
    "eval_share": (0.20, "evaluation share of the epoch"),
    "warmup_share": (0.05, "extra time of the warm-up steps over the steady median"),
    "warmup_min_s": (
        0.05,
        "seconds: a warm-up shorter than this is not worth a finding, whatever the epoch's "
        "length (the control cell's first bf16 step took ~12 ms extra, 9 % of its 0.15 s epoch)",
    ),
    "warmup_noise_mads": (
        3.0,
        "a warm-up step must be slower than the steady median plus 3 robust standard "
        "deviations (and than the steady steps' 90th percentile): the control cell's noise "
        "raised a false warm-up alarm without it",
    ),
    "warmup_quantile": (
        0.9,
        "the steady steps' quantile a warm-up step must also exceed (see warmup_noise_mads)",
    ),
    "compile_share": (
        0.05,
        "torch.compile seconds in the epoch worth naming, as for warm-up (any recompile is "
        "named: it repeats whenever its shapes come back)",
    ),
    "precision_compute": (0.30, "forward+backward share worth a precision change"),
    "precision_flops": (
        1e8,
        "FLOPs per step below which casting overhead eats bf16's gain "
        "(a 512-wide MLP step, ~0.2 GFLOP, ran 1.7x faster in bf16 here)",
    ),
    "imbalance_ratio": (10.0, "most / least frequent label"),
    "label_classes_max": (
        10_000,
        "more distinct labels than this are not classes (token ids, regression targets): "
        "no label counts, no imbalance finding",
    ),
    # -- datafindings
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
    "min_gain": (
        1.05,
        "a suggested setting must be predicted to save at least 5 % (1.05x) of the epoch: "
        "below that the prediction's own error decides",
    ),
    "worker_search_max": (
        8,
        "most loader workers a worker suggestion considers (never more than the cores)",
    ),
    # -- sampled lines: the per-phase view and python_overhead's citations
    "lines_phase_share": (
        0.05,
        "share of the epoch worth naming in the per-phase view, for a phase and for a line "
        "that explains it (the same 5 % as data_moderate)",
    ),
    "lines_loop_cover": (
        0.9,
        "a line holding this much of the hottest line's samples in every step phase worth "
        "naming (two at least) runs the whole loop (trainer.train()): it tops every phase "
        "and explains none, so inner lines are named first",
    ),
    # -- gpufindings
    "sync_per_step": (
        1.0,
        "a sync every step drains the GPU's queue every step; fewer are logging's cost, not the "
        "loop's",
    ),
    "sync_idle": (
        0.10,
        "share of in-step time the GPU idles while the host is outside the loader; below it the "
        "syncs cost little",
    ),
    "transfer_share": (
        0.05,
        "copies the steps wait on are a stall like input: the same 5 % as data_moderate",
    ),
    "gpu_idle": (
        0.20,
        "share of in-step time with no work queued on the GPU: a fifth of the card unused "
        "(our choice; the idle share is measured as an upper bound)",
    ),
    "transfer_flag_share": (
        0.99,
        "share of the copied bytes already pinned (or non_blocking) from which that flag is "
        "not suggested: a stray pageable copy is not worth a fix line",
    ),
    # -- savings: measured speed-ups of a kind of fix, where no what-if predicts it
    "fused_step_ratio": (
        0.56 / 3.1,
        "a CPU AdamW step, fused vs per-parameter: 0.56 ms against 3.1 ms",
    ),
    "bf16_cpu_speedup": (1.7, "bf16 autocast on a 512-wide MLP step, on an avx512_bf16 CPU"),
    "bf16_gpu_speedup": (2.0, "half of the 2.98x an H200 measured for bf16 on a 4096-wide MLP"),
    "pinned_speedup": (
        9.0,
        "pinned vs pageable host-to-device copies on an H200 (45.6 vs 5.0 GB/s)",
    ),
    # -- predict
    "worker_start_s": (
        0.05,
        "seconds per loader worker and epoch to start it, when the baseline had no workers "
        "to measure it",
    ),
    # -- evidence
    "loading_timed_share": (
        0.05,
        "data share of the epoch from which the dataset's own time is measured after the run: "
        "data_moderate's 5 %, where the data findings start citing it",
    ),
    # -- report (verdict)
    "compile_bound": (
        0.5,
        "torch.compile's share of the epoch from which the verdict is compile-bound (the first "
        "epoch of a compiled model; later epochs do not pay it); input-bound is data_bound",
    ),
    # -- what-if
    "memory_headroom": (
        0.8,
        "share of the available memory a larger batch's estimated extra may take on the CPU, "
        "where a real out-of-memory kills the kernel instead of raising",
    ),
    # -- analysis
    "sample_wait_late_s": (
        0.0002,
        "seconds after a sync's wait ended within which a sample still counts as waiting: a "
        "timer tick that arrives while the host waits inside a C call runs its handler when the "
        "call returns, at the sync's line; a sample later than that is elsewhere",
    ),
    "warmup_min_steps": (
        3,
        "steps a run needs before any is left out of the steady median as warm-up: with fewer "
        "the median of all is the best there is (our choice)",
    ),
    "warmup_steps_per": (
        10,
        "one leading step per this many is left out of the steady median as warm-up (first "
        "kernel selection, autocast caches, allocator growth; our choice)",
    ),
    "warmup_max_steps": (
        5,
        "at most this many leading steps are left out as warm-up, however long the run (our "
        "choice; the warmup finding looks at no more)",
    ),
}

THRESHOLDS: dict[str, float] = {name: value for name, (value, _) in _TABLE.items()}
THRESHOLD_SOURCES: dict[str, str] = {name: source for name, (_, source) in _TABLE.items()}


def threshold(name: str) -> float:
    """The current value (read at call time: edits to THRESHOLDS take effect)."""
    return THRESHOLDS[name]
