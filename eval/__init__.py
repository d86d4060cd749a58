"""Retrieval evaluation: trec_eval-exact metrics, a sharded native evaluator, an MTEB wrapper, image<->text recall."""
