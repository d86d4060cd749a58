"""``python -m data_prep.videos``: video clips into a page store, one id per clip (its sampled frames and times).

``python -m data_prep.videos --videos DIR --out STORE [--fps 1] [--max_frames 16] [--max_pixels N]`` decodes every
video under DIR (``.mp4 .mkv .webm .avi .mov .m4v``) with PyAV and keeps frames at ``--fps`` frames per second of
the clip (the first frame at or after each tick). A clip that would give more than ``--max_frames`` frames is sampled
uniformly over its whole length instead (never cut at the budget): the record says which (``sampling``). Frames are
downscaled to at most ``--max_pixels`` pixels (aspect kept).

A clip is stored under its id, the file's path relative to DIR without its extension, as one animated WebP of its
frames (lossless) with ``meta`` ``{"kind": "clip", "source", "frames", "timestamps" (seconds), "fps", "duration",
"sampling", "width", "height"}``; :func:`clip_frames` reads the frames back. A file that cannot be decoded, or holds
no frame, goes to ``STORE/failures.jsonl`` with the reason and the run goes on. Resumable like rendering: committed
clips are skipped by a rerun.
"""
from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from data_prep.errors import InputError, cli
from data_prep.failures import FailureLog
from data_prep.flags import positive_float, positive_int
from data_prep.images import decode_frames
from data_prep.outputs import check_outputs
from data_prep.store import PageStore, PageStoreWriter

__all__ = ["clip_frames", "main", "sample_times"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


def sample_times(duration: float, fps: float, max_frames: int) -> tuple[list[float], str]:
    """The times (seconds) to keep a frame at, and how they were chosen."""
    count = max(1, int(duration * fps) + 1)
    if count <= max_frames:
        return [i / fps for i in range(count)], f"{fps:g} frames per second"
    step = duration / max_frames
    return [(i + 0.5) * step for i in range(max_frames)], (f"{max_frames} frames uniformly over {duration:.2f} s (at "
                                                            f"{fps:g} per second the clip has {count})")


def decode_clip(path: Path, fps: float, max_frames: int, max_pixels: int | None) -> tuple[list[Image.Image],
                                                                                        dict[str, Any]]:
    """The sampled frames of the video at ``path`` and their record; ``ValueError`` when it has no frame.

    Two passes: the frame times first (nothing kept), then only the frames at the chosen times, so a long clip never
    sits in memory; each time takes the first frame at or after it (the last frame past the end)."""
    import av

    with av.open(str(path)) as container:
        stamps_all = [float(frame.time or 0.0) for frame in container.decode(container.streams.video[0])]
    if not stamps_all:
        raise ValueError("no video frame")
    duration = stamps_all[-1]
    times, how = sample_times(duration, fps, max_frames)
    wanted = [next((i for i, s in enumerate(stamps_all) if s >= t - 1e-6), len(stamps_all) - 1) for t in times]
    images: dict[int, Image.Image] = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if index in wanted:
                images[index] = _fit(frame.to_image().convert("RGB"), max_pixels)
            if index >= wanted[-1]:
                break
    frames = [images[i] for i in wanted]
    stamps = [round(stamps_all[i], 6) for i in wanted]
    return frames, {"kind": "clip", "frames": len(frames), "timestamps": stamps, "fps": fps,
                    "duration": round(duration, 6), "sampling": how, "width": frames[0].width,
                    "height": frames[0].height}


def _fit(image: Image.Image, max_pixels: int | None) -> Image.Image:
    if not max_pixels or image.width * image.height <= max_pixels:
        return image
    scale = (max_pixels / (image.width * image.height)) ** 0.5
    return image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                        Image.Resampling.BICUBIC)


def encode_frames(frames: Sequence[Image.Image]) -> bytes:
    """The frames as one lossless animated WebP."""
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=list(frames[1:]), lossless=True)
    return buffer.getvalue()


def clip_frames(store: PageStore, clip_id: str) -> tuple[list[Image.Image], list[float]]:
    """A stored clip's frames (RGB) and their times in seconds."""
    meta = store.meta(clip_id)
    if meta.get("kind") != "clip":
        raise InputError(f"{store.path}: {clip_id} is a page, not a clip")
    return decode_frames(store.get_bytes(clip_id), clip_id), list(meta["timestamps"])


def list_videos(root: Path) -> list[tuple[str, Path]]:
    """``(clip id, path)`` of every video under ``root``, sorted by id."""
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    return [(str(p.relative_to(root).with_suffix("")), p) for p in videos]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_prep.videos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, required=True, help="folder of video files (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="page store to write the clips into")
    p.add_argument("--fps", type=positive_float, default=1.0, help="frames kept per second of video (default 1)")
    p.add_argument("--max_frames", type=positive_int, default=16,
                   help="frames per clip at most; a longer clip is sampled uniformly (default 16)")
    p.add_argument("--max_pixels", type=positive_int, default=None, help="downscale frames to at most this")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.videos.is_dir():
        raise InputError(f"--videos {args.videos}: not a folder")
    check_outputs({"--out": args.out}, {"--videos": args.videos}, directories=("--out",))
    videos = list_videos(args.videos)
    if not videos:
        raise InputError(f"--videos {args.videos}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    stored = failed = 0
    with PageStoreWriter(args.out) as writer, FailureLog(args.out / "failures.jsonl") as flog:
        for clip_id, path in tqdm(videos, desc="clips", unit="clip"):
            if writer.has(clip_id) or clip_id in flog.failed_ids:
                continue
            try:
                frames, meta = decode_clip(path, args.fps, args.max_frames, args.max_pixels)
            except Exception as err:  # noqa: BLE001 - PyAV raises many types for broken or empty files
                flog.add(f"cannot read the video: {str(err).strip() or type(err).__name__}", stage="videos",
                         doc=clip_id, source=str(path), page_id=clip_id)
                failed += 1
                continue
            writer.add(clip_id, encode_frames(frames), {**meta, "source": str(path)})
            stored += 1
    print(f"videos: {len(videos)} clips listed = {stored} stored now + {failed} failed now (the rest were done "
          f"before); store {args.out}, failures {args.out / 'failures.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
