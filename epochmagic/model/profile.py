"""``EpochProfile``: the result of one measured epoch (docs/design.md §3).

Plain data plus (de)serialisation. The report renders it and never recomputes
numbers; saved profiles carry ``schema_version`` so they stay loadable.
"""

from __future__ import annotations

import inspect
import json
import statistics
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from epochmagic.model import registry
from epochmagic.model.gpurecord import GpuRecord
from epochmagic.model.vocabulary import PHASES, SETTINGS

# 2: `compile`; 3: `Finding.saving`, `saving_source`; 4: sampled lines (`lines_source`,
# `LineStat.ticks`, `phase_ticks`, `wait_ticks`; `hits` None when sampled)
SCHEMA_VERSION = 4
# never saved: the link to a live session, and images rendered for display
NOT_SAVED = ("session", "rendered")


class SessionHandle(Protocol):
    """What a live profile asks of the session that ran its cell: only
    ``rerun`` and ``sweep`` use it (``session.session.Session`` is one)."""

    def rerun(self, base: EpochProfile, steps: int | None, **changes: Any) -> EpochProfile: ...

    def sweep(self, base: EpochProfile, steps: int | None, **grid: Any) -> list[EpochProfile]: ...


@dataclass(frozen=True)
class LineStat:
    """One source line: of the cell, of a notebook-defined function it calls,
    or (sampled) of a library loop it runs, with a short path
    (``transformers/trainer.py``).

    ``time_s`` includes the time of calls made from the line. Sampled
    (``prof.lines_source == "sampled"``): ``hits`` is None, ``ticks`` is the
    number of samples on the line, ``phase_ticks`` the samples per phase, and
    ``wait_ticks`` the samples taken while the host waited on the device.
    Traced (``"traced"``, a short separate run under line_profiler): ``hits``
    counts executions and the tick fields stay empty.
    """

    filename: str
    lineno: int
    source: str
    hits: int | None
    time_s: float
    ticks: int = 0
    phase_ticks: dict[str, int] = field(default_factory=dict)
    wait_ticks: int = 0


@dataclass(frozen=True)
class Finding:
    """A diagnosed cause: ``share`` of the epoch it is about, the ``rerun``
    keyword arguments that test it (``suggestion``), the code change (``fix``)
    and ``saving``: the fraction of the epoch the fix is expected to save
    (None when nothing says how much; ``saving_source`` "predicted" at
    diagnosis, "measured" once a ``rerun`` of exactly the suggestion ran)."""

    code: str
    title: str
    detail: str
    share: float
    suggestion: dict[str, Any] = field(default_factory=dict)
    fix: str = ""
    saving: float | None = None
    saving_source: str | None = None


