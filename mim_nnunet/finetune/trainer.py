"""The logic behind our nnU-Net trainers; the classes in ``trainers/`` only set class attributes.

:class:`RunGuards` (every trainer of ours): ``$MIM_SEED``, short budgets, one-line stops, no checkpoint from a
diverged run, no pickled code run from a weights file (:mod:`mim_nnunet.finetune.loading`).
:class:`PretrainedEncoder` (every MiM trainer): find, check and load the export at the start of a fresh run.
The ResEnc trainer, which keeps nnU-Net's own network and optimiser, is in :mod:`mim_nnunet.finetune.resenc_trainer`.

:class:`FineTuneTrainerBase`: a subclass names the network (``network_class_name`` + ``arch_kwargs``,
recorded into the plans) and the patch-size multiple it needs; the base class adapts the plans, builds
the network for training and for ``nnUNetv2_predict``, turns deep supervision off and applies the
fine-tuning optimiser (AdamW, linear warm-up, cosine decay). A short variant sets ``budget``
(:mod:`mim_nnunet.finetune.variants`).

:class:`MiMFineTuneTrainerBase`: the encoder starts from a MiM export. At the start of a fresh run (not
``--c``, whose checkpoint holds the weights, and not when ``-pretrained_weights`` already loaded a full
network) the trainer finds the export (:mod:`mim_nnunet.weights.finding`), transfers it with the
pre-flight check of :mod:`mim_nnunet.weights.transfer`, prints the table and writes it to
``mim_transfer.json`` in the fold's folder. Prediction builds the network from ``plans.json`` alone and
never opens the export.
"""

from __future__ import annotations

import math
import os
import random
import sys
from typing import Mapping, Optional, Tuple

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import (
    ConfigurationManager,
    PlansManager,
)
from torch import nn

from ..backbones.swin import SWIN_SIZES
from ..common.atomic import write_json_atomic
from ..common.errors import MimError, PlansError
from ..common.host import THREADS_ENV, threads_from_environment
from ..common.tensors import first_nonfinite, optimizer_tensors
from ..networks import build_network
from ..optim import WarmupCosineLR, build_adamw, warmup_steps_for
from ..weights.export import STEM_KEY, load_export, network_key
from ..weights.finding import dataset_modality, find_weights
from ..weights.transfer import transfer
from .loading import check_nnunet_file, guard_pretrained_weights
from .plans import adapt_configuration, require_3d
from .schedules import EncoderSchedule
from .variants import BUDGETS

# Fine-tuning optimiser of the MiM release (inherited from the SwinUNETR BTCV scripts): AdamW,
# lr 1e-4, weight decay 1e-5, linear warm-up for 50 of 1000 epochs, then cosine decay.
FINETUNE_OPTIMISER = {
    "lr": 1e-4,
    "weight_decay": 1e-5,
    "betas": (0.9, 0.999),
    "warmup_fraction": 0.05,
}
# nnUNetv2_train has no seed flag: with this variable set, the trainer seeds Python, NumPy and torch before
# it builds the network, so initialisation and (with nnUNet_n_proc_DA=0) the data stream are reproducible.
SEED_ENV = "MIM_SEED"
TRANSFER_REPORT = "mim_transfer.json"


