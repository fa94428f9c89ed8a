"""torch.compile under the magic: the cell compiles exactly as it does without
it (same graphs, graph breaks and recompiles, counted by torch's own
counters), steps are counted as in eager mode, and ``prof.compile`` reports
what compiled.

Dynamo-only behaviour uses ``backend="eager"`` (``"aot_eager"`` where the
backward matters); one test compiles with inductor and is marked slow.
"""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import run
from tests.test_cell_shapes import check_phases

SETUP = """
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from torch._dynamo.utils import counters

class Net(nn.Module):
    def __init__(self, breaks=False):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.b = nn.Linear(32, 4)
        self.breaks = breaks
    def forward(self, x):
        h = self.a(x)
        if self.breaks:
            torch._dynamo.graph_break()
        return self.b(h)

def data(n, drop_last=True, batch=8):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(ds, batch_size=batch, drop_last=drop_last)

loss_fn = nn.CrossEntropyLoss()

def snapshot():
    return {k: dict(v) for k, v in counters.items() if k in ("graph_break", "stats")}

def delta(before):
    now = snapshot()
    out = {}
    for key in ("graph_break", "stats"):
        b, a = before.get(key, {}), now.get(key, {})
        out[key] = {k: a.get(k, 0) - b.get(k, 0) for k in a if a.get(k, 0) != b.get(k, 0)}
    return out
"""

LOOP = """for xb, yb in loader:
    loss = loss_fn(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
"""
PROFILED = "%%epochprofile -o prof --text --no-lines\n"

# (what is compiled, the cell that builds it, the training loop)
STYLES = {
    "torch.compile(model)": (
        "net = Net(breaks=True)\nmodel = torch.compile(net, backend='eager')\n",
        LOOP,
    ),
    "model.compile()": (
        "model = Net(breaks=True)\nmodel.compile(backend='eager')\n",
        LOOP,
    ),
    "compiled forward and loss": (
        "model = Net()\n"
        "@torch.compile(backend='eager')\n"
        "def compute_loss(xb, yb):\n"
        "    return loss_fn(model(xb), yb)\n",
        """for xb, yb in loader:
    loss = compute_loss(xb, yb)
    opt.zero_grad(); loss.backward(); opt.step()
""",
    ),
    "compiled step with backward": (
        "model = Net()\n"
        "@torch.compile(backend='aot_eager')\n"
        "def train_step(xb, yb):\n"
        "    loss = loss_fn(model(xb), yb)\n"
        "    loss.backward()\n"
        "    return loss.detach()\n",
        """for xb, yb in loader:
    opt.zero_grad()
    loss = train_step(xb, yb)
    opt.step()
""",
    ),
    "compiled step with zero_grad inside": (
        "model = Net()\n"
        "@torch.compile(backend='aot_eager')\n"
        "def train_step(xb, yb):\n"
        "    opt.zero_grad()\n"
        "    model.zero_grad()\n"
        "    loss = loss_fn(model(xb), yb)\n"
        "    loss.backward()\n"
        "    return loss.detach()\n",
        """for xb, yb in loader:
    loss = train_step(xb, yb)
    opt.step()
""",
    ),
}


def _build(ip, style: str, n: int = 96, drop_last: bool = True) -> str:
    build, loop = STYLES[style]
    run(ip, "torch._dynamo.reset(); torch.manual_seed(0)\n" + build)
    run(
        ip,
        f"opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        f"loader = data({n}, drop_last={drop_last})\n",
    )
    return loop


def _plain_counts(ip, style: str, **kw) -> dict:
    loop = _build(ip, style, **kw)
    run(ip, "_before = snapshot()\n" + loop + "plain = delta(_before)\n")
    return ip.user_ns["plain"]


@pytest.mark.parametrize("style", list(STYLES))
def test_a_compiled_cell_compiles_as_it_does_without_the_magic(ip, style):
    run(ip, SETUP)
    plain = _plain_counts(ip, style)
    assert plain["stats"].get("unique_graphs", 0) >= 1
    loop = _build(ip, style)
    run(ip, "_before = snapshot()")
    run(ip, "%%epochprofile -o prof --text --no-lines\n" + loop)
    run(ip, "profiled = delta(_before)")
    assert ip.user_ns["profiled"] == plain  # graphs, graph breaks: as without the magic
    prof = ip.user_ns["prof"]
    check_phases(prof)
    assert prof.status == "ok" and prof.steps == prof.steps_per_epoch == 12
    comp = prof.compile
    assert comp is not None and comp["compiles"] >= 1 and comp["recompiles"] == 0
    assert comp["graph_breaks"] == sum(plain["graph_break"].values())
    assert comp["compiled_calls"] >= 12 and len(comp["step_compile_s"]) == prof.steps
    assert comp["compile_s"] > 0 and sum(comp["step_compile_s"]) <= comp["compile_s"] + 1e-9
    # the time inside compiled code is the forward's, not Python overhead
    forward = sum(sp["forward"] for sp in prof.step_phases)
    assert forward > sum(sp["other"] for sp in prof.step_phases)
    # after the profile the user's compiled code runs on: nothing recompiles
    run(ip, "_before = snapshot()\n" + loop + "after = delta(_before)\n")
    assert ip.user_ns["after"]["stats"].get("unique_graphs", 0) == 0
    assert not ip.user_ns["after"]["graph_break"]


