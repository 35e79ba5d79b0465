"""Window maths: which frames each row of a feature array reads, when each window starts, and the crop boxes.

Windows: starts 0, S, 2S, ... while start + W <= T, so T' = (T - W) // S + 1 (tail 'drop');
a clip shorter than W gives one window of all its frames. Tail 'repeat-last' or 'loop' also keeps the
last, incomplete window: starts while start + W < T + S, T' = ceil((T - W) / S) + 1 (at least 1), its missing
frames the last frame repeated, or the video again from its first frame. Per-frame gives T rows, row t from
the window of W frames starting at t - W // 2, padded at the ends by repeating the end frame or by zeros.
Everything here is pure (numpy only); the README documents it.
"""
from __future__ import annotations

import numpy as np


def window_count(frames: int, window: int, stride: int, per_frame: bool = False, tail: str = "drop") -> int:
    """T': per-frame T; else (T - W) // S + 1 windows (tail drop), ceil((T - W) / S) + 1 with the last one completed
    (repeat-last, loop); one window for a clip shorter than W (0 for none)."""
    if frames <= 0:
        return 0
    if per_frame:
        return frames
    if frames < window:
        return 1
    if tail == "drop":
        return (frames - window) // stride + 1
    return -(-(frames - window) // stride) + 1


def window_indices(row: int, frames: int, window: int, stride: int, per_frame: bool, tail: str = "drop") -> np.ndarray:
    """The frame indices of one window: per-frame ones may fall outside 0..T-1 (the caller clamps or zeroes them);
    otherwise those past the end are cut (tail drop: a short clip's one window), the last frame (repeat-last) or
    taken from the start again (loop)."""
    if per_frame:
        return np.arange(row - window // 2, row - window // 2 + window)
    start = row * stride
    if tail == "drop":
        return np.arange(start, min(start + window, frames))
    idx = np.arange(start, start + window)
    return np.minimum(idx, frames - 1) if tail == "repeat-last" else idx % frames


def window_starts(frames: int, window: int, stride: int, per_frame: bool, fps: float, tail: str = "drop") -> np.ndarray:
    """Seconds at which each row's window starts (per-frame: the row's own frame time), float64 (T',)."""
    n = window_count(frames, window, stride, per_frame, tail)
    step = 1 if per_frame else stride
    return np.arange(n, dtype=np.float64) * step / fps


def crop_boxes(height: int, width: int, size: int, crops: int, order: str = "centre-first"
               ) -> list[tuple[int, int, bool]]:
    """(top, left, flipped) of each crop, `left` in the unflipped frame (a flipped crop is that region mirrored).

    centre-first: centre, then (5) the corners TL, TR, BL, BR, then (10) each of these five mirrored.
    cmcs (the CMCS fork of pytorch-i3d's extractor): TL, TR, centre, BL, BR, then the same five boxes cut from
    the mirrored frame, i.e. each box's mirror image (its flipped TL is the original TR region, mirrored).
    torchvision (TenCrop / FiveCrop): TL, TR, BL, BR, centre, then the same of the mirrored frame; its centre
    is at round((S - size) / 2) (Python's round, halves to even), the others' at floor((S - size) / 2).
    """
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {width}x{height} frames")
    centre = ((height - size) // 2, (width - size) // 2)
    tl, tr, bl, br = (0, 0), (0, width - size), (height - size, 0), (height - size, width - size)
    if order == "torchvision":
        centre = (int(round((height - size) / 2)), int(round((width - size) / 2)))
    if crops == 1:
        return [(*centre, False)]
    if order in ("cmcs", "torchvision"):
        five = [tl, tr, centre, bl, br] if order == "cmcs" else [tl, tr, bl, br, centre]
        flipped = [(top, width - size - left, True) for top, left in five]  # the box on the mirrored frame
    else:
        five = [centre, tl, tr, bl, br]
        flipped = [(top, left, True) for top, left in five]
    return [(top, left, False) for top, left in five] + (flipped if crops == 10 else [])


class Windower:
    """Collects one stream's frames as they are decoded and hands out each window once its frames are in."""

    def __init__(self, window: int, stride: int, per_frame: bool, pad: str, tail: str = "drop") -> None:
        self.window, self.stride, self.per_frame, self.pad = window, stride, per_frame, pad
        self.tail = "drop" if per_frame else tail
        self.frames: list[np.ndarray] = []  # frames[i] is frame offset + i
        self.head: list[np.ndarray] = []  # the first W frames, which a looped last window reads again
        self.offset = 0
        self.count = 0  # frames received
        self.next_row = 0
        self.first: np.ndarray | None = None  # kept for edge padding at the start

    def _needed_end(self, row: int) -> int:
        """One past the last frame index that row's window reads (ignoring the end of the clip)."""
        if self.per_frame:
            return row - self.window // 2 + self.window
        return row * self.stride + self.window

    def _take(self, row: int, total: int | None) -> np.ndarray:
        idx = window_indices(row, total if total is not None else self.count, self.window, self.stride,
                             self.per_frame, self.tail)
        last = self.count - 1
        parts = []
        for i in idx:
            if i < self.offset and self.tail == "loop":  # the video again from its start
                parts.append(self.head[i])
            elif 0 <= i <= last:
                parts.append(self.frames[i - self.offset])
            elif self.pad == "zero" and self.per_frame:
                parts.append(None)
            else:
                parts.append(self.first if i < 0 else self.frames[last - self.offset])
        if any(p is None for p in parts):
            # zero in model range (mid grey, no motion): uint8 frames go to float first
            parts = [None if p is None else (p.astype(np.float32) / 255 * 2 - 1 if p.dtype == np.uint8
                                             else p.astype(np.float32)) for p in parts]
            like = next(p for p in parts if p is not None)
            parts = [np.zeros_like(like) if p is None else p for p in parts]
        return np.stack(parts)

    def push(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add frames; return the (row, window) pairs now complete."""
        if self.first is None and len(chunk):
            self.first = chunk[0]
        if self.tail == "loop" and len(self.head) < self.window:
            self.head.extend(chunk[:self.window - len(self.head)])
        self.frames.extend(chunk)
        self.count += len(chunk)
        ready = []
        while self._needed_end(self.next_row) <= self.count:
            ready.append((self.next_row, self._take(self.next_row, None)))
            self.next_row += 1
        self._trim()
        return ready

    def _trim(self) -> None:
        if self.per_frame:
            keep_from = self.next_row - self.window // 2
        else:
            keep_from = self.next_row * self.stride
        keep_from = min(max(keep_from, 0), self.count - 1)
        if keep_from > self.offset:
            del self.frames[:keep_from - self.offset]
            self.offset = keep_from

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The windows left once the clip has ended (end padding, or the one window of a short clip)."""
        total = self.count
        rows = window_count(total, self.window, self.stride, self.per_frame, self.tail)
        out = [(row, self._take(row, total)) for row in range(self.next_row, rows)]
        self.next_row = rows
        return out
