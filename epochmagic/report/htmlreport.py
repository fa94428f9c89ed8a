"""The report as HTML with the charts inline: ``text/html`` for nbconvert and
GitHub, and ``EpochProfile.to_html`` (a page that needs no network)."""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING

from epochmagic.diagnosis import linephases
from epochmagic.model.vocabulary import PHASES
from epochmagic.report import charts
from epochmagic.report.textreport import (
    at_stake,
    gpu_summary,
    header,
    loop_summary,
    sampled_about,
    sampled_caveats,
    verdict,
    why_first,
)

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile, LineStat

STYLE = """<style>
.em-report{font-family:system-ui,sans-serif;font-size:13px;max-width:900px}
.em-report table{border-collapse:collapse;margin:6px 0}
.em-report td,.em-report th{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}
.em-report td:first-child,.em-report th:first-child{text-align:left}
.em-report .verdict{font-size:15px;font-weight:600;margin:4px 0 8px}
.em-report pre{background:#f6f6f6;padding:4px 8px;margin:2px 0;white-space:pre-wrap}
.em-report .muted{color:#666}
</style>"""


def png_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def phase_table(prof: EpochProfile) -> str:
    total = prof.wall_s or 1.0
    busy = (prof.gpu or {}).get("device_s_by_phase")
    rows = []
    for name in PHASES:
        v = prof.phases.get(name, 0.0)
        in_steps = sum(sp.get(name, 0.0) for sp in prof.step_phases)
        per = f"{in_steps / prof.steps * 1000:.2f}" if prof.steps else "-"
        gpu = f"<td>{busy.get(name, 0.0):.3f}</td>" if busy else ""
        rows.append(
            f"<tr><td>{name}</td><td>{v:.3f}</td><td>{v / total:.1%}</td><td>{per}</td>{gpu}</tr>"
        )
    gpu_head = "<th>GPU busy s</th>" if busy else ""
    return (
        "<table><tr><th>phase</th><th>seconds</th><th>%</th><th>ms/step</th>"
        + gpu_head
        + "</tr>"
        + "".join(rows)
        + f"<tr><th>total</th><th>{prof.wall_s:.3f}</th><th>100%</th><th></th></tr></table>"
    )


def findings_html(prof: EpochProfile) -> str:
    if not prof.findings:
        return "<p class='muted'>No findings.</p>"
    items = []
    for f in prof.findings:
        parts = [
            f"<b>{html.escape(f.title)}</b> <span class='muted'>[{f.code}, "
            f"{html.escape(at_stake(f))}]</span><br>{html.escape(f.detail)}"
        ]
        if f.suggestion:
            args = ", ".join(f"{k}={v!r}" for k, v in f.suggestion.items())
            parts.append(f"<br>try it: <code>prof.rerun({html.escape(args)})</code>")
        if f.fix:
            parts.append(f"<pre>{html.escape(f.fix)}</pre>")
        items.append("<li>" + "".join(parts) + "</li>")
    return "<ol>" + "".join(items) + "</ol>"


def lines_html(prof: EpochProfile, n: int = 10) -> str:
    if not prof.lines:
        return "<p class='muted'>No line attribution (see the notes).</p>"
    if linephases.is_sampled(prof):
        return sampled_lines_html(prof, n) + phases_html(prof, linephases.per_phase(prof))
    rows = "".join(
        f"<tr><td>{html.escape(ls.filename)}:{ls.lineno}</td><td>{ls.time_s * 1000:.1f}</td>"
        f"<td>{'' if ls.hits is None else ls.hits}</td><td style='text-align:left'><code>"
        f"{html.escape(ls.source.strip())}</code></td></tr>"
        for ls in sorted(prof.lines, key=lambda x: -x.time_s)[:n]
    )
    return (
        f"<p class='muted'>From a separate traced run of {prof.lines_steps} steps; a line's "
        "time includes the calls it makes.</p><table><tr><th>line</th><th>ms</th>"
        f"<th>hits</th><th style='text-align:left'>source</th></tr>{rows}</table>"
    )


