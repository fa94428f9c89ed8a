"""Sampled lines in the reports: the text and HTML reports, the dashboard's
Lines tab, the per-phase view and python_overhead's citations, built from
hand-made profiles (traced profiles keep their old output)."""

from __future__ import annotations

import pytest

import epochmagic
from epochmagic.diagnosis import linephases
from epochmagic.diagnosis.diagnose import diagnose
from epochmagic.model.profile import PHASES, EpochProfile, LineStat
from epochmagic.report import htmlreport
from epochmagic.report.textreport import line_rows, render

DT = 0.005  # seconds a sample stands for
TRAIN = "transformers/trainer.py"
# ticks per phase of the whole loop: 274 samples, a 1.37 s epoch
LOOP = {"data": 20, "transfer": 4, "forward": 40, "backward": 50, "optimizer": 20, "other": 140}


def sampled(filename: str, lineno: int, source: str, phases: dict[str, int], wait: int = 0):
    ticks = sum(phases.values())
    return LineStat(filename, lineno, source, None, ticks * DT, ticks, dict(phases), wait)


def trainer_lines() -> list[LineStat]:
    """What a Hugging Face Trainer's epoch looks like sampled: the cell's line
    and the library's inner loop hold every sample; the loop's lines each hold
    one phase (or two)."""
    return [
        sampled("Cell In[5]", 3, "trainer.train()", LOOP),
        sampled(TRAIN, 1938, "return inner_training_loop(", LOOP),
        sampled(TRAIN, 2560, "self._maybe_log_save_evaluate(tr_loss, grad_norm)", {"other": 112}),
        sampled(TRAIN, 2474, "loss = self.training_step(model, inputs)", {"forward": 40, "backward": 50, "other": 2}, wait=10),
        sampled(TRAIN, 2279, "for step, inputs in enumerate(epoch_iterator):", {"data": 20, "other": 2}),
        sampled(TRAIN, 2543, "_grad_norm = self.accelerator.clip_grad_norm_(", {"other": 12}, wait=12),
        sampled(TRAIN, 2600, "self.optimizer.step()", {"optimizer": 20}),
    ]  # fmt: skip


def profile(lines: list[LineStat], source: str | None = "sampled", steps: int = 20) -> EpochProfile:
    """A profile whose phases are the loop's ticks x DT (so shares match the lines)."""
    phases = {p: LOOP.get(p, 0) * DT for p in PHASES}
    wall = sum(phases.values())
    per_step = {k: v / steps for k, v in phases.items()}
    return EpochProfile(
        wall_s=wall,
        epoch_s=wall,
        steps=steps,
        phases=phases,
        step_times=[wall / steps] * steps,
        step_phases=[dict(per_step) for _ in range(steps)],
        lines=lines,
        lines_steps=steps if source == "sampled" else 3,
        lines_source=source,
        evidence={"line_samples": 274} if source == "sampled" else {},
        config={"batch_size": 64, "workers": 0, "threads": 2, "device": "cpu"},
        environment={"device": "cpu", "cpu_count": 2},
    )


def traced_lines() -> list[LineStat]:
    return [
        LineStat("Cell In[4]", 7, "    print(loss.item())", 3, 0.03),
        LineStat("/home/u/nb/helpers.py", 12, "return x.sum()", 6, 0.012),
    ]


# -- the arithmetic -------------------------------------------------------------------------
def test_a_lines_seconds_in_a_phase_are_its_time_times_its_ticks_share():
    ls = trainer_lines()[3]  # 40 forward, 50 backward, 2 other of 92 ticks
    assert linephases.seconds_in(ls, "backward") == pytest.approx(ls.time_s * 50 / 92)
    assert linephases.seconds_in(ls, "eval") == 0.0
    assert linephases.main_phase(ls) == "backward"
    assert linephases.wait_share(ls) == pytest.approx(10 / 92)
    traced = traced_lines()[0]  # no ticks: nothing per phase, nothing divided
    assert linephases.seconds_in(traced, "other") == 0.0
    assert linephases.main_phase(traced) is None and linephases.wait_share(traced) == 0.0


def test_the_per_phase_view_names_the_phases_worth_naming_biggest_first():
    prof = profile(trainer_lines())
    views = linephases.per_phase(prof)
    # transfer is 1.5 % of the epoch, eval 0: below the 5 % worth naming
    assert [v.phase for v in views] == ["other", "backward", "forward", "data", "optimizer"]
    other = views[0]
    assert other.share == pytest.approx(140 / 274)
    first, seconds = other.lines[0]
    assert (first.filename, first.lineno) == (TRAIN, 2560)
    assert seconds == pytest.approx(112 * DT)
    every = linephases.per_phase(prof, every=True)
    assert [v.phase for v in every] == [*(v.phase for v in views), "transfer"]


