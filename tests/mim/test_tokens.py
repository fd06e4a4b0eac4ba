import torch

from mim_nnunet.mim.tokens import (
    patchify,
    split_tokens,
    split_units,
    token_mask_to_grid,
    unit_means,
    unit_token_mask,
    unpatchify,
)


def test_patchify_by_hand_and_roundtrip():
    x = torch.arange(2 * 4 * 4 * 2, dtype=torch.float32).reshape(1, 2, 4, 4, 2)   # C=2, grid (2,2,1) of 2^3
    p = patchify(x, token=2)
    assert p.shape == (1, 4, 2 ** 3 * 2)
    # token 1 = grid position (0, 1, 0): voxels x in 0:2, y in 2:4, z in 0:2; channels last
    expected = [x[0, c, i, j, k].item() for i in range(2) for j in range(2, 4) for k in range(2) for c in range(2)]
    assert p[0, 1].tolist() == expected
    assert torch.equal(unpatchify(p, (2, 2, 1), 2, token=2), x)


def test_split_tokens_and_units_are_the_native_regions():
    x = torch.randn(2, 3, 64, 32, 96)
    tokens = split_tokens(x)                                  # grid (4, 2, 6)
    t = (2 * 2 + 1) * 6 + 5                                   # token (2, 1, 5) in raster order
    assert torch.equal(tokens[1, t], x[1, :, 32:48, 16:32, 80:96])
    units = split_units(x)                                    # octants of size (32, 16, 48)
    assert torch.equal(units[0, 1 * 4 + 0 * 2 + 1], x[0, :, 32:64, 0:16, 48:96])


def test_unit_masks_and_means_by_hand():
    unit_mask = torch.tensor([[True, False, False, False, False, False, False, True]])
    m = unit_token_mask(unit_mask, (4, 2, 2)).reshape(4, 2, 2)   # units are 2 x 1 x 1 tokens
    assert m[0:2, 0, 0].all() and m[2:4, 1, 1].all() and int(m.sum()) == 4
    grid = token_mask_to_grid(torch.tensor([[True, False]]), (2, 1, 1), scale=2)
    assert grid.shape == (1, 1, 4, 2, 2) and grid[0, 0, :2].eq(1).all() and grid[0, 0, 2:].eq(0).all()
    feats = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1)            # grid (2,2,2): unit = token
    assert torch.equal(unit_means(feats, (2, 2, 2)), feats)
    feats = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)          # grid (4,2,2)
    # unit 0 holds tokens (0,0,0) and (1,0,0) = raster 0 and 4
    assert unit_means(feats, (4, 2, 2))[0, 0, 0].item() == (0 + 4) / 2
