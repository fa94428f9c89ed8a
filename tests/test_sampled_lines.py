"""Sampled lines (``--lines sampled``, the default) through IPython: the lines
come from stack samples of the measured epoch itself, so library loops get
lines too; the sampler never outlives the magic and never disturbs the cell's
own signal handlers (docs/design.md §4.6)."""

from __future__ import annotations

import signal

import pytest

from epochmagic.capture.sampler import INTERVAL_S, Sampler
from epochmagic.model.profile import EpochProfile
from epochmagic.session.notebook import is_notebook_file
from tests.conftest import run

SETUP = """
import time
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
ds = TensorDataset(torch.randn(320, 8), torch.randint(0, 3, (320,)))
loader = DataLoader(ds, batch_size=16)
net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(net.parameters(), lr=0.1)
"""

# 20 steps; the planted line sleeps 10 ms per step after the optimizer: `other`
PLAIN = """for epoch in range(3):
    for xb, yb in loader:
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
        time.sleep(0.01)  # planted
"""


def running_samplers() -> list[int]:
    """Real-time signals whose handler is still a Sampler's."""
    if not hasattr(signal, "SIGRTMIN"):
        return []
    return [
        s
        for s in range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
        if isinstance(getattr(signal.getsignal(s), "__self__", None), Sampler)
    ]


def by_source(prof: EpochProfile) -> dict[str, object]:
    return {ls.source.strip(): ls for ls in prof.lines}


def check_sampled(prof: EpochProfile) -> None:
    """What every sampled line holds: no hits, ticks split over the phases."""
    assert prof.lines_source == "sampled"
    assert prof.lines, prof.notes
    assert prof.lines_steps == prof.steps
    every = f"lines sampled every {INTERVAL_S * 1000:g} ms"
    assert any(every in n and "not sampled" in n for n in prof.notes), prof.notes
    for ls in prof.lines:
        assert ls.hits is None and ls.ticks > 0 and ls.time_s > 0, ls
        assert sum(ls.phase_ticks.values()) == ls.ticks, ls
        assert ls.wait_ticks == 0  # the CPU: no device to wait on
    assert not any(ls.filename.startswith("torch/") for ls in prof.lines), prof.lines
    assert not running_samplers()


def test_plain_cell_hottest_line_is_the_planted_one_in_its_phase(ip):
    run(ip, SETUP)
    result = run(ip, "%%epochprofile -o prof --text\n" + PLAIN)
    prof = ip.user_ns["prof"]
    check_sampled(prof)
    hottest = prof.lines[0]
    assert hottest.source.strip() == "time.sleep(0.01)  # planted"
    assert hottest.filename == f"Cell In[{result.execution_count}]"
    assert hottest.lineno == 6  # line 1 is the magic's line
    assert hottest.phase_ticks.get("other", 0) >= 0.9 * hottest.ticks, hottest
    # 20 steps x 10 ms: the sleeps' time, as sampled (weights tile the run)
    assert 0.15 <= hottest.time_s <= prof.wall_s
    # every line is the cell's own: nothing of IPython's or the magic's above it
    assert {ls.filename for ls in prof.lines} == {hottest.filename}


def test_notebook_functions_lines_appear_labelled(ip):
    run(ip, SETUP)
    defined = run(
        ip,
        """
def step(xb, yb):
    loss = nn.functional.cross_entropy(net(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    time.sleep(0.01)
    return loss
""",
    )
    run(
        ip,
        """%%epochprofile -o prof --text
for epoch in range(3):
    for xb, yb in loader:
        step(xb, yb)
""",
    )
    prof = ip.user_ns["prof"]
    check_sampled(prof)
    lines = by_source(prof)
    inner, call = lines["time.sleep(0.01)"], lines["step(xb, yb)"]
    assert inner.filename == f"Cell In[{defined.execution_count}]"
    assert call.time_s >= inner.time_s  # a line's time includes its calls
    assert call.ticks >= inner.ticks
    assert prof.lines[0].time_s == call.time_s  # the call holds every sample of the step