class RunGuards:
    """What every trainer of ours adds to nnU-Net's loop, whatever its network: ``$MIM_SEED``, a short
    ``budget`` (:mod:`mim_nnunet.finetune.variants`), one-line stops, no checkpoint from a diverged run, and
    the CPU variants' switches (no test-time mirroring in the final validation), ``$MIM_CPU_THREADS``. Mixed in
    before ``nnUNetTrainer``; ``__init__`` calls :meth:`seed_run` before the network is built and
    :meth:`apply_budget` at its end."""

    # Test-time mirroring in nnU-Net's final validation (8 flips in 3D); CPU variants turn it off, as
    # their users predict with --disable_tta anyway. Mirroring as training augmentation is the budget's
    # (``Budget.mirroring``).
    inference_mirroring: bool = True
    # A short variant names its budget (epochs x iterations); None keeps nnU-Net's 1000 x (250 + 50).
    budget: Optional[str] = None
    # Train on the CPU with channels-last (NDHWC) weights and activations: oneDNN's 3D convolution backward on
    # few channels is 5x its forward in NCDHW; per training iteration MiMUNETR tiny takes 20-24 % less,
    # SwinUNETR 6-7 % less, nnU-Net's ResEnc U-Net 6-8 % more (scripts/benchmark_memory_format.py, both
    # capabilities; docs/benchmarks.md). Same numbers up to float summation order.
    cpu_channels_last: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # before nnUNetv2_train calls nnU-Net's -pretrained_weights loader, which unpickles whatever it is given
        guard_pretrained_weights(self.stop)

    def initialize(self):
        super().initialize()
        if self.cpu_channels_last and self.device.type == "cpu":
            unwrap(self.network).to(memory_format=torch.channels_last_3d)     # parameters stay the optimiser's
            self.print_to_log_file("CPU: the network trains with channels-last (NDHWC) tensors")

    def load_checkpoint(self, filename_or_checkpoint):
        # --c, --val, --val_best: nnU-Net unpickles the file with weights_only=False; it sees only a safe one
        if isinstance(filename_or_checkpoint, (str, os.PathLike)):
            try:
                check_nnunet_file(filename_or_checkpoint)
            except MimError as exc:
                self.stop(str(exc))
        super().load_checkpoint(filename_or_checkpoint)

    def save_checkpoint(self, filename: str) -> None:
        # a NaN weight or optimiser moment would spoil every later epoch: the last good file stays
        network = unwrap(self.network)
        bad = first_nonfinite([*network.state_dict().items(), *optimizer_tensors(self.optimizer, network)])
        if bad is not None:
            self.stop(f"{bad[0]} holds {bad[1]} non-finite value(s) (NaN/inf) at epoch {self.current_epoch}; "
                      f"{os.path.basename(filename)} not written (the checkpoints in {self.output_folder} are kept). "
                      f"Check the weights and lower the lr.")
        super().save_checkpoint(filename)

    def seed_run(self) -> None:
        """Seed from ``$MIM_SEED`` (before the network is built: its initialisation is then reproducible);
        cap torch's CPU threads at ``$MIM_CPU_THREADS``."""
        threads = threads_from_environment()
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(threads)
            self.print_to_log_file(f"${THREADS_ENV}={threads}: torch uses {threads} CPU thread(s)")
        self.seed = seed_from_environment()
        if self.seed is not None:
            self.print_to_log_file(f"seeded with ${SEED_ENV}={self.seed} (the data stream is reproducible with "
                                   f"nnUNet_n_proc_DA=0)")

    def apply_budget(self) -> None:
        if self.budget is not None:
            b = BUDGETS[self.budget]
            self.num_epochs, self.num_iterations_per_epoch = b.epochs, b.iterations
            self.num_val_iterations_per_epoch = b.val_iterations
            if b.lr is not None:
                self.initial_lr = b.lr

    def stop(self, reason: str):
        """End the run with one line (log file and stderr), exit status 2, and no traceback: a problem of
        the user's files or of the run, not of the code."""
        self.print_to_log_file(f"stopped: {reason}")
        print(f"{type(self).__name__}: error: {reason}", file=sys.stderr, flush=True)
        for loader in (getattr(self, "dataloader_train", None), getattr(self, "dataloader_val", None)):
            if hasattr(loader, "_finish"):       # nnU-Net's augmentation workers
                loader._finish()
        raise SystemExit(2)

    def on_epoch_end(self):
        # before nnU-Net's on_epoch_end, which writes checkpoint_latest/_best: a diverged run must not
        # replace the weights of an earlier, healthy one
        for kind in ("train", "val"):
            losses = self.logger.get_value(f"{kind}_losses", step=None)
            if losses and not math.isfinite(float(losses[-1])):
                self.stop(f"{kind} loss is {losses[-1]} at epoch {self.current_epoch}; no checkpoint written "
                          f"(those in {self.output_folder} are kept). Check the weights and lower the lr.")
        super().on_epoch_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        budget = BUDGETS[self.budget] if self.budget is not None else None
        if budget is not None and not budget.final_validation:
            self.print_to_log_file(f"final validation skipped: budget {self.budget!r} scores its own held-out cases")
            return
        if budget is None or budget.val_cases is None:
            return super().perform_actual_validation(save_probabilities)
        # nnU-Net's validation takes its cases from do_split(); a short budget hands it the first few only
        train_keys, val_keys = self.do_split()
        kept = list(val_keys)[:budget.val_cases]
        self.print_to_log_file(
            f"final validation on {len(kept)} of the fold's {len(val_keys)} validation case(s): budget "
            f"{self.budget!r} bounds it ({budget.val_cases}); predict the others with nnUNetv2_predict, or train with "
            f"a full-length trainer to validate them all")
        self.do_split = lambda: (train_keys, kept)
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            del self.do_split

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.budget is not None and not BUDGETS[self.budget].mirroring:
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        if not self.inference_mirroring:
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes


