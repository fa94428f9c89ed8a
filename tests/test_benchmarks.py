"""The GPU device check cannot run in CI (no GPU there): its ``--smoke`` mode
runs the same cells on the CPU, so the script a lent GPU machine will run is
kept working, and none of its rows silently disappears."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ROWS = (
    # T: per-phase truth
    "T data share vs truth",
    "T transfer share vs truth",
    "T forward share vs truth",
    "T backward share vs truth",
    "T optimizer share vs truth",
    "T other share vs truth",
    # A: heavy forward + .item()
    "A forward share of the step",
    "A other share of the step",
    "A syncs per step",
    "A host waited / GPU idle",
    "A MFU",
    "S sync at its line: .item()",
    "S sync at its line: .cpu()",
    "S sync at its line: .tolist()",
    "S sync at its line: bool(tensor)",
    "S sync at its line: print(tensor)",
    "S sync at its line: nonzero",
    "S blocking copy at its line",
    # B: input-bound
    "B data share of the step",
    "B findings",
    # C: pinned vs pageable
    "C transfer, pageable",
    "C transfer, pinned",
    "C pinned transfer speed-up",
    # D: precision
    "D fp32 baseline",
    "D bf16 speed-up over fp32",
    "D bf16 MFU",
    "D bf16 MFU agrees across precisions",
    "D fp16 speed-up over fp32",
    "D fp16 MFU",
    "D fp16 MFU agrees across precisions",
    # E, F: distortion and the clock
    "E distortion, GPU-bound loop",
    "E findings",
    "F distortion, host-bound loop",
    "E clock reading cost",
    # H: Hugging Face Trainer (a skip message where transformers is missing)
    "H Trainer status and steps",
    "H Trainer phases",
    # G: torch.compile
    "G compiled: graph breaks, profiled vs plain",
    "G compiled: unique graphs, profiled vs plain",
    "G compiled: recompiles, prof.compile vs plain",
    "G compiled: steps",
    "G compiled: compile seconds",
    "G compiled: compile finding",
    "G compiled --skip-epochs 1",
    "G reduce-overhead (CUDA graphs)",
)


def test_gpu_check_smoke_runs_every_scenario():
    done = subprocess.run(
        [sys.executable, "gpu_check.py", "--smoke"],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=300,  # about 20 s on 2 idle cores; the margin is for a loaded CI runner
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    table = out[out.index("\ncheck ") :]  # the final table, not the progress lines
    for row in ROWS:
        assert row in table, row
    assert "FAIL" not in out and "PASS" not in out  # no verdicts off the GPU
