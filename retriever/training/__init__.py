"""Training machinery: the recipe (``python -m retriever.train``) and what it is built from: its flags, the
contrastive loss, GradCache, the strategies (plain, DDP, DeepSpeed), cross-rank gathers, batching, the optimiser
and schedule, DeepSpeed config resolution, checkpoints and logs."""
