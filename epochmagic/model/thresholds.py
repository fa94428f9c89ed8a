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
}

THRESHOLDS: dict[str, float] = {name: value for name, (value, _) in _TABLE.items()}
THRESHOLD_SOURCES: dict[str, str] = {name: source for name, (_, source) in _TABLE.items()}


def threshold(name: str) -> float:
    """The current value (read at call time: edits to THRESHOLDS take effect)."""
    return THRESHOLDS[name]
