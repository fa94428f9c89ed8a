"""The magic's contract: options, errors, interrupts, output and clean-up."""

from __future__ import annotations

import gc
import json
import os
import threading

import pytest
import torch

from epochmagic import EpochProfile
from tests.conftest import run
from tests.test_cell_shapes import SETUP

LOOP = """for epoch in range(3):
    for xb, yb in train_loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
"""


def test_error_fails_the_cell_and_shows_the_users_line(ip, capsys):
    run(ip, SETUP)
    result = run(
        ip,
        """%%epochprofile -o prof --text
for i, (xb, yb) in enumerate(train_loader):
    loss = loss_fn(model(xb), yb)
    loss.backward(); opt.step()
    if i == 3:
        raise ValueError("bad batch")
""",
        ok=False,
    )
    assert isinstance(result.error_in_exec, ValueError)
    out = capsys.readouterr().out
    assert 'raise ValueError("bad batch")' in out  # the user's own source line
    assert "line 6" in out  # numbered as the user sees the cell (magic line is 1)
    assert "<timed exec>" not in out and "session.py" not in out
    prof = ip.user_ns["prof"]
    assert prof.status == "error" and "bad batch" in prof.error
    assert prof.steps == 4 and prof.epoch_s is not None  # extrapolated: len(loader) known


def test_error_in_notebook_function_shows_its_line(ip, capsys):
    run(
        ip,
        """
def boom(x):
    return x / undefined_name
""",
    )
    result = run(ip, "%%epochprofile --text\ny = boom(1)\n", ok=False)
    assert isinstance(result.error_in_exec, NameError)
    out = capsys.readouterr().out
    assert "return x / undefined_name" in out and "y = boom(1)" in out


def test_keyboard_interrupt_shows_partial_profile_and_stops_run_all(ip, capsys):
    run(ip, SETUP)
    result = run(
        ip,
        """%%epochprofile -o prof --text
for i, (xb, yb) in enumerate(train_loader):
    loss = loss_fn(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    if i == 4:
        raise KeyboardInterrupt
""",
        ok=False,
    )
    assert isinstance(result.error_in_exec, KeyboardInterrupt)  # Run All stops here
    prof = ip.user_ns["prof"]
    assert prof.status == "interrupted" and prof.steps == 5
    assert "interrupted" in capsys.readouterr().out


def test_out_of_memory_is_reported_and_cleaned_up(ip):
    run(ip, SETUP)
    result = run(
        ip,
        """%%epochprofile -o prof --text --no-lines
for i, (xb, yb) in enumerate(train_loader):
    loss = loss_fn(model(xb), yb)
    loss.backward(); opt.step()
    if i == 2:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
""",
        ok=False,
    )
    assert isinstance(result.error_in_exec, torch.OutOfMemoryError)
    assert ip.user_ns["prof"].status == "oom"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--steps 0", "--steps"),
        ("--steps x", "--steps"),
        ("--max-seconds -1", "--max-seconds"),
        ("-o 1abc", "-o/--out"),
        ("--loader not-a-name", "--loader"),
        ("--export report.txt", "--export"),
        ("--no-such-option", "unrecognized"),
        ("stray words", "unexpected"),
    ],
)
def test_bad_option_is_a_usage_error_and_the_body_does_not_run(ip, capsys, line, message):
    ip.user_ns.pop("ran", None)
    result = run(ip, f"%%epochprofile {line}\nran = True\n", ok=False)
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert message in str(result.error_in_exec)
    assert "ran" not in ip.user_ns


def test_top_level_await_is_a_usage_error(ip):
    result = run(ip, "%%epochprofile\nimport asyncio\nawait asyncio.sleep(0)\n", ok=False)
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert "await" in str(result.error_in_exec)


def test_line_form(ip):
    run(ip, SETUP)
    run(
        ip,
        """
def train(model, loader):
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
""",
    )
    result = run(ip, "%epochprofile -o prof --text --no-lines train(model, train_loader)")
    assert result.result is None
    prof = ip.user_ns["prof"]
    assert prof.steps == 20 and prof.stop_reason == "end"


def test_line_form_keeps_quotes_and_negative_numbers(ip):
    run(ip, '%epochprofile --text --no-lines s = "a  b".split(" ") + [str(-1)]')
    assert ip.user_ns["s"] == ["a", "", "b", "-1"]


def test_magic_returns_nothing(ip):
    out_before = len(ip.user_ns["Out"])
    result = run(ip, "%%epochprofile --text --no-lines\nz = 3\n")
    assert result.result is None
    assert len(ip.user_ns["Out"]) == out_before


def test_default_display_is_the_report(ip, capsys):
    run(ip, SETUP)
    run(ip, "%%epochprofile --no-lines\n" + LOOP)
    assert "verdict:" in capsys.readouterr().out


def test_help_lists_the_options(ip):
    doc = ip.find_cell_magic("epochprofile").__doc__
    for option in (
        "--out",
        "--steps",
        "--max-seconds",
        "--loader",
        "--text",
        "--no-lines",
        "--export",
    ):
        assert option in doc


