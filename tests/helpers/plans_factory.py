"""Minimal nnU-Net 2.8 plans and dataset.json dicts, shaped like nnUNetv2_plan_and_preprocess writes them."""

import copy


def _unet_architecture(ndim: int) -> dict:
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 4, "strides": [[1] * ndim] + [[2] * ndim] * 3},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def make_plans(patch_3d=(80, 160, 100), patch_2d=(160, 100)) -> dict:
    common = {"batch_size": 2, "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["CTNormalization"],
              "use_mask_for_norm": [False], "batch_dice": False}
    return copy.deepcopy({
        "dataset_name": "Dataset999_Plans", "plans_name": "nnUNetPlans", "label_manager": "LabelManager",
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": {**common, "data_identifier": "nnUNetPlans_2d", "patch_size": list(patch_2d),
                   "architecture": _unet_architecture(2)},
            "3d_fullres": {**common, "data_identifier": "nnUNetPlans_3d_fullres", "patch_size": list(patch_3d),
                           "architecture": _unet_architecture(3)},
            "3d_lowres": {**common, "data_identifier": "nnUNetPlans_3d_lowres", "patch_size": [48, 48, 48],
                          "architecture": _unet_architecture(3), "next_stage": "3d_cascade_fullres"},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
    })


DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "sphere": 1, "cube": 2},
                "numTraining": 5, "file_ending": ".nii.gz"}
