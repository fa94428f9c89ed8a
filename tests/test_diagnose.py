"""Each finding fires on the evidence that calls for it, and only then."""

from __future__ import annotations

import pytest

from epochmagic.diagnosis.diagnose import diagnose
from epochmagic.model.profile import PHASES, EpochProfile, LineStat
from epochmagic.model.thresholds import THRESHOLD_SOURCES, THRESHOLDS


def make(
    step: dict[str, float] | None = None,
    steps: int = 40,
    outside: float = 0.0,
    eval_s: float = 0.0,
    config: dict | None = None,
    evidence: dict | None = None,
    step_times: list[float] | None = None,
    memory: list[int] | None = None,
    lines: list[LineStat] | None = None,
) -> EpochProfile:
    """A profile of ``steps`` identical steps (``step`` gives their phases)."""
    step = {
        "data": 0.0003,
        "forward": 0.004,
        "backward": 0.006,
        "optimizer": 0.0005,
        "other": 0.0005,
        **(step or {}),
    }
    sp = {k: step.get(k, 0.0) for k in PHASES}
    per = sum(sp.values())
    times = step_times or [per] * steps
    step_phases = []
    for t in times:
        scale = t / per
        step_phases.append({k: v * scale for k, v in sp.items()})
    phases = {k: sum(p[k] for p in step_phases) for k in PHASES}
    phases["eval"] += eval_s
    phases["other"] += outside
    wall = sum(times) + eval_s + outside
    cfg = {
        "batch_size": 64,
        "workers": 0,
        "threads": 2,
        "precision": "fp32",
        "device": "cpu",
        "persistent_workers": False,
        **(config or {}),
    }
    return EpochProfile(
        wall_s=wall,
        epoch_s=wall,
        steps=len(times),
        phases=phases,
        step_times=times,
        step_phases=step_phases,
        outside_steps_s=wall - sum(times),
        config=cfg,
        environment={"cpu_count": 2},
        evidence=evidence or {},
        memory={"kind": "cpu", "per_step_bytes": memory or [10**8] * len(times)},
        lines=lines or [],
        lines_steps=3,
    )


def codes(prof: EpochProfile) -> list[str]:
    return [f.code for f in diagnose(prof)]


def test_a_well_configured_epoch_raises_nothing_actionable():
    found = diagnose(
        make(
            evidence={
                "params": 1000,
                "optimizers": [{"type": "AdamW", "fused": True, "foreach": None, "params": 1000}],
            }
        )
    )
    assert [f.code for f in found if f.share > 0.05] == ["model_compute"]


def test_data_loading_fires_with_the_setting_that_pays_on_two_cores():
    prof = make(
        {"data": 0.030},
        evidence={"loading": {"per_sample_s": 0.0004, "collate_s": 0.001, "per_batch_s": 0.027}},
    )
    f = diagnose(prof)[0]
    assert f.code == "data_loading" and f.title.startswith("Input-bound")
    assert f.suggestion == {"workers": 2, "threads": 1}
    assert "0.4 ms per sample" in f.detail and "num_workers=2" in f.fix
    assert f.share == pytest.approx(prof.phases["data"] / prof.wall_s)
    assert "data_loading" not in codes(make({"data": 0.0002}))


def test_data_loading_with_workers_already_matching_cores_says_to_cheapen_the_samples():
    f = diagnose(make({"data": 0.03}, config={"workers": 2, "threads": 1}))[0]
    assert f.code == "data_loading" and f.suggestion == {}
    assert "per-sample work" in f.detail


def test_threads_compete_with_workers():
    prof = make({"data": 0.01}, config={"workers": 2, "threads": 2})
    assert "threads" in codes(prof)
    f = next(f for f in diagnose(prof) if f.code == "threads")
    assert f.suggestion == {"workers": 2, "threads": 1}
    assert "threads" not in codes(make({"data": 0.01}, config={"workers": 1, "threads": 1}))


def test_worker_startup_only_without_persistent_workers():
    times = [0.3] + [0.012] * 39
    prof = make({"data": 0.004}, step_times=times, config={"workers": 2, "threads": 1})
    prof.step_phases[0]["data"] = 0.29
    assert "worker_startup" in codes(prof)
    f = next(f for f in diagnose(prof) if f.code == "worker_startup")
    assert f.suggestion == {"persistent_workers": True}
    prof.config["persistent_workers"] = True
    assert "worker_startup" not in codes(prof)


