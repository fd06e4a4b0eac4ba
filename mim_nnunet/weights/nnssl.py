"""nnssl's checkpoint format, both ways, for ResEnc U-Nets: ``mim_nnunet export-nnssl`` and ``import-nnssl``.

**The format** (nnssl's ``AdaptationPlan``, read by nnU-Net master's ``nnUNetv2_preprocess_like_nnssl`` /
``nnUNetv2_plan_like_dynamic`` and its ``PretrainedTrainer``): a folder with

- ``checkpoint_final.pth``: a ``torch.save`` dict of plain types (loads with ``weights_only=True``):
  ``network_weights`` (a ``ResidualEncoderUNet`` state dict) and ``nnssl_adaptation_plan`` (below); nnssl
  adds ``trainer_name`` and, optionally, ``citations`` (``[{"type", "name", "bibtex_citations": [...]}]``).
- ``adaptation_plan.json``: the same adaptation plan plus ``trainer_name``, for people and tools.

The adaptation plan: ``architecture_plans`` (``arch_class_name``; ``arch_kwargs``, the ``ResidualEncoderUNet``
constructor arguments with classes as dotted names, or None for a preset such as ``ResEncL``;
``arch_kwargs_requiring_import``), ``pretrain_plan`` (nnssl's ``Plan``: ``dataset_name``, ``plans_name``,
``original_median_spacing_after_transp``, ``image_reader_writer``, ``transpose_forward``/``_backward``,
``experiment_planner_used`` and ``configurations``, one ``ConfigurationPlan`` with ``spacing``, ``patch_size``,
``normalization_schemes``, ``use_mask_for_norm``, resampling functions, ``spacing_style``, ...),
``pretrain_num_input_channels``, ``recommended_downstream_patchsize`` and the key locators ``key_to_encoder``
(``encoder.stages``), ``key_to_stem`` (``encoder.stem``), ``keys_to_in_proj`` (the stem's first conv under
both of its names), ``key_to_lpe`` (None for CNNs).

**How nnU-Net master loads it.** Keys of ``network_weights`` that start with ``key_to_encoder`` lose that
prefix and load strictly into the network's ``encoder.stages``; those that start with ``key_to_stem`` into
``encoder.stem``. A strict load into a dynamic_network_architectures module needs every name it registers,
the ``all_modules.N`` aliases of each conv and norm included, so the export writes them all (the encoder
of :func:`mim_nnunet.networks.resenc_unet.network_encoder_state`). The decoder is not written: MiM's
pre-training decoder is not a U-Net decoder, and that route initialises the decoder anyway.

**Intensities.** nnssl names one nnU-Net normalisation class per channel. MiM's CT window ``[lo, hi]`` ->
``[0, 1]`` is nnU-Net's ``CTNormalization`` with intensity properties that encode the window (see
``mim_nnunet.finetune.plans_variants``); z-scored MRI is ``ZScoreNormalization``. nnU-Net master's route
re-normalises every channel with ``ZScoreNormalization`` whatever the plan says; our exact record travels
beside it under ``mim_nnunet_record`` so that ``import-nnssl`` gives back the same export, card included.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..common.atomic import atomic_write, write_json_atomic
from ..common.errors import first_line
from .card import MIM_BIBTEX
from .export import ExportError, export_record, load_export, write_export

CHECKPOINT_NAME = "checkpoint_final.pth"
PLAN_NAME = "adaptation_plan.json"
RECORD_KEY = "mim_nnunet_record"          # our record beside nnssl's keys (plain JSON types)
TRAINER_NAME = "mim_pretrain"
# dynamic_network_architectures' ResidualEncoderUNet: where its encoder and stem sit, and the stem's first conv
# under both of its names (conv blocks register each conv twice)
KEY_TO_ENCODER, KEY_TO_STEM = "encoder.stages", "encoder.stem"
KEYS_TO_IN_PROJ = ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"]
# the constructor arguments nnssl's DynamicArchitecturePlans holds (exactly these), classes as dotted names
NNSSL_ARCH_KWARGS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_blocks_per_stage",
                     "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                     "dropout_op_kwargs", "nonlin", "nonlin_kwargs")
NNSSL_CLASS_NAMES = {"conv_op": "torch.nn.modules.conv.Conv3d",
                     "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                     "nonlin": "torch.nn.modules.activation.LeakyReLU"}
# architectures the import turns into a ResidualEncoderUNet: the dynamic one, and nnssl's ResEnc-L preset
RESENC_CLASS = "ResidualEncoderUNet"
RESENC_PRESETS = {"ResEncL": "L"}
NORMALIZATION_CLASS = {"ct_window": "CTNormalization", "zscore": "ZScoreNormalization"}


def _plain(value):
    """Lists for tuples, recursively (the file holds plain types only)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def nnssl_arch_kwargs(architecture: Mapping) -> Dict:
    """Our plans-format ResEnc ``architecture`` -> nnssl's ``arch_kwargs`` (its fields, its class names)."""
    kwargs = architecture["arch_kwargs"]
    out = {k: copy.deepcopy(kwargs[k]) for k in NNSSL_ARCH_KWARGS}
    for key, name in NNSSL_CLASS_NAMES.items():
        if _class_tail(out[key]) != name.rsplit(".", 1)[1]:
            raise ExportError(f"architecture: {key} is {out[key]!r}, nnssl's ResEnc writer knows {name} only")
        out[key] = name
    return _plain(out)


