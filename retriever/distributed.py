"""Training backends (single process, DDP, DeepSpeed ZeRO-1/2/3) behind one interface, and cross-rank gathers.

Design
------
:class:`Backend` is what GradCache and the trainer talk to: ``module`` (what to call for forward),
``no_sync()``, ``backward(surrogate, last_chunk)``, ``optimizer_step()`` and engine-aware checkpoints.

* The wrapped module is :class:`MultiInput` around the encoder: ``module(a)`` encodes one input dict,
  ``module(a, b)`` encodes two in ONE forward call. DDP and DeepSpeed register exactly one backward per forward,
  so the plain (no GradCache) path encodes queries and pages together and backpropagates once.
* Gradient scale: every rank computes the loss of the GLOBAL batch on gathered representations and
  backpropagates only through its own share, so the true gradient is the SUM over ranks of the local
  gradients. DDP and DeepSpeed average over ranks, hence ``backward`` multiplies by ``world_size``. Gradient
  accumulation divides by the number of micro-steps (DeepSpeed does that itself with ``scale_wrt_gas``).
* Synchronisation: only the last chunk of the last micro-step before an optimizer step syncs
  (DDP: ``no_sync`` otherwise; DeepSpeed: ``set_gradient_accumulation_boundary``). Under ZeRO-2/3 DeepSpeed
  still reduces on every ``engine.backward`` (its partitioning needs it), which is correct and avoids the
  "gradient computed twice" failure that bare ``loss.backward()`` calls cause.
* Loss parameters (a learnable temperature, passed as ``loss=``) are not inside DDP/DeepSpeed: every rank
  computes the same global loss, so their gradient is already identical on every rank and is added directly
  (:meth:`Backend.add_extra_grads`). For single-process and DDP they join the main optimizer (keeping the
  settings of the ``param_groups`` entry they appear in); under DeepSpeed they get their own optimizer and
  scheduler from the same factories, saved next to the engine checkpoint.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "join_process_group",
    "Backend",
    "MultiInput",
    "all_gather_with_grad",
    "build_backend",
    "gather_reps",
    "cat_reps",
    "gather_block_diagonal",
    "is_distributed",
    "pad_reps",
    "rank_and_world",
]

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def join_process_group(timeout: timedelta, use_deepspeed: bool = False) -> None:
    """Join the process group torchrun describes (NCCL with CUDA, else gloo), with a collective timeout.

    Sets this process's CUDA device from ``LOCAL_RANK``; a no-op for a single process or a group already joined.
    With ``use_deepspeed`` the group is made through ``deepspeed.init_distributed`` (same backend and timeout)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if use_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` without one."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


# --------------------------------------------------------------------------------------------- gathers
def pad_reps(reps: Any, length: int) -> Any:
    """Pad a ``MultiVector`` to ``length`` tokens (zero vectors, mask False); dense tensors pass through."""
    if isinstance(reps, Tensor):
        return reps
    extra = length - reps.emb.shape[1]
    if extra == 0:
        return reps
    emb = nn.functional.pad(reps.emb, (0, 0, 0, extra))
    mask = nn.functional.pad(reps.mask, (0, extra), value=False)
    return type(reps)(emb, mask)


def cat_reps(parts: Sequence[Any]) -> Any:
    """Concatenate dense tensors or MultiVectors along the batch, padding tokens to the longest part."""
    if isinstance(parts[0], Tensor):
        return torch.cat(list(parts))
    length = max(p.emb.shape[1] for p in parts)
    padded = [pad_reps(p, length) for p in parts]
    return type(parts[0])(torch.cat([p.emb for p in padded]), torch.cat([p.mask for p in padded]))


def _gather_padded(tensor: Tensor) -> list[Tensor]:
    """All-gather tensors whose shapes differ across ranks (any dim); returns each rank's unpadded tensor."""
    _, world = rank_and_world()
    shape = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    max_shape = torch.stack(shapes).amax(dim=0).tolist()
    pad: list[int] = []
    for have, want in zip(reversed(tensor.shape), reversed(max_shape)):
        pad += [0, want - have]
    padded = nn.functional.pad(tensor, pad) if any(pad) else tensor.contiguous()
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[tuple(slice(0, s) for s in sh.tolist())] for o, sh in zip(out, shapes)]


def _gather_bool(mask: Tensor) -> list[Tensor]:
    return [m.to(torch.bool) for m in _gather_padded(mask.to(torch.uint8))]


def gather_reps(reps: Any) -> tuple[Any, list[int]]:
    """All-gather (detached) reps from every rank in rank order; returns ``(global reps, per-rank counts)``.

    MultiVectors are padded to the longest token count over all ranks. Single process: returns the input.
    """
    if not is_distributed():
        n = (reps if isinstance(reps, Tensor) else reps.emb).shape[0]
        return reps, [n]
    if isinstance(reps, Tensor):
        parts = _gather_padded(reps.detach())
        return torch.cat(parts), [p.shape[0] for p in parts]
    embs = _gather_padded(reps.emb.detach())
    masks = _gather_bool(reps.mask)
    parts = [type(reps)(e, m) for e, m in zip(embs, masks)]
    return cat_reps(parts), [e.shape[0] for e in embs]


def all_gather_with_grad(reps: Any) -> tuple[Any, list[int]]:
    """Like :func:`gather_reps`, but this rank's slot keeps its autograd graph (other ranks' slots are constants).

    Backpropagating a loss on the result gives this rank's share of the global gradient; sum over ranks (what
    :meth:`Backend.backward` arranges) gives the full-batch gradient.
    """
    gathered, counts = gather_reps(reps)
    if not is_distributed():
        return reps, counts
    rank, _ = rank_and_world()
    start = sum(counts[:rank])
    if isinstance(reps, Tensor):
        return torch.cat([gathered[:start], reps, gathered[start + counts[rank]:]]), counts
    local = pad_reps(reps, gathered.emb.shape[1])
    emb = torch.cat([gathered.emb[:start], local.emb, gathered.emb[start + counts[rank]:]])
    return type(reps)(emb, gathered.mask), counts


def gather_block_diagonal(mask: Tensor) -> Tensor:
    """Global ``[sum B_r, sum P_r]`` positives mask: each rank's local mask on the diagonal."""
    if not is_distributed():
        return mask.to(torch.bool)
    return torch.block_diag(*_gather_bool(mask))


# --------------------------------------------------------------------------------------------- backends
class MultiInput(nn.Module):
    """Wraps the encoder: ``forward(*inputs)`` encodes each input dict; one input returns one output.

    ``contexts`` (optional, one per input) are entered around each input's encoder call; GradCache uses them
    to replay each chunk's RNG state when several chunks share one forward.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, *inputs: dict[str, Any],
                contexts: Sequence[contextlib.AbstractContextManager] | None = None) -> Any:
        contexts = contexts or [contextlib.nullcontext() for _ in inputs]
        outs = []
        for x, ctx in zip(inputs, contexts, strict=True):
            with ctx:
                outs.append(self.encoder(x))
        return outs[0] if len(outs) == 1 else tuple(outs)


class Backend:
    """Single-process backend (also the base of the DDP and DeepSpeed ones)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None,
        max_grad_norm: float | None,
        gradient_accumulation_steps: int = 1,
        extra_params: Sequence[nn.Parameter] = (),
    ) -> None:
        self.rank, self.world_size = rank_and_world()
        self.encoder = model
        self.module: nn.Module = MultiInput(model)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.extra_params = list(extra_params)
        self.micro_step = 0
        self.sync_override: bool | None = None

    # -- accumulation bookkeeping
    def sync_due(self) -> bool:
        """True when the current micro-step is the last before an optimizer step.

        Counted from ``gradient_accumulation_steps`` unless the caller set ``sync_override`` (GradCache does
        when the trainer passes ``sync=``).
        """
        if self.sync_override is not None:
            return self.sync_override
        return (self.micro_step + 1) % self.gradient_accumulation_steps == 0

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Context for chunks whose gradients must not be synchronised yet."""
        return contextlib.nullcontext()

    def chunk_context(self, last_chunk: bool) -> contextlib.AbstractContextManager:
        """``no_sync()`` unless this is the last chunk of the last micro-step."""
        return contextlib.nullcontext() if last_chunk and self.sync_due() else self.no_sync()

    def backward(self, surrogate: Tensor, last_chunk: bool) -> None:
        """Backpropagate one chunk's surrogate, scaled for rank averaging and accumulation."""
        (surrogate * (self.world_size / self.gradient_accumulation_steps)).backward()
        if last_chunk:
            self.micro_step += 1

    def add_extra_grads(self, grads: Sequence[Tensor]) -> None:
        """Accumulate gradients of the loss parameters (identical on every rank; scaled for accumulation)."""
        for param, grad in zip(self.extra_params, grads):
            grad = grad / self.gradient_accumulation_steps
            param.grad = grad.clone() if param.grad is None else param.grad + grad

    # -- optimizer
    def optimizer_step(self) -> float:
        """Clip, step optimizer and scheduler, zero grads; returns the total grad norm before clipping."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip = self.max_grad_norm if self.max_grad_norm and self.max_grad_norm > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro_step = 0
        return norm

    @contextlib.contextmanager
    def gathered_parameters(self) -> Iterator[None]:
        """Context in which every parameter of the encoder is whole on this rank (ZeRO-3 gathers them)."""
        yield

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra_params": [p.detach().clone() for p in self.extra_params],
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for param, value in zip(self.extra_params, state["extra_params"]):
                param.copy_(value)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def save_checkpoint(self, directory: str | Path) -> None:
        """Rank 0 writes ``backend.pt`` (model, optimizer, scheduler, loss parameters) into ``directory``."""
        if self.rank == 0:
            Path(directory).mkdir(parents=True, exist_ok=True)
            torch.save(self.state_dict(), Path(directory) / "backend.pt")
        if is_distributed():
            dist.barrier()

    def load_checkpoint(self, directory: str | Path) -> None:
        path = Path(directory) / "backend.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no backend checkpoint at {path}")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class DDPBackend(Backend):
    """``DistributedDataParallel`` around :class:`MultiInput`; sync only on the last chunk."""

    def __init__(self, *args: Any, find_unused_parameters: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        device_ids = [torch.cuda.current_device()] if next(self.encoder.parameters()).is_cuda else None
        self.module = nn.parallel.DistributedDataParallel(
            self.module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.module.no_sync()


class DeepSpeedBackend(Backend):
    """DeepSpeed engine (ZeRO-0/1/2/3): backward per chunk through the engine, one step per global batch."""

    def __init__(
        self,
        model: nn.Module,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory | None,
        deepspeed_config: dict[str, Any],
        param_groups: list[dict[str, Any]],
        extra_groups: list[dict[str, Any]],
        extra_params: Sequence[nn.Parameter],
    ) -> None:
        import deepspeed

        self.rank, self.world_size = rank_and_world()
        self.encoder = model
        self.extra_params = list(extra_params)
        self.micro_step = 0
        self.sync_override = None
        config = dict(deepspeed_config)
        config.setdefault("zero_allow_untested_optimizer", True)
        self.gradient_accumulation_steps = int(config.get("gradient_accumulation_steps", 1))
        optimizer = None if "optimizer" in config else optimizer_factory(param_groups)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=MultiInput(model),
            optimizer=optimizer,
            model_parameters=param_groups if optimizer is None else None,
            lr_scheduler=None if "scheduler" in config else scheduler_factory,
            config=config,
        )
        self.module = self.engine
        self.max_grad_norm = config.get("gradient_clipping")
        self.extra_optimizer = optimizer_factory(extra_groups) if extra_groups else None
        self.extra_scheduler = (
            scheduler_factory(self.extra_optimizer) if self.extra_optimizer and scheduler_factory else None
        )

    def no_sync(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the accumulation boundary is set per backward instead

    def backward(self, surrogate: Tensor, last_chunk: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(bool(last_chunk and self.sync_due()))
        self.engine.backward(surrogate * self.world_size, scale_wrt_gas=True)
        if last_chunk:
            self.micro_step += 1

    def optimizer_step(self) -> float:
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        if self.extra_optimizer is not None:
            self.extra_optimizer.step()
            self.extra_optimizer.zero_grad(set_to_none=True)
            if self.extra_scheduler is not None:
                self.extra_scheduler.step()
        self.micro_step = 0
        return float(norm) if norm is not None else 0.0

    @contextlib.contextmanager
    def gathered_parameters(self) -> Iterator[None]:
        if self.engine.zero_optimization_stage() == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.encoder.parameters()), modifier_rank=None):
                yield
        else:
            yield

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError("DeepSpeed state is sharded; use save_checkpoint/load_checkpoint")

    def save_checkpoint(self, directory: str | Path) -> None:
        """Engine checkpoint (sharded model/optimizer/scheduler) plus the loss parameters and their optimizer."""
        self.engine.save_checkpoint(str(directory), tag="engine")
        if self.rank == 0 and self.extra_params:
            extra = {"params": [p.detach().clone() for p in self.extra_params],
                     "optimizer": self.extra_optimizer.state_dict()}
            if self.extra_scheduler is not None:
                extra["scheduler"] = self.extra_scheduler.state_dict()
            torch.save(extra, Path(directory) / "extra_params.pt")
        if is_distributed():
            dist.barrier()

    def load_checkpoint(self, directory: str | Path) -> None:
        load_path, _ = self.engine.load_checkpoint(str(directory), tag="engine")
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        if self.extra_params:
            extra = torch.load(Path(directory) / "extra_params.pt", map_location="cpu", weights_only=True)
            with torch.no_grad():
                for param, value in zip(self.extra_params, extra["params"]):
                    param.copy_(value)
            self.extra_optimizer.load_state_dict(extra["optimizer"])
            if self.extra_scheduler is not None:
                self.extra_scheduler.load_state_dict(extra["scheduler"])


def build_backend(
    model: nn.Module,
    *,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: SchedulerFactory | None = None,
    deepspeed_config: dict[str, Any] | None = None,
    max_grad_norm: float | None = None,
    ddp: bool = False,
    gradient_accumulation_steps: int = 1,
    param_groups: list[dict[str, Any]] | None = None,
    loss: nn.Module | None = None,
    find_unused_parameters: bool = False,
) -> Backend:
    """Build the backend for ``model`` (the encoder).

    ``param_groups`` defaults to one group of the trainable parameters (plus the loss's, if any). Trainable
    parameters of ``loss`` (a learnable temperature) are handled outside DDP/DeepSpeed (see module docstring);
    they may appear in ``param_groups`` or not. With ``deepspeed_config`` (already resolved: no "auto")
    DeepSpeed is used and its ``gradient_accumulation_steps``/``gradient_clipping`` fields apply; a config
    ``optimizer``/``scheduler`` section overrides the factories. ``ddp`` needs an initialised process group.
    """
    extra = [p for p in (loss.parameters() if loss is not None else ()) if p.requires_grad]
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    model_groups, extra_groups = _split_groups(groups, extra)
    if deepspeed_config is not None:
        return DeepSpeedBackend(model, optimizer_factory, scheduler_factory, deepspeed_config, model_groups,
                                extra_groups, extra)
    optimizer = optimizer_factory(model_groups + extra_groups)
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    common = dict(max_grad_norm=max_grad_norm, gradient_accumulation_steps=gradient_accumulation_steps,
                  extra_params=extra)
    if ddp:
        if not is_distributed():
            raise RuntimeError("ddp=True needs torch.distributed to be initialised (launch with torchrun)")
        return DDPBackend(model, optimizer, scheduler, find_unused_parameters=find_unused_parameters, **common)
    return Backend(model, optimizer, scheduler, **common)


def _split_groups(groups: list[dict[str, Any]], extra: Sequence[nn.Parameter]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split optimizer groups into model groups and loss-parameter groups (each keeps its own settings)."""
    extra_ids = {id(p) for p in extra}
    model_groups, extra_groups, seen = [], [], set()
    for group in groups:
        params = list(group["params"])
        mine = [p for p in params if id(p) in extra_ids]
        seen |= {id(p) for p in mine}
        rest = [p for p in params if id(p) not in extra_ids]
        if rest:
            model_groups.append({**group, "params": rest})
        if mine:
            extra_groups.append({**group, "params": mine})
    missing = [p for p in extra if id(p) not in seen]
    if missing:
        extra_groups.append({"params": missing})
    return model_groups, extra_groups