def test_small_batch():
    prof = make(
        {
            "forward": 0.0004,
            "backward": 0.0005,
            "optimizer": 0.0004,
            "other": 0.0004,
            "data": 0.0001,
        },
        config={"batch_size": 4},
    )
    f = next(f for f in diagnose(prof) if f.code == "small_batch")
    assert f.suggestion == {"batch_size": 32} and "learning rate" in f.detail
    assert "small_batch" not in codes(make(config={"batch_size": 256}))
    heavy = make({"forward": 0.02, "backward": 0.04}, config={"batch_size": 16})
    assert "small_batch" not in codes(heavy)


def test_python_overhead_cites_the_hottest_cell_lines():
    lines = [LineStat("Cell In[4]", 7, "    print(loss.item())", 3, 0.03)]
    prof = make({"other": 0.01}, lines=lines)
    f = next(f for f in diagnose(prof) if f.code == "python_overhead")
    assert "Cell In[4]:7" in f.detail and "print(loss.item())" in f.detail
    assert "python_overhead" not in codes(make())


def test_step_time_growth_and_memory_growth():
    times = [0.01 + 0.0005 * i for i in range(40)]
    mem = [10**8 + i * 5 * 2**20 for i in range(40)]
    prof = make(step_times=times, memory=mem)
    assert {"step_time_growth", "memory_growth"} <= set(codes(prof))
    assert not {"step_time_growth", "memory_growth"} & set(codes(make()))


def test_optimizer_step_suggests_fused_only_for_unfused_optimizers():
    opt = {"type": "AdamW", "fused": False, "foreach": None, "params": 10}
    prof = make({"optimizer": 0.005}, evidence={"optimizers": [opt]})
    f = next(f for f in diagnose(prof) if f.code == "optimizer_step")
    assert f.suggestion == {"fused": True} and "fused=True" in f.fix
    prof.evidence["optimizers"] = [{**opt, "fused": True}]
    assert "optimizer_step" not in codes(prof)


def test_eval_heavy():
    assert "eval_heavy" in codes(make(eval_s=0.3))
    assert "eval_heavy" not in codes(make(eval_s=0.01))


def test_warmup():
    assert "warmup" in codes(make(step_times=[0.2, 0.2] + [0.01] * 38))
    assert "warmup" not in codes(make())


def test_hardware_when_cuda_is_there_but_unused():
    assert "hardware" in codes(make(evidence={"cuda_available": True}))
    assert "hardware" not in codes(make(evidence={"cuda_available": False}))


def test_precision_where_bf16_is_faster():
    prof = make(evidence={"cpu_bf16": True})
    f = next(f for f in diagnose(prof) if f.code == "precision")
    assert f.suggestion == {"precision": "bf16"}
    assert "precision" not in codes(make(evidence={"cpu_bf16": False}))
    assert "precision" not in codes(make(evidence={"cpu_bf16": True}, config={"precision": "bf16"}))


def test_imbalance_is_informative_and_honest():
    prof = make(evidence={"labels": {"0": 970, "1": 10, "2": 10, "3": 10}})
    found = diagnose(prof)
    f = found[-1]
    assert f.code == "imbalance" and f.share == 0.0
    assert "not time per epoch" in f.detail and "3.9x" in f.detail
    assert "imbalance" not in codes(make(evidence={"labels": {"0": 50, "1": 40}}))


def test_actionable_findings_rank_by_share_before_informative_ones():
    prof = make(
        {"data": 0.03, "other": 0.006},
        eval_s=0.5,
        evidence={"params": 10, "labels": {"0": 100, "1": 1}},
    )
    found = diagnose(prof)
    informative = [f for f in found if f.code in ("model_compute", "imbalance")]
    actionable = [f for f in found if f.code not in ("model_compute", "imbalance")]
    assert found == actionable + informative
    assert [f.share for f in actionable] == sorted((f.share for f in actionable), reverse=True)


def test_thresholds_say_where_they_come_from():
    assert all(
        isinstance(v, (int, float)) and len(THRESHOLD_SOURCES[k]) > 10
        for k, v in THRESHOLDS.items()
    )