def test_export_json_and_trace(ip, tmp_path):
    run(ip, SETUP)
    path = tmp_path / "p.json"
    trace = tmp_path / "p.trace.json"
    run(ip, f"%%epochprofile --text --no-lines --export {path}\n" + LOOP)
    run(ip, f"%%epochprofile --text --no-lines -o prof --export {trace}\n" + LOOP)
    loaded = EpochProfile.load(path)
    assert loaded.steps == 20
    events = json.loads(trace.read_text())["traceEvents"]
    steps = [e for e in events if e.get("cat") == "step"]
    assert len(steps) == ip.user_ns["prof"].steps


def test_unload_and_reload(ip):
    run(ip, "%unload_ext epochmagic")
    result = run(ip, "%%epochprofile\nx = 1\n", ok=False)
    assert result.error_before_exec is not None or result.error_in_exec is not None
    run(ip, "%load_ext epochmagic")
    run(ip, "%%epochprofile --text --no-lines\nx = 1\n")


def test_max_seconds_stops_a_loop_without_loader(ip):
    run(
        ip,
        """
import torch, torch.nn as nn, time
w = nn.Linear(4, 1); o = torch.optim.SGD(w.parameters(), lr=0.1)
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines --max-seconds 0.3
for it in range(10_000):
    loss = w(torch.randn(8, 4)).pow(2).mean()
    o.zero_grad(); loss.backward(); o.step()
    time.sleep(0.01)
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.stop_reason == "seconds"
    assert prof.wall_s >= 0.3 and 0 < prof.steps < 10_000  # stopped at a step boundary
    assert prof.steps_per_epoch == 10_000 and prof.epoch_s > 10 * 0.01 * 100


@pytest.mark.slow
def test_hundred_runs_leave_no_growth(ip):
    run(ip, SETUP)
    cell = "%%epochprofile --text --no-lines -o prof\n" + LOOP

    def rss() -> int:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    for _ in range(10):
        run(ip, cell)
    gc.collect()
    threads, mem = threading.active_count(), rss()
    import io
    from contextlib import redirect_stdout

    with redirect_stdout(io.StringIO()):
        for _ in range(100):
            run(ip, cell)
    gc.collect()
    assert threading.active_count() == threads
    assert rss() - mem < 30 * 2**20


def test_modules_option_times_each_layer(ip):
    run(ip, SETUP)
    run(ip, "%%epochprofile -o prof --text --no-lines --modules\n" + LOOP)
    prof = ip.user_ns["prof"]
    rows = prof.evidence["module_forward_s"]
    assert rows and all(sec > 0 and calls >= prof.steps for _, sec, calls in rows)
    assert any("Linear" in name for name, _, _ in rows)
    backward = prof.evidence["module_backward_s"]
    assert backward and all(sec >= 0 for _, sec, _ in backward)
    assert any("Linear" in name for name, _, _ in backward)
    detail = next(f.detail for f in prof.findings if f.code == "model_compute")
    assert "slowest layers in forward" in detail and "in backward" in detail


def test_modules_option_tolerates_in_place_ops(ip):
    run(
        ip,
        SETUP + "\nmodel = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), "
        "nn.Linear(32, 4))\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n",
    )
    run(ip, "%%epochprofile -o prof --text --no-lines --modules\n" + LOOP)
    assert ip.user_ns["prof"].status == "ok" and ip.user_ns["prof"].evidence["module_backward_s"]


def test_evidence_counts_parameters_and_flops(ip):
    run(ip, SETUP)
    run(ip, "%%epochprofile -o prof --text --no-lines\n" + LOOP)
    ev = ip.user_ns["prof"].evidence
    model = ip.user_ns["model"]
    assert ev["params"] == sum(p.numel() for p in model.parameters())
    # a batch of 32: forward 2 x 32 x (16 x 32 + 32 x 4); backward the weight
    # gradients of both layers and the input gradient of the second only (the
    # batch needs none)
    forward = 2 * 32 * (16 * 32 + 32 * 4)
    assert ev["flops_forward"] == pytest.approx(forward)
    assert ev["flops_per_step"] == pytest.approx(2 * forward + 2 * 32 * 32 * 4)
    assert ev["labels"] and sum(ev["labels"].values()) == 640
    assert all(m.training for m in model.modules())  # FLOPs were counted in eval mode, restored


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_what_the_magic_does_and_runs_nothing(ip, capsys, flag):
    ip.user_ns["ran"] = False
    assert ip.run_cell(f"%%epochprofile {flag}\nran = True\n").success
    assert ip.run_cell(f"%epochprofile {flag}").success
    assert ip.user_ns["ran"] is False
    text = capsys.readouterr().out
    for said in (
        "--skip-epochs",
        "stops after its first epoch",
        "widget dashboard",
        "text, HTML and PNG",
        "This run is your training",
        "prof.rerun(",
        "prof.sweep(",
    ):
        assert said in text


def test_question_mark_help_says_it_too(ip):
    doc = ip.find_cell_magic("epochprofile").__doc__
    assert "stops after its first epoch" in doc and "widget dashboard" in doc
    assert "--batch-size" in doc and "effects" in doc and "stay" in doc
    assert "prof.rerun(" in doc and "prof.sweep(" in doc


def test_the_report_states_the_profilers_own_cost(ip):
    run(ip, SETUP)
    run(ip, "%%epochprofile -o prof --text --no-lines\n" + LOOP)
    prof = ip.user_ns["prof"]
    # about 2 us per probe event, and several events a step
    assert prof.steps * 4e-6 < prof.probe_cost_s < prof.wall_s
    assert "the profiler's own cost: ~" in prof.text()