class FineTuneTrainerBase(RunGuards, nnUNetTrainer):
    """nnU-Net trainer for a single-output 3D network built by :func:`mim_nnunet.networks.build_network`."""

    network_class_name: str = ""
    arch_kwargs: Mapping = {}
    patch_multiple: int = 1
    patch_size_kwarg: Optional[str] = None      # arch kwarg that receives the patch size (MiMUNETR: img_size)
    max_patch_size: Optional[tuple] = None      # per-axis cap (multiples of patch_multiple), for CPU variants
    optimiser_settings: Mapping = FINETUNE_OPTIMISER
    cpu_channels_last = True                    # MiMUNETR and SwinUNETR train faster so (RunGuards)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # Fail before nnU-Net creates output folders for a run that cannot work.
        require_3d(plans, configuration, type(self).__name__)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.seed_run()
        adapted, self.configuration_manager = adapt_configuration(
            self.plans_manager.plans, configuration, self.network_class_name, self.arch_kwargs,
            self.patch_multiple, type(self).__name__, log=self.print_to_log_file,
            patch_size_kwarg=self.patch_size_kwarg, max_patch_size=self.max_patch_size)
        # nnU-Net saves these plans next to the model (plans.json): prediction rebuilds the same network
        self.plans_manager = PlansManager(adapted)
        self.enable_deep_supervision = False  # one output; nnU-Net then builds no DeepSupervisionWrapper
        self.initial_lr = self.optimiser_settings["lr"]
        self.weight_decay = self.optimiser_settings["weight_decay"]
        self.apply_budget()

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Build the network recorded in the (adapted) plans; used in training and by nnUNetv2_predict."""
        return build_network(configuration_manager.network_arch_class_name,
                             configuration_manager.network_arch_init_kwargs,
                             num_input_channels, num_output_channels)

    def set_deep_supervision_enabled(self, enabled: bool):
        # Our networks have a single output, there is nothing to switch.
        pass

    def configure_optimizers(self):
        # one lr for all parameters (the release's choice); the MiM trainers' schedules (mim_nnunet.finetune.
        # schedules) split off the pre-trained encoder's groups
        optimizer = build_adamw(self.network, self.initial_lr, self.weight_decay, self.optimiser_settings["betas"])
        warmup = warmup_steps_for(self.num_epochs, self.optimiser_settings["warmup_fraction"])
        return optimizer, WarmupCosineLR(optimizer, total_steps=self.num_epochs, warmup_steps=warmup)


def seed_from_environment() -> Optional[int]:
    """Seed Python, NumPy and torch from ``$MIM_SEED`` when it is set; returns the seed (None: not set)."""
    value = os.environ.get(SEED_ENV)
    if value is None or value == "":
        return None
    try:
        seed = int(value)
    except ValueError:
        raise PlansError(f"${SEED_ENV}={value!r}: not an integer seed") from None
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return seed


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def size_of(backbone: str, arch_kwargs) -> str:
    """The pre-training size a fine-tuning network's encoder corresponds to."""
    if backbone == "hybrid":
        return arch_kwargs["size"]
    for size, sizes in SWIN_SIZES.items():
        if sizes["feature_size"] == arch_kwargs["feature_size"]:
            return size
    raise ValueError(f"no swin pre-training size has feature_size {arch_kwargs['feature_size']}")


