"""The widget report: tabs for the breakdown, timeline, lines, diagnosis and
what-ifs, built from built-in ipywidgets only (no custom JavaScript), so it
renders wherever ipywidgets does. Every callback runs inside an ``Output``
widget's ``capture()`` so its prints and errors land in the report. The
What-if tab is ``epochmagic/report/whatifpanel.py``."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from epochmagic.diagnosis import linephases
from epochmagic.report import charts, htmlreport
from epochmagic.report.textreport import at_stake, gpu_summary, header, verdict, why_first
from epochmagic.report.whatifpanel import WhatIfPanel
from epochmagic.report.widgets import FIT, IMAGE, WRAP, button_layout

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile

TITLES = ("Breakdown", "Timeline", "Lines", "Diagnosis", "What-if")


def phase_label(view: linephases.PhaseLines) -> str:
    """A phase menu entry: the phase and its share of the epoch."""
    return f"{view.phase} ({linephases.percent(view.share)} of the epoch)"


class Dashboard(WhatIfPanel):
    def __init__(self, prof: EpochProfile) -> None:
        import ipywidgets as w

        super().__init__(prof, w, w.Output(layout={"max_height": "240px", "overflow": "auto"}))
        self.lines_menu: Any = None  # the Lines tab's phase menu (sampled lines only)
        gpu = gpu_summary(prof)
        why = why_first(prof)
        head = w.HTML(
            f"<b>{html.escape(header(prof))}</b><br><span style='font-size:15px'>"
            f"{html.escape(verdict(prof))}</span>"
            + (
                f"<br><span style='color:#555'>first finding: {html.escape(why)}</span>"
                if why
                else ""
            )
            + (f"<br><span style='color:#555'>{html.escape(gpu)}</span>" if gpu else "")
        )
        self.tabs = w.Tab(
            children=[
                self._breakdown(),
                self._timeline(),
                self._lines(),
                self._diagnosis(),
                self.whatif_tab(),
            ]
        )
        for i, title in enumerate(TITLES):
            self.tabs.set_title(i, title)
        self.widget = w.VBox([head, self.tabs, self._exports(), self.out])

    # -- tabs ----------------------------------------------------------------------
    def _image(self, png: bytes) -> Any:
        return self.w.Image(value=png, format="png", layout=IMAGE)

    def _breakdown(self) -> Any:
        parts = [self.w.HTML(htmlreport.phase_table(self.prof))]
        if self.prof.steps:
            parts.insert(0, self._image(charts.breakdown(self.prof)))
        return self.w.VBox(parts)

    def _timeline(self) -> Any:
        if self.prof.steps < 2:
            return self.w.HTML("<p>Fewer than two steps: no timeline.</p>")
        return self._image(charts.timeline(self.prof))

    def _lines(self) -> Any:
        """Traced lines: a table. Sampled lines: a phase menu over a table, all
        lines with the per-phase view, or one phase's lines."""
        table = self.w.HTML(htmlreport.lines_html(self.prof, n=15))
        views = linephases.per_phase(self.prof, limit=15, every=True)
        if not views:
            return table
        menu = self.w.Dropdown(
            options=[("all lines", ""), *((phase_label(v), v.phase) for v in views)],
            value="",
            description="phase",
            style=FIT,
        )

        def show(_change: Any) -> None:
            with self.out:
                chosen = [v for v in views if v.phase == menu.value]
                table.value = (
                    htmlreport.phases_html(self.prof, chosen)
                    if chosen
                    else htmlreport.lines_html(self.prof, n=15)
                )

        menu.observe(show, names="value")
        self.lines_menu = menu
        return self.w.VBox([menu, table])

    def _diagnosis(self) -> Any:
        w = self.w
        if not self.prof.findings:
            return w.HTML("<p>No findings.</p>")
        rows = []
        for f in self.prof.findings:
            parts = [
                w.HTML(
                    f"<b>{html.escape(f.title)}</b> <span style='color:#666'>"
                    f"[{f.code}, {html.escape(at_stake(f))}]</span><br>"
                    f"{html.escape(f.detail)}"
                )
            ]
            if f.fix:
                parts.append(
                    w.Textarea(
                        value=f.fix,
                        rows=min(4, f.fix.count("\n") + 1),
                        layout={"width": "auto", "max_width": "720px"},
                        description="fix",
                    )
                )
            if f.suggestion:
                button = w.Button(
                    description="Try it",
                    tooltip=", ".join(f"{k}={v}" for k, v in f.suggestion.items()),
                    layout=button_layout(),
                )
                button.on_click(lambda _b, s=f.suggestion: self.try_it(s))
                parts.append(button)
            rows.append(
                w.VBox(parts, layout={"border_bottom": "1px solid #ddd", "padding": "4px 0"})
            )
        return w.VBox(rows)

    def _exports(self) -> Any:
        w = self.w
        buttons = []
        for label, suffix in (
            ("JSON", ".json"),
            ("Perfetto trace", ".trace.json"),
            ("HTML page", ".html"),
        ):
            b = w.Button(description=f"Export {label}", layout=button_layout("148px"))
            b.on_click(lambda _b, s=suffix: self.export(f"epochmagic_profile{s}"))
            buttons.append(b)
        return w.HBox(buttons, layout=WRAP)

    # -- actions --------------------------------------------------------------------
    def try_it(self, suggestion: dict[str, Any]) -> None:
        """Set the what-if controls to a finding's suggestion and run it."""
        self.apply(suggestion)
        self.tabs.selected_index = TITLES.index("What-if")
        self.run()

    def export(self, path: str) -> None:
        with self.out:
            print(f"wrote {self.prof.export(path)}")
