import math

import pytest
import torch

from mim_nnunet.schedules import WarmupCosineLR, warmup_cosine_factor, warmup_steps_for


@pytest.mark.parametrize("step, expected", [
    (0, 1 / 3),                                   # warm-up: (0 + 1) / (2 + 1)
    (1, 2 / 3),
    (2, 1.0),                                     # cosine starts at the top
    (6, 0.5),                                     # halfway through 8 cosine steps: cos(pi / 2) = 0
    (9, 0.5 * (1 + math.cos(math.pi * 7 / 8))),   # = 0.0380602...
    (10, 0.0),
])
def test_factor_matches_hand_values(step, expected):
    assert warmup_cosine_factor(step, total_steps=10, warmup_steps=2) == pytest.approx(expected, abs=1e-12)


def test_factor_rejects_bad_lengths():
    with pytest.raises(ValueError):
        warmup_cosine_factor(0, total_steps=0, warmup_steps=0)
    with pytest.raises(ValueError):
        warmup_cosine_factor(0, total_steps=5, warmup_steps=5)


def test_scheduler_keeps_group_ratios_and_resumes_at_any_epoch():
    w1, w2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [w1], "lr": 1e-3}, {"params": [w2], "lr": 1e-4}])
    sched = WarmupCosineLR(opt, total_steps=10, warmup_steps=2)
    sched.step(6)                                  # nnU-Net passes the epoch explicitly, e.g. after --c
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5e-3, 0.5e-4])
    sched.step(0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 / 3, 1e-4 / 3])
    sched.step()                                   # no argument: the step after the last one
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 / 3)


def test_warmup_steps_for():
    assert warmup_steps_for(1000, 0.05) == 50
    assert warmup_steps_for(1, 0.05) == 0
    assert warmup_steps_for(2, 0.9) == 1          # always leaves at least one cosine step