class PretrainedEncoder:
    """Mixin of the MiM trainers (before the trainer base): the encoder starts from a MiM export of
    ``backbone`` (``pretrained = True``), found, checked and loaded at the start of a fresh run, before nnU-Net
    starts its augmentation workers; the transfer table goes to the log and ``mim_transfer.json``."""

    backbone: str = "hybrid"
    pretrained: bool = True

    def export_size(self) -> str:
        """The pre-training size whose export fits this trainer's network."""
        return size_of(self.backbone, self.configuration_manager.network_arch_init_kwargs)

    def find_export(self) -> Tuple[str, str]:
        """(path, how it was found) of the export to start from."""
        return find_weights(self.plans_manager.plans, self.backbone, self.export_size(), type(self).__name__,
                            modality=dataset_modality(self.dataset_json))

    def initialize(self):
        super().initialize()
        # nnU-Net's -pretrained_weights loads after initialize(): remember the stem to notice it
        self._stem_at_init = self._stem().detach().clone()

    def _stem(self) -> torch.Tensor:
        return unwrap(self.network).state_dict()[network_key(self.backbone, STEM_KEY[self.backbone])]

    def on_train_start(self):
        # the weights before nnU-Net's on_train_start starts its augmentation workers: a missing, corrupt or
        # unfit export is then one line, not a traceback ending in "background workers are no longer alive"
        if not self.was_initialized:
            self.initialize()
        if self.pretrained and self.current_epoch == 0:
            if not torch.equal(self._stem(), self._stem_at_init.to(self._stem().device)):
                self.print_to_log_file("MiM: weights were loaded with -pretrained_weights; not searching for an export")
            else:
                try:
                    self.load_pretrained_encoder()
                except MimError as exc:
                    self.stop(str(exc))
        super().on_train_start()

    def load_pretrained_encoder(self, path: Optional[str] = None):
        """Find (unless given), check and load the export; the transfer table goes to the log."""
        path, how = self.find_export() if path is None else (path, "given")
        self.print_to_log_file(f"MiM: pre-trained encoder {path} (found through {how})")
        state, record = load_export(path)
        report = transfer(unwrap(self.network), {k: v.to(self.device) for k, v in state.items()}, record, str(path),
                          spacing=self.configuration_manager.spacing,
                          normalization=self.configuration_manager.normalization_schemes,
                          intensity_properties=self.plans_manager.foreground_intensity_properties_per_channel,
                          trainer=type(self).__name__)
        for line in report.table().splitlines():
            self.print_to_log_file(line)
        if self.local_rank == 0:
            os.makedirs(self.output_folder, exist_ok=True)
            write_json_atomic(os.path.join(self.output_folder, TRANSFER_REPORT), {"how": how, **report.to_dict()})
        return report


class MiMFineTuneTrainerBase(EncoderSchedule, PretrainedEncoder, FineTuneTrainerBase):
    """A :class:`FineTuneTrainerBase` whose encoder starts from a MiM export (:class:`PretrainedEncoder`) and
    follows the variant's ``schedule`` (:class:`mim_nnunet.finetune.schedules.EncoderSchedule`)."""
