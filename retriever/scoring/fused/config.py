"""Tile sizes and launch parameters of the fused MaxSim kernels, per device and dtype.

:class:`BlockConfig` holds one launch configuration; :func:`block_config_for` picks it from a device's shared
memory per block (large tensor-core tiles on A100/H100/H200/B200, smaller ones elsewhere, small float64 tiles for
exactness checks), and :func:`block_config` asks the current CUDA device (Triton's interpreter gets small tiles
that only set the number of programs). ``bench/maxsim_fused.py`` sweeps the alternatives; ``bench/compile_check.py``
compiles every configuration returned here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BlockConfig", "block_config", "block_config_for"]


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes and launch parameters (``block_p_grad``: page-token block of the page-gradient kernel;
    ``pages_per_program``: pages each forward program scores with its query tile, loaded once).

    ``fp32_precision`` is how fp32 inputs are multiplied: ``"tf32x3"`` (three tensor-core passes, fp32-level
    accuracy) or ``"ieee"`` (exact products on the FMA units). ``split_fp32`` scores fp32 inputs instead as three
    fp16 products over their halves (see :func:`retriever.scoring.fused.launch._split_fp16`): fp32-level accuracy
    at twice TF32's tensor-core rate. It applies to the forward kernel (evaluation) only.
    """

    block_q: int
    block_p: int
    num_warps: int
    num_stages: int
    block_p_grad: int = 64
    fp32_precision: str = "tf32x3"
    split_fp32: bool = False
    pages_per_program: int = 1

    def precision(self, dtype: torch.dtype) -> str:
        """``tl.dot`` input precision for ``dtype`` (Triton's default for 16-bit inputs: exact products)."""
        return {torch.float64: "ieee", torch.float32: self.fp32_precision}.get(dtype, "tf32")


def block_config(device: torch.device, dtype: torch.dtype, loss: bool = False) -> BlockConfig:
    """Tile sizes for ``device`` (see :func:`block_config_for`); Triton's interpreter off CUDA."""
    if device.type != "cuda":  # Triton's interpreter: block sizes only set the number of programs
        return BlockConfig(32, 32, 1, 1, 32, "ieee")
    props = torch.cuda.get_device_properties(device)
    return block_config_for(getattr(props, "shared_memory_per_block_optin", 0), dtype, loss)


def block_config_for(shared_memory: int, dtype: torch.dtype, loss: bool = False) -> BlockConfig:
    """Tile sizes for a CUDA device with ``shared_memory`` bytes per block (opt-in): large tensor-core tiles
    where shared memory allows them.

    Evaluation takes 256-row query tiles (fastest in ``bench/maxsim_fused.py``'s sweep on an H200); the loss keeps
    128 rows, since its argmax and row-gradient kernels hold more per row in registers. fp32 evaluation is scored
    as three fp16 products (``split_fp32``) in 128-row tiles, whose two fp16 halves hold as many registers as
    bf16's 256-row tile.
    """
    if dtype == torch.float64:  # exactness checks: small tiles keep 8-byte operands in registers and shared memory
        return BlockConfig(32, 32, 4, 2, 32)
    if shared_memory >= 160 * 1024:  # A100, H100, H200, B200
        if dtype.itemsize <= 2:
            return BlockConfig(128, 64, 8, 3, 64) if loss else BlockConfig(256, 64, 8, 3)
        return BlockConfig(64, 64, 4, 3) if loss else BlockConfig(128, 64, 8, 3, split_fp32=True)
    return BlockConfig(64, 64, 4, 2, 64)
