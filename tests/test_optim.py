import math

import pytest
import torch
from torch import nn

from mim_nnunet.optim import (
    WarmupCosineLR,
    build_adamw,
    decay_param_groups,
    warmup_cosine_factor,
    warmup_steps_for,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3)              # weight decayed, bias not
        self.norm = nn.LayerNorm(2)                 # neither
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 2))   # by name: not decayed
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)


def test_decay_groups_split_by_shape_and_name():
    model = Tiny()
    groups = decay_param_groups(model, weight_decay=0.05)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert ids[0] == {id(model.conv.weight)}
    assert ids[1] == {id(model.conv.bias), id(model.norm.weight), id(model.norm.bias), id(model.pos_embed)}


def test_build_adamw_uses_recipe_values():
    opt = build_adamw(Tiny(), lr=3e-4, weight_decay=1e-5, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.9, 0.95) for g in opt.param_groups)


def test_fused_adamw_makes_the_same_updates():
    """``fused`` (pre-training's choice) changes the kernel, not the update: three steps of both agree to float rounding, and the weights did move."""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = {k: v.clone() for k, v in nets[0].state_dict().items()}
    opts = [build_adamw(net, 1e-2, 0.05, (0.9, 0.95), fused=fused) for net, fused in zip(nets, (False, True))]
    assert [g.get("fused") for g in opts[1].param_groups] == [True, True]      # decayed and not decayed
    x = torch.randn(8, 4)
    for _ in range(3):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
        assert float((a.detach() - start[name]).abs().max()) > 1e-3, name


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
