"""Exact GradCache: contrastive batches far larger than what fits through the encoder's backward at once.

Design
------
The loss of a contrastive batch couples every query with every page, but its gradient with respect to the
PARAMETERS factors through the representations: ``dL/dθ = Σ_i <dL/dr_i, dr_i/dθ>``. :class:`GradCache` uses that:

1. First pass, no grad, chunk by chunk (``encoder.split_inputs``: per example, so flattened patch tensors are
   split per image). The CPU and CUDA RNG states before each chunk are recorded; with
   ``reuse_frozen_vision`` the frozen vision tower's outputs are recorded too.
2. The representations are gathered across ranks (:func:`retriever.training.gather.gather_reps`, multi-vector reps
   padded to a common length) and the loss of the GLOBAL batch is computed on them (every rank computes the
   same loss; the global positives mask is block-diagonal over ranks). Its gradient with respect to the
   representations (and the loss's own parameters, e.g. a learnable temperature) is taken.
3. Second pass, one step per page chunk, each carrying its share of the query chunks in ONE module call:
   every chunk's RNG state is restored around its own encoder call (dropout masks are identical), the vision
   outputs are replayed when reused, and ``sum <r_chunk, dL/dr_chunk>`` is backpropagated through the
   strategy: ``no_sync`` on every step but the last (DDP), the DeepSpeed accumulation boundary only on the
   last. Every step carries a page chunk so that every backward reaches every trainable parameter: DDP needs
   that for its synchronising backward and DeepSpeed ZeRO-3 for the first backward of an optimizer step
   (see :func:`_second_pass_plan`).

The parameter gradient equals the full-batch gradient exactly (up to float summation order). With
``chunk_size`` 0/None the same cross-rank loss is used without caching: one forward of the whole local
batch (queries and pages in one call) and one backward.

Frozen vision reuse: the vision tower is most of a page's FLOPs. When it is frozen its output is a pure
function of the pixels, so the second pass replays the recorded output (by temporarily replacing the
tower's ``forward``) instead of recomputing it. The recorded outputs cost memory (one chunk's visual tokens
times hidden size per chunk, for the whole batch).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from retriever.model.embeddings import cat_embeddings, is_multi_vector
from retriever.process_group import RankInfo
from retriever.training.strategy import Strategy
from retriever.training.gather import gather_block_diagonal, gather_reps
from retriever.training.losses import ContrastiveLoss

__all__ = ["GradCache", "RngState", "VisionReplay", "auto_chunk_size"]


class RngState:
    """CPU (and, when initialised, every CUDA device's) RNG state, to replay a forward's randomness."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        """Set the recorded states (from here on, random draws repeat those made after the recording)."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body with the recorded states; the surrounding RNG state is restored afterwards."""
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            self.restore()
            yield


def _detach(value: Any) -> Any:
    """Detach every tensor in a (possibly nested / ModelOutput) structure, keeping its type."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):  # includes transformers ModelOutput (an OrderedDict subclass)
        return type(value)(**{k: _detach(v) for k, v in value.items()})
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_detach(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value


class VisionReplay:
    """Record a frozen module's outputs during the first pass and replay them, in order, in the second.

    Each output is recorded with the RNG state right after the module ran, and replaying it restores that state:
    a tower with dropout (SigLIP, InternViT) draws random numbers that the skipped second-pass forward would not,
    and without this the text model's dropout masks after it would differ from the first pass's.
    """

    def __init__(self, module: nn.Module) -> None:
        if any(p.requires_grad for p in module.parameters()):
            raise ValueError("reuse_frozen_vision needs a frozen vision tower (all its parameters requires_grad=False)")
        self.module = module

    @contextlib.contextmanager
    def record(self) -> Iterator[list[Any]]:
        outputs: list[Any] = []
        handle = self.module.register_forward_hook(lambda _m, _args, out: outputs.append((_detach(out), RngState())))
        try:
            yield outputs
        finally:
            handle.remove()

    @contextlib.contextmanager
    def replay(self, outputs: Sequence[Any]) -> Iterator[None]:
        queue = iter(outputs)

        def cached_forward(*_args: Any, **_kwargs: Any) -> Any:
            try:
                output, rng = next(queue)
            except StopIteration:
                raise RuntimeError("vision tower called more often in the second pass than in the first") from None
            rng.restore()
            return output

        self.module.forward = cached_forward  # instance attribute shadows the class's forward
        try:
            yield
        finally:
            del self.module.forward


def _tensor_of(reps: Any) -> Tensor:
    return reps.emb if is_multi_vector(reps) else reps


def _leaf(reps: Any) -> Any:
    """Detached copy of the reps as autograd leaves, in at least float32 (the loss is computed in it)."""
    tensor = _tensor_of(reps).detach()
    tensor = tensor.to(torch.promote_types(tensor.dtype, torch.float32)).requires_grad_()
    return type(reps)(tensor, reps.mask) if is_multi_vector(reps) else tensor


def _dot(reps: Any, grad: Tensor) -> Tensor:
    """Surrogate ``<reps, grad>`` whose backward sends ``grad`` into the encoder."""
    tensor = _tensor_of(reps)
    if is_multi_vector(reps):
        grad = grad[:, : tensor.shape[1]]
    return (tensor * grad.to(tensor.dtype)).sum()


@dataclass
class _Cached:
    """What the first pass keeps per chunk (``grad`` is filled in once the loss is known)."""

    reps: Any
    rng: RngState
    vision_out: list[Any] | None
    grad: Tensor | None = None

    @property
    def rows(self) -> int:
        return _tensor_of(self.reps).shape[0]


def _second_pass_plan(n_query_chunks: int, n_page_chunks: int) -> list[tuple[list[int], int]]:
    """Second-pass steps ``(query chunk ids, page chunk id)``: one step per page chunk, queries spread over them.

    Every step carries a page chunk, so every backward reaches every trainable parameter (pages go through
    the vision tower AND the language model). DDP needs that for the synchronising last backward, and
    DeepSpeed ZeRO-3 for the first backward of a step (it overwrites, not accumulates, the gradient
    partitions of the parameters that the first backward reaches; any other keeps the previous step's value).
    """
    plan: list[tuple[list[int], int]] = [([], p) for p in range(n_page_chunks)]
    for q in range(n_query_chunks):
        plan[q * n_page_chunks // n_query_chunks][0].append(q)
    return plan


class GradCache:
    """One contrastive step (forward + backward of this rank's share of a global batch), with or without caching.

    ``step(query_inputs, page_inputs, positives)`` leaves the gradients accumulated in the strategy and returns
    ``{"loss", "pairs", "seconds"}``; the trainer then calls ``strategy.optimizer_step()`` (after
    ``strategy.gradient_accumulation_steps`` steps). ``positives`` is the LOCAL ``[B_local, P_local]`` mask.
    """

    def __init__(
        self,
        encoder: nn.Module,
        loss: ContrastiveLoss,
        strategy: Strategy,
        chunk_size: int | None,
        reuse_frozen_vision: bool = False,
    ) -> None:
        self.encoder = encoder
        self.loss = loss
        self.strategy = strategy
        self.chunk_size = chunk_size or 0
        self.vision: VisionReplay | None = None
        if reuse_frozen_vision:
            module = encoder.vision_module()
            if module is None:
                raise ValueError("reuse_frozen_vision: this encoder has no frozen vision tower "
                                 "(train with --freeze_vision)")
            self.vision = VisionReplay(module)
        self.loss_params = [p for p in loss.parameters() if p.requires_grad]

    def step(self, query_inputs: dict[str, Any], page_inputs: dict[str, Any], positives: Tensor,
             sync: bool | None = None) -> dict[str, float]:
        """Forward + backward of one contrastive batch.

        ``sync``: whether this is the last micro-step before ``optimizer_step`` (gradients are synchronised
        across ranks at its last chunk); ``None`` lets the strategy count micro-steps.
        """
        start = time.perf_counter()
        self.strategy.sync_override = sync
        try:
            if self.chunk_size:
                loss = self._cached_step(query_inputs, page_inputs, positives)
            else:
                loss = self._plain_step(query_inputs, page_inputs, positives)
        finally:
            self.strategy.sync_override = None
        return {"loss": loss, "pairs": float(positives.shape[0]), "seconds": time.perf_counter() - start}

    # ------------------------------------------------------------------ plain
    def _plain_step(self, query_inputs: dict[str, Any], page_inputs: dict[str, Any], positives: Tensor) -> float:
        with self.strategy.chunk_context(last_chunk=True):
            q_reps, p_reps = self.strategy.module(query_inputs, page_inputs)
            loss, (q_grad, p_grad) = self._loss_and_grads(q_reps, p_reps, positives)
            self.strategy.backward(_dot(q_reps, q_grad) + _dot(p_reps, p_grad), last_chunk=True)
        return loss

    # ------------------------------------------------------------------ GradCache
    def _cached_step(self, query_inputs: dict[str, Any], page_inputs: dict[str, Any], positives: Tensor) -> float:
        chunks = [self.encoder.split_inputs(query_inputs, self.chunk_size),
                  self.encoder.split_inputs(page_inputs, self.chunk_size)]
        cached = [[self._first_pass(c) for c in side] for side in chunks]
        loss, grads = self._loss_and_grads(cat_embeddings([c.reps for c in cached[0]]),
                                           cat_embeddings([c.reps for c in cached[1]]), positives)
        for side, side_grad in zip(cached, grads):
            offset = 0
            for entry in side:
                entry.grad = side_grad[offset : offset + entry.rows]
                offset += entry.rows
        plan = _second_pass_plan(len(chunks[0]), len(chunks[1]))
        for i, (q_ids, p_id) in enumerate(plan):
            parts = [(chunks[0][j], cached[0][j]) for j in q_ids] + [(chunks[1][p_id], cached[1][p_id])]
            self._second_pass(parts, last=i == len(plan) - 1)
        return loss

    def _first_pass(self, chunk: dict[str, Any]) -> _Cached:
        """No-grad forward of one chunk: its detached reps, the RNG state before it, recorded vision outputs."""
        rng = RngState()
        record = self.vision.record() if self.vision else contextlib.nullcontext(None)
        with torch.no_grad(), record as vision_out:
            reps = self.strategy.module(chunk)
        return _Cached(_detach(reps), rng, vision_out)

    @contextlib.contextmanager
    def _replay(self, entry: _Cached) -> Iterator[None]:
        """Context restoring a chunk's RNG state (and replaying its vision outputs) around its encoder call."""
        vision = self.vision.replay(entry.vision_out) if self.vision else contextlib.nullcontext()
        with entry.rng.replay(), vision:
            yield

    def _second_pass(self, parts: list[tuple[dict[str, Any], _Cached]], last: bool) -> None:
        """Re-forward some chunks in ONE module call (replaying each one's randomness) and backpropagate
        ``sum <reps, cached grad>`` once."""
        inputs = [chunk for chunk, _ in parts]
        with self.strategy.chunk_context(last_chunk=last):
            outs = self.strategy.module(*inputs, contexts=[self._replay(entry) for _, entry in parts])
            outs = outs if len(parts) > 1 else (outs,)
            surrogate = sum(_dot(out, entry.grad) for out, (_, entry) in zip(outs, parts))
            self.strategy.backward(surrogate, last_chunk=last)

    # ------------------------------------------------------------------ loss on representations
    def _loss_and_grads(self, q_local: Any, p_local: Any, positives: Tensor) -> tuple[float, tuple[Tensor, Tensor]]:
        """Global loss on gathered reps; returns (loss value, this rank's gradients w.r.t. its q and p reps).

        The loss parameters' gradients are handed to the strategy here.
        """
        q_all, q_counts = gather_reps(_detach(q_local))
        p_all, p_counts = gather_reps(_detach(p_local))
        mask = gather_block_diagonal(positives.to(_tensor_of(q_local).device))
        q_leaf, p_leaf = _leaf(q_all), _leaf(p_all)
        device_type = _tensor_of(q_leaf).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            loss = self.loss(q_leaf, p_leaf, mask)
        inputs = [_tensor_of(q_leaf), _tensor_of(p_leaf), *self.loss_params]
        grads = torch.autograd.grad(loss, inputs)
        if self.loss_params:
            self.strategy.add_extra_grads(grads[2:])
        rank = RankInfo.current().rank
        q_start, p_start = sum(q_counts[:rank]), sum(p_counts[:rank])
        q_grad = grads[0][q_start : q_start + q_counts[rank]]
        p_grad = grads[1][p_start : p_start + p_counts[rank]]
        return float(loss.detach()), (q_grad, p_grad)


def auto_chunk_size(
    encoder: nn.Module,
    per_device_batch_size: int,
    memory_fraction: float = 0.8,
    device: torch.device | None = None,
    sample_pages: dict[str, Any] | None = None,
    cpu_default: int = 8,
) -> int:
    """Largest GradCache chunk (at most the per-device batch) whose page forward+backward fits the memory fraction.

    On GPU the peak of a gradient-carrying forward+backward is measured on chunks of 1 and 2 pages
    (``sample_pages``, default: two blank US-letter pages at 200 dpi through ``encoder.prepare_pages``; pages
    dominate queries). Peak memory is linear in chunk size, so the two points give the per-page and the fixed
    cost, and the chunk is ``(fraction * total - fixed) / per_page`` rounded down to a power of two. On CPU it
    returns ``min(cpu_default, per_device_batch_size)``: memory is rarely the limit there.
    """
    device = device or next(encoder.parameters()).device
    if device.type != "cuda":
        return max(1, min(cpu_default, per_device_batch_size))
    if sample_pages is None:
        from PIL import Image

        sample_pages = encoder.prepare_pages([Image.new("RGB", (1700, 2200), "white")] * 2)
    sample_pages = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in sample_pages.items()}
    peaks = []
    for size in (1, 2):
        chunk = encoder.split_inputs(sample_pages, size)[0]
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        _tensor_of(encoder(chunk)).float().square().sum().backward()
        peaks.append(torch.cuda.max_memory_allocated(device))
        encoder.zero_grad(set_to_none=True)
    per_page = max(peaks[1] - peaks[0], 1)
    fixed = peaks[0] - per_page
    budget = memory_fraction * torch.cuda.get_device_properties(device).total_memory
    fit = int((budget - fixed) // per_page)
    if fit < 1:
        raise RuntimeError(f"not even one page fits in {memory_fraction:.0%} of GPU memory; lower the page resolution")
    return min(per_device_batch_size, 1 << (fit.bit_length() - 1))
