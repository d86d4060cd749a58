"""Worker for the 2-rank tests: after 2 optimizer steps, parameters under DDP / DeepSpeed ZeRO-1/2/3 with
GradCache must equal a single-process run over the same global batches.

Launched as ``torchrun --nproc_per_node 2 tests/helpers/gc_worker.py OUT_JSON [CONFIG ...]``. Each rank
first computes the single-process reference itself (before any process group exists), then joins the group
and runs every configuration; rank 0 writes ``{config: max relative parameter difference}`` to OUT_JSON.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers.toy_encoder import ToyEncoder, toy_batch  # noqa: E402
from retriever.training.strategy import build_strategy  # noqa: E402
from retriever.training.gather import all_gather_with_grad, gather_reps  # noqa: E402
from retriever.model.embeddings import MultiVector  # noqa: E402
from retriever.training.gradcache import GradCache  # noqa: E402
from retriever.training.losses import ContrastiveLoss  # noqa: E402

Q_PER_RANK, NEG_PER_RANK, CHUNK, STEPS, LR = 3, 1, 2, 2, 0.5
CONFIGS = {  # name -> (ZeRO stage or None for DDP, GradCache chunk, learnable temperature, multi-vector,
    #                 accumulation, frozen vision tower with its outputs reused)
    "ddp_gc": (None, CHUNK, False, False, 1, False),
    "ddp_gc_multi_learnable_temp": (None, CHUNK, True, True, 1, False),
    "ddp_gc_accum2": (None, CHUNK, False, False, 2, False),
    "ddp_gc_frozen_vision_reuse": (None, CHUNK, False, False, 1, True),
    "ddp_plain": (None, None, False, False, 1, False),
    "zero1_gc": (1, CHUNK, False, False, 1, False),
    "zero2_gc": (2, CHUNK, False, False, 1, False),
    "zero2_gc_learnable_temp_accum2": (2, CHUNK, True, False, 2, False),
    "zero3_gc": (3, CHUNK, False, False, 1, False),
    "zero3_gc_multi": (3, CHUNK, False, True, 1, False),
    "zero3_gc_frozen_vision_reuse": (3, CHUNK, False, False, 1, True),
}


def optimizer_factory(groups):
    return torch.optim.SGD(groups, lr=LR, momentum=0.9)


def rank_batch(step: int, micro: int, rank: int):
    return toy_batch(Q_PER_RANK, Q_PER_RANK + NEG_PER_RANK, seed=100 * step + 10 * micro + rank, dtype=torch.float32)


def global_batch(step: int, micro: int, world: int):
    """The concatenation of every rank's batch, with the block-diagonal positives mask."""
    parts = [rank_batch(step, micro, r) for r in range(world)]
    q = {k: torch.cat([p[0][k] for p in parts]) for k in parts[0][0]}
    p = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
    return q, p, torch.block_diag(*[p[2] for p in parts])


def fresh(multi: bool, learnable: bool, frozen: bool = False):
    torch.manual_seed(0)
    return (ToyEncoder(multi=multi, dropout=0.0, freeze_vision=frozen),
            ContrastiveLoss(temperature=0.1, learnable_temperature=learnable))


def params(model, loss) -> list[torch.Tensor]:
    return [t.detach().clone() for t in list(model.parameters()) + list(loss.parameters())]


def train(model, loss, strategy, chunk, batches, reuse: bool = False) -> None:
    """``batches[step][micro]``: one optimizer step per outer item."""
    gc = GradCache(model, loss, strategy, chunk, reuse_frozen_vision=reuse)
    for micro_batches in batches:
        for q, p, positives in micro_batches:
            gc.step(q, p, positives)
        strategy.optimizer_step()


def reference(multi: bool, learnable: bool, accum: int, frozen: bool, world: int) -> list[torch.Tensor]:
    """Single process, no reuse (the frozen-vision runs are compared with recomputation)."""
    model, loss = fresh(multi, learnable, frozen)
    strategy = build_strategy(model, optimizer_factory=optimizer_factory, loss=loss, gradient_accumulation_steps=accum)
    train(model, loss, strategy, CHUNK, [[global_batch(s, m, world) for m in range(accum)] for s in range(STEPS)])
    return params(model, loss)