def test_model_compute_needs_a_model():
    assert "model_compute" not in codes(make(evidence={}))
    f = next(
        f
        for f in diagnose(
            make(evidence={"params": 1234, "flops_per_step": 3e9, "peak_flops": 1e11})
        )
        if f.code == "model_compute"
    )
    assert "1,234 parameters" in f.detail and "GFLOP" in f.detail and "matmul" in f.detail


# -- findings that need the GPU --------------------------------------------------------
def on_gpu(prof: EpochProfile, **gpu) -> EpochProfile:
    """``prof`` as if timed with CUDA events on a GPU (the fields gpu.fields makes)."""
    busy = {k: v * 0.9 for k, v in prof.phases.items() if k != "data"}
    prof.config["device"] = "cuda:0"
    prof.step_clock = "loader"
    prof.gpu = {
        "name": "NVIDIA H100 80GB HBM3",
        "capability": "9.0",
        "bf16": True,
        "tf32": {"matmul": False, "cudnn": True},
        "idle_share": 0.1,
        "idle_in_steps_share": 0.1,
        "host_wait_share": 0.0,
        "device_s_by_phase": busy,
        "idle_s_by_phase": {k: v - busy.get(k, 0.0) for k, v in prof.phases.items()},
        "syncs_per_step": 0.0,
        "blocking_copies_per_step": 0.0,
        "sync_sites": [],
        "transfer": {
            "copies": 80,
            "bytes": 40 * 2**24,
            "pinned_share": 0.0,
            "non_blocking_share": 0.0,
        },
        "mfu": None,
        **gpu,
    }
    return prof


def test_transfer_fires_on_slow_pageable_copies_only():
    prof = on_gpu(make({"transfer": 0.002}))
    f = next(f for f in diagnose(prof) if f.code == "transfer")
    assert f.suggestion == {"pin_memory": True}
    assert "pin_memory=True" in f.fix and "non_blocking=True" in f.fix
    assert "16.0 MiB per step" in f.detail and "0% from pinned memory" in f.detail
    assert f.share == pytest.approx(prof.phases["transfer"] / prof.wall_s)
    assert "transfer" not in codes(on_gpu(make({"transfer": 0.0001})))
    pinned = on_gpu(
        make({"transfer": 0.002}),
        transfer={"bytes": 1, "pinned_share": 1.0, "non_blocking_share": 1.0},
    )
    pinned.config["pin_memory"] = True
    f = next(f for f in diagnose(pinned) if f.code == "transfer")
    assert f.suggestion == {} and "copy less" in f.fix


def test_sync_points_fire_when_the_syncs_starve_the_gpu():
    site = {
        "filename": "Cell In[3]",
        "lineno": 5,
        "source": "print(loss.item())",
        "count": 40,
        "wait_s": 0.1,
    }
    starved = on_gpu(
        make(),
        syncs_per_step=1.0,
        idle_in_steps_share=0.3,
        sync_sites=[site],
        idle_s_by_phase={"other": 0.12, "data": 0.0},
    )
    f = next(f for f in diagnose(starved) if f.code == "sync_points")
    assert "print(loss.item())" in f.detail and "Cell In[3]:5" in f.detail
    assert f.share == pytest.approx(0.3 * sum(starved.step_times) / starved.wall_s)
    # host launches that overlap device work look idle at marker resolution; the
    # estimate that counts lagging segments busy says the GPU was fed
    overlapped = on_gpu(
        make(),
        syncs_per_step=1.0,
        idle_in_steps_share=0.3,
        idle_in_steps_share_low=0.02,
        idle_s_by_phase={"forward": 0.12},
    )
    assert not {"sync_points", "gpu_idle"} & set(codes(overlapped))
    busy = on_gpu(
        make(), syncs_per_step=1.0, idle_in_steps_share=0.02, idle_s_by_phase={"other": 0.005}
    )
    assert "sync_points" not in codes(busy)  # the GPU stays fed: a sync costs little
    rare = on_gpu(make(), syncs_per_step=0.01, idle_s_by_phase={"other": 0.12})
    assert "sync_points" not in codes(rare)


def test_gpu_idle_names_what_the_host_was_doing():
    idle = on_gpu(
        make(),
        idle_in_steps_share=0.5,
        idle_s_by_phase={"other": 0.1, "optimizer": 0.02, "data": 0.01},
    )
    f = next(f for f in diagnose(idle) if f.code == "gpu_idle")
    assert "other 77%" in f.detail and f.suggestion == {"batch_size": 128}
    assert "gpu_idle" not in codes(on_gpu(make(), idle_in_steps_share=0.1))


