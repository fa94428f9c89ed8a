"""The GPU device check cannot run in CI (no GPU there): its ``--smoke`` mode
runs the same cells on the CPU, so the script a lent GPU machine will run is
kept working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_runs_every_scenario():
    done = subprocess.run(
        [sys.executable, "gpu_check.py", "--smoke"],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for row in (
        "A forward share of the step",
        "A syncs per step",
        "B data share of the step",
        "C transfer, pinned",
        "D bf16 speed-up over fp32",
        "D fp16 speed-up over fp32",
        "E distortion, GPU-bound loop",
        "F distortion, host-bound loop",
    ):
        assert row in out, row
    assert "FAIL" not in out and "PASS" not in out  # no verdicts off the GPU
