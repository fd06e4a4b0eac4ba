import torch
from torch import nn

from mim_nnunet.optim import build_adamw, decay_param_groups


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
