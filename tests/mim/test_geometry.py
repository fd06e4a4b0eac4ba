"""The geometry invariant (docs/method.md): every L2 volume covers one masked L1 unit and every L3 volume one
masked L2 token, on many random draws."""

import pytest
import torch
import torch.nn.functional as F

from mim_nnunet.mim import MiMConfig, make_levels

TOKEN = 16


def unit_region(crop, unit, size):
    ux, uy, uz = unit // 4, (unit // 2) % 2, unit % 2
    sx, sy, sz = size
    return crop[:, ux * sx:(ux + 1) * sx, uy * sy:(uy + 1) * sy, uz * sz:(uz + 1) * sz]


def unit_tokens(unit, grid):
    """Raster indices of the tokens inside a unit, enumerated one by one."""
    ux, uy, uz = unit // 4, (unit // 2) % 2, unit % 2
    hx, hy, hz = (g // 2 for g in grid)
    return [(x * grid[1] + y) * grid[2] + z
            for x in range(ux * hx, (ux + 1) * hx) for y in range(uy * hy, (uy + 1) * hy)
            for z in range(uz * hz, (uz + 1) * hz)]


def token_region(volume, token, grid):
    tx, ty, tz = token // (grid[1] * grid[2]), (token // grid[2]) % grid[1], token % grid[2]
    return volume[:, tx * TOKEN:(tx + 1) * TOKEN, ty * TOKEN:(ty + 1) * TOKEN, tz * TOKEN:(tz + 1) * TOKEN]


@pytest.mark.parametrize("size", [(64, 64, 64), (64, 32, 96)])
@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("source", ["masked", "visible"])
def test_every_level_comes_from_the_right_region(size, channels, source):
    cfg = MiMConfig(input_size=size, in_channels=channels, next_level_from=source)
    grid, t = cfg.grid, cfg.num_tokens
    want_masked = source == "masked"
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        crops = torch.randn(2, channels, *cfg.l1_crop_size, generator=g)
        l1, l2, l3 = make_levels(crops, cfg, g)
        assert l1.inputs.shape == (2, channels, *size)
        assert torch.allclose(l1.inputs, F.interpolate(crops, size=size, mode="trilinear"))
        assert (l1.mask.sum(1) == t // 2).all()                     # 4 of 8 units
        assert l2.inputs.shape[0] == 2 * 4 and l3.inputs.shape[0] == 2 * 4 * 4
        for i in range(l2.inputs.shape[0]):
            b, unit = int(l2.parent[i]), int(l2.slot[i])
            assert torch.equal(l2.inputs[i], unit_region(crops[b], unit, size))
            assert l1.mask[b, unit_tokens(unit, grid)].eq(want_masked).all()
        for b in range(2):                                           # gamma2 distinct units per crop
            assert len(set(l2.slot[l2.parent == b].tolist())) == 4
        assert (l2.mask.sum(1) == t - int(t * 0.4)).all()
        for i in range(l3.inputs.shape[0]):
            p, tok = int(l3.parent[i]), int(l3.slot[i])
            native = token_region(l2.inputs[p], tok, grid)
            expected = F.interpolate(native[None], size=size, mode="trilinear", align_corners=False)[0]
            assert torch.allclose(l3.inputs[i], expected, atol=1e-6)
            assert bool(l2.mask[p, tok]) == want_masked
        assert (l3.mask.sum(1) == t - int(t * 0.5)).all()


def test_draws_are_reproducible_from_the_generator():
    cfg = MiMConfig(input_size=(32, 32, 32))
    crops = torch.randn(1, 1, 64, 64, 64)
    a = make_levels(crops, cfg, torch.Generator().manual_seed(5))
    b = make_levels(crops, cfg, torch.Generator().manual_seed(5))
    c = make_levels(crops, cfg, torch.Generator().manual_seed(6))
    assert all(torch.equal(x.mask, y.mask) and torch.equal(x.slot, y.slot) for x, y in zip(a, b))
    assert any(not torch.equal(x.mask, y.mask) for x, y in zip(a, c))


def test_levels_switch_and_bad_sizes():
    cfg = MiMConfig(input_size=(32, 32, 32), levels=2)
    assert len(make_levels(torch.randn(1, 1, 64, 64, 64), cfg)) == 2
    with pytest.raises(ValueError, match="multiples of 32"):
        MiMConfig(input_size=(48, 32, 32))
    with pytest.raises(ValueError, match="expected L1 crops"):
        make_levels(torch.randn(1, 1, 32, 32, 32), cfg)
    with pytest.raises(ValueError, match="gamma3=4 L3 volumes need as many visible L2 tokens; there are 3"):
        MiMConfig(input_size=(32, 32, 32), next_level_from="visible")       # 8 tokens, 5 masked, 3 visible
