"""Pictures of pre-training: ``progress.png`` (loss terms, lr, throughput) and reconstructions per level."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from ..common.figures import plt, save_figure
from ..mim.losses import denormalise_tokens
from ..mim.tokens import patchify, unpatchify


def reconstruction_panels(inputs: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, grid: Sequence[int],
                          norm_pix: bool = True) -> Dict[str, np.ndarray]:
    """One volume's pictures as ``(C, X, Y, Z)`` arrays: ``input``, ``masked`` (masked tokens at the
    volume's minimum) and ``reconstruction`` (visible tokens from the input, masked tokens predicted).

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


def save_reconstructions(levels: List[Dict], grid: Sequence[int], path: os.PathLike, norm_pix: bool = True) -> Path:
    """A grid of middle slices (rows: levels; columns: input, masked, reconstruction) for the first
    volume of each level; ``levels`` as returned by the MiM model's forward."""
    rows = len(levels)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for r, level in enumerate(levels):
        panels = reconstruction_panels(level["inputs"][0], level["mask"][0], level["pred"][0], grid, norm_pix)
        lo, hi = float(panels["input"].min()), float(panels["input"].max())
        for col, name in enumerate(("input", "masked", "reconstruction")):
            volume = panels[name][0]
            axes[r][col].imshow(volume[volume.shape[0] // 2].T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            axes[r][col].set_title(f"L{r + 1} {name}")
            axes[r][col].axis("off")
    fig.tight_layout()
    save_figure(fig, Path(path))
    return Path(path)


def save_progress(records: List[Dict], path: os.PathLike) -> Path:
    """``progress.png`` from log records (dicts with ``step`` and any of the keys plotted): every loss
    term, the learning rate and the throughput, one panel each, against the step."""
    steps = [r["step"] for r in records]
    loss_keys = sorted({k for r in records for k in r if k == "loss" or k.startswith(("rec_", "align_"))})
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for key in loss_keys:
        axes[0].plot(steps, [r.get(key, np.nan) for r in records], label=key)
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].plot(steps, [r.get("lr", np.nan) for r in records])
    axes[1].set_ylabel("learning rate")
    axes[2].plot(steps, [r.get("subvolumes_per_s", np.nan) for r in records])
    axes[2].set_ylabel("sub-volumes / s")
    axes[2].set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, Path(path))
    return Path(path)
