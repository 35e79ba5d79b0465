"""Flow computed in this process for every video at once, on a GPU (or with --flow-batch): the decoders send the
grayscale frames, the pairs of all videos in flight go through the flow model in calls of `pairs_per_call`
(so the Triton schedule refills a finished pair's slot with the next pair, whichever video it belongs to),
and each video's flow chunks, then its end, are handed on to the batching side in the order they came."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from src.device import usable_device
from src.extraction.config import ExtractionError, FeatureConfig
from src.flow import FlowExtractor
from src.flow.jpeg import flow_through_jpeg
from src.flow.pairs import PairChunk, pending_pairs, take_pairs
from src.media.transforms import center_crop

Message = tuple[int, str, object]  # (video index, kind, payload), as the decoders send them


def flow_in_parent(cfg: FeatureConfig) -> bool:
    """Whether this job's flow is computed here, across videos (a GPU, or --flow-batch), not in the decoders."""
    if "flow" not in cfg.streams:
        return False
    try:
        device = usable_device(cfg.flow_device or cfg.device)
    except ValueError as exc:
        raise ExtractionError(f"--flow-device {cfg.flow_device or cfg.device}: {exc}") from None
    return cfg.flow_batch > 0 or device.type != "cpu"


@dataclass(kw_only=True)
class _Chunk(PairChunk):
    """The grayscale frames of one message of video `video` and the flow of the pairs done."""

    video: int


@dataclass
class _VideoFlow:
    entries: deque = field(default_factory=deque)  # _Chunk, or ("end", info) once the video ended


class FlowStage:
    """Pairs of every video in flight, computed in calls of `pairs_per_call`; messages released in order per video."""

    def __init__(self, cfg: FeatureConfig, algorithm: str, crop: int) -> None:
        self.cfg, self.crop = cfg, crop
        self.flow = FlowExtractor(algorithm, device=cfg.flow_device or cfg.device or "auto", batch_size=cfg.flow_batch)
        self.call = self.flow.pairs_per_call
        self.videos: dict[int, _VideoFlow] = {}

    def describe(self) -> str:
        """Which flow implementation runs, and where."""
        return f"flow in this process across videos: {self.flow.describe()}"

    def feed(self, index: int, kind: str, payload) -> list[Message]:
        """Take one decoder message; return the messages now ready for the batching side."""
        if kind == "gray":
            frames = np.asarray(payload)
            out = np.empty((len(frames) - 1, *frames.shape[1:], 2), np.float32)
            self.videos.setdefault(index, _VideoFlow()).entries.append(_Chunk(frames, out, video=index))
            return self._run(full_only=True)
        if kind == "end" and self.videos.get(index) and self.videos[index].entries:
            self.videos[index].entries.append(("end", payload))
            return self._release(index)
        if kind == "failed":
            self.videos.pop(index, None)
        return [(index, kind, payload)]

    def flush(self) -> list[Message]:
        """Compute every queued pair (the decoders are behind, or done); return what that releases."""
        return self._run(full_only=False)

    def _run(self, full_only: bool) -> list[Message]:
        released: list[Message] = []
        while True:
            chunks = [e for v in self.videos.values() for e in v.entries if isinstance(e, _Chunk)]
            waiting = pending_pairs(chunks)
            if not waiting or (full_only and waiting < self.call):
                return released
            chosen, prev, nxt = take_pairs(chunks, self.call)
            flows = (flow_through_jpeg(self.flow.raw_batch(prev, nxt), self.flow.bound) if self.cfg.flow_jpeg
                     else self.flow.batch(prev, nxt))
            for (chunk, k), flow in zip(chosen, flows):
                chunk.out[k] = flow
                chunk.done += 1
            for i in dict.fromkeys(chunk.video for chunk, _ in chosen):
                released += self._release(i)

    def _release(self, index: int) -> list[Message]:
        """The finished front entries of one video, in order: flow chunks (centre-cropped for one crop), then its end."""
        video = self.videos.get(index)
        released: list[Message] = []
        while video and video.entries:
            entry = video.entries[0]
            if isinstance(entry, _Chunk):
                if not entry.finished:
                    break
                flows = np.ascontiguousarray(center_crop(entry.out, self.crop)) if self.cfg.crops == 1 else entry.out
                released.append((index, "flow", flows))
            else:
                released.append((index, *entry))
            video.entries.popleft()
        if video is not None and not video.entries:
            del self.videos[index]
        return released
