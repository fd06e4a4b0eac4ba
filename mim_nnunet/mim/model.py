"""The MiM model: geometry -> encoder -> MAE decoder -> losses, one batch per level.

    model = build_mim("hybrid", "tiny", MiMConfig(input_size=(64, 64, 64)))
    out = model(crops, generator=g, progress=step / total_steps)   # crops: (B, C, *2S)
    out["loss"].backward()

or, with the activations of at most ``chunk`` sub-volumes alive at a time (same gradients):

    out = model.forward_backward(crops, lambda loss: loss.backward(), chunk=4, generator=g)
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..common.errors import MimError
from .config import MiMConfig
from .decoder import MAEDecoder
from .geometry import make_levels
from .losses import alignment_loss, reconstruction_loss, term_weights, total_loss
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
            pred, feats = self.decoder(self.encoder(level.inputs, level.mask, level.visible), level.mask)
            terms[f"rec_l{i}"] = reconstruction_loss(pred, patchify(level.inputs), level.mask, cfg.norm_pix_loss)
            features.append(feats)
            outputs.append({"inputs": level.inputs, "mask": level.mask, "pred": pred,
                            "parent": level.parent, "slot": level.slot})

        for pair in self.align:
            parent_feats, child_feats = features[int(pair[0]) - 1], features[int(pair[1]) - 1]
            child_level = levels[int(pair[1]) - 1]
            if cfg.detach_parent:
                parent_feats = parent_feats.detach()
            terms[f"align_{pair}"] = self.alignment(pair, parent_feats, child_feats, child_level.parent,
                                                    child_level.slot)

        loss, weights = total_loss(terms, cfg.loss_weights, cfg.level_weight_schedule, progress)
        return {"loss": loss, "terms": terms, "weights": weights, "levels": outputs}

    def alignment(self, pair: str, parent_feats: Tensor, child_feats: Tensor, parent: Tensor, slot: Tensor,
                  denominator: Optional[int] = None) -> Tensor:
        """The alignment term of ``pair`` ("12" or "23"): parent volumes' decoder features ``(P, T, D)``,
        the children's ``(N, T, D)``, each child's parent index ``(N,)`` into the P and its slot ``(N,)``
        (unit or token). ``denominator``: as :func:`alignment_loss` (a chunk of the level's children)."""
        cfg, head = self.config, self.align[pair]
        # candidates: the 8 units of an L1 volume, or the T tokens of an L2 volume
        candidates = unit_means(parent_feats, cfg.grid) if pair == "12" else parent_feats
        # each child's parent candidates, as a one-hot product: the backward of plain indexing
        # accumulates in a thread-dependent order on the CPU, which would break bit-exact resume
        owner = F.one_hot(parent, candidates.shape[0]).to(candidates.dtype)   # (N_child, N_parent)
        parents = torch.einsum("cp,pkd->ckd", owner, head.parent(candidates))  # (N_child, K, D)
        child = head.child(child_feats.mean(dim=1))                             # (N_child, D)
        return alignment_loss(child, parents, slot, cfg.align_loss, cfg.tau, denominator)

    def forward_backward(self, crops: Tensor, backward: Callable[[Tensor], None], chunk: int,
                         generator: Optional[torch.Generator] = None, progress: float = 0.0,
                         autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> Dict:
        """The training step's forward and backward, level by level in chunks of at most ``chunk``
        sub-volumes: each chunk's loss goes to ``backward`` (e.g. ``loss.backward()``, or a loss scaler's)
        before the next chunk runs, so only one chunk's activations are alive at a time.

        The gradients are the one-shot step's (:meth:`forward` then backward of its ``loss``) up to float
        summation order: a chunk's reconstruction loss is divided by its level's masked-token count and
        its alignment loss by its level's child count, so the chunks sum to the level's means. Parents'
        features enter the alignment detached (``detach_parent``), so a level needs only the detached
        decoder features of the level before it, kept from that level's chunks. ``autocast`` wraps each
        chunk's forward (not its backward). Returns :meth:`forward`'s dict with every tensor detached;
        ``loss`` and ``terms`` are the sums of the chunks' parts.
        """
        cfg = self.config
        if not cfg.detach_parent:
            raise MimError("chunked steps need detach_parent (the default): with gradients through the "
                           "parent features a level's chunks are not independent; set -chunk 0")
        if chunk < 1:
            raise MimError(f"chunk must be at least 1 sub-volume, got {chunk}")
        levels = make_levels(crops, cfg, generator)
        names = [f"rec_l{i}" for i in range(1, len(levels) + 1)] + [f"align_{p}" for p in self.align]
        weights = term_weights(names, cfg.loss_weights, cfg.level_weight_schedule, progress)
        terms: Dict[str, Tensor] = {}
        outputs: List[Dict] = []
        kept: Optional[Tensor] = None          # the previous level's decoder features, detached
        for i, level in enumerate(levels, start=1):
            pair = f"{i - 1}{i}"
            aligned = pair in self.align
            n, masked = level.inputs.shape[0], level.mask.sum()
            preds, feats_kept, rec_sum, align_sum = [], [], 0.0, 0.0
            for lo in range(0, n, chunk):
                part = slice(lo, min(lo + chunk, n))
                inputs, mask = level.inputs[part], level.mask[part]
                with autocast():
                    pred, feats = self.decoder(self.encoder(inputs, mask, level.visible), mask)
                    rec = reconstruction_loss(pred, patchify(inputs), mask, cfg.norm_pix_loss, masked)
                    loss = weights[f"rec_l{i}"] * rec
                    if aligned:
                        # only the parents of this chunk's children (a contiguous range of parent volumes)
                        owners = level.parent[part]
                        first, last = int(owners.min()), int(owners.max())
                        align = self.alignment(pair, kept[first:last + 1], feats, owners - first,
                                               level.slot[part], n)
                        loss = loss + weights[f"align_{pair}"] * align
                backward(loss)
                rec_sum = rec_sum + rec.detach()
                if aligned:
                    align_sum = align_sum + align.detach()
                preds.append(pred.detach())
                feats_kept.append(feats.detach())
            terms[f"rec_l{i}"] = rec_sum
            if aligned:
                terms[f"align_{pair}"] = align_sum
            kept = torch.cat(feats_kept)
            outputs.append({"inputs": level.inputs, "mask": level.mask, "pred": torch.cat(preds),
                            "parent": level.parent, "slot": level.slot})
        terms = {name: terms[name] for name in names}        # the one-shot step's order
        loss = sum(weights[name] * value for name, value in terms.items())
        return {"loss": loss, "terms": terms, "weights": weights, "levels": outputs}


def build_mim(backbone: str, size: str, config: MiMConfig, sizes: Optional[Mapping] = None, **overrides) -> MiM:
    """A MiM model with the named backbone (``hybrid``/``swin``/``resenc``) and size; ``sizes`` (a plan's
    ``backbone_sizes``) replaces the size table's entry, ``overrides`` single entries of it (e.g.
    ``use_checkpoint=True``)."""
    from ..backbones import (
        build_encoder,  # here, not at the top: the backbones import mim.tokens
    )

    encoder, decoder_sizes = build_encoder(backbone, size, config.in_channels, config.input_size, sizes, **overrides)
    return MiM(encoder, config, **decoder_sizes)