def test_lines_that_run_the_whole_loop_give_way_to_the_lines_inside_it():
    prof = profile(trainer_lines())
    loop = {(ls.filename, ls.lineno) for ls in linephases.loop_lines(prof)}
    assert loop == {("Cell In[5]", 3), (TRAIN, 1938)}
    for view in linephases.per_phase(prof, limit=10):
        assert not {(ls.filename, ls.lineno) for ls, _ in view.lines} & loop, view.phase
    # where no inner line explains a share worth naming, the loop is all there is to say
    transfer = linephases.hottest(prof, "transfer", 3)
    assert [(ls.filename, ls.lineno) for ls, _ in transfer] == [("Cell In[5]", 3), (TRAIN, 1938)]


def test_a_plain_loop_has_no_line_that_runs_it_all():
    lines = [
        sampled("Cell In[2]", 4, "for xb, yb in loader:", {"data": 20}),
        sampled("Cell In[2]", 5, "loss = loss_fn(model(xb), yb)", {"forward": 40}),
        sampled("Cell In[2]", 6, "loss.backward()", {"backward": 50}),
        sampled("Cell In[2]", 7, "opt.step()", {"optimizer": 20}),
        sampled("Cell In[2]", 8, "print(loss.item())", {"other": 140}, wait=30),
    ]
    prof = profile(lines)
    assert linephases.loop_lines(prof) == []
    assert [v.lines[0][0].lineno for v in linephases.per_phase(prof)] == [8, 6, 5, 4, 7]


def test_the_view_reads_the_thresholds_when_it_runs(monkeypatch):
    prof = profile(trainer_lines())
    monkeypatch.setitem(epochmagic.THRESHOLDS, "lines_phase_share", 0.3)
    assert [v.phase for v in linephases.per_phase(prof)] == ["other"]
    monkeypatch.setitem(epochmagic.THRESHOLDS, "lines_loop_cover", 1.01)  # nothing covers >100 %
    assert linephases.loop_lines(prof) == []
    assert linephases.hottest(prof, "forward", 1)[0][0].filename == "Cell In[5]"


def test_traced_profiles_have_no_per_phase_view():
    prof = profile(traced_lines(), source="traced")
    assert linephases.per_phase(prof) == [] and linephases.hottest(prof, "other", 3) == []


# -- the text report -------------------------------------------------------------------------
def test_text_says_the_lines_were_sampled_with_share_phase_and_wait():
    text = render(profile(trainer_lines()))
    assert "hot lines (sampled from the measured epoch, 274 samples;" in text
    assert "separate traced run" not in text and " hits" not in text
    row = next(r for r in text.splitlines() if "transformers/trainer.py:2474" in r)
    assert "460.0 ms" in row and "33.6%" in row and "backward" in row and "11%" in row
    row = next(r for r in text.splitlines() if "transformers/trainer.py:2600" in r)
    assert row.split()[1:] == ["100.0", "ms", "7.3%", "optimizer", "self.optimizer.step()"]
    assert "DataLoader workers are other processes and are not sampled" in text


def test_the_lines_that_run_the_whole_loop_are_one_row_above_the_hot_lines():
    lines = trainer_lines()
    lines.insert(0, lines.pop(1))  # the library's frame first: the cell's line is named anyway
    text = render(profile(lines))
    assert (
        "  the whole loop runs in Cell In[5]:3 `trainer.train()` (100% of the epoch; "
        "1 more line holds it too)"
    ) in text.splitlines()
    assert "trainer.py:1938" not in text  # neither a hot line nor in a phase
    page = htmlreport.report(profile(lines), with_charts=False)
    assert "The whole loop runs in Cell In[5]:3 `trainer.train()`" in page
    assert "<td>transformers/trainer.py:1938</td>" not in page


def test_text_per_phase_view_answers_what_other_is():
    lines = render(profile(trainer_lines())).splitlines()
    at = lines.index("  other: 51% of the epoch; hottest:")
    assert lines[at + 1].split() == [
        "transformers/trainer.py:2560",
        "41%",
        "self._maybe_log_save_evaluate(tr_loss,",
        "grad_norm)",
    ]
    assert lines[at + 2].split()[:2] == ["transformers/trainer.py:2543", "4.4%"]
    assert not lines[at + 4].startswith("    ")  # a few lines per phase: three
    assert "  transfer:" not in lines  # 1.5 % of the epoch


def test_traced_text_is_unchanged():
    for source in ("traced", None):  # None: hand-made before lines_source existed
        prof = profile(traced_lines(), source=source)
        assert line_rows(prof) == [
            "hot lines (from a separate traced run of 3 steps; a line's time includes the "
            "calls it makes):",
            "  Cell In[4]:7        30.0 ms       3 hits  print(loss.item())",
            "  helpers.py:12       12.0 ms       6 hits  return x.sum()",
        ]
        assert "where each phase's time went" not in render(prof)


