"""The widget report: tabs for the breakdown, timeline, lines, diagnosis and
what-ifs, built from built-in ipywidgets only (no custom JavaScript), so it
renders wherever ipywidgets does. Every callback runs inside an ``Output``
widget's ``capture()`` so its prints and errors land in the report."""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any

from epochmagic.report import charts, htmlreport
from epochmagic.report.textreport import at_stake, gpu_summary, header, verdict, why_first
from epochmagic.whatif import changes, whatif

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile

# Layout: nothing may be cut at a 1024 px wide window, where JupyterLab with its
# file browser open leaves the output about 560 px. Rows wrap instead of running
# past the right edge; descriptions take the width their text needs (ipywidgets
# cuts them at 80 px with an ellipsis otherwise); buttons are as wide as their
# label (148 px by default, which cut "Export Perfetto trace").
_FIT = {"description_width": "initial"}
_CELL = 260  # px: the narrowest what-if grid column; a control fills its column
_WRAP = {"flex_flow": "row wrap", "align_items": "center"}


def _button_layout(min_width: str = "120px") -> dict[str, str]:
    return {"width": "auto", "min_width": min_width, "flex": "0 0 auto"}


class _Bar:
    """The tqdm-like progress interface ``whatif`` drives, on an IntProgress."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget

    def reset(self, total: int) -> None:
        self.widget.max, self.widget.value = max(1, total), 0

    def set_description(self, text: str) -> None:
        self.widget.description = text[:40]

    def refresh(self) -> None:
        pass

    @property
    def n(self) -> int:
        return int(self.widget.value)

    @n.setter
    def n(self, value: int) -> None:
        self.widget.value = value


class Dashboard:
    def __init__(self, prof: EpochProfile) -> None:
        import ipywidgets as w

        self.prof = prof
        self.w = w
        self.results: list[EpochProfile] = []
        self.labels: list[str] = []
        self.out = w.Output(layout={"max_height": "240px", "overflow": "auto"})
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
                self._whatif(),
            ]
        )
        for i, title in enumerate(("Breakdown", "Timeline", "Lines", "Diagnosis", "What-if")):
            self.tabs.set_title(i, title)
        self.widget = w.VBox([head, self.tabs, self._exports(), self.out])

    # -- tabs ----------------------------------------------------------------------
    def _image(self, png: bytes) -> Any:
        return self.w.Image(value=png, format="png", layout={"max_width": "min(820px, 100%)"})

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
        return self.w.HTML(htmlreport.lines_html(self.prof, n=15))

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
                    layout=_button_layout(),
                )
                button.on_click(lambda _b, s=f.suggestion: self.try_it(s))
                parts.append(button)
            rows.append(
                w.VBox(parts, layout={"border_bottom": "1px solid #ddd", "padding": "4px 0"})
            )
        return w.VBox(rows)

    def _whatif(self) -> Any:
        w, cfg = self.w, self.prof.config
        cores = int(self.prof.environment.get("cpu_count") or os.cpu_count() or 1)
        bs = int(cfg.get("batch_size") or 0)
        sizes = sorted({2**i for i in range(0, 13)} | ({bs} if bs else set()))
        # each control fills its grid column (width auto), description as wide as its text
        fit: dict[str, Any] = {"style": _FIT, "layout": {"width": "auto"}}
        self.c_batch = w.SelectionSlider(
            options=sizes, value=bs if bs else 1, description="batch size", disabled=not bs, **fit
        )
        self.c_workers = w.IntSlider(
            value=int(cfg.get("workers") or 0), min=0, max=cores, description="workers", **fit
        )
        precisions = self._precisions()
        self.c_precision = w.Dropdown(
            options=precisions,
            value=cfg.get("precision") or "fp32",
            description="precision",
            style=_FIT,
            # an option that says why the device cannot run it needs the whole row
            # (grid_area, not grid_column: ipywidgets applies grid_area last, and
            # clearing it clears grid-column too)
            layout={"width": "auto", "grid_area": "auto / 1 / auto / -1"}
            if max(len(label) for label, _ in precisions) > 16
            else {"width": "auto"},
        )
        self.c_threads = w.IntSlider(
            value=int(cfg.get("threads") or 1), min=1, max=cores, description="threads", **fit
        )
        self.c_pin = w.Checkbox(
            value=bool(cfg.get("pin_memory")), description="pin_memory", indent=False, **fit
        )
        self.c_persistent = w.Checkbox(
            value=bool(cfg.get("persistent_workers")),
            description="persistent_workers",
            indent=False,
            **fit,
        )
        self.c_prefetch = w.IntSlider(
            value=int(cfg.get("prefetch_factor") or 2),
            min=1,
            max=8,
            description="prefetch",
            **fit,
        )
        self.c_fused = w.Checkbox(
            value=bool(cfg.get("fused")), description="fused optimizer", indent=False, **fit
        )
        most = self.prof.steps_per_epoch or 200
        self.c_steps = w.IntSlider(
            value=min(whatif.DEFAULT_STEPS, most),
            min=1,
            max=max(1, min(most, 500)),
            description="steps",
            **fit,
        )
        self.run_button = w.Button(
            description="Run", button_style="primary", layout=_button_layout()
        )
        self.fastest_button = w.Button(description="Find fastest", layout=_button_layout())
        # the description becomes "what-if <setting>" (up to 40 characters, ~330 px)
        # during a run: 420 px leave the bar room; where the buttons leave less, the
        # progress takes a line of its own
        self.progress = w.IntProgress(
            value=0,
            min=0,
            max=1,
            description="idle",
            style=_FIT,
            layout={"width": "auto", "flex": "1 1 420px"},
        )
        self.prediction = w.HTML()
        self.table = w.HTML(self._table())
        # hidden until there is a chart: an empty Image shows as a broken picture
        self.chart = w.Image(
            format="png", layout={"max_width": "min(820px, 100%)", "display": "none"}
        )
        self.run_button.on_click(lambda _b: self.run())
        self.c_precision.observe(lambda _c: self._check_precision(), names="value")
        self.fastest_button.on_click(lambda _b: self.find_fastest())
        self.controls = [
            self.c_batch,
            self.c_workers,
            self.c_precision,
            self.c_threads,
            self.c_pin,
            self.c_persistent,
            self.c_prefetch,
            self.c_fused,
            self.c_steps,
            self.run_button,
            self.fastest_button,
        ]
        grid = w.GridBox(
            self.controls[:9],
            layout={
                # as many columns as fit, at least _CELL px each (three at 1024 px in
                # Notebook 7, two in JupyterLab with its side panel open)
                "grid_template_columns": f"repeat(auto-fill, minmax({_CELL}px, 1fr))",
                "grid_gap": "2px 16px",
                "grid_auto_flow": "row dense",  # a full-width dropdown leaves no hole
                "align_items": "center",
            },
        )
        return w.VBox(
            [
                grid,
                w.HBox([self.run_button, self.fastest_button, self.progress], layout=_WRAP),
                self.prediction,
                self.table,
                self.chart,
            ]
        )

    def _precisions(self) -> list[tuple[str, str]]:
        """Precision options; one the device cannot run says why (a Dropdown
        cannot grey out single options, and a what-if would only say
        'unsupported' after the click)."""
        device = str(self.prof.config.get("device") or "cpu").split(":")[0]
        dtypes = {"bf16": "bfloat16", "fp16": "float16"}
        options = []
        for name in changes.PRECISIONS:
            label = name
            if name in dtypes:
                import torch

                try:
                    changes.check_precision(device, getattr(torch, dtypes[name]), name)
                except changes.Unsupported as e:
                    label = f"{name} (cannot run: {str(e).split(': ', 1)[-1][:40]})"
            options.append((label, name))
        return options

    def _check_precision(self) -> None:
        """A precision the device cannot run disables Run and says why."""
        label = next(
            (lbl for lbl, v in self.c_precision.options if v == self.c_precision.value), ""
        )
        blocked = "cannot run" in label
        self.run_button.disabled = blocked
        self.run_button.tooltip = label if blocked else ""
        if blocked:
            self.prediction.value = f"<b>{html.escape(label)}</b>: Run is disabled"

    def _exports(self) -> Any:
        w = self.w
        buttons = []
        for label, suffix in (
            ("JSON", ".json"),
            ("Perfetto trace", ".trace.json"),
            ("HTML page", ".html"),
        ):
            b = w.Button(description=f"Export {label}", layout=_button_layout("148px"))
            b.on_click(lambda _b, s=suffix: self.export(f"epochmagic_profile{s}"))
            buttons.append(b)
        return w.HBox(buttons, layout=_WRAP)

    # -- actions --------------------------------------------------------------------
    def setting(self) -> dict[str, Any]:
        s = {
            "workers": self.c_workers.value,
            "precision": self.c_precision.value,
            "threads": self.c_threads.value,
            "pin_memory": self.c_pin.value,
            "persistent_workers": self.c_persistent.value,
            "fused": self.c_fused.value,
        }
        if not self.c_batch.disabled:
            s["batch_size"] = self.c_batch.value
        if self.c_workers.value and (self.c_prefetch.value != 2 or self.prof.config.get("workers")):
            s["prefetch_factor"] = self.c_prefetch.value  # 2 is DataLoader's default
        return s

    def try_it(self, suggestion: dict[str, Any]) -> None:
        """Set the what-if controls to a finding's suggestion and run it."""
        mapping = {
            "batch_size": self.c_batch,
            "workers": self.c_workers,
            "precision": self.c_precision,
            "threads": self.c_threads,
            "pin_memory": self.c_pin,
            "persistent_workers": self.c_persistent,
            "prefetch_factor": self.c_prefetch,
            "fused": self.c_fused,
        }
        for key, value in suggestion.items():
            if key in mapping:
                mapping[key].value = value
        self.tabs.selected_index = 4
        self.run()

    def _busy(self, busy: bool) -> None:
        for c in self.controls:
            c.disabled = (
                busy if c is not self.c_batch else (busy or not self.prof.config.get("batch_size"))
            )
        if not busy:
            self._check_precision()

    def run(self) -> EpochProfile | None:
        with self.out:
            s = self.setting()
            label = whatif.label(whatif.resolve(self.prof, **s), self.prof)
            self._busy(True)
            try:
                result = whatif.rerun(
                    self.prof, steps=self.c_steps.value, _progress=_Bar(self.progress), **s
                )
            finally:
                self._busy(False)
            self._add(label, result)
            return result
        return None

    def find_fastest(self) -> None:
        with self.out:
            cores = int(self.prof.environment.get("cpu_count") or 1)
            grid = {"workers": sorted({0, *range(1, cores + 1)}), "threads": sorted({1, cores})}
            self._busy(True)
            try:
                for combo in [
                    {"workers": wk, "threads": th}
                    for wk in grid["workers"]
                    for th in grid["threads"]
                ]:
                    label = whatif.label(whatif.resolve(self.prof, **combo), self.prof)
                    r = whatif.rerun(
                        self.prof, steps=self.c_steps.value, _progress=_Bar(self.progress), **combo
                    )
                    self._add(label, r)
            finally:
                self._busy(False)

    def _add(self, label: str, result: EpochProfile) -> None:
        self.results.append(result)
        self.labels.append(label)
        pred = (result.predicted or {}).get("epoch_s")
        # chart and progress first: the table row is what tells a watcher the run is done
        self.chart.value = charts.comparison(self.prof, self.results, self.labels)
        self.chart.layout.display = None
        self.progress.description = "done"
        self.prediction.value = (
            f"<b>{html.escape(label)}</b>: predicted {pred:.2f} s before the run"
            if pred
            else f"<b>{html.escape(label)}</b>: no prediction"
        )
        self.table.value = self._table()

    def _table(self) -> str:
        base = self.prof.epoch_s
        rows = [
            "<tr><th>setting</th><th>epoch s</th><th>predicted s</th><th>samples/s</th>"
            "<th>speed-up</th><th>peak memory</th><th>status</th></tr>",
            f"<tr><td>baseline</td><td>{_f(base)}</td><td></td>"
            f"<td>{_f(self.prof.samples_per_s, 0)}</td><td>1.00x</td>"
            f"<td>{_mib(self.prof)}</td><td>{self.prof.status}</td></tr>",
        ]
        for label, r in zip(self.labels, self.results):
            speed = f"{base / r.epoch_s:.2f}x" if base and r.epoch_s else "-"
            status = r.status if r.status == "ok" else f"{r.status}: {html.escape(r.error or '')}"
            rows.append(
                f"<tr><td>{html.escape(label)}</td><td>{_f(r.epoch_s)}</td>"
                f"<td>{_f((r.predicted or {}).get('epoch_s'))}</td>"
                f"<td>{_f(r.samples_per_s, 0)}</td><td>{speed}</td><td>{_mib(r)}"
                f"{_predicted_mib(r)}</td>"
                f"<td>{status}</td></tr>"
            )
        return f"<table class='em-results'>{''.join(rows)}</table>"

    def export(self, path: str) -> None:
        with self.out:
            print(f"wrote {self.prof.export(path)}")


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _mib(p: EpochProfile) -> str:
    peak = p.memory.get("peak_bytes") if p.memory else None
    return f"{peak / 2**20:,.0f} MiB" if peak else "-"


def _predicted_mib(p: EpochProfile) -> str:
    peak = (p.predicted or {}).get("peak_bytes")
    return f" (predicted {peak / 2**20:,.0f})" if peak else ""
