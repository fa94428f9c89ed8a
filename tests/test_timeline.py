"""The attribution rules on hand-made event streams with known answers."""

from __future__ import annotations

import pytest
import torch

from epochmagic.analysis.timeline import PHASES, analyse, steady_median, warmup_count
from epochmagic.capture import recorder as r
from epochmagic.capture.recorder import Pass


class Script:
    """Builds an event stream on a fake clock, one millisecond at a time."""

    def __init__(self) -> None:
        self.t = 0.0
        self.events: list[r.Event] = []

    def wait(self, ms: float) -> None:
        self.t += ms / 1000

    def ev(self, kind: int, obj=None, info=None) -> None:
        self.events.append((self.t, kind, obj, info))

    def span(self, enter: int, ms: float, obj=None, info=None) -> None:
        self.ev(enter, obj, info)
        self.wait(ms)
        self.ev(r.EXIT_OF_ENTER[enter], obj, None)

    def batch(self, p: Pass, ms: float, samples: int = 8) -> None:
        self.ev(r.NEXT_ENTER, p)
        self.wait(ms)
        p.yielded += 1
        self.ev(r.NEXT_EXIT, p, (samples, None, None))

    def train_step(self, model, opt, fwd=2.0, bwd=3.0, optim=1.0, other=0.5) -> None:
        self.span(r.FWD_ENTER, fwd, model, (True, True, 8, None))
        self.span(r.BWD_ENTER, bwd)
        self.span(r.OPT_ENTER, optim, opt)
        self.wait(other)


@pytest.fixture
def model():
    return torch.nn.Linear(2, 2)


@pytest.fixture
def opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def params(opt) -> set[int]:
    return {id(p) for g in opt.param_groups for p in g["params"]}


def test_loader_epoch_phases_and_steps(model, opt):
    s = Script()
    s.wait(10)  # set-up
    p = Pass(object(), frozenset({("loader", 1)}), s.t, trained=True)
    s.span(r.ITER_ENTER, 4, p)  # worker start-up belongs to step 1's data
    for _ in range(5):
        s.batch(p, 1.0)
        s.train_step(model, opt)
    s.ev(r.NEXT_ENTER, p)
    s.wait(0.5)
    s.ev(r.NEXT_STOP, p)
    s.wait(2)  # code after the loop
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    assert tl.clock == "loader"
    assert len(tl.step_bounds) == 5
    assert tl.step_bounds[0][0] == pytest.approx(0.010)
    assert tl.phases["data"] == pytest.approx(0.004 + 0.005)
    assert tl.phases["forward"] == pytest.approx(0.010)
    assert tl.phases["backward"] == pytest.approx(0.015)
    assert tl.phases["optimizer"] == pytest.approx(0.005)
    assert tl.phases["eval"] == 0
    # the StopIteration ask and the tail are outside the steps: other
    assert tl.outside_steps_s == pytest.approx(0.010 + 0.0005 + 0.002)
    assert sum(tl.phases.values()) == pytest.approx(tl.wall_s, abs=1e-12)
    assert set(tl.phases) == set(PHASES)
    assert tl.step_samples == [8] * 5
    for sp, (a, b) in zip(tl.step_phases, tl.step_bounds):
        assert sum(sp.values()) == pytest.approx(b - a, abs=1e-12)
        assert min(sp.values()) >= 0


def test_eval_pass_is_a_context(model, opt):
    s = Script()
    train = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
    val = Pass(object(), frozenset({("loader", 2)}), 0.0)
    for _ in range(2):
        s.batch(train, 1)
        s.train_step(model, opt)
    s.ev(r.NEXT_ENTER, train)
    s.ev(r.NEXT_STOP, train)
    t0 = s.t
    s.span(r.ITER_ENTER, 1, val)
    for _ in range(3):
        s.batch(val, 1)
        s.span(r.FWD_ENTER, 2, model, (False, False, 8, None))
        s.wait(0.5)
    s.ev(r.NEXT_ENTER, val)
    s.ev(r.NEXT_STOP, val)
    t1 = s.t
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    assert tl.phases["eval"] == pytest.approx(t1 - t0)
    assert tl.phases["forward"] == pytest.approx(0.004)  # training forwards only


def test_unexhausted_eval_pass_ends_after_its_last_forward(model, opt):
    """Lightning's sanity check takes two batches and stops iterating."""
    s = Script()
    val = Pass(object(), frozenset({("loader", 2)}), 0.0)
    s.span(r.ITER_ENTER, 1, val)
    for _ in range(2):
        s.batch(val, 1)
        s.span(r.FWD_ENTER, 2, model, (False, False, 8, None))
    t_end_eval = s.t
    s.wait(3)
    train = Pass(object(), frozenset({("loader", 1)}), s.t, trained=True)
    s.batch(train, 1)
    s.train_step(model, opt)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    assert tl.eval_spans == [(0.0, pytest.approx(t_end_eval))]
    assert tl.phases["eval"] == pytest.approx(t_end_eval)


def test_teacher_forward_inside_a_step_stays_forward(model, opt):
    teacher = torch.nn.Linear(2, 2)  # not in any optimizer
    s = Script()
    p = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
    s.batch(p, 1)
    s.span(r.FWD_ENTER, 5, teacher, (False, False, 8, None))
    s.train_step(model, opt)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    assert tl.phases["eval"] == 0
    assert tl.phases["forward"] == pytest.approx(0.007)


