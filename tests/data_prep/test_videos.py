"""data_prep.videos: short synthetic clips made with PyAV go into a page store under one id each, frames at the
chosen rate (a long clip sampled uniformly, and the record says so); broken or empty files are recorded failures;
a rerun skips what is stored."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.store import PageStore
from data_prep.videos import clip_frames, main, sample_times
from tests.helpers.videos import write_clip

av = pytest.importorskip("av")

def test_sample_times() -> None:
    assert sample_times(1.9, 2, 16) == ([0.0, 0.5, 1.0, 1.5], "2 frames per second")
    times, how = sample_times(3.9, 5, 4)
    assert times == pytest.approx([0.4875, 1.4625, 2.4375, 3.4125]) and how.startswith("4 frames uniformly")


def test_clips_into_the_store_with_failures_and_resume(tmp_path: Path, capsys) -> None:
    videos, store = tmp_path / "videos", tmp_path / "store"
    write_clip(videos / "short.mp4", 2.0)
    write_clip(videos / "sub" / "long.mp4", 4.0)
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 10)
    (videos / "empty.mkv").write_bytes(b"")
    assert main(["--videos", str(videos), "--out", str(store), "--fps", "2", "--max_frames", "4"]) == 0
    assert "4 clips listed = 2 stored now + 2 failed now" in capsys.readouterr().out
    pages = PageStore(store)
    assert sorted(pages.ids()) == ["short", "sub/long"]
    frames, times = clip_frames(pages, "short")
    meta = pages.meta("short")
    assert times == [0.0, 0.5, 1.0, 1.5] and meta["sampling"] == "2 frames per second" and len(frames) == 4
    reds = [int(np.asarray(f)[..., 0].mean().round()) for f in frames]
    assert [round(r / 10) for r in reds] == [0, 5, 10, 15]  # the frames shown at those times (lossy codec)
    frames, times = clip_frames(pages, "sub/long")
    assert len(frames) == 4 and times == [0.5, 1.5, 2.5, 3.5]
    assert pages.meta("sub/long")["sampling"].startswith("4 frames uniformly over 3.90 s")
    failures = [json.loads(line) for line in (store / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["id"] for f in failures) == ["broken", "empty"]
    assert all(f["reason"].startswith("cannot read the video") for f in failures)
    assert main(["--videos", str(videos), "--out", str(store), "--fps", "2", "--max_frames", "4"]) == 0
    assert "0 stored now + 0 failed now" in capsys.readouterr().out


def test_a_clip_is_never_read_as_its_first_frame(tmp_path: Path) -> None:
    """Where a page image is required a clip is an error naming it; page sources give the whole clip."""
    from data_prep.images import Clip, ClipNotPageError
    from data_prep.store import PageStore
    from retriever.page_sources import StorePages

    write_clip(tmp_path / "videos" / "c.mp4", 2.0)
    assert main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "store"), "--fps", "2"]) == 0
    with pytest.raises(ClipNotPageError, match=r"page c: is a video clip \(4 frames\), not a page image"):
        PageStore(tmp_path / "store").get_image("c")
    clip = StorePages(tmp_path / "store").get_image("c")
    assert isinstance(clip, Clip) and len(clip.frames) == 4


def test_a_store_of_clips_verifies_clean(tmp_path: Path) -> None:
    """Clips decode frame by frame in a verification: never reported corrupt (render's repair would set them aside)."""
    from data_prep.store import verify_store

    write_clip(tmp_path / "videos" / "c.mp4", 2.0)
    assert main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "store"), "--fps", "2"]) == 0
    report = verify_store(tmp_path / "store", decode=True)
    assert report.problems == [] and report.pages == 1
