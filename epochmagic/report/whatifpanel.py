"""The dashboard's What-if tab: the controls (generated from
``vocabulary.SETTINGS`` by ``epochmagic/report/controls.py``), Run and Find
fastest, the progress, the prediction, the results table and the comparison
chart. It calls ``whatif.rerun`` rather than ``prof.rerun`` to drive its own
progress bar."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from epochmagic.report import charts, controls
from epochmagic.report.widgets import (
    CELL,
    FIT,
    IMAGE,
    WRAP,
    ProgressBar,
    button_layout,
    number,
    peak_mib,
    predicted_mib,
)
from epochmagic.whatif import whatif

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile


def _alias(name: str) -> Any:
    """``d.c_batch``: the names the controls had before SETTINGS generated them."""
    return property(lambda self: self.inputs[name])


class WhatIfPanel:
    """The what-if controls and results; ``Dashboard`` is one (its tests and
    users reach ``d.c_batch``, ``d.run_button``, ``d.results`` directly)."""

    c_batch = _alias("batch_size")
    c_workers = _alias("workers")
    c_precision = _alias("precision")
    c_threads = _alias("threads")
    c_pin = _alias("pin_memory")
    c_persistent = _alias("persistent_workers")
    c_prefetch = _alias("prefetch_factor")
    c_fused = _alias("fused")

    def __init__(self, prof: EpochProfile, w: Any, out: Any) -> None:
        self.prof, self.w, self.out = prof, w, out
        self.results: list[EpochProfile] = []
        self.labels: list[str] = []
        self.inputs = controls.build(w, prof)  # setting name -> control
        self.unavailable = {name for name, c in self.inputs.items() if c.disabled}
        most = prof.steps_per_epoch or 200
        self.c_steps = w.IntSlider(
            value=min(whatif.DEFAULT_STEPS, most),
            min=1,
            max=max(1, min(most, 500)),
            description="steps",
            style=FIT,
            layout={"width": "auto"},
        )
        self.run_button = w.Button(
            description="Run", button_style="primary", layout=button_layout()
        )
        self.fastest_button = w.Button(description="Find fastest", layout=button_layout())
        # the description becomes "what-if <setting>" (up to 40 characters, ~330 px)
        # during a run: 420 px leave the bar room; where the buttons leave less, the
        # progress takes a line of its own
        self.progress = w.IntProgress(
            value=0,
            min=0,
            max=1,
            description="idle",
            style=FIT,
            layout={"width": "auto", "flex": "1 1 420px"},
        )
        self.prediction = w.HTML()
        self.table = w.HTML(self._table())
        # hidden until there is a chart: an empty Image shows as a broken picture
        self.chart = w.Image(format="png", layout={**IMAGE, "display": "none"})
        self.run_button.on_click(lambda _b: self.run())
        self.inputs["precision"].observe(lambda _c: self._check_precision(), names="value")
        self.fastest_button.on_click(lambda _b: self.find_fastest())
        self.controls = [*self.inputs.values(), self.c_steps, self.run_button, self.fastest_button]

    def whatif_tab(self) -> Any:
        w = self.w
        grid = w.GridBox(
            self.controls[:-2],
            layout={
                # as many columns as fit, at least CELL px each (three at 1024 px in
                # Notebook 7, two in JupyterLab with its side panel open)
                "grid_template_columns": f"repeat(auto-fill, minmax({CELL}px, 1fr))",
                "grid_gap": "2px 16px",
                "grid_auto_flow": "row dense",  # a full-width dropdown leaves no hole
                "align_items": "center",
            },
        )
        buttons = w.HBox([self.run_button, self.fastest_button, self.progress], layout=WRAP)
        return w.VBox([grid, buttons, self.prediction, self.table, self.chart])

    def _check_precision(self) -> None:
        """A precision the device cannot run disables Run and says why."""
        c = self.inputs["precision"]
        label = next((lbl for lbl, v in c.options if v == c.value), "")
        blocked = "cannot run" in label
        self.run_button.disabled = blocked
        self.run_button.tooltip = label if blocked else ""
        if blocked:
            self.prediction.value = f"<b>{html.escape(label)}</b>: Run is disabled"

    # -- actions --------------------------------------------------------------------
    def setting(self) -> dict[str, Any]:
        return controls.chosen(self.inputs, self.unavailable, self.prof.config)

    def apply(self, suggestion: dict[str, Any]) -> None:
        """Set the controls to a finding's suggestion."""
        for key, value in suggestion.items():
            if key in self.inputs:
                self.inputs[key].value = value

    def _busy(self, busy: bool) -> None:
        fixed = [self.inputs[name] for name in self.unavailable]  # disabled for good
        for c in self.controls:
            c.disabled = busy or any(c is f for f in fixed)
        if not busy:
            self._check_precision()

    def run(self) -> EpochProfile | None:
        with self.out:
            s = self.setting()
            label = whatif.label(whatif.resolve(self.prof, **s), self.prof)
            self._busy(True)
            try:
                result = whatif.rerun(
                    self.prof, steps=self.c_steps.value, _progress=ProgressBar(self.progress), **s
                )
            finally:
                self._busy(False)
            self._add(label, result)
            return result
        return None

    def find_fastest(self) -> None:
        with self.out:
            cores = int(self.prof.environment.get("cpu_count") or 1)
            combos = [
                {"workers": wk, "threads": th}
                for wk in sorted({0, *range(1, cores + 1)})
                for th in sorted({1, cores})
            ]
            self._busy(True)
            try:
                for combo in combos:
                    label = whatif.label(whatif.resolve(self.prof, **combo), self.prof)
                    r = whatif.rerun(
                        self.prof,
                        steps=self.c_steps.value,
                        _progress=ProgressBar(self.progress),
                        **combo,
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
            f"<tr><td>baseline</td><td>{number(base)}</td><td></td>"
            f"<td>{number(self.prof.samples_per_s, 0)}</td><td>1.00x</td>"
            f"<td>{peak_mib(self.prof)}</td><td>{self.prof.status}</td></tr>",
        ]
        for label, r in zip(self.labels, self.results):
            speed = f"{base / r.epoch_s:.2f}x" if base and r.epoch_s else "-"
            status = r.status if r.status == "ok" else f"{r.status}: {html.escape(r.error or '')}"
            rows.append(
                f"<tr><td>{html.escape(label)}</td><td>{number(r.epoch_s)}</td>"
                f"<td>{number((r.predicted or {}).get('epoch_s'))}</td>"
                f"<td>{number(r.samples_per_s, 0)}</td><td>{speed}</td><td>{peak_mib(r)}"
                f"{predicted_mib(r)}</td>"
                f"<td>{status}</td></tr>"
            )
        return f"<table class='em-results'>{''.join(rows)}</table>"
