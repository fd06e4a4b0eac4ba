"""Memory and speed levers of the pre-training step keep its gradients: activation checkpointing
(``use_checkpoint`` of every backbone, ``mim_pretrain --checkpointing``) and ``torch.compile`` of the
encoder and decoder (:func:`mim_nnunet.pretrain.engine.compile_parts`, ``--compile``, also with chunks).

fp64 on sizes smaller than 'tiny'; the reference is the plain eager step of the same weights.
"""

import pytest
import torch

from mim_nnunet.backbones import backbone_sizes
from mim_nnunet.mim import MiMConfig, build_mim
from mim_nnunet.pretrain.engine import compile_parts

TOLERANCE = 1e-10
SMALLER = {"hybrid": {"channels": (4, 8, 8, 16), "depths": (1, 1, 1, 2), "heads": 2},
           "swin": {"window_size": 4},
           "resenc": {"features_per_stage": (2, 4, 4, 8, 8, 8)}}
DECODER = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
# S per backbone: resenc's deepest stage (stride 32) needs two voxels to normalise
INPUT_SIZE = {"hybrid": (32, 32, 32), "swin": (32, 32, 32), "resenc": (64, 32, 32)}


def small_model(backbone, **overrides):
    torch.manual_seed(0)
    cfg = MiMConfig(input_size=INPUT_SIZE[backbone], align_dim=16, gamma2=2, gamma3=2)
    sizes = {**backbone_sizes(backbone, "tiny"), **SMALLER[backbone], **DECODER, **overrides}
    return build_mim(backbone, "tiny", cfg, sizes).double()


def gradients(model, crops, chunk=0):
    g = torch.Generator().manual_seed(5)
    if chunk:
        out = model.forward_backward(crops, lambda loss: loss.backward(), chunk, generator=g, progress=0.2)
    else:
        out = model(crops, generator=g, progress=0.2)
        out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(out["loss"].detach()), grads


def worst_difference(a, b):
    assert set(a) == set(b) and len(a) > 0
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.parametrize("backbone", ["hybrid", "swin", "resenc"])
def test_checkpointing_recomputes_blocks_and_keeps_the_gradients(backbone):
    plain, checkpointed = small_model(backbone), small_model(backbone, use_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    crops = torch.rand(1, 1, *(2 * s for s in INPUT_SIZE[backbone]), dtype=torch.float64)
    loss, reference = gradients(plain, crops)
    loss_ckpt, grads = gradients(checkpointed, crops)
    assert abs(loss - loss_ckpt) <= TOLERANCE
    assert worst_difference(grads, reference) <= TOLERANCE

    if backbone == "hybrid":    # every conv block and ViT block runs again in the backward pass
        blocks = {"conv": checkpointed.encoder.blocks1[0], "vit": checkpointed.encoder.blocks4[0]}
        calls = {name: [] for name in blocks}
        for name, block in blocks.items():      # counted in forward itself: the recompute skips module hooks
            block.forward = lambda *args, name=name, plain=block.forward: calls[name].append(1) or plain(*args)
        gradients(checkpointed, crops)
        assert {name: len(c) for name, c in calls.items()} == {"conv": 6, "vit": 6}   # 3 levels x 2
        with torch.no_grad():                                                          # no recompute without a backward
            checkpointed(crops, generator=torch.Generator().manual_seed(5))
        assert {name: len(c) for name, c in calls.items()} == {"conv": 9, "vit": 9}


@pytest.mark.parametrize("chunk", [0, 3])
def test_compiled_encoder_and_decoder_keep_names_and_gradients(chunk):
    plain, compiled = small_model("hybrid"), small_model("hybrid")
    compiled.load_state_dict(plain.state_dict())
    names = list(compiled.state_dict())
    torch._dynamo.reset()
    compile_parts(compiled, backend="aot_eager")     # dynamo's tracing and autograd graphs; no C++ build
    assert list(compiled.state_dict()) == names      # checkpoints and exports see the plain model's names
    crops = torch.rand(1, 1, 64, 64, 64, dtype=torch.float64)
    loss, reference = gradients(plain, crops, chunk)
    loss_compiled, grads = gradients(compiled, crops, chunk)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0     # the step did run compiled graphs
    assert abs(loss - loss_compiled) <= 1e-9
    assert worst_difference(grads, reference) <= 1e-9


def test_hybrid_sizes_from_before_checkpointing_still_build():
    """Plans and runs written before hybrid had ``use_checkpoint`` lack the entry: built without it."""
    from mim_nnunet.backbones import build_encoder

    old = {k: v for k, v in backbone_sizes("hybrid", "tiny").items() if k != "use_checkpoint"}
    encoder, _ = build_encoder("hybrid", "tiny", 1, (32, 32, 32), old)
    assert encoder.use_checkpoint is False
    encoder, _ = build_encoder("hybrid", "tiny", 1, (32, 32, 32), old, use_checkpoint=True)
    assert encoder.use_checkpoint is True
