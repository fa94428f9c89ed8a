"""One table of thresholds, read when the rules run: changing a value of
``epochmagic.THRESHOLDS`` changes the next diagnosis of the same profile."""

from __future__ import annotations

import ast
import pathlib

import pytest

import epochmagic
from epochmagic.diagnosis import evidence, predict
from epochmagic.diagnosis.diagnose import diagnose
from epochmagic.model.profile import PHASES, EpochProfile
from epochmagic.report.textreport import verdict

PACKAGE = pathlib.Path(epochmagic.__file__).parent


def profile(steps: int = 20, eval_s: float = 0.0, compile_s: float = 0.0) -> EpochProfile:
    """``steps`` identical 10 ms steps, then ``eval_s`` of evaluation."""
    step = {"data": 0.0005, "forward": 0.004, "backward": 0.005, "optimizer": 0.0003}
    sp = {k: step.get(k, 0.0) for k in PHASES}
    sp["other"] = 0.01 - sum(sp.values())
    phases = {k: v * steps for k, v in sp.items()}
    phases["eval"] += eval_s
    wall = 0.01 * steps + eval_s
    return EpochProfile(
        wall_s=wall,
        epoch_s=wall,
        steps=steps,
        phases=phases,
        step_times=[0.01] * steps,
        step_phases=[dict(sp) for _ in range(steps)],
        outside_steps_s=eval_s,
        config={"batch_size": 64, "workers": 0, "threads": 1, "device": "cpu"},
        environment={"cpu_count": 2},
        memory={"kind": "cpu", "per_step_bytes": [10**8] * steps},
        compile={"compiles": 1, "compile_s": compile_s} if compile_s else {},
    )


def codes(prof: EpochProfile) -> list[str]:
    return [f.code for f in diagnose(prof)]


def test_a_changed_threshold_makes_a_finding_appear_and_disappear(monkeypatch):
    prof = profile(eval_s=0.05)  # evaluation is 20 % of the epoch
    share = prof.phases["eval"] / prof.wall_s
    monkeypatch.setitem(epochmagic.THRESHOLDS, "eval_share", share + 0.01)
    assert "eval_heavy" not in codes(prof)
    monkeypatch.setitem(epochmagic.THRESHOLDS, "eval_share", share - 0.01)
    assert "eval_heavy" in codes(prof)


def test_the_table_is_read_when_the_rules_run():
    prof = profile()
    before = codes(prof)
    assert "python_overhead" not in before  # 2 % of each step in the loop's Python
    old = epochmagic.THRESHOLDS["python_overhead"]
    try:
        epochmagic.THRESHOLDS["python_overhead"] = 0.01
        assert "python_overhead" in codes(prof)
    finally:
        epochmagic.THRESHOLDS["python_overhead"] = old
    assert codes(prof) == before


def test_the_verdict_reads_the_table_too(monkeypatch):
    prof = profile(compile_s=0.15)  # 0.15 s of torch.compile in a 0.2 s epoch
    assert verdict(prof).startswith("compile-bound")
    monkeypatch.setitem(epochmagic.THRESHOLDS, "compile_bound", 0.9)
    assert not verdict(prof).startswith("compile-bound")


def test_every_threshold_has_a_source():
    assert set(epochmagic.THRESHOLDS) == set(epochmagic.THRESHOLD_SOURCES)
    for name, value in epochmagic.THRESHOLDS.items():
        assert isinstance(value, (int, float)), name
        assert len(epochmagic.THRESHOLD_SOURCES[name]) > 10, name


def _modules() -> list[pathlib.Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "model"]


def test_no_rule_module_keeps_its_own_thresholds():
    """No THRESHOLDS-like dict outside the model layer, and no module reads a
    threshold once at import (it would miss later changes to the table)."""
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            assert not any("THRESHOLD" in n.upper() for n in names), (path, names)
            value = getattr(node, "value", None)
            calls = (
                [c for c in ast.walk(value) if isinstance(c, ast.Call)] if value is not None else []
            )
            assert not any(
                getattr(c.func, "id", getattr(c.func, "attr", "")) in ("threshold", "t", "_t")
                for c in calls
            ), (path, names)


# -- evidence's matmul probe ---------------------------------------------------------------
def test_a_failed_peak_probe_is_tried_again(monkeypatch):
    import torch

    from epochmagic.analysis import gpu as gpumod

    monkeypatch.setattr(gpumod, "_PROBED", {})
    real = torch.randn

    def lost(*a, **k):
        raise RuntimeError("device lost")

    monkeypatch.setattr(torch, "randn", lost)
    assert evidence.peak_flops("cpu", seconds=0.01) is None
    assert gpumod._PROBED == {}
    monkeypatch.setattr(torch, "randn", real)
    # the device is named: the same on a machine with CUDA and one without
    peak = evidence.peak_flops("cpu", seconds=0.01)
    assert peak and peak > 0 and gpumod._PROBED == {("cpu", "float32", False, 512): peak}
    assert evidence.peak_flops("cpu") == peak  # kept once measured: one probe, one cache


# -- predictions from what earlier what-ifs measured -----------------------------------------
def test_predictions_fit_the_batch_size_from_measured_records():
    base = profile()
    bigger = profile()
    bigger.config = {**base.config, "batch_size": 128}
    bigger.step_times = [0.015] * bigger.steps  # compute 0.0145 s at 128 vs 0.0095 s at 64
    record = predict.measured(bigger)
    assert record == predict.Measured(128, None, pytest.approx(0.0145))
    failed = profile()
    failed.status = "error"
    assert predict.measured(failed) is None and predict.measured(profile(steps=2)) is None
    s = {**base.config, "batch_size": 256}
    guess = predict.epoch(base, s, [record, None], None)
    assert "(fitted)" in guess["model"]
    # two points, 5 ms per 64 samples: 0.0095 + 0.005 * 3 compute at 256, plus its data
    assert guess["epoch_s"] == pytest.approx(5 * (0.0245 + 0.0005 * 4))
    assert "(fitted)" not in predict.epoch(base, s, [], None)["model"]
