"""The hybrid backbone: the release's names load, masked voxels never reach visible tokens, the CPU's
channels-last depthwise conv computes the plain formula."""

import json
from pathlib import Path

import pytest
import torch

from helpers.masking import masked_change
from mim_nnunet.backbones import build_encoder
from mim_nnunet.backbones.hybrid import (
    HYBRID_SIZES,
    HybridFinetuneEncoder,
    MaskedConvBlock,
)
from mim_nnunet.mim import MiMConfig, build_mim

KEYS = json.loads((Path(__file__).parents[1] / "fixtures" / "official_mim_keys.json").read_text(encoding="utf-8"))


def random_state(shapes):
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v, generator=g) if v else torch.tensor(0) for k, v in shapes.items()}


def test_official_release_names_load_into_hybrid_encoder_and_decoder():
    model = build_mim("hybrid", "base", MiMConfig(input_size=(96, 96, 96)))
    official = random_state(KEYS["pretrain"])
    decoder_keys = {k for k in official if k.startswith("decoder_") or k == "mask_token"}
    heads = {k for k in official if k.startswith("aggregate_")}     # the release's alignment heads: ours differ
    encoder_state = {k: v for k, v in official.items() if k not in decoder_keys | heads}
    assert model.encoder.load_state_dict(encoder_state, strict=True)          # raises on missing/unexpected
    model.decoder.load_state_dict({k: official[k] for k in decoder_keys}, strict=True)
    assert torch.equal(model.encoder.blocks4[10].mlp.fc2.weight, official["blocks4.10.mlp.fc2.weight"])


def test_hybrid_visible_outputs_ignore_masked_voxels():
    encoder, _ = build_encoder("hybrid", "tiny", 2, (64, 32, 32))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 64, 32, 32, generator=g)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    for row, hidden in enumerate(([0, 3, 5, 6, 9, 12, 14, 15], [1, 2, 4, 7, 8, 10, 11, 13], list(range(8)))):
        mask[row, hidden] = True
    with torch.no_grad():
        a, b = encoder(x, mask), encoder(masked_change(x, mask, encoder.grid), mask)
        visible = ~mask
        assert torch.equal(a[visible], b[visible])                           # bit-identical
        assert a[mask].abs().max() == 0
        x2 = x.clone()
        x2[0, :, 16:32, 0:16, 0:16] += 1.0                                    # token 1 of row 0 is visible
        assert not torch.equal(encoder(x2, mask)[0][visible[0]], a[0][visible[0]])


def test_shapes_for_non_cubic_input_and_channels():
    encoder, decoder = build_encoder("hybrid", "tiny", 3, (64, 32, 96))
    assert encoder.grid == (4, 2, 6) and encoder.out_dim == 96 and decoder["decoder_dim"] == 144
    mask = torch.zeros(2, 48, dtype=torch.bool)
    mask[:, ::2] = True
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 64, 32, 96), mask).shape == (2, 48, 96)
    sizes = HYBRID_SIZES["tiny"]
    finetune = HybridFinetuneEncoder(3, (64, 32, 96), sizes["channels"], sizes["depths"], sizes["heads"],
                                     sizes["mlp_ratio"], sizes["conv_kernel"], drop_path_rate=0.1).eval()
    with torch.no_grad():
        maps = finetune(torch.randn(1, 3, 64, 32, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 12, 32, 16, 48), (1, 24, 16, 8, 24), (1, 48, 8, 4, 12),
                                              (1, 96, 4, 2, 6), (1, 192, 2, 1, 3)]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown size 'huge' for hybrid"):
        build_encoder("hybrid", "huge", 1, (32, 32, 32))
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        build_encoder("vit", "tiny", 1, (32, 32, 32))
    with pytest.raises(ValueError, match="hybrid sizes: unknown entries \\['feature_size'\\]"):
        build_encoder("hybrid", "tiny", 1, (32, 32, 32), feature_size=12)
    encoder, _ = build_encoder("hybrid", "tiny", 1, (32, 32, 32))
    uneven = torch.tensor([[True] * 4 + [False] * 4, [True] * 3 + [False] * 5])
    with pytest.raises(ValueError, match="same number of tokens"):
        encoder(torch.randn(2, 1, 32, 32, 32), uneven)


def _block_by_formula(block, x, visible):
    """MaskedConvBlock written out with torch.nn.functional on contiguous tensors (drop-path 0)."""
    import torch.nn.functional as F

    def ln(t, norm):
        return F.layer_norm(t.permute(0, 2, 3, 4, 1), norm.normalized_shape, norm.weight, norm.bias,
                            norm.eps).permute(0, 4, 1, 2, 3)

    y = F.conv3d(ln(x, block.norm1), block.conv1.weight, block.conv1.bias) * visible
    y = F.conv3d(y, block.attn.weight, block.attn.bias, padding=block.attn.padding, groups=block.attn.groups)
    x = x + F.conv3d(y, block.conv2.weight, block.conv2.bias)
    h = F.gelu(F.conv3d(ln(x, block.norm2), block.mlp.fc1.weight, block.mlp.fc1.bias))
    return x + F.conv3d(h, block.mlp.fc2.weight, block.mlp.fc2.bias)


def test_masked_conv_block_on_the_cpu_computes_the_plain_formula():
    # the block runs its depthwise conv channels-last on the CPU (faster backward): same values and gradients
    torch.manual_seed(0)
    block = MaskedConvBlock(12, 4.0, 5)
    x = torch.randn(2, 12, 8, 6, 4, requires_grad=True)
    visible = (torch.rand(2, 1, 8, 6, 4) > 0.5).float()
    out = block(x, visible)
    reference = _block_by_formula(block, x, visible)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), [x, block.attn.weight, block.conv1.weight])
    expected = torch.autograd.grad((reference * weights).sum(), [x, block.attn.weight, block.conv1.weight])
    for mine, theirs in zip(grads, expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_levels_know_their_visible_tokens_and_the_encoder_needs_no_host_sync():
    """Each MiM level carries its visible-token count (the plain formula, ``(~mask)[row].sum()``, gives the
    same for every row); given it, the hybrid encoder gives the same output as when it counts, and its
    forward traces into one graph without breaks (the count no longer comes from the device)."""
    from mim_nnunet.mim.config import MIM_SWITCHES, MiMConfig
    from mim_nnunet.mim.geometry import make_levels

    config = MiMConfig(input_size=(32, 32, 64), in_channels=1, **MIM_SWITCHES)
    levels = make_levels(torch.rand(2, 1, 64, 64, 128), config, torch.Generator().manual_seed(0))
    assert len(levels) == 3
    for level in levels:
        counted = (~level.mask).sum(dim=1)
        assert counted.tolist() == [level.visible] * level.mask.shape[0]
    encoder, _ = build_encoder("hybrid", "tiny", 1, (32, 32, 64))
    encoder.eval()
    with torch.no_grad():
        for level in levels:
            assert torch.equal(encoder(level.inputs, level.mask, level.visible), encoder(level.inputs, level.mask))
    explained = torch._dynamo.explain(encoder)(levels[1].inputs[:2], levels[1].mask[:2], levels[1].visible)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch._dynamo.reset()
