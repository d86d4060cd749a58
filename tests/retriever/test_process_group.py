"""The process group helpers in a single process: work split between ranks, and a tool's run without torchrun."""
from __future__ import annotations

from datetime import timedelta

import pytest

from retriever.process_group import RankInfo, barrier, is_distributed, joined_process_group, shard_range


@pytest.mark.parametrize("n, world", [(0, 3), (7, 1), (7, 3), (10, 4), (2, 5)])
def test_shards_are_contiguous_balanced_and_cover_everything(n: int, world: int) -> None:
    shards = [shard_range(n, rank, world) for rank in range(world)]
    assert [i for shard in shards for i in shard] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(s) for s in shards] == sorted((len(s) for s in shards), reverse=True)  # the larger ones first


def test_a_single_process_runs_without_a_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with joined_process_group(timedelta(seconds=5)) as info:
        assert (info.rank, info.world, info.is_main) == (0, 1, True)
        assert not is_distributed() and RankInfo.current().world == 1
        barrier()  # a no-op alone
    assert not is_distributed()
