"""Synthetic queries per page from a VLM (vLLM, or transformers generation as fallback) and their filtering."""
