"""The learning-rate schedule: warm-up, cosine decay by steps, and by the time budget."""

import time

import pytest
import torch

from ldmtool.train.common import warmup_cosine


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def _lr(opt):
    return opt.param_groups[0]["lr"]


def test_warmup_then_cosine_by_steps():
    opt = _opt()
    sched = warmup_cosine(opt, warmup=4, total=14)
    lrs = []
    for _ in range(14):
        lrs.append(_lr(opt))
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # non-increasing after warm-up
    assert _lr(opt) == pytest.approx(0.1)  # decayed to 10% at the end


def test_time_budget_decays_the_rate_before_the_steps_run_out():
    opt = _opt()
    sched = warmup_cosine(opt, warmup=1, total=10_000, max_minutes=0.2 / 60)  # 0.2 s budget
    opt.step()
    sched.step()
    early = _lr(opt)
    time.sleep(0.25)
    opt.step()
    sched.step()
    assert early > 0.9
    assert _lr(opt) == pytest.approx(0.1)  # budget spent: fully decayed, although 2 of 10,000 steps ran
