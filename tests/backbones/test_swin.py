"""The swin backbone: MONAI's SwinViT, its names, SimMIM masking and memory-lean attention."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from helpers.masking import masked_change
from mim_nnunet.backbones import build_encoder


def test_swin_encoder_weights_load_strictly_into_monai_swinunetr():
    encoder, _ = build_encoder("swin", "base", 1, (96, 96, 96))
    swin_state = {k[len("swinViT."):]: v for k, v in encoder.state_dict().items() if k.startswith("swinViT.")}
    target = SwinUNETR(in_channels=1, out_channels=3, feature_size=48)
    target.swinViT.load_state_dict(swin_state, strict=True)
    assert set(encoder.state_dict()) - {"swinViT." + k for k in swin_state} == {"mask_token"}


def test_swin_masked_region_does_not_reach_the_patch_embedding():
    encoder, _ = build_encoder("swin", "tiny", 1, (32, 32, 32))
    x = torch.randn(2, 1, 32, 32, 32)
    mask = torch.tensor([[True, False, False, True, True, False, True, False]] * 2)
    with torch.no_grad():
        a, b = encoder.embed(x, mask), encoder.embed(masked_change(x, mask, encoder.grid), mask)
        assert torch.equal(a, b)
        x2 = x.clone()
        x2[:, :, 0:16, 0:16, 16:32] += 1.0                                   # token 1: visible
        assert not torch.equal(encoder.embed(x2, mask), a)


@pytest.mark.parametrize("chunk_elements", [2 ** 27, 4 * 27 * 27 * 3])   # one pass; one volume per chunk
def test_swin_sdpa_attention_equals_monai_window_attention(monkeypatch, chunk_elements):
    import mim_nnunet.backbones.swin as swin
    monkeypatch.setattr(swin, "SWIN_ATTENTION_CHUNK_ELEMENTS", chunk_elements)
    from monai.networks.nets.swin_unetr import WindowAttention

    from mim_nnunet.backbones.swin import sdpa_window_attention
    torch.manual_seed(0)
    attn = WindowAttention(dim=24, num_heads=3, window_size=(3, 3, 3), qkv_bias=True)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    x = torch.randn(2 * 4, 27, 24, requires_grad=True)               # 2 volumes x 4 windows of 27 tokens
    shift_mask = torch.where(torch.rand(4, 27, 27) < 0.3, -100.0, 0.0)
    for mask in (None, shift_mask):
        ours = sdpa_window_attention(attn, x, mask)
        grad_ours = torch.autograd.grad(ours.square().sum(), (x, attn.relative_position_bias_table))
        ref = WindowAttention.forward(attn, x, mask)                  # MONAI's own training path
        grad_ref = torch.autograd.grad(ref.square().sum(), (x, attn.relative_position_bias_table))
        assert torch.allclose(ours, ref, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grad_ours, grad_ref))


def test_shapes_for_non_cubic_input_and_channels():
    encoder, _ = build_encoder("swin", "tiny", 2, (64, 32, 32))
    assert encoder.grid == (4, 2, 2) and encoder.out_dim == 96
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, :8] = True
    with torch.no_grad():
        assert encoder(torch.randn(1, 2, 64, 32, 32), mask).shape == (1, 16, 96)
    with pytest.raises(ValueError, match="unknown size 'huge' for swin"):
        build_encoder("swin", "huge", 1, (32, 32, 32))