@dataclass
class EpochProfile:
    wall_s: float = 0.0
    epoch_s: float | None = None
    steps: int = 0
    steps_per_epoch: int | None = None
    samples: int = 0
    samples_per_s: float | None = None
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    outside_steps_s: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    gpu: GpuRecord | None = None  # a plain dict with its keys once loaded from JSON
    step_times: list[float] = field(default_factory=list)
    step_phases: list[dict[str, float]] = field(default_factory=list)
    throughput_unit: str = "samples"
    tokens_per_s: float | None = None
    lines: list[LineStat] = field(default_factory=list)
    lines_steps: int = 0
    lines_source: str | None = None  # "sampled", "traced" or None (no lines)
    findings: list[Finding] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    predicted: dict[str, Any] | None = None
    output: str | None = None
    # Beyond the core fields (docs/design.md §3): what the report needs to explain itself.
    step_starts_s: list[float] = field(default_factory=list)  # offsets from the run start
    stop_reason: str | None = None  # "epoch", "steps", "seconds", "end", "interrupted", "error"
    step_clock: str = "none"  # "loader", "optimizer", "backward" or "none"
    training_loader: str | None = None  # the name the loader has in the namespace
    skipped_steps: int = 0  # optimizer steps a GradScaler skipped
    notes: list[str] = field(default_factory=list)
    cell: str = ""  # source of the profiled cell
    cpu_s: float | None = None  # process CPU seconds during the run (all threads)
    evidence: dict[str, Any] = field(default_factory=dict)  # what the findings cite
    # torch.compile during the run, as deltas of torch's own counters (None when
    # nothing compiled and no compiled code ran): compile_s, compiles,
    # recompiles, graph_breaks, recompile_reasons, graph_break_reasons,
    # compiled_calls, and step_compile_s (compile seconds inside each step)
    compile: dict[str, Any] | None = None
    # the profiler's own cost in this run, estimated: probe events x their
    # measured cost (and device readings x theirs on CUDA); see assemble.probe_cost
    probe_cost_s: float | None = None
    # Not data: the declared link back to the cell (None when loaded, built by
    # hand or released) and a cache of rendered charts; neither is saved.
    session: SessionHandle | None = field(default=None, repr=False, compare=False)
    rendered: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- derived -------------------------------------------------------------
    @property
    def step_s(self) -> float | None:
        """Median step time (seconds)."""
        return statistics.median(self.step_times) if self.step_times else None

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, session=None, rendered={}))
        for name in NOT_SAVED:
            del d[name]
        d["schema_version"] = SCHEMA_VERSION
        return d

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_jsonable)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (``.json``); ``EpochProfile.load`` reads it."""
        path = Path(path)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochProfile:
        version = d.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"profile schema {version} is newer than this epochmagic ({SCHEMA_VERSION}); upgrade"
            )
        known = {f.name for f in fields(cls)} - set(NOT_SAVED)
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["lines"] = [LineStat(**x) for x in d.get("lines", [])]
        if version < 4 and kwargs["lines"]:  # before sampling, every line was traced
            kwargs["lines_source"] = "traced"
        kwargs["findings"] = [Finding(**x) for x in d.get("findings", [])]
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> EpochProfile:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_chrome_trace(self, path: str | Path) -> Path:
        """Write a Chrome/Perfetto trace: one slice per phase per step."""
        path = Path(path)
        path.write_text(json.dumps(registry.get("chrome_trace")(self)), encoding="utf-8")
        return path

    def export(self, path: str | Path) -> Path:
        """Write by suffix: ``.trace.json`` (trace), ``.json`` (profile) or
        ``.html`` (report page)."""
        name = str(path)
        if name.endswith(".html"):
            return self.to_html(path)
        if name.endswith(".trace.json"):
            return self.to_chrome_trace(path)
        if name.endswith(".json"):
            return self.save(path)
        raise ValueError(f"cannot export to {name!r}: use a .json, .trace.json or .html file name")

    # -- what-ifs --------------------------------------------------------------
    def rerun(self, *args: Any, **changes: Any) -> EpochProfile:
        """Measure the same cell under another setting (``None`` keeps this
        profile's value); models, optimizers, RNGs and loaders are restored
        afterwards. ``steps`` defaults to 30 (or the epoch, if shorter) and the
        result's ``epoch_s`` extrapolates to the full epoch. The keywords are
        ``epochmagic.model.vocabulary.SETTINGS``:
        """
        bound = _RERUN.bind(self, *args, **changes).arguments
        bound.pop("self")
        steps = bound.pop("steps", None)
        return self._live().rerun(self, steps, **bound)

    def sweep(self, steps: int | None = None, **grid: Any) -> list[EpochProfile]:
        """Run a grid of what-ifs (lists for any ``rerun`` keyword), e.g.
        ``sweep(workers=[0, 2], threads=[1, 2])``; ranked fastest first."""
        return self._live().sweep(self, steps, **grid)

    def release(self) -> None:
        """Drop the link to the session: the shell, models and loaders it
        holds can be freed. ``rerun`` / ``sweep`` then ask for a new profile."""
        self.session = None

    def _live(self) -> SessionHandle:
        if self.session is None:
            raise RuntimeError(
                "this profile has no cell to re-run (it was loaded from a file, built by hand "
                "or released); run the cell again with %%epochprofile -o prof"
            )
        return self.session

    # -- display ---------------------------------------------------------------
    def text(self) -> str:
        return str(registry.get("text")(self))

    def __repr__(self) -> str:
        epoch = f"{self.epoch_s:.3f}s" if self.epoch_s is not None else "unknown"
        return (
            f"<EpochProfile status={self.status} epoch_s={epoch} steps={self.steps}"
            f" wall_s={self.wall_s:.3f}>"
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget dashboard where a frontend shows widgets; ``text/html``
        and ``image/png`` for nbconvert and GitHub; ``text/plain`` for terminals."""
        bundle: dict[str, Any] = {
            "text/plain": self.text(),
            "text/html": registry.get("html_report")(self),
        }
        if self.steps:
            bundle["image/png"] = registry.get("breakdown_png")(self)
        try:
            view = self.dashboard()._repr_mimebundle_()
        except Exception:  # noqa: BLE001 (no widgets here: the other formats stand)
            view = {}
        bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        return bundle

    def dashboard(self) -> Any:
        """The ipywidgets report (with live what-if controls when the cell can
        be re-run)."""
        return registry.get("dashboard")(self)

    def to_html(self, path: str | Path) -> Path:
        """A static report page (HTML with the charts inline; no network needed)."""
        path = Path(path)
        path.write_text(registry.get("html_page")(self), encoding="utf-8")
        return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _rerun_signature() -> inspect.Signature:
    """``rerun(batch_size=None, workers=None, precision=None, steps=None, ...)``:
    the settings in their order, ``steps`` after the magic's own three (the
    order the keywords always had, so positional calls keep their meaning)."""
    names = [s.name for s in SETTINGS]
    cut = sum(1 for s in SETTINGS if s.magic_option)
    kinds = {s.name: s.kind.__name__ for s in SETTINGS}
    p = inspect.Parameter
    return inspect.Signature(
        [
            p("self", p.POSITIONAL_OR_KEYWORD),
            *(
                p(
                    n,
                    p.POSITIONAL_OR_KEYWORD,
                    default=None,
                    annotation=f"{kinds.get(n, 'int')} | None",
                )
                for n in [*names[:cut], "steps", *names[cut:]]
            ),
        ],
        return_annotation="EpochProfile",
    )


_RERUN = _rerun_signature()
EpochProfile.rerun.__dict__["__signature__"] = _RERUN  # what inspect.signature and help() show
EpochProfile.rerun.__doc__ = (EpochProfile.rerun.__doc__ or "") + "".join(
    f"\n        ``{s.name}``: {s.doc}" for s in SETTINGS
)