def run_config(stage, chunk, learnable, multi, accum, reuse, rank, world) -> list[torch.Tensor]:
    model, loss = fresh(multi, learnable, reuse)
    ds_config = None
    if stage is not None:
        ds_config = {"train_micro_batch_size_per_gpu": Q_PER_RANK, "gradient_accumulation_steps": accum,
                     "train_batch_size": Q_PER_RANK * world * accum, "gradient_clipping": 0.0,
                     "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
    strategy = build_strategy(model, optimizer_factory=optimizer_factory, loss=loss, deepspeed_config=ds_config,
                            ddp=stage is None, gradient_accumulation_steps=accum)
    train(model, loss, strategy, chunk, [[rank_batch(s, m, rank) for m in range(accum)] for s in range(STEPS)], reuse)
    with strategy.gathered_parameters():
        return params(model, loss)


def resume_check(stage: int, learnable: bool, rank: int, world: int, directory: Path) -> float:
    """Train step 1, checkpoint, train step 2 -> A; fresh strategy + load checkpoint, train step 2 -> B; |A - B|."""
    finals = []
    for resume in (False, True):
        model, loss = fresh(False, learnable)
        ds_config = {"train_micro_batch_size_per_gpu": Q_PER_RANK, "gradient_accumulation_steps": 1,
                     "train_batch_size": Q_PER_RANK * world, "gradient_clipping": 1.0,
                     "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
        strategy = build_strategy(model, optimizer_factory=optimizer_factory, loss=loss, deepspeed_config=ds_config)
        if resume:
            strategy.load_checkpoint(directory)
        else:
            train(model, loss, strategy, CHUNK, [[rank_batch(0, 0, rank)]])
            strategy.save_checkpoint(directory)
        train(model, loss, strategy, CHUNK, [[rank_batch(1, 0, rank)]])
        with strategy.gathered_parameters():
            finals.append(params(model, loss))
    return max_rel_diff(finals[1], finals[0])


def gather_check(rank: int) -> bool:
    """Ranks hold different row and token counts: gathers pad tokens, keep rank order, route gradients home."""
    x = torch.full((rank + 1, 3), float(rank + 1), requires_grad=True)
    gathered, counts = all_gather_with_grad(x)
    (gathered ** 2).sum().backward()
    dense_ok = counts == [1, 2] and gathered[:, 0].tolist() == [1.0, 2.0, 2.0] and torch.equal(x.grad, 2 * x.detach())
    length = 2 + rank
    mv = MultiVector(torch.ones(1, length, 4) * (rank + 1), torch.ones(1, length, dtype=torch.bool))
    mv_all, counts = gather_reps(mv)
    return dense_ok and mv_all.emb.shape == (2, 3, 4) and mv_all.mask.tolist() == [[True, True, False], [True] * 3] \
        and float(mv_all.emb[0, 2].abs().sum()) == 0.0


def max_rel_diff(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(((g - w).abs().max() / w.abs().max().clamp_min(1e-12)).item() for g, w in zip(got, want))


def main() -> None:
    out, names = Path(sys.argv[1]), sys.argv[2:] or list(CONFIGS)
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    keys = {(CONFIGS[n][3], CONFIGS[n][2], CONFIGS[n][4], CONFIGS[n][5]) for n in names}  # multi, learnable, accum,
    # frozen vision
    refs = {key: reference(*key, world) for key in keys}
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    for name in names:
        stage, chunk, learnable, multi, accum, reuse = CONFIGS[name]
        got = run_config(stage, chunk, learnable, multi, accum, reuse, rank, world)
        want = refs[(multi, learnable, accum, reuse)]
        results[name] = {"max_rel_diff": max_rel_diff(got, want),
                         "reference_moved": max_rel_diff(want, params(*fresh(multi, learnable, reuse)))}
    results["gather_ok"] = gather_check(rank)
    for stage, learnable in ((2, True), (3, False)):
        results[f"zero{stage}_resume"] = resume_check(stage, learnable, rank, world, out.parent / f"ckpt{stage}")
    if rank == 0:
        out.write_text(json.dumps(results, indent=1))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # a gloo group left to interpreter exit can abort the process


if __name__ == "__main__":
    main()
