"""The resenc backbone: nnU-Net's own ResEnc planners give its table, its export loads strictly into the
network stock nnU-Net builds, masked content never reaches a feature, and MiM trains with it."""

import copy
import json

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from mim_nnunet.backbones import backbone_sizes, build_encoder
from mim_nnunet.backbones.resenc import (
    RESENC_PLANNERS,
    RESENC_SIZES,
    cumulative_strides,
    receptive_field,
    resenc_architecture,
)
from mim_nnunet.common.errors import PlansError
from mim_nnunet.finetune.resenc_plans import adapt_resenc_plans
from mim_nnunet.mim import MiMConfig, build_mim
from mim_nnunet.networks.resenc_unet import (
    ResEncLoadError,
    build_resenc_unet,
    load_encoder_state,
    unique_encoder_keys,
)
from mim_nnunet.weights.export import export_encoder, load_export

TOPOLOGY = ("features_per_stage", "n_blocks_per_stage", "kernel_sizes", "strides")
ISOTROPIC = ((1.0, 1.0, 1.0), (192, 192, 192))       # 1 mm, median 192^3: M plans 128^3, L 192^3
SMALL_ISOTROPIC = ((1.0, 1.0, 1.0), (96, 96, 96))     # a dataset whose median is the pre-training S
ANISOTROPIC = ((3.0, 0.8, 0.8), (120, 512, 512))      # thick-slice CT: in-plane kernels, a 7th stage


def plain(value):
    return json.loads(json.dumps(value))


def architecture_of(size):
    return resenc_architecture(*(RESENC_SIZES[size][k] for k in TOPOLOGY))


@pytest.fixture(scope="module")
def stock_plans(module_tmp):
    """3d_fullres configurations that stock nnU-Net's ResEnc planners compute, keyed (planner, dataset).

    The planners' own ``get_plans_for_configuration`` runs on a one-case dataset whose fingerprint has the
    given spacing and shape (the files are never read: planning needs only dataset.json and the fingerprint)."""
    import nnunetv2.experiment_planning.experiment_planners.default_experiment_planner as base
    from nnunetv2.experiment_planning.experiment_planners.residual_unets import (
        residual_encoder_unet_planners,
    )

    root = module_tmp("planning")
    name = "Dataset900_ResEncProbe"
    raw, pre = root / "raw" / name, root / "pre" / name
    for folder in (raw / "imagesTr", raw / "labelsTr", pre):
        folder.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1},
                                                  "numTraining": 1, "file_ending": ".nii.gz"}))
    (raw / "imagesTr" / "case_0000.nii.gz").touch()
    (raw / "labelsTr" / "case.nii.gz").touch()
    configs = {}
    with pytest.MonkeyPatch.context() as mp:     # nnunetv2.paths is read at import: point the planner here
        mp.setattr(base, "nnUNet_raw", str(root / "raw"))
        mp.setattr(base, "nnUNet_preprocessed", str(root / "pre"))
        for planner_name, dataset in [("nnUNetPlannerResEncM", ISOTROPIC), ("nnUNetPlannerResEncL", ISOTROPIC),
                                      ("nnUNetPlannerResEncL", SMALL_ISOTROPIC), ("nnUNetPlannerResEncL", ANISOTROPIC)]:
            spacing, shape = dataset
            (pre / "dataset_fingerprint.json").write_text(json.dumps({
                "spacings": [list(spacing)], "shapes_after_crop": [list(shape)],
                "median_relative_size_after_cropping": 1.0, "foreground_intensity_properties_per_channel": {}}))
            planner = getattr(residual_encoder_unet_planners, planner_name)(name)
            config = planner.get_plans_for_configuration(np.array(spacing), np.array(shape),
                                                         planner.generate_data_identifier("3d_fullres"),
                                                         float(np.prod(shape)), {})
            recursive_fix_for_json_export(config)
            configs[planner_name, dataset] = plain(config)
    return configs