def test_skipped_epochs_are_not_sampled(ip):
    run(ip, SETUP)
    run(
        ip,
        """%%epochprofile -o prof --text --skip-epochs 1
for epoch in range(3):
    for xb, yb in loader:
        if epoch == 0:
            time.sleep(0.01)  # the skipped epoch only
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
        time.sleep(0.005)  # every epoch
""",
    )
    prof = ip.user_ns["prof"]
    check_sampled(prof)
    lines = by_source(prof)
    assert "time.sleep(0.005)  # every epoch" in lines
    assert "time.sleep(0.01)  # the skipped epoch only" not in lines


def test_traced_off_and_no_lines(ip):
    run(ip, SETUP)
    run(ip, "%%epochprofile -o prof --text --lines traced\n" + PLAIN)
    prof = ip.user_ns["prof"]
    assert prof.lines_source == "traced"
    assert prof.lines and all(isinstance(ls.hits, int) and ls.hits > 0 for ls in prof.lines)
    assert by_source(prof)["time.sleep(0.01)  # planted"].hits == prof.lines_steps
    assert not any("lines sampled" in n for n in prof.notes)
    for options in ("--lines off", "--no-lines", "--lines off --no-lines", "--lines=off"):
        run(ip, SETUP)
        run(ip, f"%%epochprofile -o prof --text {options}\n" + PLAIN)
        prof = ip.user_ns["prof"]
        assert prof.lines == [] and prof.lines_source is None, options
        assert prof.steps == 20
    assert not running_samplers()


@pytest.mark.parametrize("lines", ["sampled", "traced"])
def test_no_lines_contradicting_lines_is_refused(ip, lines):
    run(ip, SETUP)
    ip.user_ns.pop("prof", None)
    result = run(ip, f"%%epochprofile -o prof --lines {lines} --no-lines\n" + PLAIN, ok=False)
    assert "contradicts" in str(result.error_in_exec)
    assert "prof" not in ip.user_ns  # nothing ran


def test_cell_timer_signal_and_faulthandler_keep_working(ip, tmp_path):
    if not hasattr(signal, "setitimer"):
        pytest.skip("no setitimer on this platform")
    import faulthandler

    was_enabled = faulthandler.is_enabled()
    run(ip, SETUP)
    expected = sum(float(xb.sum()) for xb, _ in ip.user_ns["loader"])
    ip.user_ns["log_path"] = str(tmp_path / "faults.log")
    try:
        run(
            ip,
            """%%epochprofile -o prof --text
import faulthandler, signal
fired = []
log = open(log_path, "w")
faulthandler.enable(file=log)
old = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
signal.setitimer(signal.ITIMER_REAL, 0.003, 0.003)
try:
    total = 0.0
    for i, (xb, yb) in enumerate(loader):
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
        total += float(xb.sum())
        time.sleep(0.01)
        if i == 3:
            faulthandler.dump_traceback(file=log, all_threads=True)
finally:
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    signal.signal(signal.SIGALRM, old)
    log.flush()
""",
        )
    finally:
        faulthandler.disable()
        if was_enabled:
            faulthandler.enable()
        ip.user_ns["log"].close()
    ns = ip.user_ns
    assert len(ns["fired"]) >= 20 and set(ns["fired"]) == {signal.SIGALRM}  # its handler ran
    assert ns["total"] == pytest.approx(expected)  # its results are right
    assert signal.getsignal(signal.SIGALRM) is ns["old"]
    dump = (tmp_path / "faults.log").read_text()
    assert "Current thread" in dump and "most recent call first" in dump  # the cell's dump
    prof = ns["prof"]
    check_sampled(prof)
    assert by_source(prof)["time.sleep(0.01)"].ticks > 0


@pytest.mark.parametrize(
    ("raised", "status"), [("ValueError('boom')", "error"), ("KeyboardInterrupt", "interrupted")]
)
def test_sampler_is_gone_after_an_error_or_an_interrupt(ip, raised, status):
    run(ip, SETUP)
    result = run(
        ip,
        f"""%%epochprofile -o prof --text
for i, (xb, yb) in enumerate(loader):
    loss = nn.functional.cross_entropy(net(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    time.sleep(0.01)
    if i == 9:
        raise {raised}
""",
        ok=False,
    )
    assert type(result.error_in_exec).__name__ == raised.split("(")[0]
    assert not running_samplers()
    prof = ip.user_ns["prof"]
    assert prof.status == status and prof.steps == 10
    # what was measured before the error is still attributed
    assert prof.lines_source == "sampled"
    assert by_source(prof)["time.sleep(0.01)"].ticks > 0