def _class_tail(name) -> Optional[str]:
    return None if name is None else str(name).rsplit(".", 1)[-1]


def normalization_schemes(record: Mapping) -> List[str]:
    """nnU-Net's class name per input channel for the export's intensities (one modality), or a description."""
    norm = record.get("normalisation") or {}
    schemes = sorted({NORMALIZATION_CLASS.get(s.get("scheme"), str(s.get("scheme"))) for s in norm.values()})
    if len(schemes) == 1:
        name = schemes[0]
    elif not schemes:
        name = "not recorded"
    else:   # several modalities in one channel: each case was normalised by its own modality's scheme
        name = " or ".join(f"{m}: {NORMALIZATION_CLASS.get(s.get('scheme'), s.get('scheme'))}"
                           for m, s in sorted(norm.items()))
    return [name] * int(record["in_channels"])


def adaptation_plan(record: Mapping) -> Dict:
    """nnssl's serialised ``AdaptationPlan`` for a resenc export record."""
    spacing = record.get("spacing")
    size = [int(s) for s in record["input_size"]]
    channels = int(record["in_channels"])
    data = record.get("data") or {}
    style = "onemmiso" if spacing and all(abs(s - 1.0) < 1e-6 for s in spacing) else "median"
    configuration = {
        "data_identifier": f"mim_{(record.get('manifest_hash') or 'unknown')[:12]}",
        "preprocessor_name": "mim_pretrain",
        "spacing_style": style,
        "normalization_schemes": normalization_schemes(record),
        "use_mask_for_norm": [False] * channels,
        "resampling_fn_data": "SimpleITK.Resample",
        "resampling_fn_data_kwargs": {"interpolator": "sitkLinear"},
        "resampling_fn_mask": "SimpleITK.Resample",
        "resampling_fn_mask_kwargs": {"interpolator": "sitkNearestNeighbor"},
        "spacing": [float(s) for s in spacing] if spacing else None,
        "patch_size": size,
    }
    plan = {
        "dataset_name": f"MiM_{data['collection']}" if data.get("collection") else "not recorded",
        "plans_name": f"mim_{record['backbone']}_{record['size']}",
        # the spacing the network saw (the store's, after resampling); the fingerprint's median is not recorded
        "original_median_spacing_after_transp": [float(s) for s in spacing] if spacing else None,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {style: configuration},
        "experiment_planner_used": "mim_pretrain",
    }
    return {
        "architecture_plans": {"arch_class_name": RESENC_CLASS,
                               "arch_kwargs": nnssl_arch_kwargs(record["architecture"]),
                               "arch_kwargs_requiring_import": [k for k in NNSSL_ARCH_KWARGS if k in NNSSL_CLASS_NAMES]},
        "pretrain_plan": plan,
        "pretrain_num_input_channels": channels,
        "recommended_downstream_patchsize": size,
        "key_to_encoder": KEY_TO_ENCODER,
        "key_to_stem": KEY_TO_STEM,
        "keys_to_in_proj": list(KEYS_TO_IN_PROJ),
        "key_to_lpe": None,
    }


