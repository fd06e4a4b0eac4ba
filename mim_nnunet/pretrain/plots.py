"""Pictures of pre-training: ``progress.png`` (loss terms, lr, throughput) and reconstructions per level."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from ..common.figures import plt, radiological, save_figure
from ..data.preprocess import STORE_ORIENTATION
from ..mim.losses import denormalise_tokens
from ..mim.tokens import patchify, unpatchify


def reconstruction_panels(inputs: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, grid: Sequence[int],
                          norm_pix: bool = True) -> Dict[str, np.ndarray]:
    """One volume's pictures as ``(C, *S)`` arrays in the store's axis order (z, y, x): ``input``, ``masked``
    (masked tokens at the volume's minimum) and ``reconstruction`` (visible tokens from the input, masked
    tokens predicted).

    inputs ``(C, *S)``; mask ``(T,)`` bool; pred ``(T, 16^3 C)`` in the loss's target space: with norm-pix
    each predicted token is mapped back with its target token's mean and standard deviation.
    """
    c = inputs.shape[0]
    target = patchify(inputs[None].float())[0]                                   # (T, P)
    if norm_pix:
        pred = denormalise_tokens(pred.float(), target)
    m = mask[:, None]
    recon = torch.where(m, pred.float(), target)
    hidden = torch.where(m, torch.full_like(target, float(inputs.min())), target)
    to_volume = lambda t: unpatchify(t[None], grid, c)[0].detach().cpu().numpy()
    return {"input": inputs.detach().float().cpu().numpy(), "masked": to_volume(hidden),
            "reconstruction": to_volume(recon)}


def most_structured(volumes: torch.Tensor) -> int:
    """Index of the volume ``(N, C, *S)`` whose voxels vary most (anatomy rather than air or padding)."""
    return int(volumes.flatten(1).float().std(dim=1).argmax())


def save_reconstructions(levels: List[Dict], grid: Sequence[int], path: os.PathLike, norm_pix: bool = True,
                         orientation: str = STORE_ORIENTATION) -> Path:
    """One row per level (columns: input, masked, reconstruction): of each level's volumes the one with the
    most structure, and its axial slice (first axis of the store's (z, y, x) arrays, oriented
    ``orientation``) with the most structure, in the radiological view; ``levels`` as returned by the MiM
    model's forward."""
    rows = len(levels)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for r, level in enumerate(levels):
        v = most_structured(level["inputs"])
        panels = reconstruction_panels(level["inputs"][v], level["mask"][v], level["pred"][v], grid, norm_pix)
        lo, hi = float(panels["input"].min()), float(panels["input"].max())
        z = int(panels["input"][0].reshape(panels["input"].shape[1], -1).std(axis=1).argmax())
        for col, name in enumerate(("input", "masked", "reconstruction")):
            volume = panels[name][0]
            axes[r][col].imshow(radiological(volume[z], orientation), cmap="gray", vmin=lo, vmax=hi)
            axes[r][col].set_title(f"L{r + 1} {name}")
            axes[r][col].axis("off")
    fig.tight_layout()
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