def plans_with(config):
    """nnU-Net plans holding the planner's 3d_fullres configuration (and a 2d one, to be refused)."""
    flat = {**copy.deepcopy(config), "patch_size": config["patch_size"][1:], "data_identifier": "nnUNetPlans_2d"}
    return {"dataset_name": "Dataset900_ResEncProbe", "plans_name": "nnUNetResEncUNetLPlans",
            "label_manager": "LabelManager", "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": copy.deepcopy(config), "2d": flat}}


# ---------------------------------------------------------------------------------------------------
# The size table is what nnU-Net plans.

@pytest.mark.parametrize("size", ["M", "L"])
def test_table_equals_what_stock_resenc_planners_plan_for_isotropic_data(stock_plans, size):
    planned = stock_plans[RESENC_PLANNERS[size], ISOTROPIC]
    assert planned["architecture"] == plain(architecture_of(size))        # every kwarg, class and import list
    assert planned["patch_size"] == {"M": [128] * 3, "L": [192] * 3}[size]


def test_m_and_l_differ_in_patch_not_network_and_stride_16_plans_are_our_first_five_stages(stock_plans):
    m, big_l = stock_plans["nnUNetPlannerResEncM", ISOTROPIC], stock_plans["nnUNetPlannerResEncL", ISOTROPIC]
    assert m["architecture"] == big_l["architecture"] and m["patch_size"] != big_l["patch_size"]
    # Planned for a 96^3 patch the planner stops at stride 16: exactly our first five stages.
    small = stock_plans["nnUNetPlannerResEncL", SMALL_ISOTROPIC]["architecture"]["arch_kwargs"]
    ours = architecture_of("L")["arch_kwargs"]
    assert small["n_stages"] == 5 and cumulative_strides(small["strides"])[-1] == (16, 16, 16)
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage"):
        assert small[key] == ours[key][:5], key
    assert RESENC_SIZES["tiny"]["n_blocks_per_stage"] == RESENC_SIZES["L"]["n_blocks_per_stage"]


# ---------------------------------------------------------------------------------------------------
# Interface, computed a second way from the stock encoder.

