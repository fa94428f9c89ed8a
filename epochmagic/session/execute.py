"""One execution of a compiled cell under the probes, turned into a ``RunResult``.

``Session.run`` (``epochmagic/session/session.py``) is the only caller: it
decides what the run may change and puts it back; this module only runs the
cell, classifies how it ended and never lets a probe outlive it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any

import torch

from epochmagic.analysis.run import RunResult
from epochmagic.analysis.timeline import Timeline, analyse
from epochmagic.capture import cudaclock
from epochmagic.capture.cudaclock import DeviceClock
from epochmagic.capture.devicetime import DeviceTime
from epochmagic.capture.probes import Probes, StopCell
from epochmagic.capture.recorder import Recorder
from epochmagic.capture.retime import samples_to_device_time, to_device_time
from epochmagic.capture.sampler import MAX_DEPTH, Sample, Sampler
from epochmagic.model.cell import Cell


@dataclass(frozen=True)
class Limits:
    """Where the probes stop the cell (``steps``, ``seconds``: at a step
    boundary), how many epochs run unmeasured first, and whether each layer's
    forward and backward is timed as well."""

    steps: int | None = None
    seconds: float | None = None
    skip_epochs: int = 0
    time_modules: bool = False


@dataclass(frozen=True)
class Hooks:
    """What the probes do on a run's behalf: hand out a rebuilt loader for the
    training loader (``substitute``), wrap root forwards (``autocast``), report
    progress at step boundaries (``on_step``); ``tracer`` is entered around
    the cell (line_profiler) and ``capture`` keeps its output off the screen.
    ``sampler`` samples the stack from the moment measuring starts to the
    run's end (sampled lines); its owner also stops it when the run's
    ``Patches`` close, so an error between the two cannot leave it running."""

    substitute: Callable[[Any], Any] | None = None
    autocast: Callable[[], Any] | None = None
    on_step: Callable[[int], None] | None = None
    tracer: Any = None
    capture: bool = False
    sampler: Sampler | None = None


def execute(
    cell: Cell, user_ns: dict[str, Any], loader_name: str | None, limits: Limits, hooks: Hooks
) -> RunResult:
    """Execute the cell once under the probes; never lets a probe outlive it.
    ``loader_name``: the training loader's name (``--loader``), if given."""
    __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
    clock = cudaclock.make_clock()
    rec = Recorder(clock=clock.now) if clock is not None else Recorder()

    def measure() -> None:
        """Start the clocks and the sampler: at the cell's start, or after
        --skip-epochs (the skipped epochs are not sampled)."""
        if clock is not None:
            clock.begin()
        rec.begin()
        if hooks.sampler is not None and not hooks.sampler.running:
            hooks.sampler.start()

    probes = Probes(
        rec,
        max_steps=limits.steps,
        max_seconds=limits.seconds,
        loader_name=loader_name,
        user_ns=user_ns,
        substitute=hooks.substitute,
        autocast=hooks.autocast,
        on_step=hooks.on_step,
        time_modules=limits.time_modules,
        device=clock,
        skip_epochs=limits.skip_epochs,
        on_measure=measure,
    )
    return _run(cell, user_ns, probes, clock, measure, limits, hooks)


