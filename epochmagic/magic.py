"""``%%epochprofile`` / ``%epochprofile``: parse options, run, report.

The magic's own run is the user's training: its effects stay, as running the
cell would leave them. Exceptions from the cell reach the user with their own
line in the traceback; a KeyboardInterrupt shows the partial profile and still
stops a Run All.
"""

from __future__ import annotations

import argparse
import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from epochmagic.analysis import gpu
from epochmagic.analysis.assemble import build_profile
from epochmagic.capture.sampler import INTERVAL_S
from epochmagic.diagnosis import evidence
from epochmagic.diagnosis.diagnose import diagnose
from epochmagic.model.profile import EpochProfile
from epochmagic.model.vocabulary import MAGIC_SETTINGS
from epochmagic.session.execute import Limits
from epochmagic.session.linemode import LINE_MODES, LineMode, attribute_sampled
from epochmagic.session.session import Session, compile_cell
from epochmagic.whatif.changes import scaler_note
from epochmagic.whatif.firstrun import FirstRun
from epochmagic.whatif.whatif import WHATIFS

EXPORT_SUFFIXES = (".trace.json", ".json", ".html")
# the magic's wording for its own settings (SETTINGS' doc where none is given)
SETTING_HELP = {
    "batch_size": "measure with the training loader rebuilt at batch size B",
    "workers": "measure with the training loader rebuilt with W worker processes",
    "precision": "measure with autocast in this precision around the model's forward",
}
F = TypeVar("F", bound=Callable[..., Any])


def setting_options(func: F) -> F:
    """``--batch-size``, ``--workers``, ``--precision``: one option for each
    of ``MAGIC_SETTINGS``, in their order."""
    for s in reversed(MAGIC_SETTINGS):  # IPython lists decorators bottom-up
        kwargs: dict[str, Any] = {"help": SETTING_HELP.get(s.name, f"measure with {s.doc}")}
        if s.kind is bool:
            kwargs["action"] = "store_true"
        elif s.choices:
            kwargs["choices"] = s.choices
        else:
            kwargs.update(type=s.kind, metavar=s.name[0].upper())
        func = argument(s.option, **kwargs)(func)
    return func


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
    @setting_options
    @argument(
        "--modules",
        action="store_true",
        help="also time each layer's forward and backward (costs overhead; off by default)",
    )
    @argument("--text", action="store_true", help="print the plain-text report")
    @argument(
        "--lines",
        choices=LINE_MODES,
        help="where the hot lines come from: sampled (the default) from the measured epoch "
        f"itself, every {INTERVAL_S * 1000:g} ms, library loops included; traced: exact hits from a short re-run "
        "of the cell and notebook functions under line_profiler, where a re-run is safe; "
        "off: none",
    )
    @argument("--no-lines", action="store_true", help="no line attribution (--lines off)")
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

        The hot lines are sampled from the measured epoch (``--lines``):
        the cell's lines, notebook functions' lines and the library loop's
        own lines (``transformers/trainer.py:...``), each with its share per
        phase; ``--lines traced`` gives exact hits from a short re-run.

        On CUDA the phases come from CUDA events (asynchronous GPU work is
        credited to the phase that launched it) and ``prof.gpu`` says how long
        the GPU sat idle, where the loop synchronised and the model FLOP
        utilisation; ``prof.compile`` says what torch.compile compiled.
        """
        __tracebackhide__ = True  # noqa: F841
        if _wants_help(line):
            print(self.epochprofile.__doc__)  # the options and this text; the cell does not run
            return
        options, source = _options_and_source(line, cell)
        args = parse_argstring(self.epochprofile, options)
        _validate(args)
        profile_source(
            self.shell,
            source,
            Options.parse(args),
            magic_line=line if cell is not None else None,
        )


def _options_and_source(line: str, cell: str | None) -> tuple[str, str]:
    """The option string and the code to profile: the cell body, or the
    statement after the options of the line form."""
    options, statement = split_statement(line)
    if cell is not None:
        if statement.strip():
            raise UsageError(f"%%epochprofile: unexpected arguments: {statement!r}")
        return line, cell
    if not statement.strip():
        raise UsageError(
            "%epochprofile needs a statement to profile, e.g. %epochprofile train(model, loader)"
        )
    return options, statement


def option_names(parser: argparse.ArgumentParser) -> tuple[frozenset[str], frozenset[str]]:
    """(options that take a value, flags) as the magic's parser declares them."""
    values: set[str] = set()
    flags: set[str] = set()
    for action in parser._actions:
        (flags if action.nargs == 0 else values).update(action.option_strings)
    return frozenset(values), frozenset(flags)


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
    if args.no_lines and args.lines not in (None, "off"):
        raise UsageError(f"--no-lines contradicts --lines {args.lines}: give one of them")
    if args.skip_epochs < 0:
        raise UsageError(f"--skip-epochs must be 0 or more, got {args.skip_epochs}")
    for setting in MAGIC_SETTINGS:
        value, least = getattr(args, setting.name), setting.minimum
        if least is not None and value is not None and value < least:
            bound = "at least 1" if least == 1 else f"{least} or more"
            raise UsageError(f"{setting.option} must be {bound}, got {value}")
    if args.export is not None and not args.export.endswith(EXPORT_SUFFIXES):
        raise UsageError(
            f"--export: cannot write {args.export!r}; use a .json (profile), "
            ".trace.json (Chrome/Perfetto trace) or .html (report page) file name"
        )


