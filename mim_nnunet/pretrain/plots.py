"""Pictures of pre-training: ``progress.png`` (loss terms, lr, throughput) and reconstructions per level, with
what the network alone predicts for the masked tokens beside the target it is scored against."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from ..common.figures import plt, radiological, save_figure
from ..data.preprocess import STORE_ORIENTATION
from ..mim.losses import denormalise_tokens, normalise_tokens
from ..mim.tokens import patchify, unpatchify


def reconstruction_panels(inputs: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, grid: Sequence[int],
                          norm_pix: bool = True) -> Dict[str, np.ndarray]:
    """One volume's pictures as ``(C, *S)`` arrays in the store's axis order (z, y, x): ``input``, ``masked``
    (masked tokens at the volume's minimum), ``reconstruction`` (visible tokens from the input, masked
    tokens predicted; with norm-pix each prediction is put back with its target token's own mean and
    spread, taken from the input), and what the loss compares, on masked tokens only (NaN elsewhere):
    ``target_loss_space`` (the target as the loss sees it: each token normalised with norm-pix) and
    ``prediction_loss_space`` (the network's output alone).

    inputs ``(C, *S)``; mask ``(T,)`` bool; pred ``(T, 16^3 C)`` in the loss's target space.
    """
    c = inputs.shape[0]
    target = patchify(inputs[None].float())[0]                                   # (T, P)
    pred = pred.float()
    m = mask[:, None]
    recon = torch.where(m, denormalise_tokens(pred, target) if norm_pix else pred, target)
    hidden = torch.where(m, torch.full_like(target, float(inputs.min())), target)
    loss_target = normalise_tokens(target) if norm_pix else target
    blank = torch.full_like(target, float("nan"))
    to_volume = lambda t: unpatchify(t[None], grid, c)[0].detach().cpu().numpy()
    return {"input": inputs.detach().float().cpu().numpy(), "masked": to_volume(hidden),
            "reconstruction": to_volume(recon), "target_loss_space": to_volume(torch.where(m, loss_target, blank)),
            "prediction_loss_space": to_volume(torch.where(m, pred, blank))}


def most_structured(volumes: torch.Tensor) -> int:
    """Index of the volume ``(N, C, *S)`` whose voxels vary most (anatomy rather than air or padding)."""
    return int(volumes.flatten(1).float().std(dim=1).argmax())


# the colour range of the loss-space panels with norm-pix: normalised tokens have mean 0 and spread 1
NORM_PIX_RANGE = (-3.0, 3.0)
LOSS_SPACE_CAPTION = ("the last two columns are what the loss compares on masked tokens (blank: visible): the "
                      "target{normalised} and the network's prediction alone; mse: their mean squared difference over "
                      "the volume's masked tokens{mean_predictor}")
RECONSTRUCTION_CAPTION = {
    True: ("reconstruction: token mean and spread restored from the input, only each token's shape predicted (it "
           "looks plausible even untrained); " + LOSS_SPACE_CAPTION.format(
               normalised=" normalised per token", mean_predictor=" (predicting each token's mean scores about 1.0)")),
    False: "reconstruction: masked tokens as predicted; " + LOSS_SPACE_CAPTION.format(normalised="", mean_predictor=""),
}


def save_reconstructions(levels: List[Dict], grid: Sequence[int], path: os.PathLike, norm_pix: bool = True,
                         orientation: str = STORE_ORIENTATION) -> Path:
    """One row per level (columns: input, masked, reconstruction, and on masked tokens the normalised target
    and the network's prediction): of each level's volumes the one with the most structure, and its axial slice
    (first axis of the store's (z, y, x) arrays, oriented ``orientation``) with the most structure, in the
    radiological view; ``levels`` as returned by the MiM model's forward. A caption says what each shows."""
    rows = len(levels)
    columns = (("input", "input"), ("masked", "masked input"),
               ("reconstruction", "token mean + spread\nfrom input, shape predicted" if norm_pix else "reconstruction"),
               ("target_loss_space", "target, normalised\n(masked tokens)" if norm_pix else "target (masked tokens)"),
               ("prediction_loss_space", "network prediction"))
    fig, axes = plt.subplots(rows, len(columns), figsize=(3 * len(columns), 3.3 * rows + 0.9), squeeze=False)
    for r, level in enumerate(levels):
        v = most_structured(level["inputs"])
        panels = reconstruction_panels(level["inputs"][v], level["mask"][v], level["pred"][v], grid, norm_pix)
        lo, hi = float(panels["input"].min()), float(panels["input"].max())
        z = int(panels["input"][0].reshape(panels["input"].shape[1], -1).std(axis=1).argmax())
        shown = {name: radiological(panels[name][0][z], orientation) for name, _ in columns}
        diff = panels["prediction_loss_space"] - panels["target_loss_space"]          # the volume's masked tokens
        mse = float(np.nanmean(diff ** 2)) if np.isfinite(diff).any() else float("nan")
        for col, (name, title) in enumerate(columns):
            loss_space = name.endswith("_loss_space")
            vmin, vmax = NORM_PIX_RANGE if (loss_space and norm_pix) else (lo, hi)
            axes[r][col].imshow(shown[name], cmap="gray", vmin=vmin, vmax=vmax)
            suffix = f"\n(mse {mse:.2f})" if name == "prediction_loss_space" else ""
            axes[r][col].set_title(f"L{r + 1} {title}{suffix}", fontsize=9)
            axes[r][col].axis("off")
    fig.text(0.5, 0.005, "\n".join(textwrap.wrap(RECONSTRUCTION_CAPTION[norm_pix], 130)), ha="center", va="bottom",
             fontsize=8)
    fig.tight_layout(rect=(0, 0.9 / (3.3 * rows + 0.9), 1, 1))
    save_figure(fig, Path(path))
    return Path(path)


def save_progress(records: List[Dict], path: os.PathLike) -> Path:
    """``progress.png`` from log records: every loss term per step, the validation reconstruction loss per
    level (``kind == "validation"`` records, with markers, and the 1.0 of the mean predictor), the learning
    rate and the throughput, one panel each, against the step."""
    train = [r for r in records if r.get("kind") != "validation"]
    val = [r for r in records if r.get("kind") == "validation"]
    steps = [r["step"] for r in train]
    loss_keys = sorted({k for r in train for k in r if k == "loss" or k.startswith(("rec_", "align_"))})
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    for key in loss_keys:
        axes[0].plot(steps, [r.get(key, np.nan) for r in train], label=key)
    axes[0].set_ylabel("training loss")
    axes[0].legend(loc="upper right", fontsize=8)
    for key in sorted({k for r in val for k in r if k.startswith("val_rec_")}):
        axes[1].plot([r["step"] for r in val], [r.get(key, np.nan) for r in val], marker="o", label=key)
    axes[1].axhline(1.0, color="grey", linestyle="--", linewidth=1, label="mean predictor (1.0)")
    axes[1].set_ylabel("validation\nreconstruction")
    axes[1].legend(loc="upper right", fontsize=8)
    axes[2].plot(steps, [r.get("lr", np.nan) for r in train])
    axes[2].set_ylabel("learning rate")
    axes[3].plot(steps, [r.get("subvolumes_per_s", np.nan) for r in train])
    axes[3].set_ylabel("sub-volumes / s")
    axes[3].set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, Path(path))
    return Path(path)
