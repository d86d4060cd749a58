"""Worker for the 2-rank test on real (tiny) VLMs: after 2 optimizer steps of GradCache under DeepSpeed ZeRO-3, the
parameters equal a single-process GradCache run over the same global batches.

Launched as ``torchrun --nproc_per_node 2 tests/helpers/vlm_zero3_worker.py OUT_JSON ARCH=MODEL_DIR ...``. Each rank
first computes the single-process reference itself (before any process group exists), then joins the group and
trains its half of every global batch; rank 0 writes ``{arch: {"max_rel_diff", "reference_moved"}}`` to OUT_JSON.
The pages have different sizes, so ranks hold different token counts (the gathers pad them).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from retriever.model.encoder import EncoderConfig  # noqa: E402
from retriever.model.saved import load_encoder  # noqa: E402
from retriever.training.gradcache import GradCache  # noqa: E402
from retriever.training.losses import ContrastiveLoss  # noqa: E402
from retriever.training.strategy import build_strategy  # noqa: E402

PER_RANK, CHUNK, STEPS, LR = 2, 1, 2, 0.05
SIZES = [(40, 60), (70, 30), (50, 50), (33, 64), (64, 40), (45, 45), (30, 70), (60, 36)]


def examples(step: int, rank: int) -> tuple[list[str], list[Image.Image]]:
    """The queries and pages of ``rank``'s half of global batch ``step``."""
    rng = np.random.default_rng(100 * step + rank)
    first = (step * 2 + rank) * PER_RANK % len(SIZES)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in SIZES[first:first + PER_RANK]]
    return [f"query {step} {rank} {i} " + "x" * (i + rank) for i in range(PER_RANK)], images


def fresh(model_dir: str, arch: str):
    torch.manual_seed(0)
    encoder = load_encoder(model_dir, EncoderConfig(backbone=arch, head="multi", multi_dim=16), dtype=torch.float32,
                           training_mode="full")
    return encoder.train(), ContrastiveLoss(temperature=0.1, normalize_query_length=True)


def sgd(groups):
    return torch.optim.SGD(groups, lr=LR)


def run(encoder, loss, strategy, ranks: list[int]) -> None:
    """STEPS optimizer steps on the batches of ``ranks`` (both: the single-process reference)."""
    gc = GradCache(encoder, loss, strategy, CHUNK)
    for step in range(STEPS):
        parts = [examples(step, r) for r in ranks]
        queries = [q for texts, _ in parts for q in texts]
        pages = [p for _, images in parts for p in images]
        positives = torch.eye(len(queries), dtype=torch.bool)
        gc.step(encoder.prepare_queries(queries), encoder.prepare_pages(pages), positives)
        strategy.optimizer_step()


def params(encoder) -> list[torch.Tensor]:
    return [p.detach().clone().float() for p in encoder.parameters()]


def update_errors(got: list[torch.Tensor], want: list[torch.Tensor], initial: list[torch.Tensor]) -> list[float]:
    """Per parameter, the difference of the 2-rank and the reference parameters relative to the reference's update
    (float32 round-off gives ~1e-4 on these models, a wrong gradient order 1), an update of at least 1e-4 of the
    model's largest: an attention layer's key bias has a zero gradient in exact arithmetic (softmax ignores a shift
    shared by all keys), so its float32 "update" is round-off on both sides. A parameter the reference leaves
    unchanged must stay exactly unchanged."""
    updates = [(w - i).abs().max().item() for w, i in zip(want, initial)]
    floor = 1e-4 * max(updates)
    errors = []
    for g, w, update in zip(got, want, updates):
        diff = (g - w).abs().max().item()
        errors.append(diff / max(update, floor) if update > 0 else (0.0 if diff == 0 else float("inf")))
    return errors


def main() -> None:
    out, models = Path(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:])
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    references, initial = {}, {}
    for arch, model_dir in models.items():
        encoder, loss = fresh(model_dir, arch)
        initial[arch] = params(encoder)
        run(encoder, loss, build_strategy(encoder, optimizer_factory=sgd, loss=loss), list(range(world)))
        references[arch] = params(encoder)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    for arch, model_dir in models.items():
        encoder, loss = fresh(model_dir, arch)
        ds_config = {"train_micro_batch_size_per_gpu": PER_RANK, "gradient_accumulation_steps": 1,
                     "train_batch_size": PER_RANK * world, "gradient_clipping": 0.0,
                     "zero_optimization": {"stage": 3}, "steps_per_print": 10**9}
        strategy = build_strategy(encoder, optimizer_factory=sgd, loss=loss, deepspeed_config=ds_config)
        run(encoder, loss, strategy, [rank])
        with strategy.gathered_parameters():
            got = params(encoder)
        names = [name for name, _ in encoder.named_parameters()]
        errors = update_errors(got, references[arch], initial[arch])
        worst = max(range(len(names)), key=errors.__getitem__)
        results[arch] = {"update_error": errors[worst], "parameter": names[worst],
                         "updated": sum(bool((w != i).any()) for w, i in zip(references[arch], initial[arch])),
                         "parameters": len(names)}
    if rank == 0:
        out.write_text(json.dumps(results, indent=1))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
