"""The plain-text report (``--text`` and ``text/plain`` everywhere)."""

from __future__ import annotations

import os
import textwrap
from typing import TYPE_CHECKING

from epochmagic.diagnosis import linephases
from epochmagic.model.thresholds import threshold
from epochmagic.model.vocabulary import PHASES

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile, Finding, LineStat

PHASE_ORDER = PHASES  # the name htmlreport imports (to be switched to PHASES)
HOT_LINES = 8  # hot lines the report lists (a display count)


def seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1000:.1f} ms"


def bottleneck(prof: EpochProfile) -> tuple[str, str] | None:
    """What the epoch is bound by: (data, transfer, compute, optimizer, eval,
    other or compile; the one-line verdict), None without steps."""
    if prof.status == "error" or prof.steps == 0:
        return None
    total = prof.wall_s or 1.0
    p = prof.phases
    compute = p["forward"] + p["backward"]
    shares = {
        "data": p["data"] / total,
        "transfer": p["transfer"] / total,
        "compute": compute / total,
        "optimizer": p["optimizer"] / total,
        "eval": p["eval"] / total,
        "other": p["other"] / total,
    }
    if shares["data"] >= threshold("data_bound"):
        return "data", f"input-bound: {shares['data']:.0%} of the epoch waits for data"
    compiling = float((prof.compile or {}).get("compile_s") or 0.0) / total
    if compiling >= threshold("compile_bound"):  # later epochs do not pay it
        return "compile", (
            f"compile-bound: {compiling:.0%} of the epoch is torch.compile compiling "
            "(--skip-epochs 1 measures the next epoch)"
        )
    top = max(shares, key=lambda k: shares[k])
    pct = f"{shares[top]:.0%}"
    return top, {
        "data": f"input-bound: {pct} of the epoch waits for data",
        "transfer": f"transfer-bound: {pct} of the epoch copies batches to the device",
        "compute": f"compute-bound: {pct} of the epoch is forward and backward",
        "optimizer": f"optimizer-bound: {pct} of the epoch is in optimizer step/zero_grad",
        "eval": f"evaluation-heavy: {pct} of the epoch is evaluation",
        "other": f"loop-overhead-bound: {pct} of the epoch is Python outside the model, "
        "loader and optimizer",
    }[top]


def verdict(prof: EpochProfile) -> str:
    """One line: what this epoch is bound by, with the share that says so."""
    if prof.status == "error":
        return f"the cell failed: {prof.error}"
    found = bottleneck(prof)
    if found is None:
        return "no training step was seen (no backward() or optimizer step ran)"
    return found[1]


# the bottleneck each finding's fix works on
ADDRESSES = {
    "data_loading": "data",
    "worker_startup": "data",
    "threads": "data",
    "transfer": "transfer",
    "precision": "compute",
    "hardware": "compute",
    "small_batch": "compute",
    "optimizer_step": "optimizer",
    "eval_heavy": "eval",
    "python_overhead": "other",
    "sync_points": "other",
    "gpu_idle": "other",
    "compile": "compile",
}


def why_first(prof: EpochProfile) -> str | None:
    """Where the verdict names one bottleneck and the first finding is about
    another, the line that says why (the ranking is by expected saving)."""
    found = bottleneck(prof)
    actionable = [f for f in prof.findings if f.code in ADDRESSES]
    if found is None or not actionable:
        return None
    kind, said = found
    first = actionable[0]
    if ADDRESSES.get(first.code) == kind:
        return None
    own = next((f for f in actionable if ADDRESSES.get(f.code) == kind), None)
    name = said.split(":")[0]
    if own is None:
        reason = "no fix for it is predicted here"
    elif own.code == "data_loading" and not own.suggestion:
        cores = prof.environment.get("cpu_count") or "these"
        reason = f"more workers are not predicted to help on {cores} cores"
    elif own.saving is not None:
        reason = f"{own.code}'s fix is expected to save only {own.saving:.0%}"
    else:
        reason = f"nothing says how much {own.code}'s fix would save"
    gain = (
        f"{first.code}'s fix is expected to save {first.saving:.0%}"
        if first.saving is not None
        else f"{first.code} is about {first.share:.0%} of the epoch"
    )
    return f"{name}, but {reason}; {gain}"


def header(prof: EpochProfile) -> str:
    env = prof.environment
    unit = prof.throughput_unit
    rate = prof.tokens_per_s if unit == "tokens" else prof.samples_per_s
    rate_s = f"{rate:,.0f} {unit}/s" if rate else f"- {unit}/s"
    of = f" of {prof.steps_per_epoch}" if prof.steps_per_epoch else ""
    device = env.get("device", "cpu")
    where = f"{device} ({env.get('cpu_count', '?')} cores, {env.get('torch_threads', '?')} threads)"
    if device.startswith("cuda"):
        where = f"{device} ({env.get('device_name', '')})"
    status = "" if prof.status == "ok" else f"  [{prof.status}]"
    return (
        f"epochmagic: epoch {seconds(prof.epoch_s)} | {rate_s} | {prof.steps}{of} steps | "
        f"{where}{status}"
    )