def test_innermost_phase_wins_when_phases_nest(model, opt):
    """Lightning runs forward and backward inside optimizer.step(closure)."""
    s = Script()
    p = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
    s.batch(p, 1)
    s.ev(r.OPT_ENTER, opt)
    s.wait(1)
    s.span(r.FWD_ENTER, 2, model, (True, True, 8, None))
    s.span(r.ZERO_ENTER, 0.5)
    s.span(r.BWD_ENTER, 3)
    s.wait(1)
    s.ev(r.OPT_EXIT, opt)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    assert tl.phases["forward"] == pytest.approx(0.002)
    assert tl.phases["backward"] == pytest.approx(0.003)
    assert tl.phases["optimizer"] == pytest.approx(0.0025)
    assert tl.phases["data"] == pytest.approx(0.001)


def test_prefetching_loop_keeps_last_batch_in_the_last_step(model, opt):
    """A loop that asks for batch i+1 before training on batch i."""
    s = Script()
    p = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
    s.batch(p, 1)
    s.batch(p, 1)
    s.train_step(model, opt)  # batch 1
    s.ev(r.NEXT_ENTER, p)
    s.ev(r.NEXT_STOP, p)
    s.train_step(model, opt)  # batch 2, after the loader said it is done
    end_train = s.t
    s.wait(5)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    assert len(tl.step_bounds) == 2
    assert tl.step_bounds[-1][1] == pytest.approx(end_train - 0.0005)
    assert tl.phases["forward"] == pytest.approx(0.004)


def test_no_loader_optimizer_clock_and_samples(model, opt):
    s = Script()
    s.wait(20)  # building the model
    for _ in range(4):
        s.wait(1)  # get_batch()
        for _micro in range(2):  # gradient accumulation
            s.span(r.FWD_ENTER, 2, model, (True, True, 16, None))
            s.span(r.BWD_ENTER, 2)
        s.span(r.OPT_ENTER, 1, opt)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt), clock_opt=opt)
    assert tl.clock == "optimizer"
    assert len(tl.step_bounds) == 4
    assert tl.step_samples == [32] * 4
    assert tl.step_bounds[0][0] == pytest.approx(0.021)  # first training forward
    assert tl.phases["forward"] == pytest.approx(0.016)


def test_no_grad_eval_of_trained_model_without_loader(model, opt):
    s = Script()
    for _ in range(2):
        s.span(r.FWD_ENTER, 2, model, (True, True, 16, None))
        s.span(r.BWD_ENTER, 2)
        s.span(r.OPT_ENTER, 1, opt)
    t0 = s.t
    for _ in range(3):  # estimate_loss(): get_batch + no-grad forward
        s.span(r.FWD_ENTER, 2, model, (False, False, 16, None))
        s.wait(1)
    s.span(r.FWD_ENTER, 2, model, (True, True, 16, None))
    s.span(r.BWD_ENTER, 2)
    s.span(r.OPT_ENTER, 1, opt)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt), clock_opt=opt)
    assert tl.phases["eval"] == pytest.approx(s_eval := (t0 + 0.008) - t0)
    assert s_eval > 0


def test_eval_mode_forward_followed_by_backward_is_training(model, opt):
    """Fine-tuning with frozen batch-norm runs the model in eval mode."""
    s = Script()
    for _ in range(3):
        s.span(r.FWD_ENTER, 2, model, (True, False, 16, None))
        s.span(r.BWD_ENTER, 2)
        s.span(r.OPT_ENTER, 1, opt)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt), clock_opt=opt)
    assert tl.phases["eval"] == 0
    assert tl.phases["forward"] == pytest.approx(0.006)


def test_backward_clock_when_no_optimizer(model):
    s = Script()
    for _ in range(3):
        s.span(r.FWD_ENTER, 1, model, (True, True, 4, None))
        s.ev(r.BWD_ENTER)
        s.span(r.BWD_ENTER, 1)  # Tensor.backward calls autograd.backward
        s.ev(r.BWD_EXIT)
        s.wait(1)
    tl = analyse(s.events, 0.0, s.t)
    assert tl.clock == "backward"
    assert len(tl.step_bounds) == 3


def test_nothing_trained_means_no_steps():
    s = Script()
    s.wait(5)
    tl = analyse(s.events, 0.0, s.t)
    assert tl.clock == "none"
    assert tl.step_bounds == []
    assert tl.phases["other"] == pytest.approx(0.005)


def test_unbalanced_events_from_an_interrupt_do_not_break_the_sweep(model, opt):
    s = Script()
    p = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
    s.batch(p, 1)
    s.ev(r.FWD_ENTER, model, (True, True, 8, None))  # KeyboardInterrupt inside forward
    s.wait(3)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    assert tl.phases["forward"] == pytest.approx(0.003)
    assert sum(tl.phases.values()) == pytest.approx(tl.wall_s, abs=1e-12)


def test_tokens_from_integer_inputs(model, opt):
    s = Script()
    p = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
    s.ev(r.NEXT_ENTER, p)
    s.ev(r.NEXT_EXIT, p, (4, 4 * 128, None))
    s.train_step(model, opt)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    assert tl.step_tokens == [512]


def test_memory_per_step(model, opt):
    s = Script()
    p = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
    for i in range(3):
        s.ev(r.MEM, None, 100 + i)
        s.batch(p, 1)
        s.train_step(model, opt)
    tl = analyse(s.events, 0.0, s.t, trained_param_ids=params(opt))
    # a step's memory is read when the next batch is asked for (the step's end);
    # the last step has no later reading and keeps the latest one
    assert tl.step_memory == [101, 102, 102]


def test_steady_median_leaves_out_warmup():
    times = [5.0] + [1.0] * 10 + [1.2] * 9
    assert warmup_count(times) == 2
    assert steady_median(times) == pytest.approx(1.1)
    assert steady_median([2.0]) == 2.0
    assert steady_median([]) is None
