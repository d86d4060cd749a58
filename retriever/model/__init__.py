"""The retriever model: backbone adapters, heads, embeddings, the encoder, scoring, training modes and the
checkpoint format (:mod:`retriever.model.saved`, whose ``load_encoder`` every tool calls)."""
