"""Hard-negative mining, positive-aware: candidate search, near-duplicate exclusion, selection rules, statistics.

``python -m retriever.mine`` wires these modules; each holds one concept:

* ``search``: candidate page indices (FAISS for dense heads; pooled vectors in FAISS, or brute-force MaxSim, for
  multi-vector heads);
* ``candidates``: the candidates and the positives scored exactly (dot product or MaxSim) and ranked;
* ``duplicates``: which pages are the same page as a positive (same PDF page, same rendered bytes, close
  perceptual hash);
* ``selection``: the rank window, margins, score cap and sampling that turn candidates into negatives;
* ``statistics``: what the rules removed and how positive and negative scores are distributed.
"""
