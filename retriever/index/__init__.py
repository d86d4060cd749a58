"""Compressed multi-vector page indexes: token pooling, int8 / binary vectors, MUVERA candidates, two-stage search.

See :mod:`retriever.index.settings` for the options and :mod:`retriever.index.scorer` for how a chunk of pages is
scored through them.
"""
from .scorer import IndexScorer
from .settings import IndexSettings, add_index_arguments, check_index_settings, index_settings

__all__ = ["IndexScorer", "IndexSettings", "add_index_arguments", "check_index_settings", "index_settings"]