def test_a_last_partial_batch_recompiles_and_the_finding_says_how_to_stop_it(ip):
    run(ip, SETUP)
    plain = _plain_counts(ip, "torch.compile(model)", n=100, drop_last=False)
    loop = _build(ip, "torch.compile(model)", n=100, drop_last=False)
    run(ip, "_before = snapshot()")
    run(ip, "%%epochprofile -o prof --text --no-lines\n" + loop)
    run(ip, "profiled = delta(_before)")
    assert ip.user_ns["profiled"] == plain
    prof = ip.user_ns["prof"]
    comp = prof.compile
    assert comp["recompiles"] >= 1 and comp["recompile_reasons"]
    assert any("size" in r or "mismatch" in r for r in comp["recompile_reasons"])
    found = next(f for f in prof.findings if f.code == "compile")
    assert "drop_last=True" in found.fix and "dynamic=True" in found.fix
    assert "mark_dynamic" in found.fix
    assert "recompile" in found.detail
    assert "warmup" not in {f.code for f in prof.findings}  # compile seconds are cited once


def test_skip_epochs_measures_the_next_epoch_without_its_compile(ip):
    run(ip, SETUP)
    _build(ip, "torch.compile(model)")
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines --skip-epochs 1
seen = []
for epoch in range(3):
    seen.append(epoch)
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
""",
    )
    prof = ip.user_ns["prof"]
    check_phases(prof)
    # epoch 0 ran unmeasured, epoch 1 was measured, epoch 2 stopped as its pass began
    assert ip.user_ns["seen"] == [0, 1, 2]
    assert prof.steps == 12 and prof.stop_reason == "epoch"
    assert any("skipped 1 epoch" in n for n in prof.notes)
    comp = prof.compile
    assert comp is not None and comp["compiles"] == 0 and comp["compiled_calls"] >= 12
    assert "compile" not in {f.code for f in prof.findings}


def test_skip_epochs_beyond_the_cell_measures_nothing_and_says_so(ip):
    run(ip, SETUP)
    run(ip, "model = Net(); opt = torch.optim.SGD(model.parameters(), lr=0.1); loader = data(32)")
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines --skip-epochs 5
for epoch in range(2):
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
""",
    )
    prof = ip.user_ns["prof"]
    assert prof.steps == 0
    assert any("no epoch was left to measure" in n for n in prof.notes)


def test_skip_epochs_without_a_loader_measures_from_the_next_step(ip):
    run(ip, SETUP)
    run(ip, "model = Net(); opt = torch.optim.SGD(model.parameters(), lr=0.1)")
    run(
        ip,
        """%%epochprofile -o prof --text --no-lines --skip-epochs 1 --steps 5
x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
for i in range(20):
    loss = loss_fn(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
""",
    )
    prof = ip.user_ns["prof"]
    check_phases(prof)
    assert prof.steps == 5 and prof.step_clock == "optimizer"
    assert any("no epochs to skip" in n for n in prof.notes)


def test_a_model_that_fails_to_compile_fails_as_without_the_magic(ip):
    run(ip, SETUP)
    run(
        ip,
        """
def broken(gm, example_inputs):
    raise RuntimeError("this backend cannot compile")
model = torch.compile(Net(), backend=broken)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = data(32)
""",
    )
    loop = LOOP
    plain = run(ip, loop, ok=False).error_in_exec
    run(ip, "torch._dynamo.reset()")
    profiled = run(ip, "%%epochprofile -o prof --text --no-lines\n" + loop, ok=False).error_in_exec
    assert type(profiled) is type(plain)
    assert "this backend cannot compile" in str(profiled)
    assert ip.user_ns["prof"].status == "error"


@pytest.mark.slow
def test_inductor_compiles_once_and_the_compile_shows_in_the_first_steps(ip):
    """A real inductor compile (~13 s on 2 cores)."""
    run(ip, SETUP)
    run(
        ip,
        "torch._dynamo.reset()\nmodel = torch.compile(Net())\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\nloader = data(240)\n",
    )
    run(ip, "_before = snapshot()")
    run(
        ip,
        PROFILED + LOOP,
    )
    run(ip, "profiled = delta(_before)")
    prof = ip.user_ns["prof"]
    check_phases(prof)
    assert prof.steps == 30
    comp = prof.compile
    assert comp["compiles"] >= 1 and comp["recompiles"] == 0 and comp["graph_breaks"] == 0
    assert ip.user_ns["profiled"]["stats"]["unique_graphs"] == 1
    assert comp["step_compile_s"][0] > 0.5 * comp["compile_s"]  # the first step compiled
    found = next(f for f in prof.findings if f.code == "compile")
    assert found.share > 0.5 and "later epochs" in found.detail