def gpu_summary(prof: EpochProfile) -> str | None:
    """One line on what the GPU did; None on the CPU."""
    g = prof.gpu
    if not g:
        return None
    bits = [f"GPU {g.get('name') or '?'} ({g.get('timing', 'device events')})"]
    if g.get("idle_share") is not None:
        bits.append(f"idle {g['idle_share']:.0%} of the epoch")
    if g.get("host_wait_share") is not None:
        bits.append(f"host waited on it {g['host_wait_share']:.0%}")
    bits.append(f"{g.get('syncs_per_step', 0):.1f} syncs/step")
    mem = prof.memory or {}
    if mem.get("kind") == "cuda":
        bits.append(
            f"peak {mem['peak_bytes'] / 2**30:.2f} GiB allocated, "
            f"{mem.get('peak_reserved_bytes', 0) / 2**30:.2f} GiB reserved"
            + (f" of {mem['total_bytes'] / 2**30:.0f} GiB" if mem.get("total_bytes") else "")
        )
    tf32 = g.get("tf32") or {}
    if tf32:
        bits.append(f"TF32 matmul {'on' if tf32.get('matmul') else 'off'}")
    peak = g.get("peak_flops")
    if g.get("mfu") is not None and peak:  # an MFU always has its peak
        bits.append(f"MFU {g['mfu']:.0%} of {peak / 1e12:,.0f} TFLOP/s")
    return " | ".join(bits)


def phase_table(prof: EpochProfile) -> list[str]:
    total = prof.wall_s or 1.0
    busy = (prof.gpu or {}).get("device_s_by_phase")
    rows = [
        f"  {'phase':<10}{'seconds':>10}{'%':>8}{'ms/step':>10}" + ("  GPU busy s" if busy else "")
    ]
    for name in PHASES:
        v = prof.phases.get(name, 0.0)
        in_steps = sum(sp.get(name, 0.0) for sp in prof.step_phases)
        per = f"{in_steps / prof.steps * 1000:10.2f}" if prof.steps else f"{'-':>10}"
        gpu = f"{busy.get(name, 0.0):12.3f}" if busy else ""
        rows.append(f"  {name:<10}{v:>10.3f}{v / total * 100:>7.1f}%{per}{gpu}")
    rows.append(f"  {'total':<10}{prof.wall_s:>10.3f}{100.0:>7.1f}%")
    if prof.steps:
        rows.append(
            f"  {prof.outside_steps_s:.3f} s of it outside the steps (set-up before the first "
            "batch, code after the last)"
        )
    return rows


def line_rows(prof: EpochProfile, n: int = HOT_LINES) -> list[str]:
    if not prof.lines:
        return []
    if linephases.is_sampled(prof):
        return [*sampled_rows(prof, n), f"  ({sampled_caveats(prof)})", "", *phase_rows(prof)]
    top = sorted(prof.lines, key=lambda ls: ls.time_s, reverse=True)[:n]
    out = [
        f"hot lines (from a separate traced run of {prof.lines_steps} steps; a line's time "
        "includes the calls it makes):"
    ]
    width = max(len(_where(ls.filename, ls.lineno)) for ls in top)
    for ls in top:
        hits = f"{ls.hits:7d} hits" if ls.hits is not None else " " * 12
        out.append(
            f"  {_where(ls.filename, ls.lineno):<{width}}  {ls.time_s * 1000:9.1f} ms "
            f"{hits}  {_source(ls.source)}"
        )
    return out


def sampled_about(prof: EpochProfile) -> str:
    """Where sampled lines come from (the hot-lines heading)."""
    n = linephases.sample_count(prof)
    about = "sampled from the measured epoch" + (f", {n:,} samples" if n else "")
    return about + "; a line's time includes the calls it makes"


def sampled_caveats(prof: EpochProfile) -> str:
    """What sampled lines leave out."""
    text = (
        "DataLoader workers are other processes and are not sampled: their time is the "
        "wait in `data`"
    )
    if str(prof.environment.get("device", "")).startswith("cuda"):
        text += "; a line's time is the host's, its waits on the GPU marked"
    return text


