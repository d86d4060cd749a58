"""HDF5 page stores: encoded page images addressed by page id, in one or several shard files.

The public face of the package; callers import from here (``from data_prep.store import PageStore``). One module
per part of the design, each importing only the ones listed before it:

* :mod:`~data_prep.store.format` -- the on-disk format (shard files, datasets, attributes) and the checked reading
  of a shard's index; ``CorruptStoreError`` for a shard that breaks it;
* :mod:`~data_prep.store.reader` -- ``PageStore``: lazy, fork-safe reads by page id; ``UnknownPageError``;
* :mod:`~data_prep.store.verify` -- ``verify_store``: every shard checked, every page decoded, a ``StoreReport``;
* :mod:`~data_prep.store.repair` -- corrupt shards moved aside into ``STORE/corrupt/``, never deleted;
* :mod:`~data_prep.store.writer` -- ``PageStoreWriter``: atomic shard commits, resumable, one writer at a time.
"""
from data_prep.store.format import FORMAT_VERSION, CorruptStoreError, shard_paths
from data_prep.store.reader import PageStore, UnknownPageError
from data_prep.store.verify import Problem, StoreReport, verify_store
from data_prep.store.writer import PageStoreWriter, StoreBusyError

__all__ = ["FORMAT_VERSION", "CorruptStoreError", "PageStore", "PageStoreWriter", "Problem", "StoreBusyError",
           "StoreReport", "UnknownPageError", "shard_paths", "verify_store"]