def sampled_lines_html(prof: EpochProfile, n: int = 10) -> str:
    """The hottest sampled lines: time, share of the epoch, samples, the phase
    most of them were in and the share taken while the host waited on the device."""
    loop, top = linephases.hot_lines(prof, n)
    rows = []
    for ls in top:
        wait = linephases.wait_share(ls)
        rows.append(
            f"<tr><td>{html.escape(linephases.where(ls))}</td><td>{ls.time_s * 1000:.1f}</td>"
            f"<td>{linephases.percent(linephases.share(prof, ls.time_s))}</td><td>{ls.ticks}</td>"
            f"<td>{linephases.main_phase(ls) or '-'}</td>"
            f"<td>{f'{wait:.0%}' if ls.wait_ticks else ''}</td>{_source_cell(ls)}</tr>"
        )
    whole = (
        f"<p>The whole loop runs in {html.escape(loop_summary(prof, loop))}.</p>" if loop else ""
    )
    return (
        f"<p class='muted'>{html.escape(_capital(sampled_about(prof)))}. "
        f"{html.escape(sampled_caveats(prof))}.</p>{whole}<table><tr><th>line</th><th>ms</th>"
        "<th>% of epoch</th><th>samples</th><th>mostly in</th><th>waiting</th>"
        f"<th style='text-align:left'>source</th></tr>{''.join(rows)}</table>"
    )


def phases_html(prof: EpochProfile, views: list[linephases.PhaseLines]) -> str:
    """The per-phase view: a table per phase of its hottest sampled lines."""
    if not views:
        return ""
    parts = [
        "<p class='muted'>Where each phase's time went (a line's time includes its calls):</p>"
    ]
    for view in views:
        rows = (
            "".join(
                f"<tr><td>{html.escape(linephases.where(ls))}</td><td>{s * 1000:.1f}</td>"
                f"<td>{linephases.percent(linephases.share(prof, s))}</td>{_source_cell(ls)}</tr>"
                for ls, s in view.lines
            )
            or "<tr><td colspan='4' class='muted'>no sampled line</td></tr>"
        )
        parts.append(
            f"<table class='em-phase-lines'><tr><th colspan='4' style='text-align:left'>"
            f"{view.phase}: {linephases.percent(view.share)} of the epoch</th></tr>"
            "<tr><th>line</th><th>ms in phase</th><th>% of epoch</th>"
            f"<th style='text-align:left'>source</th></tr>{rows}</table>"
        )
    return "".join(parts)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _source_cell(ls: LineStat) -> str:
    return f"<td style='text-align:left'><code>{html.escape(ls.source.strip())}</code></td>"


def report(prof: EpochProfile, with_charts: bool = True) -> str:
    parts = [
        STYLE,
        "<div class='em-report'>",
        f"<div>{html.escape(header(prof))}</div>",
        f"<div class='verdict'>{html.escape(verdict(prof))}</div>",
    ]
    why = why_first(prof)
    if why:
        parts.append(f"<div class='muted'>first finding: {html.escape(why)}</div>")
    if with_charts and prof.steps:
        parts.append(png_tag(charts.breakdown(prof), "phase breakdown"))
    parts.append(phase_table(prof))
    gpu = gpu_summary(prof)
    if gpu:
        parts.append(f"<div>{html.escape(gpu)}</div>")
    if with_charts and prof.steps > 1:
        parts.append(png_tag(charts.timeline(prof), "per-step timeline"))
    parts += ["<h4>Diagnosis</h4>", findings_html(prof), "<h4>Hot lines</h4>", lines_html(prof)]
    if prof.notes:
        parts.append(
            "<h4>Notes</h4><ul>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in prof.notes)
            + "</ul>"
        )
    parts.append("</div>")
    return "".join(parts)


def page(prof: EpochProfile) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>epochmagic report</title>"
        f"</head><body>{report(prof)}</body></html>"
    )
