"""A tiny float64 two-modality encoder with the ``RetrieverEncoder`` interface, for GradCache tests.

Pages are text tokens followed by visual tokens computed by a vision-like submodule from a FLATTENED patch
tensor (``patches [sum N_i, patch_dim]`` with ``patch_counts [B]``), like Qwen2-VL's ``pixel_values`` /
``image_grid_thw``; queries are text only. Dropout makes the forward random, so exactness needs RNG replay.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retriever.model.embeddings import MultiVector

VOCAB, PATCH_DIM = 50, 6


class ToyVision(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(PATCH_DIM, hidden), nn.Linear(hidden, hidden)

    def forward(self, patches: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(patches)))


class ToyEncoder(nn.Module):
    def __init__(self, hidden: int = 16, dim: int = 8, multi: bool = False, dropout: float = 0.1,
                 freeze_vision: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.vision = ToyVision(hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, dim)
        self.multi = multi
        self.vision.requires_grad_(not freeze_vision)

    def forward(self, inputs: dict[str, Tensor]) -> Any:
        tokens = self.drop(self.embed(inputs["input_ids"]))
        mask = inputs["attention_mask"].bool()
        if "patches" in inputs:
            visual = self.drop(self.vision(inputs["patches"]))
            per_page = torch.split(visual, inputs["patch_counts"].tolist())
            padded = nn.utils.rnn.pad_sequence(list(per_page), batch_first=True)
            counts = inputs["patch_counts"].to(mask.device)
            vmask = torch.arange(padded.shape[1], device=mask.device)[None] < counts[:, None]
            tokens, mask = torch.cat([tokens, padded], 1), torch.cat([mask, vmask], 1)
        hidden = self.drop(torch.tanh(self.mix(tokens)))
        out = self.proj(hidden)
        if self.multi:
            emb = F.normalize(out, dim=-1).masked_fill(~mask[..., None], 0.0)
            return MultiVector(emb, mask)
        pooled = (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return F.normalize(pooled, dim=-1)

    def split_inputs(self, inputs: dict[str, Tensor], chunk_size: int) -> list[dict[str, Tensor]]:
        n = inputs["input_ids"].shape[0]
        chunks = []
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            chunk = {"input_ids": inputs["input_ids"][rows], "attention_mask": inputs["attention_mask"][rows]}
            if "patches" in inputs:
                offsets = torch.cat([torch.zeros(1, dtype=torch.long), inputs["patch_counts"].cumsum(0)])
                end = min(start + chunk_size, n)
                chunk["patches"] = inputs["patches"][offsets[start]:offsets[end]]
                chunk["patch_counts"] = inputs["patch_counts"][rows]
            chunks.append(chunk)
        return chunks

    def vision_module(self) -> nn.Module | None:
        frozen = not any(p.requires_grad for p in self.vision.parameters())
        return self.vision if frozen else None


def toy_batch(n_queries: int, n_pages: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[dict, dict, Tensor]:
    """Random queries and pages (variable text lengths and patch counts) and a positives mask.

    Query ``i`` has page ``i`` as positive (and page ``i+1`` too for every third query); pages after the first
    ``n_queries`` are hard negatives of no query.
    """
    gen = torch.Generator().manual_seed(seed)
    q_ids = torch.randint(1, VOCAB, (n_queries, 5), generator=gen)
    q_mask = torch.ones(n_queries, 5, dtype=torch.long)
    q_mask[::2, 3:] = 0
    n_p = n_pages
    p_ids = torch.randint(1, VOCAB, (n_p, 3), generator=gen)
    counts = torch.randint(2, 7, (n_p,), generator=gen)
    patches = torch.randn(int(counts.sum()), PATCH_DIM, generator=gen, dtype=dtype)
    pages = {"input_ids": p_ids, "attention_mask": torch.ones(n_p, 3, dtype=torch.long), "patches": patches,
             "patch_counts": counts}
    positives = torch.zeros(n_queries, n_p, dtype=torch.bool)
    for i in range(n_queries):
        positives[i, i] = True
        if i % 3 == 0 and i + 1 < n_queries:
            positives[i, i + 1] = True
    return {"input_ids": q_ids, "attention_mask": q_mask}, pages, positives