def test_gpu_findings_stay_silent_without_device_timing():
    cpu = make({"transfer": 0.002})
    assert not {"transfer", "sync_points", "gpu_idle"} & set(codes(cpu))
    failed = on_gpu(make({"transfer": 0.002}), device_s_by_phase=None, idle_in_steps_share=None)
    assert not {"transfer", "sync_points", "gpu_idle"} & set(codes(failed))


def test_precision_on_tensor_cores():
    h100 = on_gpu(make())
    f = next(f for f in diagnose(h100) if f.code == "precision")
    assert f.suggestion == {"precision": "bf16"}
    assert "989.4 TFLOP/s in bf16 against 67 in fp32" in f.detail and "TF32 is off" in f.detail
    assert "set_float32_matmul_precision('high')" in f.fix
    t4 = on_gpu(make(), name="Tesla T4", capability="7.5", bf16=False)
    f = next(f for f in diagnose(t4) if f.code == "precision")
    assert f.suggestion == {"precision": "fp16"} and "GradScaler" in f.fix
    assert "TF32" not in f.detail  # no TF32 before Ampere
    assert "precision" not in codes(on_gpu(make(), name="Tesla P100", capability="6.0"))
    bf16 = on_gpu(make(config={"precision": "bf16"}))
    assert "precision" not in codes(bf16)


def test_model_flop_utilisation_against_the_datasheet(monkeypatch):
    import torch

    from epochmagic.analysis import gpu as gpumod
    from epochmagic.analysis.gpu import peak_flops, utilisation

    # an unknown card is probed; with no CUDA (as on any machine, here) nothing to probe
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpumod, "_PROBED", {})

    prof = on_gpu(make(evidence={"params": 10, "flops_per_step": 1e10, "flops_batch": 32}))
    utilisation(prof.gpu, prof)  # batch 64 in the run: twice the FLOPs counted at 32
    steps_s = sum(prof.step_times)
    assert prof.gpu["flops_per_step"] == 2e10
    assert prof.gpu["mfu"] == pytest.approx(2e10 * prof.steps / steps_s / 67e12)
    assert "datasheet" in prof.gpu["peak_source"]
    f = next(f for f in diagnose(prof) if f.code == "model_compute")
    assert "model FLOP utilisation" in f.detail
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16", False)[0] == 989.4e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32", True)[0] == 494.7e12
    assert peak_flops("NVIDIA H100 PCIe", "fp32", False)[0] == 51e12
    assert peak_flops("NVIDIA L40S", "bf16", False)[0] == 362e12
    assert peak_flops("NVIDIA L4", "bf16", False)[0] == 121e12
    assert peak_flops("Some Future GPU", "bf16", False) == (None, None)  # no CUDA to probe here


# -- MFU from the FLOPs that ran ------------------------------------------------------------
def test_mfu_takes_the_peak_of_the_precision_the_matmuls_ran_in():
    from epochmagic.analysis.gpu import utilisation

    ev = {"params": 10, "flops_per_step": 1e10, "flops_batch": 64}
    fp32 = on_gpu(make(evidence=dict(ev)))
    utilisation(fp32.gpu, fp32)
    assert fp32.gpu["matmul_dtype"] == "fp32" and fp32.gpu["peak_flops"] == 67e12
    assert "FP32" in fp32.gpu["peak_source"]
    tf32 = on_gpu(
        make(evidence=dict(ev)), tf32={"matmul": False, "float32_matmul_precision": "high"}
    )
    utilisation(tf32.gpu, tf32)
    assert tf32.gpu["matmul_dtype"] == "tf32" and tf32.gpu["peak_flops"] == 494.7e12
    autocast = on_gpu(make(evidence=dict(ev), config={"precision": "fp16"}))
    utilisation(autocast.gpu, autocast)
    assert autocast.gpu["matmul_dtype"] == "fp16" and autocast.gpu["peak_flops"] == 989.4e12
    # bf16 weights without autocast: the run's precision says fp32, the matmuls ran in bf16
    weights = on_gpu(make(evidence={**ev, "param_dtype": "bf16"}), tf32={"matmul": True})
    utilisation(weights.gpu, weights)
    assert weights.gpu["matmul_dtype"] == "bf16" and weights.gpu["peak_flops"] == 989.4e12
    assert "BF16" in weights.gpu["peak_source"] and "weights are bf16" in weights.gpu["peak_source"]


