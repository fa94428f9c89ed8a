"""What one run of a cell recorded, as the session hands it to the analysis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from epochmagic.analysis.timeline import Timeline
from epochmagic.capture.cudaclock import DeviceClock
from epochmagic.capture.probes import Probes
from epochmagic.capture.sampler import Sample


@dataclass
class RunResult:
    status: str  # "ok", "interrupted", "error" or "oom"
    stop_reason: str  # "epoch", "steps", "seconds", "end", "interrupted" or "error"
    exc: BaseException | None
    timeline: Timeline
    probes: Probes
    output: str | None = None
    iterators: list[Any] = field(default_factory=list)
    cpu_s: float = 0.0  # process CPU time during the run
    device: DeviceClock | None = None  # the CUDA clock the run was timed with
    compile: dict[str, Any] | None = None  # torch.compile during the run (compilewatch)
    compile_intervals: list[tuple[float, float]] = field(default_factory=list)
    # the stack samples of the measured epoch, on the timeline's clock (lines
    # sampled); the sampler's interval once it ran, or why it could not start
    samples: list[Sample] = field(default_factory=list)
    sample_interval_s: float | None = None
    sampler_why_not: str | None = None
