"""The report outside the terminal: widgets, HTML, PNG, and the what-if
controls' callbacks (driven without a browser: ``button.click()`` fires
``on_click`` under IPython)."""

from __future__ import annotations

import multiprocessing

import pytest

from tests.conftest import run
from tests.test_whatif import CELL, SETUP


@pytest.fixture
def prof(ip):
    run(ip, SETUP + "\nBIG = 10_000\n")
    run(ip, CELL)
    return ip.user_ns["prof"]


def test_mimebundle_has_widget_html_png_and_text(prof):
    bundle = prof._repr_mimebundle_()
    assert "verdict:" in bundle["text/plain"]
    assert "<img" in bundle["text/html"] and "Diagnosis" in bundle["text/html"]
    assert bundle["image/png"].startswith(b"\x89PNG")
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_dashboard_tabs_and_charts(prof):
    from epochmagic.report.dashboard import Dashboard

    d = Dashboard(prof)
    titles = [d.tabs.get_title(i) for i in range(len(d.tabs.children))]
    assert titles == ["Breakdown", "Timeline", "Lines", "Diagnosis", "What-if"]
    breakdown = d.tabs.children[0].children[0]
    assert bytes(breakdown.value).startswith(b"\x89PNG")


def test_run_button_adds_a_measured_row(prof):
    from epochmagic.report.dashboard import Dashboard

    d = Dashboard(prof)
    assert d.chart.layout.display == "none"  # no broken picture before the first run
    d.c_batch.value = 64
    d.c_steps.value = 4
    d.run_button.click()
    assert len(d.results) == 1 and d.results[0].status == "ok"
    assert d.results[0].config["batch_size"] == 64
    assert "batch_size=64" in d.table.value and bytes(d.chart.value).startswith(b"\x89PNG")
    assert "predicted" in d.prediction.value
    assert not d.run_button.disabled  # controls are enabled again after the run
    assert d.chart.layout.display is None


def test_what_if_controls_and_export_buttons_wrap_instead_of_clipping(prof):
    """The layout the browser test checks at 1024 and 1280 px (tests/test_browser.py),
    as widget settings: rows wrap, descriptions and buttons take their text's width."""
    from epochmagic.report.dashboard import Dashboard

    d = Dashboard(prof)
    grid, buttons = d.tabs.children[4].children[:2]
    assert grid.children == tuple(d.controls[:9])
    assert "auto-fill" in grid.layout.grid_template_columns
    assert buttons.layout.flex_flow == d.widget.children[2].layout.flex_flow == "row wrap"
    for c in d.controls[:9]:
        assert c.layout.width == "auto" and c.style.description_width == "initial"
    for b in [d.run_button, d.fastest_button, *d.widget.children[2].children]:
        assert b.layout.width == "auto"
    assert d.progress.style.description_width == "initial"


def test_try_it_sets_the_controls_and_runs(prof):
    from epochmagic.report.dashboard import Dashboard

    d = Dashboard(prof)
    d.c_steps.value = 3
    d.try_it({"workers": 2, "threads": 1})
    assert d.c_workers.value == 2 and d.c_threads.value == 1
    assert d.tabs.selected_index == 4
    assert d.results and d.results[-1].config["workers"] == 2
    assert not multiprocessing.active_children()


def test_find_fastest_sweeps_workers_and_threads(prof):
    from epochmagic.report.dashboard import Dashboard

    prof.environment["cpu_count"] = 2  # the grid follows the cores: fixed here, on any machine
    d = Dashboard(prof)
    d.c_steps.value = 2
    d.fastest_button.click()
    assert len(d.results) == 3 * 2  # workers 0..2 x threads {1, 2}


def test_exports_and_static_page(prof, tmp_path, monkeypatch):
    from epochmagic.report.dashboard import Dashboard

    monkeypatch.chdir(tmp_path)
    d = Dashboard(prof)
    for button in d.widget.children[2].children:
        button.click()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "epochmagic_profile.html",
        "epochmagic_profile.json",
        "epochmagic_profile.trace.json",
    ]
    page = (tmp_path / "epochmagic_profile.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64" in page


def test_magic_export_html(ip, tmp_path):
    run(ip, SETUP + "\nBIG = 10_000\n")
    path = tmp_path / "r.html"
    run(ip, CELL.replace("--no-lines", f"--no-lines --export {path}"))
    assert "epochmagic" in path.read_text()


def test_a_precision_the_device_cannot_run_disables_run(prof, monkeypatch):
    from epochmagic.report.dashboard import Dashboard
    from epochmagic.whatif import changes

    def refuse(device, dtype, name):
        if name == "fp16":
            raise changes.Unsupported(f"{name}: autocast on {device} cannot run it (test)")

    monkeypatch.setattr(changes, "check_precision", refuse)
    d = Dashboard(prof)
    labels = dict((v, lbl) for lbl, v in d.c_precision.options)
    assert "cannot run" in labels["fp16"] and labels["bf16"] == "bf16"
    assert d.c_precision.layout.grid_area == "auto / 1 / auto / -1"  # a row of its own
    d.c_precision.value = "fp16"
    assert d.run_button.disabled and "cannot run" in d.prediction.value
    d.c_precision.value = "fp32"
    assert not d.run_button.disabled