def test_mfu_is_over_the_steady_steps():
    from epochmagic.analysis.gpu import utilisation

    times = [1.0, 0.5] + [0.01] * 18  # first-time kernel selection in the first steps
    prof = on_gpu(make(evidence={"params": 10, "flops_per_step": 1e11}, step_times=times))
    utilisation(prof.gpu, prof)
    assert prof.gpu["achieved_flops"] == pytest.approx(1e11 / 0.01)
    assert prof.gpu["mfu"] == pytest.approx(1e11 / 0.01 / 67e12)


def test_compile_seconds_inside_steps_are_left_out():
    from epochmagic.analysis.gpu import utilisation

    prof = on_gpu(make(evidence={"params": 10, "flops_per_step": 1e11}, step_times=[0.03] * 10))
    prof.compile = {"step_compile_s": [0.02] * 10}  # as a compiling run records them
    utilisation(prof.gpu, prof)
    assert prof.gpu["achieved_flops"] == pytest.approx(1e11 / 0.01)
    prof.compile = {"step_compile_s": [0.02] * 3}  # not aligned with the steps: ignored
    utilisation(prof.gpu, prof)
    assert prof.gpu["achieved_flops"] == pytest.approx(1e11 / 0.03)


def test_mfu_above_100_percent_is_a_note_not_a_number():
    from epochmagic.analysis.gpu import utilisation

    prof = on_gpu(make(evidence={"params": 10, "flops_per_step": 1.5e12}, step_times=[0.01] * 20))
    utilisation(prof.gpu, prof)  # 150 TFLOP/s against 67 in fp32
    assert prof.gpu["mfu"] is None
    assert "224%" in prof.gpu["mfu_note"] and "does not match" in prof.gpu["mfu_note"]
    f = next(f for f in diagnose(prof) if f.code == "model_compute")
    assert "no model FLOP utilisation" in f.detail and "224%" in f.detail
    assert "forward + backward" in f.detail


