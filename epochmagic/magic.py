"""``%%epochprofile`` / ``%epochprofile``: parse options, run, report.

The magic's own run is the user's training: its effects stay, as running the
cell would leave them. Exceptions from the cell reach the user with their own
line in the traceback; a KeyboardInterrupt shows the partial profile and still
stops a Run All.
"""

from __future__ import annotations

import keyword
import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from epochmagic.analysis import gpu
from epochmagic.analysis.assemble import build_profile
from epochmagic.diagnosis import evidence
from epochmagic.diagnosis.diagnose import diagnose
from epochmagic.model.profile import EpochProfile
from epochmagic.session.session import compile_cell, run_cell
from epochmagic.whatif.changes import scaler_note
from epochmagic.whatif.firstrun import FirstRun
from epochmagic.whatif.whatif import attach

VALUE_OPTIONS = {
    "-o",
    "--out",
    "--steps",
    "--max-seconds",
    "--loader",
    "--export",
    "--batch-size",
    "--workers",
    "--precision",
    "--skip-epochs",
}
FLAG_OPTIONS = {"--text", "--no-lines", "--modules", "-h", "--help"}
EXPORT_SUFFIXES = (".trace.json", ".json", ".html")


@magics_class
class EpochMagics(Magics):
    @magic_arguments()
    @argument("-o", "--out", metavar="VAR", help="store the EpochProfile in VAR")
    @argument(
        "--steps",
        type=int,
        metavar="N",
        help="stop after N training steps and extrapolate the epoch (N >= 1)",
    )
    @argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="stop at the next step boundary after S seconds (default: 60 when the "
        "cell has no DataLoader, none otherwise)",
    )
    @argument(
        "--skip-epochs",
        type=int,
        default=0,
        metavar="N",
        help="let the first N epochs run unmeasured (probes idle) and measure the next one: "
        "compilation and warm-up make the first epoch unlike the rest",
    )
    @argument(
        "--loader",
        metavar="NAME",
        help="name of the training loader when the cell iterates several",
    )
    @argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="measure with the training loader rebuilt at batch size B",
    )
    @argument(
        "--workers",
        type=int,
        metavar="W",
        help="measure with the training loader rebuilt with W worker processes",
    )
    @argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="measure with autocast in this precision around the model's forward",
    )
    @argument(
        "--modules",
        action="store_true",
        help="also time each layer's forward and backward (costs overhead; off by default)",
    )
    @argument("--text", action="store_true", help="print the plain-text report")
    @argument("--no-lines", action="store_true", help="skip line-level attribution")
    @argument("-h", "--help", action="store_true", help="print this help; nothing runs")
    @argument(
        "--export",
        metavar="PATH",
        help="also write the profile (.json), a Chrome/Perfetto trace (.trace.json) or a "
        "report page (.html)",
    )
    @line_cell_magic
    def epochprofile(self, line: str = "", cell: str | None = None) -> None:
        """Profile the first epoch of a PyTorch training cell: where the time
        goes (data, transfer, forward, backward, optimizer, eval, other).

        Cell form: ``%%epochprofile [options]`` above an unchanged training cell.
        Line form: ``%epochprofile [options] statement``, like ``%time``.

        The cell stops after its first epoch: when the training loader starts
        its second pass (or after ``--steps`` / ``--max-seconds``), silently,
        with a one-line note. This run is your training: its effects on the
        model and optimizer stay, also under ``--batch-size``, ``--workers``
        or ``--precision`` (the measured run itself uses that setting).

        The report is a widget dashboard (breakdown, timeline, lines,
        diagnosis, what-ifs, exports); where widgets cannot show (a terminal,
        nbconvert, GitHub) the same report comes as text, HTML and PNG, and
        ``--text`` prints the text. Keep the result with ``-o prof``; then
        ``prof.rerun(workers=2, ...)`` and ``prof.sweep(batch_size=[64, 128])``
        re-run the epoch under other settings and measure them, putting your
        model, optimizer, RNG and loader back exactly as they were.

        On CUDA the phases come from CUDA events (asynchronous GPU work is
        credited to the phase that launched it) and ``prof.gpu`` says how long
        the GPU sat idle, where the loop synchronised and the model FLOP
        utilisation; ``prof.compile`` says what torch.compile compiled.
        """
        __tracebackhide__ = True  # noqa: F841
        if _wants_help(line):
            print(self.epochprofile.__doc__)  # the options and this text; the cell does not run
            return
        if cell is None:
            options, statement = split_statement(line)
            if not statement.strip():
                raise UsageError(
                    "%epochprofile needs a statement to profile, e.g. "
                    "%epochprofile train(model, loader)"
                )
        else:
            options, statement = line, ""
            if split_statement(line)[1].strip():
                raise UsageError(
                    f"%%epochprofile: unexpected arguments: {split_statement(line)[1]!r}"
                )
        args = parse_argstring(self.epochprofile, options)
        _validate(args)
        profile_source(
            self.shell,
            cell if cell is not None else statement,
            magic_line=line if cell is not None else None,
            out=args.out,
            steps=args.steps,
            max_seconds=args.max_seconds,
            loader=args.loader,
            text=args.text,
            lines=not args.no_lines,
            export=args.export,
            batch_size=args.batch_size,
            workers=args.workers,
            precision=args.precision,
            modules=args.modules,
            skip_epochs=args.skip_epochs,
        )


