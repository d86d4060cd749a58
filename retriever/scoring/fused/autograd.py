"""The fused MaxSim as an autograd function: the contrastive loss's multi-vector scores on CUDA.

Forward scores padded inputs with the argmax page token of every query row and saves the inputs and those
indices (``int32 [Nd, R]``), never a similarity block. The gradient of a max flows only to its argmax, so
backward is exact without recomputing any dot product: it repacks the inputs, runs the query-gradient gather and
the page-gradient one-hot product (:mod:`retriever.scoring.fused.launch`), and scatters the packed gradients back
to the padded layout (padded positions get zero gradient).
"""
from __future__ import annotations

import torch
from torch import Tensor

from retriever.scoring.exact import check_pages_have_tokens
from retriever.scoring.fused.config import BlockConfig, block_config
from retriever.scoring.fused.launch import acc_dtypes, launch_forward, launch_grad_rows, launch_grad_tokens
from retriever.scoring.fused.packing import PackedPages, QueryTiles

__all__ = ["FusedMaxSim", "fused_maxsim"]


class FusedMaxSim(torch.autograd.Function):
    """Differentiable MaxSim ``[Nq, Nd]`` (float32; float64 for float64 inputs) via the fused kernels.

    Saves the inputs and the argmax indices; backward repacks the inputs and runs the gather (grad of the
    queries) and one-hot scatter (grad of the pages) kernels, then scatters the packed gradients back to the
    padded layout (padded positions get zero gradient).
    """

    @staticmethod
    def forward(ctx, q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor, cfg: BlockConfig) -> Tensor:
        tiles, pages = _pack_padded(q_emb, q_mask, d_emb, d_mask, cfg.block_q)
        part_scores, idx = launch_forward(tiles, pages, True, cfg)
        ctx.save_for_backward(q_emb, q_mask, d_emb, d_mask, idx)
        ctx.cfg, ctx.no_pairs = cfg, part_scores.numel() == 0  # then idx was never written
        return tiles.sum_parts(part_scores, q_emb.shape[0])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q_emb, q_mask, d_emb, d_mask, idx = ctx.saved_tensors
        cfg = ctx.cfg
        tiles, pages = _pack_padded(q_emb, q_mask, d_emb, d_mask, cfg.block_q)
        grad_q = torch.zeros_like(q_emb) if ctx.needs_input_grad[0] else None
        grad_d = torch.zeros_like(d_emb) if ctx.needs_input_grad[2] else None
        if ctx.no_pairs:
            return grad_q, None, grad_d, None, None
        gt = grad_out.to(acc_dtypes(q_emb.dtype)[0]).T.contiguous()  # [Nd, Nq]: see _grad_q_kernel
        if grad_q is not None:
            rows = launch_grad_rows(tiles, pages, idx, gt, cfg)
            filled = tiles.source >= 0
            grad_q.view(-1, q_emb.shape[-1])[tiles.source[filled]] = rows[filled].to(q_emb.dtype)
        if grad_d is not None:
            tokens = launch_grad_tokens(tiles, pages, idx, gt, cfg)
            grad_d.view(-1, d_emb.shape[-1])[d_mask.flatten()] = tokens.to(d_emb.dtype)
        return grad_q, None, grad_d, None, None


def _pack_padded(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor,
                 block_q: int) -> tuple[QueryTiles, PackedPages]:
    """Query tiles and packed pages of padded inputs (the loss keeps the input dtype)."""
    flat = q_emb.reshape(-1, q_emb.shape[-1])
    tiles = QueryTiles.build(flat, q_mask.flatten().nonzero().flatten(), q_mask.sum(1).tolist(), block_q)
    return tiles, PackedPages.from_padded(d_emb, d_mask)


def fused_maxsim(q_emb: Tensor, q_mask: Tensor, d_emb: Tensor, d_mask: Tensor,
                 cfg: BlockConfig | None = None) -> Tensor:
    """Differentiable MaxSim ``[Nq, Nd]`` of padded inputs via the fused kernels (float32, or float64 for float64)."""
    check_pages_have_tokens(d_emb, d_mask)
    return FusedMaxSim.apply(q_emb, q_mask, d_emb, d_mask, cfg or block_config(q_emb.device, q_emb.dtype, loss=True))