def test_a_failed_probe_is_tried_again(monkeypatch):
    import torch

    from epochmagic.analysis import gpu as gpumod

    monkeypatch.setattr(gpumod, "_PROBED", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def lost(*a, **k):
        raise RuntimeError("CUDA error: device lost")

    monkeypatch.setattr(torch, "Generator", lost)
    assert gpumod.matmul_probe("bf16", False) is None
    assert gpumod._PROBED == {}
    monkeypatch.setattr(gpumod, "matmul_probe", lambda precision, tf32: 5e14)
    assert gpumod.peak_flops("Some Future GPU", "bf16", False) == (
        5e14,
        "measured: large BF16 matmul on this GPU",
    )


# -- ranking by expected saving ------------------------------------------------------------
def test_findings_rank_by_expected_saving_then_share():
    from epochmagic.diagnosis.savings import rank
    from epochmagic.model.profile import Finding

    def f(code, share, saving):
        return Finding(code, code, "", share, saving=saving)

    ranked = rank(
        [
            f("model_compute", 0.9, None),
            f("python_overhead", 0.5, None),
            f("step_time_growth", 0.3, -0.05),
            f("data_loading", 0.4, 0.02),
            f("precision", 0.6, 0.25),
            f("warmup", 0.2, None),
            f("optimizer_step", 0.1, 0.08),
        ]
    )
    assert [x.code for x in ranked] == [
        "precision",  # numbers first, largest first
        "optimizer_step",
        "data_loading",
        "python_overhead",  # None after the numbers, by share
        "warmup",
        "step_time_growth",  # a negative saving last
        "model_compute",  # informative findings after every actionable one
    ]


def test_predicted_savings_never_exceed_the_share_and_say_where_they_come_from():
    prof = make(
        {"forward": 0.02, "backward": 0.03},
        evidence={"params": 10, "cpu_bf16": True, "flops_per_step": 1e9},
    )
    found = {f.code: f for f in diagnose(prof)}
    p = found["precision"]
    assert p.saving_source == "predicted"
    assert p.saving == pytest.approx(p.share * (1 - 1 / 1.7))
    assert all(f.saving is None or f.saving <= f.share + 1e-12 for f in found.values())
    assert found["model_compute"].saving is None


def test_a_rerun_of_a_suggestion_replaces_its_prediction_with_the_measurement():
    from epochmagic.diagnosis.savings import remeasured
    from epochmagic.model.profile import Finding

    base = make()
    base.findings = [
        Finding(
            "precision", "p", "", 0.6, {"precision": "bf16"}, saving=0.3, saving_source="predicted"
        ),
        Finding(
            "data_loading", "d", "", 0.4, {"workers": 2}, saving=0.2, saving_source="predicted"
        ),
    ]
    slower = EpochProfile(status="ok", epoch_s=base.epoch_s * 1.05)
    assert not remeasured(base, {"workers": 3}, slower)  # not a suggestion
    assert remeasured(base, {"precision": "bf16"}, slower)
    assert [f.code for f in base.findings] == ["data_loading", "precision"]
    measured = base.findings[1]
    assert measured.saving_source == "measured" and measured.saving == pytest.approx(-0.05)


def test_the_first_finding_says_why_when_it_is_not_the_bottlenecks():
    from epochmagic.model.profile import Finding
    from epochmagic.report.textreport import render, why_first

    prof = make({"data": 0.006, "forward": 0.004, "backward": 0.006})
    prof.findings = [
        Finding("precision", "p", "", 0.6, {"precision": "bf16"}, saving=0.22),
        Finding("data_loading", "d", "", 0.3, {}, saving=0.01),
    ]
    line = why_first(prof)
    assert line == (
        "input-bound, but more workers are not predicted to help on 2 cores; "
        "precision's fix is expected to save 22%"
    )
    assert f"first finding: {line}" in render(prof)
    prof.findings.reverse()
    assert why_first(prof) is None  # the first finding is the bottleneck's


def test_times_below_a_tenth_of_a_millisecond_read_in_microseconds():
    from epochmagic.analysis.figures import ms

    assert ms(0.00003) == "30 µs" and ms(0.0) == "0.0 ms" and ms(0.0042) == "4.2 ms"


def test_a_profile_saved_by_the_first_version_loads(tmp_path):
    from pathlib import Path

    from epochmagic.model.profile import SCHEMA_VERSION

    path = Path(__file__).parent / "data" / "profile_v1.json"
    prof = EpochProfile.load(path)
    assert prof.steps == 16 and prof.findings and prof.compile is None
    assert all(f.saving is None and f.saving_source is None for f in prof.findings)
    assert "epochmagic" in prof.text()  # it renders
    again = EpochProfile.load(prof.save(tmp_path / "again.json"))
    assert again.to_dict()["schema_version"] == SCHEMA_VERSION


def test_an_older_profiles_lines_load_as_traced():
    """Before schema 4 every line came from the traced run: such a profile's
    lines load as traced, hits kept and no sample fields."""
    from pathlib import Path

    prof = EpochProfile.load(Path(__file__).parent / "data" / "profile_v1.json")
    assert prof.lines and prof.lines_source == "traced"
    assert all(
        isinstance(ls.hits, int) and ls.ticks == 0 and not ls.phase_ticks for ls in prof.lines
    )
    assert "traced run" in prof.text()


def test_warmup_holds_against_noise_and_names_real_warmup():
    """Warm-up is the leading run of steps slower than the steady steps'
    spread, worth at least 50 ms: a noisy first step, a late spike or a tiny
    first-step cost is not one; a lazy initialisation is."""
    import random

    rng = random.Random(0)
    noisy = [0.010 * (1 + 0.15 * rng.random()) for _ in range(60)]

    def fires(times):
        return any(f.code == "warmup" for f in diagnose(make(step_times=times)))

    assert not fires([0.0115, *noisy[1:]])  # first step inside the noise band
    assert not fires([*noisy[:3], 0.2, *noisy[4:]])  # a spike that is not the first step
    assert not fires([0.04, *noisy[1:]])  # 30 ms extra: real, but not worth a finding
    assert fires([0.6, 0.2, *noisy[2:]])  # lazy initialisation in the first two steps
    found = next(f for f in diagnose(make(step_times=[0.6, 0.2, *noisy[2:]])) if f.code == "warmup")
    assert found.title.startswith("The first 2 steps")
