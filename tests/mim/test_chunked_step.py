"""Sub-volume micro-batching (``MiM.forward_backward``): the gradients and losses of the one-shot step.

fp64 on tiny sizes: what remains between the two is float summation order (<= 1e-10). The
reference is the plain one-shot forward and backward of ``loss``.
"""

import pytest
import torch

from mim_nnunet.backbones import backbone_sizes
from mim_nnunet.common.errors import MimError
from mim_nnunet.mim import MiMConfig, build_mim

TOLERANCE = 1e-10
# Smaller than 'tiny' (fp64 on a 2-core CPU): the same modules, fewer channels, blocks and windows.
SMALLER = {"hybrid": {"channels": (4, 8, 8, 16), "depths": (1, 1, 1, 2), "heads": 2},
           "swin": {"window_size": 4}}
DECODER = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


def one_shot(model, crops, seed):
    out = model(crops, generator=torch.Generator().manual_seed(seed), progress=0.3)
    out["loss"].backward()
    out["terms"] = {k: v.detach() for k, v in out["terms"].items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


def chunked(model, crops, seed, chunk):
    calls = []

    def backward(loss):
        calls.append(float(loss.detach()))
        loss.backward()

    out = model.forward_backward(crops, backward, chunk, generator=torch.Generator().manual_seed(seed),
                                 progress=0.3)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads, calls


@pytest.mark.parametrize("backbone, crops, switches, chunk", [
    ("hybrid", 2, {}, 3),               # chunks cut through the children of one parent
    ("swin", 1, {}, 3),
    ("hybrid", 1, {"align_loss": "byol", "level_weight_schedule": "coarse_to_fine"}, 1),
])
def test_chunked_step_has_the_one_shot_gradients_and_losses(backbone, crops, switches, chunk):
    torch.manual_seed(0)
    cfg = MiMConfig(input_size=(32, 32, 32), align_dim=16, gamma2=2, gamma3=2, **switches)
    sizes = {**backbone_sizes(backbone, "tiny"), **SMALLER[backbone], **DECODER}
    model = build_mim(backbone, "tiny", cfg, sizes).double()
    # exactness needs per-sub-volume computation: no batch statistics anywhere in the pre-training model
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    volumes = torch.rand(crops, 1, 64, 64, 64, dtype=torch.float64)
    ref, ref_grads = one_shot(model, volumes, seed=7)
    out, grads, calls = chunked(model, volumes, seed=7, chunk=chunk)

    # levels of 1, gamma2 = 2 and 2 x gamma3 = 4 sub-volumes per crop, each run in ceil(n / chunk) chunks
    assert len(calls) == sum(-(-(n * crops) // chunk) for n in (1, 2, 4))
    assert set(grads) == set(ref_grads) and len(grads) > 0
    worst = max(float((grads[n] - ref_grads[n]).abs().max()) for n in ref_grads)
    assert worst <= TOLERANCE, worst
    assert list(out["terms"]) == list(ref["terms"]) and out["weights"] == ref["weights"]
    for name, value in ref["terms"].items():
        assert abs(float(out["terms"][name]) - float(value)) <= TOLERANCE, name
    assert abs(float(out["loss"]) - float(ref["loss"].detach())) <= TOLERANCE
    assert abs(sum(calls) - float(ref["loss"].detach())) <= TOLERANCE       # the chunks' losses sum to the step's
    for mine, theirs in zip(out["levels"], ref["levels"]):
        assert torch.equal(mine["mask"], theirs["mask"]) and torch.equal(mine["inputs"], theirs["inputs"])
        assert float((mine["pred"] - theirs["pred"].detach()).abs().max()) <= TOLERANCE and not mine["pred"].requires_grad


def test_chunks_hold_fewer_sub_volumes_at_once():
    """Each network pass sees at most ``chunk`` sub-volumes (what sets the peak activation memory)."""
    cfg = MiMConfig(input_size=(32, 32, 32), align_dim=32)
    model = build_mim("hybrid", "tiny", cfg)
    seen = []
    model.encoder.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    model.forward_backward(torch.rand(1, 1, 64, 64, 64), lambda loss: loss.backward(), 3,
                           generator=torch.Generator().manual_seed(0))
    assert seen == [1, 3, 1, 3, 3, 3, 3, 3, 1]          # L1: 1; L2: 4 = 3 + 1; L3: 16 = 5 x 3 + 1


def test_chunking_refuses_gradients_through_parents():
    model = build_mim("hybrid", "tiny", MiMConfig(input_size=(32, 32, 32), align_dim=32, detach_parent=False))
    with pytest.raises(MimError, match="detach_parent"):
        model.forward_backward(torch.rand(1, 1, 64, 64, 64), lambda loss: loss.backward(), 4)
