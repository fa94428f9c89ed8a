"""Findings about the input pipeline: waiting for batches, worker start-up,
workers and intra-op threads competing for the cores (docs/design.md §6).

Pure functions of an ``EpochProfile``; the worker suggestion is the setting the
prediction model (:mod:`epochmagic.diagnosis.predict`) expects to be fastest. Their
thresholds are in ``epochmagic.model.thresholds``.
"""

from __future__ import annotations

import statistics
from typing import Any

from epochmagic.analysis.figures import cores as cores_of
from epochmagic.analysis.figures import epoch, in_steps, ms
from epochmagic.model.profile import EpochProfile, Finding
from epochmagic.model.thresholds import threshold as _t


def _oversubscribed(prof: EpochProfile) -> bool:
    """Loader workers plus more intra-op threads than the cores they leave."""
    workers = int(prof.config.get("workers") or 0)
    threads = int(prof.config.get("threads") or 1)
    return workers > 0 and threads > max(1, cores_of(prof) - workers)


def _worker_setting(prof: EpochProfile) -> tuple[dict[str, Any], float]:
    """The workers and intra-op threads the prediction model expects to be
    fastest on this machine, and its predicted speed-up. Workers and threads
    share the cores: measured on 2 cores, 2 workers gave 1.04-1.09x until the
    main process used 1 thread (1.75x), while a compute-heavy loop lost more to
    one thread than the workers won."""
    from epochmagic.diagnosis import predict

    cores = cores_of(prof)
    loading = prof.evidence.get("loading") if prof.evidence else None
    best: tuple[dict[str, Any], float] = ({}, 1.0)
    base = prof.epoch_s or prof.wall_s
    threads_now = int(prof.config.get("threads") or 1)
    data = prof.phases.get("data", 0.0)
    compute = prof.phases.get("forward", 0.0) + prof.phases.get("backward", 0.0)
    for workers in range(1, min(cores, int(_t("worker_search_max"))) + 1):
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
def startup_excess(prof: EpochProfile) -> float:
    """The first batch's wait beyond the steady one (worker start-up)."""
    if len(prof.step_phases) < 3:
        return 0.0
    steady = statistics.median(sp.get("data", 0.0) for sp in prof.step_phases[1:])
    return max(0.0, prof.step_phases[0].get("data", 0.0) - steady)


def data_loading(prof: EpochProfile) -> Finding | None:
    startup = startup_excess(prof) if prof.config.get("workers") else 0.0
    data = in_steps(prof, "data") - startup  # start-up is `worker_startup`'s
    share = data / epoch(prof)
    if share < _t("data_moderate"):
        return None
    cfg = prof.config
    workers = int(cfg.get("workers") or 0)
    cores = cores_of(prof)
    if _oversubscribed(prof):
        return None  # workers and threads compete for the cores: the `threads` finding
    per_step = data / prof.steps
    bits = [
        f"{share:.0%} of the epoch waits for the next batch ({ms(per_step)} per step)",
        f"{workers} worker{'s' if workers != 1 else ''} on {cores} cores, "
        f"{cfg.get('threads')} torch threads",
    ]
    loading = prof.evidence.get("loading") if prof.evidence else None
    if loading:
        bits.append(
            f"the dataset takes {ms(loading['per_sample_s'])} per sample and collate "
            f"{ms(loading['collate_s'])} per batch (timed in this process)"
        )
        bits.append(_where_the_wait_goes(prof, loading, per_step, workers))
        if "transform_s" in loading:
            bits.append(f"of which its transform takes {ms(loading['transform_s'])} per sample")
        if "worker_per_sample_s" in loading:
            bits.append(
                f"inside a worker process: {ms(loading['worker_per_sample_s'])} per sample, "
                f"collate {ms(loading['worker_collate_s'])} per batch"
            )
        if "worker_batch_s" in loading:
            bits.append(f"a batch takes {ms(loading['worker_batch_s'])} inside one worker process")
    if prof.evidence.get("transform"):
        bits.append(f"its transform is {prof.evidence['transform']}")
    suggestion, gain = _worker_setting(prof)
    if gain < _t("min_gain"):
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
        "Input-bound" if share >= _t("data_bound") else "Partly input-bound"
    ) + ": the loop waits for its next batch"
    fix = ""
    if suggestion:
        fix = (
            f"DataLoader(..., num_workers={suggestion['workers']}, persistent_workers=True)"
            f"\ntorch.set_num_threads({suggestion['threads']})"
        )
    return Finding("data_loading", title, "; ".join(bits) + ".", share, suggestion, fix)


def _where_the_wait_goes(
    prof: EpochProfile, loading: dict[str, float], per_step: float, workers: int
) -> str:
    """Split a step's wait for its batch into what the timings account for."""
    batch = int(prof.config.get("batch_size") or 0)
    dataset = batch * loading["per_sample_s"]
    collate = loading["collate_s"]
    if workers == 0:
        rest = max(0.0, per_step - dataset - collate)
        return (
            f"of the {ms(per_step)} a step waits, {ms(dataset)} is the dataset "
            f"({batch} samples), {ms(collate)} collate and {ms(rest)} the rest of the "
            "loader (sampler, fetch, pinning)"
        )
    in_worker = loading.get("worker_batch_s", dataset + collate)
    return (
        f"a batch costs {ms(in_worker)} inside a worker; the {ms(per_step)} the loop still "
        f"waits per step is {workers} worker(s) not keeping up or the hand-off itself "
        "(pickling the batch, inter-process queue, unpickling in the main process)"
    )


def worker_startup(prof: EpochProfile) -> Finding | None:
    cfg = prof.config
    if not cfg.get("workers") or cfg.get("persistent_workers") or len(prof.step_phases) < 3:
        return None
    steady = statistics.median(sp.get("data", 0.0) for sp in prof.step_phases[1:])
    extra = startup_excess(prof)
    share = extra / epoch(prof)
    if share < _t("worker_startup"):
        return None
    return Finding(
        "worker_startup",
        f"Worker start-up costs {ms(extra)} every epoch",
        f"the first batch waited {ms(extra)} more than the steady {ms(steady)}: "
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
        cores_of(prof),
    )
    if not _oversubscribed(prof):
        return None
    share = in_steps(prof, "data") / epoch(prof)
    if share < _t("data_moderate"):
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


RULES = [data_loading, worker_startup, threads]
