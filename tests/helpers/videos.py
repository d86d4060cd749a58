"""Short synthetic video clips written with PyAV, for the video tests."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

RATE = 10  # frames per second of the synthetic clips


def write_clip(path: Path, seconds: float, colour: int = 0) -> None:
    """A clip whose frame i is a flat colour with red = 10 * (i % 25) (the frame shows its own index) and green =
    ``colour`` (tells clips apart)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, RATE)
        for i in range(int(seconds * RATE)):
            pixels = np.zeros((48, 64, 3), dtype=np.uint8)
            pixels[..., 0] = 10 * (i % 25)
            pixels[..., 1] = colour
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
