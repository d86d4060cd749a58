"""A VLM backbone turned into a dense or multi-vector retriever, and its contrastive training with GradCache."""
