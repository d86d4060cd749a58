"""Training strategies (single process, DDP, DeepSpeed ZeRO-1/2/3) behind one interface.

Design
------
:class:`Strategy` is what GradCache and the trainer talk to: ``module`` (what to call for forward),
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
  (:meth:`Strategy.add_extra_grads`). For single-process and DDP they join the main optimizer (keeping the
  settings of the ``param_groups`` entry they appear in); under DeepSpeed they get their own optimizer and
  scheduler from the same factories, saved next to the engine checkpoint.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from data_prep.errors import MissingInputError
from retriever.model.tensor_files import load_torch_file
from retriever.process_group import RankInfo, barrier, is_distributed

__all__ = ["Strategy", "DDPStrategy", "DeepSpeedStrategy", "MultiInput", "build_strategy"]

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


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


class Strategy:
    """Single-process strategy (also the base of the DDP and DeepSpeed ones)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None,
        max_grad_norm: float | None,
        gradient_accumulation_steps: int = 1,
        extra_params: Sequence[nn.Parameter] = (),
        module: nn.Module | None = None,
    ) -> None:
        """``module`` is what forward calls go through (default: :class:`MultiInput` around ``model``)."""
        info = RankInfo.current()
        self.rank, self.world_size = info.rank, info.world
        self.encoder = model
        self.module: nn.Module = module if module is not None else MultiInput(model)
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

    def inference_parameters(self) -> contextlib.AbstractContextManager:
        """Complete parameters for forward passes outside training (evaluation); see DeepSpeedStrategy."""
        return contextlib.nullcontext()

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
        barrier()

    def load_checkpoint(self, directory: str | Path) -> None:
        path = Path(directory) / "backend.pt"
        if not path.is_file():
            raise MissingInputError(f"no strategy checkpoint at {path} (a checkpoint written under DeepSpeed is "
                                    "resumed under DeepSpeed only)")
        self.load_state_dict(load_state_file(path))


class DDPStrategy(Strategy):
    """``DistributedDataParallel`` around :class:`MultiInput`; sync only on the last chunk."""

    def __init__(self, *args: Any, find_unused_parameters: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        device_ids = [torch.cuda.current_device()] if next(self.encoder.parameters()).is_cuda else None
        self.module = nn.parallel.DistributedDataParallel(
            self.module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.module.no_sync()


class DeepSpeedStrategy(Strategy):
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

        config = dict(deepspeed_config)
        config.setdefault("zero_allow_untested_optimizer", True)
        optimizer = None if "optimizer" in config else optimizer_factory(param_groups)
        self.engine, optimizer, _, scheduler = deepspeed.initialize(
            model=MultiInput(model),
            optimizer=optimizer,
            model_parameters=param_groups if optimizer is None else None,
            lr_scheduler=None if "scheduler" in config else scheduler_factory,
            config=config,
        )
        super().__init__(model, optimizer, scheduler, config.get("gradient_clipping"),
                         int(config.get("gradient_accumulation_steps", 1)), extra_params, module=self.engine)
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

    @contextlib.contextmanager
    def inference_parameters(self) -> Iterator[None]:
        """ZeRO-3: full parameters on every rank with the partitioning hooks off, so ranks may run different
        numbers of forward passes (sharded evaluation) without waiting on each other's gathers."""
        if self.engine.zero_optimization_stage() == 3:
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

            with unwrap_model_for_generation(self.engine):
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
        barrier()

    def load_checkpoint(self, directory: str | Path) -> None:
        load_path, _ = self.engine.load_checkpoint(str(directory), tag="engine")
        if load_path is None:
            raise MissingInputError(f"no DeepSpeed checkpoint under {directory} (a checkpoint written without "
                                    "DeepSpeed is resumed without it only)")
        if self.extra_params:
            extra = load_state_file(Path(directory) / "extra_params.pt")
            with torch.no_grad():
                for param, value in zip(self.extra_params, extra["params"]):
                    param.copy_(value)
            self.extra_optimizer.load_state_dict(extra["optimizer"])
            if self.extra_scheduler is not None:
                self.extra_scheduler.load_state_dict(extra["scheduler"])


def load_state_file(path: Path) -> Any:
    """A ``torch.save`` file of a training checkpoint, read with ``weights_only=True``; a truncated or corrupt one,
    or one holding pickled objects, is one line naming it and saying how to resume instead."""
    return load_torch_file(path, "the training state", f"delete {path.parent} and resume from an older checkpoint "
                           "(--resume_from_checkpoint latest takes the newest complete one left)")


def build_strategy(
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
) -> Strategy:
    """Build the strategy for ``model`` (the encoder).

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
        return DeepSpeedStrategy(model, optimizer_factory, scheduler_factory, deepspeed_config, model_groups,
                                extra_groups, extra)
    optimizer = optimizer_factory(model_groups + extra_groups)
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    common = dict(max_grad_norm=max_grad_norm, gradient_accumulation_steps=gradient_accumulation_steps,
                  extra_params=extra)
    if ddp:
        if not is_distributed():
            raise RuntimeError("ddp=True needs torch.distributed to be initialised (launch with torchrun)")
        return DDPStrategy(model, optimizer, scheduler, find_unused_parameters=find_unused_parameters, **common)
    return Strategy(model, optimizer, scheduler, **common)


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
