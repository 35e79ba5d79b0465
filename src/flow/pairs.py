"""Batches of frame pairs drawn across clips: the flow of many clips computed in calls of a fixed number of pairs
(pre-processing's batched flow and extraction's flow stage both queue their clips' pairs this way)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass
class PairChunk:
    """Grayscale frames whose consecutive pairs (frames[i] -> frames[i + 1]) are computed into `out`."""

    frames: np.ndarray
    out: np.ndarray
    queued: int = 0  # pairs handed to a batch
    done: int = 0  # pairs whose flow is stored in `out`

    @property
    def finished(self) -> bool:
        """Whether the flow of every pair is in `out`."""
        return self.done == len(self.out)


def pending(chunks: Iterable[PairChunk]) -> list[PairChunk]:
    """The chunks with pairs not yet handed out that share the first such chunk's frame size (one batch's source)."""
    waiting = [c for c in chunks if c.queued < len(c.out)]
    return [c for c in waiting if c.frames.shape[1:] == waiting[0].frames.shape[1:]]


def pending_pairs(chunks: Iterable[PairChunk]) -> int:
    """How many pairs one frame size has waiting (what the next batch can draw on)."""
    return sum(len(c.out) - c.queued for c in pending(chunks))


def take_pairs(chunks: Iterable[PairChunk], limit: int) -> tuple[list[tuple[PairChunk, int]], np.ndarray, np.ndarray]:
    """Up to `limit` waiting pairs of one frame size, in queue order, marked queued: (chunk, pair index) each, and
    the stacked first and second frames to compute them from."""
    chosen: list[tuple[PairChunk, int]] = []
    for chunk in pending(chunks):
        while chunk.queued < len(chunk.out) and len(chosen) < limit:
            chosen.append((chunk, chunk.queued))
            chunk.queued += 1
    return chosen, np.stack([c.frames[i] for c, i in chosen]), np.stack([c.frames[i + 1] for c, i in chosen])