def test_compile_is_none_for_an_eager_cell(ip):
    run(ip, SETUP)
    run(ip, "model = Net(); opt = torch.optim.SGD(model.parameters(), lr=0.1); loader = data(32)")
    run(
        ip,
        PROFILED + LOOP,
    )
    assert ip.user_ns["prof"].compile is None


def test_dynamo_is_not_imported_by_a_cell_that_never_compiles():
    """Importing dynamo costs about a second: the probes must not add it to a
    cell that does not import it itself (an optimizer's step() does; a
    backward-only loop does not). The FLOP count after the run uses torch's
    FlopCounterMode, whose module hooks import it: left out here."""
    import subprocess
    import sys

    code = (
        "from IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython(); ip.run_cell('%load_ext epochmagic')\n"
        "import epochmagic.diagnosis.evidence as ev; ev._flops = lambda first_call: None\n"
        "ip.run_cell('import torch, torch.nn as nn\\nm = nn.Linear(4, 2)')\n"
        "r = ip.run_cell('%%epochprofile --text --steps 3\\n"
        "for i in range(5):\\n    m(torch.randn(2, 4)).sum().backward()')\n"
        "import sys; assert r.success\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_compile_field_round_trips_and_old_profiles_load(tmp_path):
    from epochmagic import EpochProfile
    from epochmagic.model.profile import SCHEMA_VERSION

    prof = EpochProfile(compile={"compile_s": 1.5, "recompiles": 1, "recompile_reasons": ["x"]})
    back = EpochProfile.load(prof.save(tmp_path / "p.json"))
    assert back.compile == prof.compile
    old = prof.to_dict()
    del old["compile"]
    old["schema_version"] = 1
    assert EpochProfile.from_dict(old).compile is None
    assert SCHEMA_VERSION >= 2
    assert torch is not None


def _dynamo_as_found(ip, codes: list) -> dict:
    """What a what-if must leave as it found it: the cache entries of the
    compiled code (the same compiled code, in order), the recompile limits,
    the automatic-dynamic record, a tensor's dynamic marks, torch's counters."""
    import copy

    from epochmagic.session.compilecopies import cache_entries

    pgo = sys.modules.get("torch._dynamo.pgo")
    config = torch._dynamo.config
    return {
        "entries": {c: [e.code for e in cache_entries(c)] for c in codes},
        "limits": (config.recompile_limit, config.accumulated_recompile_limit),
        "pgo": repr(copy.deepcopy(getattr(pgo, "_CODE_STATE", None))),
        "marks": repr(vars(ip.user_ns["marked"])),
        "counters": {k: dict(v) for k, v in torch._dynamo.utils.counters.items()},
    }


def test_what_ifs_on_a_compiled_model_leave_dynamo_as_they_found_it(ip):
    run(ip, SETUP)
    loop = _build(ip, "torch.compile(model)", n=96)
    run(ip, "marked = torch.randn(8, 16); torch._dynamo.mark_dynamic(marked, 0)")
    run(ip, "%%epochprofile -o prof --text --no-lines\n" + loop)
    prof = ip.user_ns["prof"]
    from epochmagic.session.compilecopies import cache_entries, compiled_codes

    codes = [
        c
        for r in __import__("torch")._dynamo.convert_frame.input_codes.seen
        if (c := r()) is not None and cache_entries(c)
    ]
    assert any(c.co_name == "forward" for c in compiled_codes())  # the user's compiled forward
    found = _dynamo_as_found(ip, codes)

    first = prof.rerun(workers=0, steps=4)
    assert first.status == "ok" and first.compile["compiles"] >= 1
    assert any("copies of your compiled code" in n for n in first.notes)
    assert _dynamo_as_found(ip, codes) == found
    bigger = prof.rerun(batch_size=16, steps=4)  # a new batch shape: the copy recompiles
    assert bigger.status == "ok" and bigger.compile["recompiles"] >= 1
    assert bigger.compile["recompile_reasons"]
    assert bigger.epoch_s < sum(bigger.step_times) * 6 + 1.0  # compile kept out of the estimate
    assert _dynamo_as_found(ip, codes) == found
    # a sweep (the budget a real recompile would use is the copies', never the user's)
    limit = torch._dynamo.config.recompile_limit
    results = prof.sweep(batch_size=[4, 12, 24, 32, 40, 48, 56, 64, 72, 80][: limit + 2], steps=2)
    assert all(r.status == "ok" for r in results)
    assert _dynamo_as_found(ip, codes) == found
    # and the user's own next epoch runs the code it compiled: nothing recompiles
    run(ip, "_before = snapshot()\n" + loop + "after = delta(_before)\n")
    assert not ip.user_ns["after"]["stats"].get("unique_graphs")


def test_a_first_epoch_spent_compiling_is_compile_bound():
    from epochmagic import EpochProfile
    from epochmagic.report.textreport import verdict

    prof = EpochProfile(wall_s=10.0, steps=5, compile={"compile_s": 8.0})
    prof.phases["forward"] = 9.0
    prof.phases["other"] = 1.0
    assert verdict(prof).startswith("compile-bound: 80%") and "--skip-epochs 1" in verdict(prof)
    prof.compile = {"compile_s": 1.0}
    assert verdict(prof).startswith("compute-bound")
