"""The MiM model over both backbones: masking hides, official names load, gradients flow, loss falls."""

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SwinUNETR

from mim_nnunet.backbones import build_encoder
from mim_nnunet.mim import MiMConfig, build_mim
from mim_nnunet.patches import token_mask_to_grid

KEYS = json.loads((Path(__file__).parent / "data" / "official_mim_keys.json").read_text())
SMALL = dict(align_dim=64)


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


def test_swin_encoder_weights_load_strictly_into_monai_swinunetr():
    encoder, _ = build_encoder("swin", "base", 1, (96, 96, 96))
    swin_state = {k[len("swinViT."):]: v for k, v in encoder.state_dict().items() if k.startswith("swinViT.")}
    target = SwinUNETR(in_channels=1, out_channels=3, feature_size=48)
    target.swinViT.load_state_dict(swin_state, strict=True)
    assert set(encoder.state_dict()) - {"swinViT." + k for k in swin_state} == {"mask_token"}


def masked_change(x, mask, grid):
    """x with every voxel inside masked tokens replaced by other values."""
    hidden = token_mask_to_grid(mask, grid, 16).bool()
    return torch.where(hidden, torch.randn_like(x) * 100, x)


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


@pytest.mark.parametrize("backbone, switches, unused_prefixes", [
    ("hybrid", {}, ()),
    ("hybrid", {"align_loss": "byol", "detach_parent": False, "align_pairs": (True, False)}, ()),
    ("swin", {}, ("encoder.swinViT.layers4.",)),          # the stride-32 stage is not part of MiM's encoder
])
def test_gradients_reach_every_used_parameter(backbone, switches, unused_prefixes):
    cfg = MiMConfig(input_size=(32, 32, 32), **SMALL, **switches)
    model = build_mim(backbone, "tiny", cfg)
    out = model(torch.randn(1, 1, 64, 64, 64), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = {n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0}
    assert missing == {n for n in trainable if n.startswith(unused_prefixes)} if unused_prefixes else missing == set()
    if switches.get("align_pairs") == (True, False):
        assert set(out["terms"]) == {"rec_l1", "rec_l2", "rec_l3", "align_12"} and "23" not in model.align


def independent_mae_loss(pred, volume, mask):
    """Single-level MAE3D loss written out token by token (no shared code with the model)."""
    n, c, sx, sy, sz = volume.shape
    total, count = 0.0, 0
    for i in range(n):
        t = 0
        for x in range(0, sx, 16):
            for y in range(0, sy, 16):
                for z in range(0, sz, 16):
                    if mask[i, t]:
                        patch = volume[i, :, x:x + 16, y:y + 16, z:z + 16].permute(1, 2, 3, 0).reshape(-1)
                        target = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
                        total = total + ((pred[i, t] - target) ** 2).mean()
                        count += 1
                    t += 1
    return total / count


def test_levels_1_is_exactly_single_level_mae():
    cfg = MiMConfig(input_size=(32, 32, 64), levels=1, **SMALL)
    model = build_mim("hybrid", "tiny", cfg)
    out = model(torch.randn(2, 1, 64, 64, 128), generator=torch.Generator().manual_seed(3))
    level = out["levels"][0]
    assert set(out["terms"]) == {"rec_l1"} and len(model.align) == 0
    expected = independent_mae_loss(level["pred"], level["inputs"], level["mask"])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("backbone", ["hybrid", "swin"])
def test_a_few_steps_lower_the_loss_on_one_volume(backbone):
    torch.manual_seed(0)
    cfg = MiMConfig(input_size=(32, 32, 32), **SMALL)
    model = build_mim(backbone, "tiny", cfg)
    crop = torch.randn(1, 1, 64, 64, 64).cumsum(2) / 8          # smooth structure, learnable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        out = model(crop, generator=torch.Generator().manual_seed(0))        # same masks every step
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] * 0.9, losses


def test_benchmark_script_prints_one_json_line_per_configuration():
    import subprocess
    import sys
    script = Path(__file__).resolve().parent.parent / "scripts" / "benchmark_pretrain_step.py"
    result = subprocess.run([sys.executable, str(script), "--configs", "hybrid:tiny", "--input-size", "32",
                             "--warmup", "0", "--repeats", "1"], capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(rows) == 1 and rows[0]["backbone"] == "hybrid" and rows[0]["subvolumes_per_crop"] == 21
    assert rows[0]["sec_per_l1_crop_median"] > 0 and rows[0]["peak_memory_mb"] > 0


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


@pytest.mark.parametrize("backbone", ["hybrid", "swin"])
def test_air_and_padding_keep_gradients_finite_and_small(backbone):
    """CT air and padding are exactly 0 after the window: at initialisation the gradient must stay
    finite (zero conv biases once made channel LayerNorms amplify it to ~1e32 on such crops)."""
    torch.manual_seed(0)
    model = build_mim(backbone, "tiny", MiMConfig(input_size=(32, 32, 32), **SMALL))
    crops = torch.zeros(1, 1, 64, 64, 64)
    crops[:, :, 20:40, 10:50, 16:30] = torch.rand(1, 1, 20, 40, 14)       # some tissue in a sea of air
    model(crops, generator=torch.Generator().manual_seed(1))["loss"].backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert torch.isfinite(norm) and norm < 100


def test_alignment_parent_gather_is_reproducible_with_threads():
    """The alignment loss picks each child's parent candidates; its backward must not depend on the
    order threads accumulate in (bit-exact resume needs identical gradients run to run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    crops = torch.rand(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(3))
    grads = []
    for _ in range(3):
        torch.manual_seed(0)
        model = build_mim("hybrid", "tiny", MiMConfig(input_size=(32, 32, 32)))    # 2048-d heads: threaded
        model(crops, generator=torch.Generator().manual_seed(1))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.set_num_threads(threads)
    assert all(torch.equal(grads[0][n], g[n]) for g in grads[1:] for n in grads[0])