def network_weights(record: Mapping, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The export's tensors as ``ResidualEncoderUNet`` keys (``encoder.`` + every alias): what nnU-Net master's
    loader strips by ``key_to_encoder``/``key_to_stem`` and loads strictly."""
    from ..networks.resenc_unet import ENCODER_PREFIX, build_resenc_unet, network_encoder_state

    network = build_resenc_unet(record["architecture"], int(record["in_channels"]), 2, deep_supervision=False)
    full = network_encoder_state(network.encoder, state)
    return {ENCODER_PREFIX + k: v.detach().clone().contiguous() for k, v in full.items()}


def export_nnssl(export: os.PathLike, out_dir: os.PathLike) -> Tuple[Path, Path]:
    """``mim_nnunet export-nnssl EXPORT -o DIR``: ``DIR/checkpoint_final.pth`` and ``DIR/adaptation_plan.json``."""
    state, record = load_export(export)
    if record["backbone"] != "resenc":
        raise ExportError(f"{export}: a {record['backbone']} export; nnssl's format (nnU-Net master's pretrained "
                          f"route) builds ResidualEncoderUNet, PlainConvUNet and Primus networks only, so only resenc "
                          f"exports go there (docs/using-weights-elsewhere.md)")
    if "architecture" not in record:
        raise ExportError(f"{export}: a resenc export without its 'architecture' record")
    plan = adaptation_plan(record)
    checkpoint = {
        "network_weights": network_weights(record, state),
        "nnssl_adaptation_plan": plan,
        "trainer_name": TRAINER_NAME,
        "citations": [{"type": "Pre-training method", "name": "MiM (mim-nnunet)", "bibtex_citations": [MIM_BIBTEX]}],
        RECORD_KEY: json.loads(json.dumps(record)),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = atomic_write(out / CHECKPOINT_NAME, lambda tmp: torch.save(checkpoint, tmp))
    meta = write_json_atomic(out / PLAN_NAME, {**plan, "trainer_name": TRAINER_NAME})
    return ckpt, meta


# ---------------------------------------------------------------------------------------------- reading


class NnsslCheckpoint:
    """An nnssl checkpoint read with ``weights_only=True``: ``weights`` (``network_weights``), ``plan``
    (``nnssl_adaptation_plan``) and the rest of the file's top-level entries in ``extra``."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: not found")
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:      # pickled code (weights_only refuses it), truncated or foreign files
            raise ExportError(f"{self.path}: refused or unreadable checkpoint ({first_line(exc, 200)}); only "
                              f"plain tensors and values are read, never pickled code") from None
        if not isinstance(data, dict):
            raise ExportError(f"{self.path}: not an nnssl checkpoint (a {type(data).__name__}, not a dict)")
        for key in ("network_weights", "nnssl_adaptation_plan"):
            if not isinstance(data.get(key), dict):
                raise ExportError(f"{self.path}: not an nnssl checkpoint (no {key!r} dict; it has "
                                  f"{sorted(map(str, data))[:6]})")
        weights = data["network_weights"]
        if not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise ExportError(f"{self.path}: 'network_weights' holds values that are not tensors")
        self.weights: Dict[str, torch.Tensor] = weights
        self.plan: Dict = data["nnssl_adaptation_plan"]
        self.extra: Dict = {k: v for k, v in data.items() if k not in ("network_weights", "nnssl_adaptation_plan")}
        self.used: set = set()          # network_weights keys the import took (set by encoder_state)

    def field(self, *keys):
        """A value of the adaptation plan by its path of keys; None when any is missing."""
        value = self.plan
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        return value

    def configuration(self) -> Dict:
        """The pre-training plan's (first) configuration."""
        configs = self.field("pretrain_plan", "configurations") or {}
        return next(iter(configs.values()), {}) if isinstance(configs, Mapping) else {}

    def architecture(self) -> Tuple[Dict, Optional[str]]:
        """(our plans-format ResEnc architecture, the size it matches or None); one-line refusals otherwise."""
        from ..backbones.resenc import RESENC_SIZES, resenc_architecture

        arch = self.field("architecture_plans") or {}
        name = str(arch.get("arch_class_name"))
        if name in RESENC_PRESETS:
            size = RESENC_PRESETS[name]
            spec = RESENC_SIZES[size]
            return resenc_architecture(spec["features_per_stage"], spec["n_blocks_per_stage"], spec["kernel_sizes"],
                                       spec["strides"]), size
        if _class_tail(name) != RESENC_CLASS:
            raise ExportError(f"{self.path}: architecture {name!r}; import-nnssl takes ResidualEncoderUNet / ResEncL "
                              f"checkpoints only (nnUNetTrainerMiMResEnc builds nnU-Net's ResidualEncoderUNet; "
                              f"Primus and other networks have no MiM trainer)")
        kwargs = arch.get("arch_kwargs")
        if not isinstance(kwargs, Mapping):
            raise ExportError(f"{self.path}: architecture {name!r} without its 'arch_kwargs'")
        missing = [k for k in ("features_per_stage", "n_blocks_per_stage", "kernel_sizes", "strides", "conv_op",
                               "norm_op", "nonlin") if k not in kwargs]
        if missing:
            raise ExportError(f"{self.path}: 'arch_kwargs' lacks {missing}")
        # our trainer builds the ResEnc planners' blocks: conv3d, instance norm (affine), LeakyReLU, no dropout
        expected = {"conv_op": "Conv3d", "norm_op": "InstanceNorm3d", "nonlin": "LeakyReLU", "dropout_op": None}
        for key, tail in expected.items():
            if _class_tail(kwargs.get(key)) != tail:
                raise ExportError(f"{self.path}: arch_kwargs {key} is {kwargs.get(key)!r}; nnUNetTrainerMiMResEnc "
                                  f"builds ResidualEncoderUNet with {tail or 'no dropout'} only")
        if kwargs.get("conv_bias", True) is not True or (kwargs.get("norm_op_kwargs") or {}).get("affine") is False:
            raise ExportError(f"{self.path}: arch_kwargs conv_bias {kwargs.get('conv_bias')!r} / norm_op_kwargs "
                              f"{kwargs.get('norm_op_kwargs')!r}: nnUNetTrainerMiMResEnc builds biased convs and "
                              f"affine instance norms only")
        blocks = kwargs["n_blocks_per_stage"]
        n = len(kwargs["features_per_stage"])
        blocks = [int(blocks)] * n if isinstance(blocks, int) else blocks
        try:
            architecture = resenc_architecture(kwargs["features_per_stage"], blocks, kwargs["kernel_sizes"],
                                               kwargs["strides"])
        except (ValueError, TypeError) as exc:
            raise ExportError(f"{self.path}: arch_kwargs: {exc}") from None
        size = next((s for s, spec in RESENC_SIZES.items() if s != "M" and
                     resenc_architecture(spec["features_per_stage"], spec["n_blocks_per_stage"], spec["kernel_sizes"],
                                         spec["strides"]) == architecture), None)
        return architecture, size

    def encoder_state(self, encoder: torch.nn.Module) -> Dict[str, torch.Tensor]:
        """The tensors of ``encoder`` (a ResidualEncoder) from the checkpoint, each once under its first name
        (what an export holds). Every name of the encoder must be there (aliases must agree), finite, and of
        the encoder's shape."""
        from ..backbones.resenc import tensor_aliases

        to_encoder = str(self.field("key_to_encoder") or KEY_TO_ENCODER)
        to_stem = str(self.field("key_to_stem") or KEY_TO_STEM)
        wanted = encoder.state_dict()

        def source(key: str) -> str:
            for local, located in (("stages", to_encoder), ("stem", to_stem)):
                if key.startswith(local + "."):
                    return located + key[len(local):]
            return "encoder." + key

        missing, state = [], {}
        self.used = set()
        for group in tensor_aliases(encoder):
            present = [source(k) for k in group if source(k) in self.weights]
            if not present:
                missing.append(source(group[0]))
                continue
            for name in present:          # first: NaN differs from itself, so aliases would look different
                t = self.weights[name]
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ExportError(f"{self.path}: tensor {name!r} holds {int((~torch.isfinite(t)).sum())} "
                                      f"non-finite value(s) (NaN/inf); refusing to import it")
            tensor = self.weights[present[0]]
            for other in present[1:]:
                if not torch.equal(self.weights[other], tensor):
                    raise ExportError(f"{self.path}: {present[0]} and {other} name one tensor of the network but "
                                      f"hold different values")
            if tuple(tensor.shape) != tuple(wanted[group[0]].shape):
                raise ExportError(f"{self.path}: {present[0]} has shape {list(tensor.shape)}, the architecture of its "
                                  f"adaptation plan needs {list(wanted[group[0]].shape)}")
            state[group[0]] = tensor.detach().clone().contiguous()
            self.used.update(present)
        if missing:
            raise ExportError(f"{self.path}: {len(missing)} encoder key(s) missing from 'network_weights', e.g. "
                              f"{missing[:3]} (located by key_to_encoder {to_encoder!r}, key_to_stem {to_stem!r})")
        return state


def import_nnssl(checkpoint: os.PathLike, out: os.PathLike) -> Dict:
    """``mim_nnunet import-nnssl CHECKPOINT -o EXPORT``: an nnssl ResEnc checkpoint -> our resenc export (weights,
    record, card). Returns what was written and read."""
    from ..networks.resenc_unet import build_resenc_unet

    ckpt = NnsslCheckpoint(checkpoint)
    architecture, size = ckpt.architecture()
    channels = ckpt.field("pretrain_num_input_channels")
    if not isinstance(channels, int) or channels < 1:
        raise ExportError(f"{ckpt.path}: adaptation plan has no valid 'pretrain_num_input_channels' ({channels!r})")
    network = build_resenc_unet(architecture, channels, 2, deep_supervision=False)
    state = ckpt.encoder_state(network.encoder)
    config = ckpt.configuration()
    patch = config.get("patch_size") or ckpt.field("recommended_downstream_patchsize")
    if not patch or len(patch) != 3:
        raise ExportError(f"{ckpt.path}: adaptation plan gives no 3D pre-training patch size ({patch!r})")
    ours = ckpt.extra.get(RECORD_KEY) if isinstance(ckpt.extra.get(RECORD_KEY), dict) else None
    trainer = ckpt.extra.get("trainer_name")
    source = f"nnssl checkpoint {ckpt.path.name}" + (f" (trainer {trainer})" if trainer else "")
    if ours and ours.get("backbone") == "resenc" and ours.get("architecture") == architecture:
        # written by export-nnssl: the run's own record comes back (its card's fields with it)
        kept = {k: v for k, v in ours.items() if k not in ("format", "created", "weights", "num_tensors",
                                                           "num_parameters", "sha256", "key_map", "token_size",
                                                           "backbone", "size", "in_channels", "input_size")}
        record = export_record("resenc", ours["size"], ours["in_channels"], ours["input_size"],
                               **{**kept, "source": source})
    else:
        record = export_record(
            "resenc", size or "nnssl", channels, [int(p) for p in patch], spacing=config.get("spacing"),
            normalisation=None, manifest_hash=None, steps=None, architecture=architecture, source=source,
            nnssl={"normalization_schemes": config.get("normalization_schemes"),
                   "spacing_style": config.get("spacing_style"),
                   "dataset_name": ckpt.field("pretrain_plan", "dataset_name"),
                   "recommended_downstream_patchsize": ckpt.field("recommended_downstream_patchsize"),
                   "citations": _citation_names(ckpt.extra.get("citations"))})
    weights, meta = write_export(state, record, out)
    return {"weights": weights, "record": meta, "tensors": len(state), "size": record["size"],
            "dropped": sorted(set(ckpt.weights) - ckpt.used)}


def _citation_names(citations) -> Optional[List[str]]:
    if not isinstance(citations, list):
        return None
    return [str(c.get("name")) for c in citations if isinstance(c, Mapping)] or None
