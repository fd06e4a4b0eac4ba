"""nnssl checkpoints written from the format as nnssl documents it (its ``AdaptationPlan`` and ``Plan``
dataclasses, its trainers' ``save_checkpoint``), with dynamic_network_architectures' own ResidualEncoderUNet
and none of our code: the import is tested against a file that our writer did not make."""

import pydoc

import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

# a small 5-stage ResEnc (total stride 16) with the field set of nnssl's DynamicArchitecturePlans
SMALL_ARCH_KWARGS = {
    "n_stages": 5,
    "features_per_stage": [4, 8, 12, 16, 16],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 5,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_blocks_per_stage": [1, 2, 2, 2, 2],
    "n_conv_per_stage_decoder": [1, 1, 1, 1],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.modules.activation.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
IMPORTED = ("conv_op", "norm_op", "nonlin")


def build_network(arch_kwargs, in_channels=1, num_classes=2):
    """``ResidualEncoderUNet`` from nnssl-style ``arch_kwargs`` (classes resolved by their dotted names)."""
    kwargs = {k: (pydoc.locate(v) if k in IMPORTED else v) for k, v in arch_kwargs.items()}
    return ResidualEncoderUNet(input_channels=in_channels, num_classes=num_classes, deep_supervision=False, **kwargs)


def adaptation_plan(arch_class_name="ResidualEncoderUNet", arch_kwargs=None, in_channels=1,
                    patch_size=(64, 64, 64)):
    """A serialised nnssl ``AdaptationPlan`` as an MAE pre-training in nnssl would write it."""
    configuration = {
        "data_identifier": "nnsslPlans_onemmiso", "preprocessor_name": "DefaultPreprocessor",
        "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"] * in_channels,
        "use_mask_for_norm": [False] * in_channels, "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_mask": "resample_data_or_seg_to_shape",
        "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "spacing": [1.0, 1.0, 1.0], "patch_size": list(patch_size)}
    return {
        "architecture_plans": {"arch_class_name": arch_class_name, "arch_kwargs": arch_kwargs,
                               "arch_kwargs_requiring_import": list(IMPORTED) if arch_kwargs else None},
        "pretrain_plan": {"dataset_name": "Dataset745_OpenMind", "plans_name": "nnsslPlans",
                          "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
                          "image_reader_writer": "NibabelReaderWriter", "transpose_forward": [0, 1, 2],
                          "transpose_backward": [0, 1, 2], "configurations": {"onemmiso": configuration},
                          "experiment_planner_used": "ExperimentPlanner"},
        "pretrain_num_input_channels": in_channels,
        "recommended_downstream_patchsize": [160, 160, 160],
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        "key_to_lpe": None,
    }


def write_nnssl_checkpoint(path, arch_kwargs=None, seed=0, in_channels=1, edit=None, plan=None):
    """Save a checkpoint like nnssl's trainers do (the whole network's state dict, decoder included, plus
    training state) and return the network. ``edit(weights)`` may change the weights before saving."""
    arch_kwargs = arch_kwargs or SMALL_ARCH_KWARGS
    torch.manual_seed(seed)
    network = build_network(arch_kwargs, in_channels)
    with torch.no_grad():        # not the initialisation: every tensor distinct and non-trivial
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    weights = dict(network.state_dict())       # aliases share storage, as in a saved network
    if edit:
        edit(weights)
    torch.save({"network_weights": weights, "optimizer_state": {"state": {}, "param_groups": []},
                "grad_scaler_state": None, "current_epoch": 1000, "trainer_name": "BaseMAETrainer",
                "nnssl_adaptation_plan": plan or adaptation_plan(arch_kwargs=arch_kwargs, in_channels=in_channels),
                "citations": [{"type": "Pre-training method", "name": "MAE", "bibtex_citations": ["@article{x}"]}]},
               path)
    return network