@dataclass(frozen=True)
class Options:
    """The magic's parsed options. ``loader_name`` is ``--loader``: a name in
    the namespace (the DataLoader itself is ``Session.train_loader``);
    ``settings``: the ``MAGIC_SETTINGS`` by name, None where not given."""

    out: str | None = None
    steps: int | None = None
    max_seconds: float | None = None
    skip_epochs: int = 0
    loader_name: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    modules: bool = False
    text: bool = False
    lines: LineMode = "sampled"
    export: str | None = None

    @classmethod
    def parse(cls, args: argparse.Namespace) -> Options:
        return cls(
            out=args.out,
            steps=args.steps,
            max_seconds=args.max_seconds,
            skip_epochs=args.skip_epochs,
            loader_name=args.loader,
            settings={s.name: getattr(args, s.name) for s in MAGIC_SETTINGS},
            modules=args.modules,
            text=args.text,
            lines="off" if args.no_lines else (args.lines or "sampled"),
            export=args.export,
        )

    @property
    def limits(self) -> Limits:
        return Limits(self.steps, self.max_seconds, self.skip_epochs, time_modules=self.modules)


def profile_source(
    shell: Any, source: str, options: Options | None = None, magic_line: str | None = None
) -> EpochProfile:
    """Run ``source`` once under the probes, report, and re-raise its error."""
    __tracebackhide__ = True  # noqa: F841
    options = options if options is not None else Options()
    cell = compile_cell(shell, source, magic_line)
    first = FirstRun.plan(shell.user_ns, options.loader_name, options.settings)
    session = Session(shell, cell, options.loader_name, whatifs=WHATIFS)
    run = session.run("measure", options.limits, first, sample=options.lines == "sampled")
    prof = build_profile(run, cell, shell.user_ns)
    first.describe(prof)
    prof.session = session
    if prof.steps:
        loader = session.train_loader
        prof.evidence = evidence.collect(run, loader, prof.phases["data"] / (prof.wall_s or 1))
        gpu.utilisation(prof.gpu, prof)
        precision = options.settings.get("precision")
        note = scaler_note(precision, str(prof.config.get("device")), prof.evidence["grad_scaler"])
        if note:
            prof.notes.append(note)
    lines = options.lines
    if lines == "sampled":  # "traced" where the sampler could not start and a re-run is safe
        lines = attribute_sampled(prof, run, shell, cell.filename)
    pending: BaseException | None = run.exc
    del run  # the run's iterators and probes are not needed past this point
    if lines == "traced" and prof.status == "ok" and prof.steps:  # so nothing is pending yet
        pending = _attribute_lines(prof, session, first)
    prof.findings = diagnose(prof)
    _report(prof, shell, options)
    if pending is not None:
        raise pending
    return prof


def _attribute_lines(prof: EpochProfile, session: Session, first: FirstRun) -> BaseException | None:
    """Line attribution after a measured run that went well; returns an
    interrupt of the traced run, for the magic to re-raise after the report."""
    from epochmagic.session.lines import attribute_lines  # line_profiler: only when used

    try:
        attribute_lines(prof, session, first)
    except KeyboardInterrupt as e:
        return e
    return None


def _report(prof: EpochProfile, shell: Any, options: Options) -> None:
    """Store, export and show the profile as the options ask."""
    if options.out:
        shell.user_ns[options.out] = prof
    if options.export:
        path = prof.export(options.export)
        prof.notes.append(f"wrote {path}")
    if options.text:
        print(prof.text())
    else:
        display(prof)


VALUE_OPTIONS, FLAG_OPTIONS = option_names(EpochMagics.epochprofile.parser)
