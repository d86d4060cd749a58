"""Hard-negative mining, positive-aware: candidate search, near-duplicate exclusion, selection rules, statistics.

``python -m retriever.mine`` wires these modules; each holds one concept:

* ``candidates``: ranked candidates with exact scores (FAISS for dense heads; pooled vectors then exact MaxSim
  rerank, or brute-force MaxSim, for multi-vector heads) and the positives' own scores;
* ``duplicates``: which pages are the same page as a positive (same PDF page, same rendered bytes, close
  perceptual hash);
* ``rules``: the rank window, margins, score cap and sampling that turn candidates into negatives;
* ``statistics``: what the rules removed and how positive and negative scores are distributed.
"""
