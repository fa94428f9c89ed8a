"""Line attribution runs separately and leaves the user's training exactly as
a plain run of the cell would."""

from __future__ import annotations

import torch

from epochmagic.model.profile import EpochProfile
from epochmagic.session.lines import traced_steps
from tests.conftest import run

SETUP = """
import torch, torch.nn as nn, random
import numpy as np
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
ds = TensorDataset(torch.randn(320, 8), torch.randint(0, 3, (320,)))
g = torch.Generator().manual_seed(1)
loader = DataLoader(ds, batch_size=16, shuffle=True, generator=g)
net = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.Linear(16, 3))
adam = torch.optim.Adam(net.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(adam, 5)
torch.manual_seed(123); random.seed(1); np.random.seed(2)
"""

CELL = """for epoch in range({epochs}):
    for xb, yb in loader:
        loss = nn.functional.cross_entropy(net(xb), yb)
        adam.zero_grad(); loss.backward(); adam.step(); sched.step()
    history = [epoch]
after = (torch.rand(1), random.random(), np.random.rand())
"""


def snapshot(ns) -> dict:
    return {
        "params": [p.detach().clone() for p in ns["net"].parameters()],
        "opt": [(s["step"].clone(), s["exp_avg"].clone()) for s in ns["adam"].state.values()],
        "sched": ns["sched"].state_dict(),
        "gen": ns["g"].get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def test_profiled_epoch_with_lines_equals_a_plain_epoch(ip):
    run(ip, SETUP)
    run(ip, "%%epochprofile -o prof --text\n" + CELL.format(epochs=5))
    prof = ip.user_ns["prof"]
    assert prof.lines and prof.lines_steps >= 1
    profiled = snapshot(ip.user_ns)
    assert "after" not in ip.user_ns  # the cell was stopped before its last line
    assert ip.user_ns["history"] == [0]

    run(ip, SETUP)
    run(ip, CELL.format(epochs=1).replace("after =", "_after ="))
    plain = snapshot(ip.user_ns)
    for a, b in zip(profiled["params"], plain["params"]):
        assert torch.equal(a, b)
    for (s1, m1), (s2, m2) in zip(profiled["opt"], plain["opt"]):
        assert torch.equal(s1, s2) and torch.equal(m1, m2)
    assert profiled["sched"] == plain["sched"]
    assert torch.equal(profiled["gen"], plain["gen"])
    # the stopped cell had not drawn `after`'s random numbers; the plain one had
    run(ip, SETUP)
    run(ip, CELL.format(epochs=1).split("after =")[0])
    assert torch.equal(profiled["torch_rng"], torch.get_rng_state())


def test_lines_cover_cell_and_notebook_functions_and_leave_code_alone(ip):
    run(ip, SETUP)
    run(
        ip,
        """
def step(xb, yb):
    loss = nn.functional.cross_entropy(net(xb), yb)
    adam.zero_grad(); loss.backward(); adam.step()
    return loss
""",
    )
    code_before = ip.user_ns["step"].__code__
    run(
        ip,
        """%%epochprofile -o prof --text --lines traced
for epoch in range(3):
    for xb, yb in loader:
        step(xb, yb)
""",
    )
    prof = ip.user_ns["prof"]
    assert ip.user_ns["step"].__code__ is code_before  # line_profiler's padding removed
    by_source = {ls.source.strip(): ls for ls in prof.lines}
    assert "step(xb, yb)" in by_source
    assert "return loss" in by_source
    assert by_source["step(xb, yb)"].hits == prof.lines_steps
    assert all(ls.hits > 0 and ls.time_s >= 0 for ls in prof.lines)


def test_traced_run_output_is_captured(ip, capsys):
    run(ip, SETUP)
    run(
        ip,
        """%%epochprofile --text
for epoch in range(2):
    for xb, yb in loader:
        loss = nn.functional.cross_entropy(net(xb), yb)
        adam.zero_grad(); loss.backward(); adam.step()
        print("step")
""",
    )
    out = capsys.readouterr().out
    assert out.splitlines().count("step") == 20  # the measured run's prints only


def test_traced_steps_stay_within_a_tenth_of_the_epoch():
    prof = EpochProfile(wall_s=10.0, steps=1000, step_times=[0.01] * 1000, step_starts_s=[0.0])
    assert traced_steps(prof) == 20  # capped
    prof = EpochProfile(wall_s=10.0, steps=100, step_times=[0.1] * 100, step_starts_s=[0.0])
    assert traced_steps(prof) == 5  # 1 s budget / (0.1 s x 2 for tracing)
    prof = EpochProfile(wall_s=1.0, steps=2, step_times=[0.5] * 2, step_starts_s=[0.0])
    assert traced_steps(prof) == 2  # never more than the epoch had


ODD_CELL = """%%epochprofile -o prof --text --lines traced

# a comment, then a line magic and a continued statement
%time _ = 1
for xb, yb in loader:
    out = net(
        xb)
    loss = nn.functional.cross_entropy(out, yb) \\
        * 1.0
    adam.zero_grad(); loss.backward(); adam.step()
"""


def test_each_hot_line_shows_its_own_source_in_any_cell_shape(ip):
    """Leading blank lines, comments, other magics' lines and continuations:
    IPython's transforms drop or merge lines, yet every line's number and
    source must be the ones the user sees."""
    run(ip, SETUP)
    run(ip, ODD_CELL)
    prof = ip.user_ns["prof"]
    shown = ODD_CELL.splitlines()
    cell_lines = [ls for ls in prof.lines if ls.filename.startswith("Cell")]
    assert cell_lines
    for ls in cell_lines:
        if ls.filename == cell_lines[0].filename:
            assert ls.source == shown[ls.lineno - 1], ls  # line 1 is the magic line
            assert ls.source.strip()  # never a blank line
    sources = {ls.source.strip() for ls in cell_lines}
    assert "for xb, yb in loader:" in sources
    assert "adam.zero_grad(); loss.backward(); adam.step()" in sources
    # the statement spanning two lines is listed at its first line
    assert "loss = nn.functional.cross_entropy(out, yb) \\" in sources


def test_an_error_points_at_the_users_line_after_leading_blank_lines(ip):
    import traceback

    run(ip, SETUP)
    result = run(
        ip,
        "%%epochprofile --text --no-lines\n\n\nfor xb, yb in loader:\n"
        "    raise ValueError('line 5')\n",
        ok=False,
    )
    tb = traceback.extract_tb(result.error_in_exec.__traceback__)
    assert tb[-1].lineno == 5 and "raise ValueError" in tb[-1].line


def test_cell_labels_match_the_prompt_whichever_way_ipython_counts(ip, monkeypatch):
    """IPython 9 increments ``execution_count`` before a cell runs, IPython 8
    after; the label must be the cell's own prompt number either way."""
    from epochmagic.session import session

    run(ip, SETUP)
    labels = []
    real = session.compile_cell
    shift = [0]

    def spy(shell, source, magic_line=None):
        # what execution_count reads while the cell runs, on either IPython
        shell.execution_count += shift[0]
        try:
            cell = real(shell, source, magic_line)
        finally:
            shell.execution_count -= shift[0]
        labels.append(cell.label)
        return cell

    monkeypatch.setattr("epochmagic.magic.compile_cell", spy)
    for shift[0] in (0, -1, 1):
        result = ip.run_cell(
            "%%epochprofile --text --no-lines --steps 2\nfor xb, yb in loader:\n"
            "    adam.zero_grad(); nn.functional.cross_entropy(net(xb), yb).backward()\n",
            store_history=True,
        )
        assert result.success
        assert labels[-1] == f"Cell In[{result.execution_count}]"