def _run(
    cell: Cell,
    user_ns: dict[str, Any],
    probes: Probes,
    clock: DeviceClock | None,
    measure: Callable[[], None],
    limits: Limits,
    hooks: Hooks,
) -> RunResult:
    __tracebackhide__ = True  # noqa: F841
    rec = probes.rec
    output = None
    with _captured() if hooks.capture else contextlib.nullcontext() as cap:
        with probes:
            if limits.skip_epochs:
                rec.begin()  # host time only: the device clock starts with the measured epoch
            else:
                measure()
            try:
                status, reason, exc = _exec(cell, user_ns, hooks.tracer)
            finally:
                rec.finish()
                sampled = _stop(hooks.sampler)
                device_time = clock.finish() if clock is not None else None
            iterators = [p.iterator for p in probes.passes.values() if p.iterator is not None]
            compiled = probes.compile_watch.result()
            intervals = list(probes.compile_watch.intervals)
    if reason == "end" and probes.stopped is not None:
        # code the cell called caught StopCell and returned normally (Ignite's
        # EXCEPTION_RAISED handlers, a bare ``except:``): the stop still happened
        reason = probes.stopped.reason
    if cap is not None:
        output = cap.stdout + cap.stderr
    end = probes.stop_time if probes.stop_time is not None else rec.end
    sampler = hooks.sampler
    samples = _in_cell(sampler.samples, cell.code, end) if sampler is not None and sampled else []
    if device_time is not None:
        end = to_device_time(rec, probes, device_time, end)
        intervals = [(device_time.at(a), device_time.at(b)) for a, b in intervals]
        samples = samples_to_device_time(samples, device_time)
    return RunResult(
        status,
        reason,
        _from_cell(exc, cell.filename) if exc is not None else None,
        _timeline(rec, probes, end, device_time),
        probes,
        output,
        iterators,
        rec.cpu_end - rec.cpu_start,
        clock,
        compiled,
        intervals,
        samples,
        sampler.interval_s if sampler is not None and sampled else None,
        sampler.why_not if sampler is not None else None,
    )


def _in_cell(samples: list[Sample], code: CodeType, end: float) -> list[Sample]:
    """The samples up to the run's ``end`` (not the stop unwinding the cell),
    each stack cut at the cell's own frame: the frames above it are IPython's
    and the magic's (the ``%%epochprofile`` line's cell among them), not the
    cell's. A sample outside the cell (the probes starting) keeps no frames; a
    stack too deep to reach the cell's frame is kept whole."""
    out = []
    for s in samples:
        if s.t > end:
            break
        stack = s.stack
        outer = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] is code), None)
        if outer is not None:
            stack = stack[: outer + 1]
        elif len(stack) < MAX_DEPTH:
            stack = ()
        out.append(s._replace(stack=stack))
    return out


def _stop(sampler: Sampler | None) -> bool:
    """Stop the sampler at the run's end; whether it had been sampling."""
    if sampler is None:
        return False
    running = sampler.running
    sampler.stop()
    return running


def _exec(
    cell: Cell, user_ns: dict[str, Any], tracer: Any
) -> tuple[str, str, BaseException | None]:
    """Run the cell's code; (status, stop reason, the exception it raised)."""
    __tracebackhide__ = True  # noqa: F841
    try:
        with tracer if tracer is not None else contextlib.nullcontext():
            exec(cell.code, user_ns)
    except StopCell as stop:
        stop.__traceback__ = None
        return "ok", stop.reason, None
    except KeyboardInterrupt as e:
        return "interrupted", "interrupted", e
    except torch.OutOfMemoryError as e:
        return "oom", "error", e
    except BaseException as e:  # noqa: BLE001 (the user's error, re-raised by the magic)
        return ("oom" if _is_cpu_oom(e) else "error"), "error", e
    return "ok", "end", None


def _timeline(
    rec: Recorder, probes: Probes, end: float, device_time: DeviceTime | None
) -> Timeline:
    return analyse(
        rec.events,
        rec.start,
        end,
        trained_param_ids=probes.trained_param_ids(),
        clock_opt=probes.clock_opt,
        busy=device_time.busy if device_time is not None else None,
        busy_estimate=device_time.busy_estimate if device_time is not None else None,
    )


@contextlib.contextmanager
def _captured() -> Iterator[Any]:
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        yield cap


def _is_cpu_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, RuntimeError)) and (
        isinstance(e, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(e)
    )


def _from_cell(exc: BaseException, filename: str) -> BaseException:
    """Drop epochmagic's own frames above the cell from the traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb
    return exc