def refuse(self: Sampler) -> bool:
    self.why_not = "refused by the test"
    return False


def test_sampler_that_cannot_start_falls_back_to_traced(ip, monkeypatch):
    monkeypatch.setattr(Sampler, "start", refuse)
    run(ip, SETUP)
    run(ip, "%%epochprofile -o prof --text\n" + PLAIN)
    prof = ip.user_ns["prof"]
    assert any("refused by the test" in n and "traced" in n for n in prof.notes), prof.notes
    assert prof.lines_source == "traced"
    assert prof.lines and all(ls.hits and ls.hits > 0 for ls in prof.lines)


def test_sampler_that_cannot_start_is_off_where_a_rerun_is_unsafe(ip, monkeypatch):
    monkeypatch.setattr(Sampler, "start", refuse)
    run(ip, SETUP)
    # a trainer whose progress a re-run would advance (named as Ignite's is)
    run(ip, "class Engine: pass\nEngine.__module__ = 'ignite.engine.engine'\nengine = Engine()\n")
    run(ip, "%%epochprofile -o prof --text\n" + PLAIN)
    prof = ip.user_ns["prof"]
    note = next(n for n in prof.notes if "refused by the test" in n)
    assert "no lines" in note and "an Ignite Engine" in note
    assert prof.lines == [] and prof.lines_source is None


def test_saved_profile_keeps_the_sampled_lines(ip, tmp_path):
    run(ip, SETUP)
    run(ip, "%%epochprofile -o prof --text\n" + PLAIN)
    prof = ip.user_ns["prof"]
    check_sampled(prof)
    again = EpochProfile.load(prof.save(tmp_path / "p.json"))
    assert again.lines_source == "sampled"
    assert again.lines == prof.lines
    assert again.lines[0].phase_ticks == prof.lines[0].phase_ticks
    assert again.lines[0].hits is None and again.lines[0].ticks == prof.lines[0].ticks


# -- library loops: the loop's own lines, never torch's ----------------------------


def library_lines(prof: EpochProfile, prefix: str) -> list[object]:
    check_sampled(prof)
    found = [ls for ls in prof.lines if ls.filename.startswith(prefix)]
    assert found, [ls.filename for ls in prof.lines]
    assert all(ls.source for ls in found)
    return found


@pytest.mark.slow
@pytest.mark.integration
def test_lightning_fit_gets_its_loop_lines(ip):
    pytest.importorskip("lightning")
    run(
        ip,
        """
import time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import lightning.pytorch as pl

torch.manual_seed(0)
train_loader = DataLoader(
    TensorDataset(torch.randn(256, 16), torch.randint(0, 3, (256,))), batch_size=16)

class LitModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        time.sleep(0.005)
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

lit = LitModel()
trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, enable_checkpointing=False,
                     logger=False, enable_progress_bar=False, enable_model_summary=False)
""",
    )
    run(ip, "%%epochprofile -o prof --text\ntrainer.fit(lit, train_loader)\n")
    prof = ip.user_ns["prof"]
    assert prof.steps == 16
    library_lines(prof, "lightning/")
    assert by_source(prof)["time.sleep(0.005)"].filename.startswith("Cell In[")
    assert not any("no line attribution" in n for n in prof.notes)