def test_tokens_are_the_stock_encoders_stride_16_and_32_features_of_the_masked_input():
    size, channels = (64, 96, 32), 2
    encoder, _ = build_encoder("resenc", "tiny", channels, size)
    assert encoder.grid == (4, 6, 2) and encoder.out_dim == 40 + 40 and encoder.token_stage == 4
    with torch.no_grad():
        encoder.mask_token.copy_(torch.tensor([0.3, -0.7]).reshape(1, 2, 1, 1, 1))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, channels, *size, generator=g)
    mask = torch.rand(2, 48, generator=g) < 0.5
    with torch.no_grad():
        out = encoder(x, mask)
        # the masked input, token by token in raster order (x outermost)
        hidden = x.clone()
        for n in range(2):
            for t in range(48):
                gx, gy, gz = t // 12, (t // 2) % 6, t % 2
                if mask[n, t]:
                    hidden[n, :, 16 * gx:16 * gx + 16, 16 * gy:16 * gy + 16, 16 * gz:16 * gz + 16] = \
                        torch.tensor([0.3, -0.7]).reshape(2, 1, 1, 1)
        skips = encoder.encoder(hidden)                     # the stock ResidualEncoder: every stage's output
        expected = torch.empty(2, 48, 80)
        for n in range(2):
            for t in range(48):
                gx, gy, gz = t // 12, (t // 2) % 6, t % 2
                parts = [skips[4][n, :, gx, gy, gz], skips[5][n, :, gx // 2, gy // 2, gz // 2]]
                expected[n, t] = torch.cat([(p - p.mean()) / (p.var(unbiased=False) + 1e-5).sqrt() for p in parts])
    assert out.shape == (2, 48, 80)
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"resenc: input_size must be 3 positive multiples of 32, got \[96, 96, 80\]"):
        build_encoder("resenc", "tiny", 1, (96, 96, 80))
    with pytest.raises(ValueError, match=r"unknown size 'XL' for resenc; choose one of \['L', 'M', 'tiny'\]"):
        build_encoder("resenc", "XL", 1, (96, 96, 96))
    with pytest.raises(ValueError, match="leaves the deepest stage one voxel"):
        build_encoder("resenc", "tiny", 1, (32, 32, 32))
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        build_encoder("resenc", "tiny", 0, (64, 64, 64))
    encoder, _ = build_encoder("resenc", "tiny", 1, (64, 32, 32))
    with pytest.raises(ValueError, match=r"expected input \(N, 1, 64, 32, 32\), got \(1, 2, 64, 32, 32\)"):
        encoder(torch.zeros(1, 2, 64, 32, 32), torch.zeros(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected mask \(1, 16\), got \(1, 8\)"):
        encoder(torch.zeros(1, 1, 64, 32, 32), torch.zeros(1, 8, dtype=torch.bool))
    assert set(backbone_sizes("resenc", "L")) == set(TOPOLOGY) | {"use_checkpoint", "decoder_dim", "decoder_depth",
                                                                   "decoder_heads"}


# ---------------------------------------------------------------------------------------------------
# What reaches a visible token.

def randomise_norms(encoder, seed=0):
    """Non-zero norm scales everywhere: nnU-Net starts each block's last norm at 0, which would make
    every residual branch silent; trained networks are not like that."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, nn.InstanceNorm3d):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return encoder


def without_instance_norm(module):
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.InstanceNorm3d):
                setattr(parent, name, nn.Identity())
    return module


def test_masked_content_never_reaches_any_feature():
    encoder = randomise_norms(build_encoder("resenc", "tiny", 1, (64, 64, 32))[0])
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 64, 64, 32, generator=g)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[0, [0, 3, 5, 6, 9, 12, 14, 15, 20, 31]] = True
    mask[1, 1::3] = True
    hidden = encoder.masked_input(torch.zeros_like(x), mask) != 0       # nowhere yet: mask value starts at 0
    assert not hidden.any()
    with torch.no_grad():
        encoder.mask_token.fill_(0.25)
        region = encoder.masked_input(torch.zeros_like(x), mask) != 0   # exactly the masked tokens' voxels
        assert int(region.sum()) == int(mask.sum()) * 16 ** 3
        other = torch.where(region, torch.randn_like(x) * 100, x)
        a, b = encoder(x, mask), encoder(other, mask)
        assert torch.equal(a, b)                                         # all tokens, bit for bit
        visible_voxel = x.clone()
        visible_voxel[0, 0, 20, 5, 5] += 1.0                             # token 2 of row 0: visible
        assert not mask[0, 2]
        assert not torch.allclose(encoder(visible_voxel, mask)[0], a[0])


def test_the_mask_itself_reaches_every_visible_token():
    """Convolutions reach far beyond S and instance norm is global: the mask value moves every visible token."""
    encoder = randomise_norms(build_encoder("resenc", "tiny", 1, (64, 64, 32))[0])
    x = torch.rand(1, 1, 64, 64, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[0, 0] = True                                                    # one masked token, in a corner
    with torch.no_grad():
        a = encoder(x, mask)
        encoder.mask_token.add_(1.0)
        b = encoder(x, mask)
    moved = (a - b).abs().amax(dim=-1)[0]                                # per token
    assert bool((moved[1:] > 1e-4).all()), moved


def test_receptive_field_equals_gradient_support_without_instance_norm():
    """The conv path, alone (norm removed, float64): the input voxels a stage output voxel depends on are
    exactly :func:`receptive_field`'s box, clipped to the volume; with the tiny (= M/L) topology the box
    of a stride-16 token spans 641 voxels and of a stride-32 cell 1377."""
    sizes = RESENC_SIZES["tiny"]
    args = (sizes["kernel_sizes"], sizes["strides"], sizes["n_blocks_per_stage"])
    assert receptive_field(*args, stage=4) == [(16, -320, 320)] * 3
    assert receptive_field(*args, stage=5) == [(32, -688, 688)] * 3
    assert receptive_field(*args, stage=0) == [(1, -3, 3)] * 3
    encoder = build_encoder("resenc", "tiny", 1, (64, 64, 64))[0]
    without_instance_norm(encoder.encoder)
    encoder.double()
    x = torch.rand(1, 1, 64, 64, 64, dtype=torch.float64, requires_grad=True)
    outputs = encoder.stage_outputs(x, torch.zeros(1, 64, dtype=torch.bool))
    for stage, voxel in ((0, (0, 30, 63)), (1, (0, 16, 31)), (2, (0, 8, 15)), (4, (1, 2, 3))):
        grad, = torch.autograd.grad(outputs[stage][0, :, voxel[0], voxel[1], voxel[2]].sum(), x, retain_graph=True)
        support = grad[0, 0] != 0
        box = [(max(0, j * o + lo), min(63, j * o + hi))
               for (j, lo, hi), o in zip(receptive_field(*args, stage), voxel)]
        expected = torch.zeros_like(support)
        expected[box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1, box[2][0]:box[2][1] + 1] = True
        assert torch.equal(support, expected), (stage, box)
    assert box == [(0, 63)] * 3                                          # stride 16: the whole volume


def test_instance_norm_makes_every_voxel_reach_every_feature():
    encoder = build_encoder("resenc", "tiny", 1, (64, 32, 32))[0].double()
    x = torch.rand(1, 1, 64, 32, 32, dtype=torch.float64, requires_grad=True)
    first = encoder.stage_outputs(x, torch.zeros(1, 16, dtype=torch.bool))[0]
    grad, = torch.autograd.grad(first[0, :, 0, 0, 0].sum(), x)
    assert bool((grad != 0).all())               # conv path alone: only the 4 x 4 x 4 corner (see above)


# ---------------------------------------------------------------------------------------------------
# Export -> stock nnU-Net network, and plans adaptation.

def test_m_export_loads_strictly_into_the_network_stock_nnunet_builds_from_resenc_plans(stock_plans, tmp_path):
    encoder, _ = build_encoder("resenc", "M", 1, (96, 96, 96))
    weights, _ = export_encoder(encoder, "resenc", "M", tmp_path / "m.safetensors", in_channels=1,
                                input_size=(96, 96, 96))
    state, record = load_export(weights)
    plans = plans_with(stock_plans["nnUNetPlannerResEncM", ISOTROPIC])
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    assert plain(record["architecture"]) == plans["configurations"]["3d_fullres"]["architecture"]
    network = nnUNetTrainer.build_network_architecture(manager, config, 1, 3, True)     # what nnUNetv2_train builds
    net_state = network.state_dict()
    assert {"encoder." + k for k in state} == set(unique_encoder_keys(network))
    assert all(state[k].shape == net_state["encoder." + k].shape for k in state)
    load_encoder_state(network, state)
    net_state = network.state_dict()
    source = encoder.encoder.state_dict()                                # every alias, as the encoder has it
    encoder_keys = [k for k in net_state if k.startswith(("encoder.", "decoder.encoder."))]
    assert len(encoder_keys) == 2 * len(source) == 4 * len(state)
    for key in encoder_keys:
        assert torch.equal(net_state[key], source[key.split("encoder.", 1)[1]]), key
    assert set(record) >= {"architecture", "token_stage"} and record["token_stage"] == 4
    assert sum(t.numel() for t in state.values()) == sum(p.numel() for p in network.encoder.parameters())


def test_loading_a_foreign_state_is_a_clear_error():
    encoder, _ = build_encoder("resenc", "tiny", 1, (64, 64, 64))
    network = build_resenc_unet(encoder.export_record()["architecture"], 1, 2)
    state = encoder.export_state()
    broken = dict(state)
    broken.pop("stem.convs.0.conv.weight")
    broken["stages.0.blocks.0.conv1.conv.bias"] = torch.zeros(5)
    broken["head.weight"] = torch.zeros(1)
    with pytest.raises(ResEncLoadError, match=r"1 keys missing \['stem.convs.0.conv.weight'\], 1 unexpected "
                                              r"\['head.weight'\], 1 with other shapes"):
        load_encoder_state(network, broken)


def test_adapting_anisotropic_resenc_l_plans_to_the_pretrained_topology(stock_plans, tmp_path):
    encoder, _ = build_encoder("resenc", "tiny", 1, (64, 64, 64))
    weights, _ = export_encoder(encoder, "resenc", "tiny", tmp_path / "t.safetensors", in_channels=1,
                                input_size=(64, 64, 64))
    state, record = load_export(weights)
    planned = stock_plans["nnUNetPlannerResEncL", ANISOTROPIC]
    assert planned["architecture"]["arch_kwargs"]["n_stages"] == 7
    assert planned["architecture"]["arch_kwargs"]["kernel_sizes"][0] == [1, 3, 3]
    plans = plans_with(planned)
    manager, changes = adapt_resenc_plans(plans, "3d_fullres", record["architecture"], "T")
    changed = {line.split(":")[0] for line in changes}
    assert changed == {"n_stages", "features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage",
                       "n_conv_per_stage_decoder"}                       # 7 -> 6 stages: 5 decoder stages
    adapted = plans["configurations"]["3d_fullres"]
    assert adapted["architecture"] == plain(record["architecture"])
    assert manager.pool_op_kernel_sizes == record["architecture"]["arch_kwargs"]["strides"]   # deep supervision
    for new, old in zip(manager.patch_size, planned["patch_size"]):
        assert new % 32 == 0 and abs(new - old) <= 16
    assert adapted["mim_nnunet"]["original_architecture"] == planned["architecture"]
    again = copy.deepcopy(plans)                                         # nnUNetv2_predict / --c re-adapt plans.json
    adapt_resenc_plans(again, "3d_fullres", record["architecture"], "T")
    assert again == plans
    json.dumps(plans)
    network = nnUNetTrainer.build_network_architecture(PlansManager(plans), manager, 1, 2, True)
    load_encoder_state(network, state)
    with torch.no_grad():
        patch = (64, 64, 32)                                             # any multiple of the total stride
        outputs = network(torch.rand(1, 1, *patch))
    assert [tuple(o.shape[2:]) for o in outputs] == [tuple(p // s for p, s in zip(patch, t))
                                                     for t in cumulative_strides(manager.pool_op_kernel_sizes)[:5]]


def test_isotropic_l_plans_need_no_change_for_an_l_export_and_2d_is_refused(stock_plans):
    plans = plans_with(stock_plans["nnUNetPlannerResEncL", ISOTROPIC])
    _, changes = adapt_resenc_plans(plans, "3d_fullres", architecture_of("L"), "T")
    assert changes == []
    with pytest.raises(PlansError, match="T is 3D only"):
        adapt_resenc_plans(plans, "2d", architecture_of("L"), "T")


# ---------------------------------------------------------------------------------------------------
# MiM with the resenc backbone.

def test_three_adamw_steps_of_mim_with_resenc_tiny_lower_the_loss_and_reach_every_parameter():
    torch.manual_seed(0)
    model = build_mim("resenc", "tiny", MiMConfig(input_size=(64, 32, 32), align_dim=64))
    crop = torch.randn(1, 1, 128, 64, 64).cumsum(2) / 8           # smooth structure, learnable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        out = model(crop, generator=torch.Generator().manual_seed(0))          # same masks every step
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] * 0.95, losses
    # nnU-Net starts each block's last norm at 0, so its convs get gradient from the second step on
    silent = [n for n, p in model.encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == [] and sum(lvl["inputs"].shape[0] for lvl in out["levels"]) == 21


def test_activation_checkpointing_gives_the_same_features_and_gradients():
    torch.manual_seed(0)
    plain_encoder, _ = build_encoder("resenc", "tiny", 1, (64, 32, 32))
    recomputing, _ = build_encoder("resenc", "tiny", 1, (64, 32, 32), use_checkpoint=True)
    recomputing.load_state_dict(plain_encoder.state_dict())
    randomise_norms(plain_encoder)
    randomise_norms(recomputing)
    x = torch.rand(3, 1, 64, 32, 32)
    mask = torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    results = []
    for encoder in (plain_encoder, recomputing):
        out = encoder(x, mask)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in encoder.named_parameters()}))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert all(torch.allclose(g, results[1][1][n], atol=1e-6, rtol=1e-4) for n, g in results[0][1].items())
    assert results[0][1]["mask_token"].abs().sum() > 0