def _wants_help(line: str) -> bool:
    """``-h`` / ``--help`` among the options (not inside a profiled statement)."""
    options, _ = split_statement(line)
    return any(tok in ("-h", "--help") for tok in options.split())


def split_statement(line: str) -> tuple[str, str]:
    """Split ``[options] statement`` without re-quoting the statement."""
    pos = 0
    expect_value = False
    for m in re.finditer(r"\S+", line):
        tok = m.group()
        if expect_value:
            expect_value = False
            pos = m.end()
            continue
        name = tok.split("=", 1)[0]
        if name in VALUE_OPTIONS:
            expect_value = "=" not in tok
        elif name not in FLAG_OPTIONS:
            if tok.startswith("-") and not re.match(r"-[\d.(]", tok):
                pos = m.end()
                continue
            return line[:pos], line[m.start() :]
        pos = m.end()
    return line[:pos], ""


def _validate(args: Any) -> None:
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise UsageError(f"--max-seconds must be positive, got {args.max_seconds:g}")
    for opt, value in (("-o/--out", args.out), ("--loader", args.loader)):
        if value is not None and (not value.isidentifier() or keyword.iskeyword(value)):
            raise UsageError(f"{opt}: {value!r} is not a valid variable name")
    if args.skip_epochs < 0:
        raise UsageError(f"--skip-epochs must be 0 or more, got {args.skip_epochs}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")
    if args.export is not None and not args.export.endswith(EXPORT_SUFFIXES):
        raise UsageError(
            f"--export: cannot write {args.export!r}; use a .json (profile), "
            ".trace.json (Chrome/Perfetto trace) or .html (report page) file name"
        )


def profile_source(
    shell: Any,
    source: str,
    *,
    magic_line: str | None = None,
    out: str | None = None,
    steps: int | None = None,
    max_seconds: float | None = None,
    loader: str | None = None,
    text: bool = False,
    lines: bool = True,
    export: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    precision: str | None = None,
    modules: bool = False,
    skip_epochs: int = 0,
) -> EpochProfile:
    """Run ``source`` once under the probes, report, and re-raise its error."""
    __tracebackhide__ = True  # noqa: F841
    cell = compile_cell(shell, source, magic_line)
    first = FirstRun.plan(shell.user_ns, loader, batch_size, workers, precision)
    with first.applied(shell.user_ns):
        run = run_cell(
            cell,
            shell.user_ns,
            max_steps=steps,
            max_seconds=max_seconds,
            loader_name=loader,
            time_modules=modules,
            skip_epochs=skip_epochs,
            **first.hooks(),
        )
    prof = build_profile(run, cell, shell.user_ns)
    first.describe(prof)
    attach(prof, shell, cell, run, first.original)
    if prof.steps:
        loader = first.original or (
            run.timeline.training_pass.loader if run.timeline.training_pass else None
        )
        prof.evidence = evidence.collect(run, loader, prof.phases["data"] / (prof.wall_s or 1))
        gpu.utilisation(prof.gpu, prof)
        note = scaler_note(precision, str(prof.config.get("device")), prof.evidence["grad_scaler"])
        if note:
            prof.notes.append(note)
    pending: BaseException | None = run.exc
    if lines and run.status == "ok" and prof.steps and prof.compile is not None:
        prof.notes.append(
            "no line attribution: the cell runs compiled code (torch.compile), and a traced "
            "re-run would compile it again (--no-lines hides this note)"
        )
    elif lines and run.status == "ok" and prof.steps:
        from epochmagic.session.lines import attribute_lines

        try:
            with first.applied(shell.user_ns):
                attribute_lines(prof, cell, shell, run.probes, first.hooks())
        except KeyboardInterrupt as e:
            pending = e
    del run
    prof.findings = diagnose(prof)
    if out:
        shell.user_ns[out] = prof
    if export:
        path = prof.export(export)
        prof.notes.append(f"wrote {path}")
    if text:
        print(prof.text())
    else:
        display(prof)
    if pending is not None:
        raise pending
    return prof