@pytest.mark.slow
@pytest.mark.integration
def test_hugging_face_trainer_gets_its_loop_lines(ip, tmp_path):
    pytest.importorskip("transformers")
    ip.user_ns["out_dir"] = str(tmp_path)
    run(
        ip,
        """
import torch
import transformers
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
transformers.utils.logging.set_verbosity_error()

class Tokens(Dataset):
    '''Random token ids and labels: nothing downloaded.'''
    def __init__(self, n, seq, vocab):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}

torch.manual_seed(0)
bert = BertForSequenceClassification(BertConfig(
    vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=32))
hf = Trainer(
    model=bert,
    args=TrainingArguments(output_dir=out_dir, num_train_epochs=2, per_device_train_batch_size=8,
                           report_to=[], save_strategy="no", logging_strategy="no",
                           disable_tqdm=True, use_cpu=True),
    train_dataset=Tokens(8 * 16, 16, 500))
""",
    )
    run(ip, "%%epochprofile -o prof --text\nhf.train()\n")
    prof = ip.user_ns["prof"]
    assert prof.steps == 16
    library_lines(prof, "transformers/trainer.py")
    assert not any(ls.filename.startswith("accelerate/") for ls in prof.lines)


@pytest.mark.slow
@pytest.mark.integration
def test_ignite_run_gets_its_loop_lines(ip):
    pytest.importorskip("ignite")
    run(
        ip,
        """
import time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from ignite.engine import Events, create_supervised_trainer

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
loader = DataLoader(TensorDataset(torch.randn(256, 16), torch.randint(0, 3, (256,))),
                    batch_size=16)
trainer = create_supervised_trainer(
    model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())

@trainer.on(Events.ITERATION_COMPLETED)
def pause(engine):
    time.sleep(0.005)
""",
    )
    run(ip, "%%epochprofile -o prof --text\ntrainer.run(loader, max_epochs=3)\n")
    prof = ip.user_ns["prof"]
    assert prof.steps == 16
    library_lines(prof, "ignite/")
    assert by_source(prof)["time.sleep(0.005)"].filename.startswith("Cell In[")


def test_only_the_measured_run_is_sampled(ip, monkeypatch):
    """What-if and traced runs are never sampled: one sampler start per magic."""
    starts = []
    real = Sampler.start

    def counted(self: Sampler) -> bool:
        starts.append(self)
        return real(self)

    monkeypatch.setattr(Sampler, "start", counted)
    run(ip, SETUP)
    run(ip, "%%epochprofile -o prof --text\n" + PLAIN)
    assert len(starts) == 1
    prof = ip.user_ns["prof"]
    again = prof.rerun(steps=3)
    assert again.steps == 3 and len(starts) == 1
    run(ip, "%%epochprofile -o prof --text --lines traced\n" + PLAIN)
    assert len(starts) == 1 and ip.user_ns["prof"].lines_source == "traced"
    assert not running_samplers()


@pytest.mark.slow
def test_compiled_cell_gets_sampled_lines(ip):
    """Sampling re-runs nothing, so compiled code gets lines (traced does not)."""
    run(ip, SETUP)
    run(ip, "cnet = torch.compile(net, backend='eager')\n")
    run(ip, "%%epochprofile -o prof --text\n" + PLAIN.replace("net(xb)", "cnet(xb)"))
    prof = ip.user_ns["prof"]
    assert prof.compile is not None
    check_sampled(prof)
    # the first call compiles (its line may be the hottest); the planted line still shows
    assert by_source(prof)["time.sleep(0.01)  # planted"].phase_ticks.get("other", 0) > 0
    assert not any("no line attribution" in n for n in prof.notes)


def test_line_form_takes_lines_as_an_option_with_a_value(ip):
    run(ip, SETUP)
    run(ip, "def train():\n" + "".join("    " + line + "\n" for line in PLAIN.splitlines()))
    run(ip, "%epochprofile -o prof --text --lines off train()")
    prof = ip.user_ns["prof"]
    assert prof.steps == 20 and prof.lines == [] and prof.lines_source is None
    run(ip, "%epochprofile -o prof --text --lines=sampled train()")
    prof = ip.user_ns["prof"]
    check_sampled(prof)
    assert by_source(prof)["train()"].time_s >= prof.lines[0].time_s * 0.99


def test_a_lazy_linecache_entry_is_not_a_notebook_file(ip):
    """linecache's lazy entries (1-tuples: dynamo's generated code registers
    them) are modules' files, never a cell's."""
    import linecache

    name = "/nonexistent/epochmagic_lazy_entry.py"
    linecache.cache[name] = (lambda: "x = 1\n",)
    try:
        assert not is_notebook_file(ip, name)
    finally:
        linecache.cache.pop(name, None)
