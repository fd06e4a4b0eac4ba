"""The MiM model: geometry -> encoder -> MAE decoder -> losses, one batch per level.

    model = build_mim("hybrid", "tiny", MiMConfig(input_size=(64, 64, 64)))
    out = model(crops, generator=g, progress=step / total_steps)   # crops: (B, C, *2S)
    out["loss"].backward()
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import MiMConfig
from .decoder import MAEDecoder
from .geometry import make_levels
from .losses import alignment_loss, reconstruction_loss, total_loss
from .tokens import TOKEN_SIZE, patchify, unit_means

PAIRS = ("12", "23")


class ProjectionMLP(nn.Sequential):
    """Linear-GELU-Linear to the alignment space."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__(nn.Linear(dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class AlignmentHead(nn.Module):
    """Child-context and parent-candidate projections of one level pair."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.child = ProjectionMLP(dim, out_dim)
        self.parent = ProjectionMLP(dim, out_dim)


class MiM(nn.Module):
    """Multi-level MAE with cross-level alignment over any backbone with the encoder interface."""

    def __init__(self, encoder: nn.Module, config: MiMConfig, decoder_dim: int, decoder_depth: int,
                 decoder_heads: int):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.decoder = MAEDecoder(encoder.out_dim, config.grid, TOKEN_SIZE ** 3 * config.in_channels,
                                  decoder_dim, decoder_depth, decoder_heads)
        active = [p for p, on in zip(PAIRS, config.align_pairs) if on and int(p[1]) <= config.levels]
        self.align = nn.ModuleDict({p: AlignmentHead(decoder_dim, config.align_dim) for p in active})

    def forward(self, crops: Tensor, generator: Optional[torch.Generator] = None, progress: float = 0.0) -> Dict:
        """crops ``(B, C, *2S)`` -> dict with ``loss`` (total), ``terms`` (each loss term), ``weights``
        (each term's weight) and ``levels``: per level ``inputs`` ``(N, C, *S)``, ``mask`` ``(N, T)``,
        ``pred`` ``(N, T, 16^3 C)`` and the geometry's ``parent`` and ``slot``."""
        cfg = self.config
        levels = make_levels(crops, cfg, generator)
        terms: Dict[str, Tensor] = {}
        outputs: List[Dict] = []
        features: List[Tensor] = []
        for i, level in enumerate(levels, start=1):
            pred, feats = self.decoder(self.encoder(level.inputs, level.mask), level.mask)
            terms[f"rec_l{i}"] = reconstruction_loss(pred, patchify(level.inputs), level.mask, cfg.norm_pix_loss)
            features.append(feats)
            outputs.append({"inputs": level.inputs, "mask": level.mask, "pred": pred,
                            "parent": level.parent, "slot": level.slot})

        for pair, head in self.align.items():
            parent_feats, child_feats = features[int(pair[0]) - 1], features[int(pair[1]) - 1]
            child_level = levels[int(pair[1]) - 1]
            if cfg.detach_parent:
                parent_feats = parent_feats.detach()
            # candidates: the 8 units of an L1 volume, or the T tokens of an L2 volume
            candidates = unit_means(parent_feats, cfg.grid) if pair == "12" else parent_feats
            # each child's parent candidates, as a one-hot product: the backward of plain indexing
            # accumulates in a thread-dependent order on the CPU, which would break bit-exact resume
            owner = F.one_hot(child_level.parent, candidates.shape[0]).to(candidates.dtype)   # (N_child, N_parent)
            parents = torch.einsum("cp,pkd->ckd", owner, head.parent(candidates))            # (N_child, K, D)
            child = head.child(child_feats.mean(dim=1))                             # (N_child, D)
            terms[f"align_{pair}"] = alignment_loss(child, parents, child_level.slot, cfg.align_loss, cfg.tau)

        loss, weights = total_loss(terms, cfg.loss_weights, cfg.level_weight_schedule, progress)
        return {"loss": loss, "terms": terms, "weights": weights, "levels": outputs}


def build_mim(backbone: str, size: str, config: MiMConfig, sizes: Optional[Mapping] = None) -> MiM:
    """A MiM model with the named backbone (``hybrid``/``swin``) and size (``base``/``tiny``); ``sizes``
    (a plan's ``backbone_sizes``) replaces the size table's entry."""
    from ..backbones import (
        build_encoder,  # here, not at the top: the backbones import mim.tokens
    )

    encoder, decoder_sizes = build_encoder(backbone, size, config.in_channels, config.input_size, sizes)
    return MiM(encoder, config, **decoder_sizes)