def test_hits_none_or_no_ticks_never_crash():
    odd = [
        LineStat("Cell In[4]", 7, "x = 1", None, 0.01),  # traced with no hits
        LineStat("Cell In[4]", 8, "y = 2", None, 0.0, 0, {}, 0),  # sampled, no samples
    ]
    for source in ("traced", "sampled"):
        prof = profile(odd, source=source)
        prof.findings = diagnose(prof)
        assert "Cell In[4]:7" in render(prof)
        assert "Cell In[4]:7" in htmlreport.report(prof, with_charts=False)


def test_the_cost_line_says_where_the_lines_came_from():
    prof = profile(trainer_lines())
    prof.probe_cost_s = 0.01
    assert "hot lines sampled in this run" in render(prof)
    traced = profile(traced_lines(), source="traced")
    traced.probe_cost_s = 0.01
    assert "hot lines from a separate traced run of 3 steps" in render(traced)


# -- the finding ------------------------------------------------------------------------------
def test_python_overhead_cites_the_hottest_lines_in_other_with_their_share():
    prof = profile(trainer_lines())
    f = next(f for f in diagnose(prof) if f.code == "python_overhead")
    assert "hottest lines in `other`: transformers/trainer.py:2560" in f.detail
    assert "`self._maybe_log_save_evaluate(tr_loss, grad_norm)` 41% of the epoch" in f.detail
    assert "trainer.train()" not in f.detail  # the loop's own line explains nothing
    assert "/step" not in f.detail and "hits" not in f.detail


def test_python_overhead_still_cites_traced_cell_lines_per_step():
    prof = profile(traced_lines(), source="traced")
    f = next(f for f in diagnose(prof) if f.code == "python_overhead")
    assert "hottest lines: Cell In[4]:7 `print(loss.item())` 10.0 ms/step" in f.detail
    assert "helpers.py" not in f.detail  # traced: the cell's lines only, as before


# -- the HTML report --------------------------------------------------------------------------
def test_html_has_the_sampled_columns_and_a_table_per_phase():
    prof = profile(trainer_lines())
    page = htmlreport.report(prof, with_charts=False)
    assert "<th>samples</th><th>mostly in</th><th>waiting</th>" in page
    assert "<td>transformers/trainer.py:2474</td><td>460.0</td><td>34%</td><td>92</td>" in page
    assert "<td>backward</td><td>11%</td>" in page
    assert page.count("class='em-phase-lines'") == len(linephases.per_phase(prof)) == 5
    assert "other: 51% of the epoch</th>" in page and "<th>hits</th>" not in page


def test_traced_html_keeps_its_hits_table():
    page = htmlreport.lines_html(profile(traced_lines(), source="traced"))
    assert "From a separate traced run of 3 steps" in page and "<th>hits</th>" in page
    assert "<td>Cell In[4]:7</td><td>30.0</td><td>3</td>" in page
    assert "em-phase-lines" not in page


# -- the dashboard ----------------------------------------------------------------------------
def test_dashboard_lines_tab_filters_by_phase():
    pytest.importorskip("ipywidgets")
    from epochmagic.report.dashboard import TITLES, Dashboard

    prof = profile(trainer_lines())
    d = Dashboard(prof)
    tab = d.tabs.children[TITLES.index("Lines")]
    menu, table = tab.children
    assert menu is d.lines_menu
    assert [v for _, v in menu.options] == [
        "",
        "other",
        "backward",
        "forward",
        "data",
        "optimizer",
        "transfer",
    ]
    assert dict(menu.options)["other (51% of the epoch)"] == "other"
    assert table.value == htmlreport.lines_html(prof, n=15)
    menu.value = "other"
    assert table.value.count("class='em-phase-lines'") == 1
    assert "transformers/trainer.py:2560" in table.value and "trainer.train()" not in table.value
    assert "optimizer.step()" not in table.value
    menu.value = ""
    assert table.value == htmlreport.lines_html(prof, n=15)
    assert not d.out.outputs  # no error was printed by the callback


def test_dashboard_traced_lines_tab_is_the_table():
    pytest.importorskip("ipywidgets")
    from epochmagic.report.dashboard import TITLES, Dashboard

    prof = profile(traced_lines(), source="traced")
    d = Dashboard(prof)
    tab = d.tabs.children[TITLES.index("Lines")]
    assert d.lines_menu is None and tab.value == htmlreport.lines_html(prof, n=15)


# -- saved and loaded -------------------------------------------------------------------------
def test_a_saved_sampled_profile_renders_the_same(tmp_path):
    prof = profile(trainer_lines())
    prof.findings = diagnose(prof)
    again = EpochProfile.load(prof.save(tmp_path / "p.json"))
    assert again.lines == prof.lines and again.lines_source == "sampled"
    assert render(again) == render(prof)
    assert htmlreport.report(again, with_charts=False) == htmlreport.report(prof, with_charts=False)
    assert [f.detail for f in diagnose(again)] == [f.detail for f in prof.findings]
