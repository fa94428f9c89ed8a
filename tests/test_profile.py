"""EpochProfile serialisation, the Chrome trace and the text report."""

from __future__ import annotations

import json

import pytest

from epochmagic import EpochProfile, Finding, LineStat
from epochmagic.model.profile import SCHEMA_VERSION
from epochmagic.report.textreport import render, verdict


def sample() -> EpochProfile:
    phases = {
        "data": 0.6,
        "transfer": 0.0,
        "forward": 0.2,
        "backward": 0.1,
        "optimizer": 0.05,
        "eval": 0.0,
        "other": 0.05,
    }
    return EpochProfile(
        wall_s=1.0,
        epoch_s=1.0,
        steps=2,
        steps_per_epoch=2,
        samples=64,
        samples_per_s=66.0,
        phases=phases,
        outside_steps_s=0.05,
        step_times=[0.5, 0.45],
        step_phases=[dict(phases, other=0.0) for _ in range(2)],
        step_starts_s=[0.02, 0.52],
        lines=[LineStat("Cell In[3]", 4, "loss.backward()", 2, 0.1)],
        lines_steps=2,
        findings=[Finding("data_loading", "Waiting for data", "…", 0.6, {"workers": 2}, "")],
        config={"batch_size": 32},
        environment={"device": "cpu", "cpu_count": 2},
    )


def test_json_round_trip(tmp_path):
    prof = sample()
    d = prof.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION
    json.loads(prof.to_json())
    path = prof.save(tmp_path / "p.json")
    again = EpochProfile.load(path)
    assert again == prof
    assert isinstance(again.lines[0], LineStat) and isinstance(again.findings[0], Finding)


def test_newer_schema_is_refused():
    d = sample().to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        EpochProfile.from_dict(d)


def test_chrome_trace_has_a_slice_per_phase_per_step(tmp_path):
    prof = sample()
    trace = json.loads(prof.to_chrome_trace(tmp_path / "t.trace.json").read_text())
    events = trace["traceEvents"]
    steps = [e for e in events if e.get("cat") == "step"]
    phases = [e for e in events if e.get("cat") == "phase"]
    assert [e["name"] for e in steps] == ["step 1", "step 2"]
    assert steps[1]["ts"] == pytest.approx(0.52e6)
    assert len(phases) == 2 * 4  # data, forward, backward, optimizer (nonzero) per step
    assert all(e["ph"] == "X" and e["dur"] > 0 for e in phases)


def test_export_picks_format_by_suffix(tmp_path):
    prof = sample()
    assert "traceEvents" in json.loads(prof.export(tmp_path / "a.trace.json").read_text())
    assert "phases" in json.loads(prof.export(tmp_path / "a.json").read_text())
    with pytest.raises(ValueError):
        prof.export(tmp_path / "a.txt")


def test_text_report_and_verdict():
    prof = sample()
    text = render(prof)
    assert "input-bound: 60% of the epoch waits for data" in text
    assert "loss.backward()" in text and "2 steps" in text
    assert prof._repr_mimebundle_()["text/plain"] == text
    prof.steps = 0
    assert "no training step" in verdict(prof)


def test_other_accelerators_are_said_to_be_host_timed():
    from epochmagic.analysis.assemble import host_timed_note

    assert host_timed_note("cpu") is None and host_timed_note("cuda:1") is None
    for device in ("mps", "xpu:0"):
        note = host_timed_note(device)
        assert note and "host-timed" in note and device.split(":")[0] in note