def sampled_rows(prof: EpochProfile, n: int = HOT_LINES) -> list[str]:
    """The hottest sampled lines: time, share of the epoch, the phase most of
    their samples were in, and the share spent waiting on the device. The lines
    that run the whole loop are one row above them."""
    loop, top = linephases.hot_lines(prof, n)
    out = [f"hot lines ({sampled_about(prof)}):"]
    if loop:
        out.append(f"  the whole loop runs in {loop_summary(prof, loop)}")
    if not top:
        return out
    width = max(len(_sampled_where(ls)) for ls in top)
    out.append(
        f"  {'line':<{width}}  {'time':>12} {'epoch':>6}  {'mostly in':<9} {'waiting':>7}  source"
    )
    for ls in top:
        wait = linephases.wait_share(ls)
        waits = f"{wait:.0%}" if ls.wait_ticks else ""
        out.append(
            f"  {_sampled_where(ls):<{width}}  {ls.time_s * 1000:9.1f} ms "
            f"{linephases.share(prof, ls.time_s):6.1%}  {linephases.main_phase(ls) or '-':<9} "
            f"{waits:>7}  {_source(ls.source)}"
        )
    return out


def loop_summary(prof: EpochProfile, loop: list[LineStat]) -> str:
    """``Cell In[5]:3 `trainer.train()` (99.7% of the epoch; 9 more lines hold it
    too)``: the line that runs the whole loop, and how many others nest with it."""
    first = loop[0]
    more = {0: "", 1: "; 1 more line holds it too"}.get(
        len(loop) - 1, f"; {len(loop) - 1} more lines hold it too"
    )
    return (
        f"{_sampled_where(first)} `{_source(first.source)}` "
        f"({linephases.percent(linephases.share(prof, first.time_s))} of the epoch{more})"
    )


def phase_rows(prof: EpochProfile) -> list[str]:
    """The per-phase view: for each phase worth naming, its hottest lines."""
    out = ["where each phase's time went (sampled lines; a line's time includes its calls):"]
    for view in linephases.per_phase(prof):
        out.append(
            f"  {view.phase}: {linephases.percent(view.share)} of the epoch"
            + ("; hottest:" if view.lines else "; no sampled line")
        )
        width = max((len(_sampled_where(ls)) for ls, _ in view.lines), default=0)
        out += [
            f"    {_sampled_where(ls):<{width}}  {linephases.percent(linephases.share(prof, s)):>5}  "
            f"{_source(ls.source)}"
            for ls, s in view.lines
        ]
    return out


def _source(source: str) -> str:
    src = source.strip()
    return src if len(src) <= 60 else src[:57] + "..."


def _where(filename: str, lineno: int) -> str:
    if filename.startswith("Cell "):
        return f"{filename}:{lineno}"
    return f"{os.path.basename(filename)}:{lineno}"


def _sampled_where(ls: LineStat) -> str:
    """The sampler's short path (``transformers/trainer.py:2543``); a full path's
    file name."""
    if os.path.isabs(ls.filename):
        return _where(ls.filename, ls.lineno)
    return linephases.where(ls)


def at_stake(f: Finding) -> str:
    """The share a finding is about and what its fix is expected to save."""
    text = f"{f.share:.0%} of the epoch"
    if f.saving is not None:
        verb = "saved" if f.saving_source == "measured" else "saves"
        text += f"; {verb} {f.saving:.0%}, {f.saving_source or 'predicted'}"
    return text


def own_cost(prof: EpochProfile) -> str | None:
    """The profiler's own cost in this run (an estimate, stated as one)."""
    if prof.probe_cost_s is None or not prof.wall_s:
        return None
    text = (
        f"the profiler's own cost: ~{seconds(prof.probe_cost_s)} "
        f"({prof.probe_cost_s / prof.wall_s:.1%} of the epoch; probe events x their "
        "measured cost)"
    )
    if linephases.is_sampled(prof):
        text += "; hot lines sampled in this run"
    elif prof.lines_steps:
        text += f"; hot lines from a separate traced run of {prof.lines_steps} steps"
    return text


def finding_lines(f: Finding) -> list[str]:
    out = [f"  - [{f.code}] {f.title} ({at_stake(f)})"]
    out += textwrap.wrap(f.detail, width=96, initial_indent="      ", subsequent_indent="      ")
    if f.suggestion:
        args = ", ".join(f"{k}={v!r}" for k, v in f.suggestion.items())
        out.append(f"      try it: prof.rerun({args})")
    if f.fix:
        fix = f.fix.splitlines()
        out.append(f"      fix: {fix[0]}")
        out += [f"           {line}" for line in fix[1:]]
    return out


def render(prof: EpochProfile) -> str:
    lines = [header(prof), f"verdict: {verdict(prof)}"]
    why = why_first(prof)
    if why:
        lines.append(f"first finding: {why}")
    lines.append("")
    if prof.steps or prof.wall_s:
        lines += phase_table(prof)
    gpu = gpu_summary(prof)
    if gpu:
        lines += [gpu]
    cost = own_cost(prof)
    if cost:
        lines += [f"  {cost}"]
    hot = line_rows(prof)
    if hot:
        lines += [""] + hot
    if prof.findings:
        lines += ["", "findings (ranked by the expected saving, then the share at stake):"]
        for f in prof.findings:
            lines += finding_lines(f)
    if prof.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in prof.notes]
    return "\n".join(lines)
