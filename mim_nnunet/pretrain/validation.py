"""The number a user watches to know pre-training works: the masked-token reconstruction loss per level
on a fixed set of held-out crops with fixed masks.

Crops come from the cases held out of training (``settings.val_cases``, when the collection has enough
cases) or else from fixed positions of the training cases, on a random stream of their own; masks from a
generator seeded per crop. The loss counts the masked tokens that are not constant: with norm-pix
targets, predicting each token's mean then scores 1.0 (a constant token - padding, air at the window's
floor - is predicted exactly by anything that outputs 0, and would hide a model that learned nothing).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from ..data.loader import VALIDATION_STREAM, IndexedCropBatches
from ..mim.losses import has_content, reconstruction_loss
from ..mim.model import MiM
from ..mim.tokens import patchify
from .settings import RunSettings


def mask_seed(seed: int, crop: int) -> int:
    """Seed of the masks of validation crop ``crop`` (fixed for the whole run)."""
    return int(np.random.SeedSequence([seed, crop, VALIDATION_STREAM]).generate_state(1, np.uint64)[0] >> 1)


class ValidationSet:
    """``settings.val_crops`` fixed L1 crops ``(1, C, *2S)`` and their mask seeds."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self.batches = IndexedCropBatches(settings.store, settings.config.l1_crop_size, batch_size=1,
                                          seed=settings.seed, case_ids=settings.val_cases,
                                          uniform_fraction=settings.uniform_crop_fraction, stream=VALIDATION_STREAM)
        self._crops: List[torch.Tensor] = []

    @property
    def crops(self) -> List[torch.Tensor]:
        if not self._crops:       # read once, on first use
            self._crops = [self.batches.batch(k) for k in range(self.settings.val_crops)]
        return self._crops

    @torch.no_grad()
    def evaluate(self, model: MiM, device: torch.device, autocast: Optional[Dict] = None) -> Dict[str, float]:
        """The masked-token reconstruction loss per level (``val_rec_l1``, ...) over the non-constant masked
        tokens of all crops, the model in eval mode, its forward under ``autocast`` (``torch.autocast``'s
        arguments: the training's precision, so the numbers and the compiled graphs are the training's;
        None = fp32); the loss is computed in fp32."""
        was_training = model.training
        model.eval()
        errors: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        for k, crop in enumerate(self.crops):
            generator = torch.Generator(device=device).manual_seed(mask_seed(self.settings.seed, k))
            with _autocast(autocast, device):
                out = model(crop.to(device), generator=generator, progress=0.0)
            for level, result in enumerate(out["levels"], start=1):
                target = patchify(result["inputs"].float())
                counted = result["mask"] & has_content(target)
                n = int(counted.sum())
                if n:     # summed over tokens, divided once at the end: every counted token weighs the same
                    loss = reconstruction_loss(result["pred"].float(), target, counted, model.config.norm_pix_loss)
                    errors[f"val_rec_l{level}"] = errors.get(f"val_rec_l{level}", 0.0) + float(loss) * n
                    counts[f"val_rec_l{level}"] = counts.get(f"val_rec_l{level}", 0) + n
        model.train(was_training)
        return {name: errors[name] / counts[name] for name in sorted(errors)}


def _autocast(arguments: Optional[Dict], device: torch.device):
    return torch.autocast(**(arguments or dict(device_type=device.type, enabled=False)))


@torch.no_grad()
def picture_levels(validation: "ValidationSet", model: MiM, device: torch.device,
                   autocast: Optional[Dict] = None) -> List[Dict]:
    """The model's output on validation crop 0 with its fixed masks (for the reconstruction pictures: the
    same body crop at every step, so the pictures show what the model learned), under ``autocast``."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(mask_seed(validation.settings.seed, 0))
    with _autocast(autocast, device):
        levels = model(validation.crops[0].to(device), generator=generator, progress=0.0)["levels"]
    model.train(was_training)
    return levels


def validation_summary(records: List[Dict]) -> Dict:
    """The first and last validation of a run's log records, for the export record."""
    found = [r for r in records if r.get("kind") == "validation"]
    if not found:
        return {}
    strip = lambda r: {k[len("val_"):]: v for k, v in r.items() if k.startswith("val_")}
    return {"crops": found[-1].get("crops"), "held_out_cases": found[-1].get("held_out_cases"),
            "first": {"step": found[0]["step"], **strip(found[0])},
            "last": {"step": found[-1]["step"], **strip(found[-1])}}
