"""Queries for pages: VLM-written synthetic queries (vLLM, transformers or an OpenAI-compatible server; ``generate``),
their filtering into training pairs (``filter``), and the text-layer baseline (``from_text``). See docs/QUERIES.md."""
